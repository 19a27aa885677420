"""Tests of brainae.dataset: opening a prepared dataset folder, its checks, and its splits."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from brainae.dataset import open_dataset
from brainae.errors import BrainaeError
from brainae.volume import Preprocessing
from conftest import make_dataset


def test_open_dataset_reads_splits_and_preprocessing(tmp_path) -> None:
    path = make_dataset(tmp_path / "ds", volumes={"train": 2, "val": 1, "test": 3}, size=32)
    ds = open_dataset(path)
    assert ds.slices.shape == (24, 32, 32) and isinstance(ds.slices, np.memmap)
    assert ds.preprocessing == Preprocessing(size=32)
    rows = {s: ds.split_rows(s) for s in ("train", "val", "test")}
    assert [len(r) for r in rows.values()] == [8, 4, 12]
    assert np.array_equal(np.sort(np.concatenate(list(rows.values()))), np.arange(24))  # a partition
    test = ds.split_array("test")
    assert test.dtype == np.float32 and test.flags.c_contiguous
    assert np.array_equal(test, np.asarray(ds.slices)[rows["test"]])
    assert set(ds.index.loc[rows["val"], "split"]) == {"val"}
    with pytest.raises(BrainaeError, match="unknown split 'dev'"):
        ds.split_rows("dev")


def test_a_split_without_slices_is_empty(tmp_path) -> None:
    ds = open_dataset(make_dataset(tmp_path / "ds", volumes={"train": 1, "test": 1}))
    assert ds.split_rows("val").size == 0 and ds.split_array("val").shape == (0, 32, 32)


def test_missing_incomplete_and_inconsistent_folders_are_one_clear_error(tmp_path) -> None:
    with pytest.raises(BrainaeError, match="no such dataset folder; make one with `brainae prepare"):
        open_dataset(tmp_path / "none")
    path = make_dataset(tmp_path / "ds")
    (path / "volumes.csv").unlink()
    with pytest.raises(BrainaeError, match=r"incomplete dataset \(missing volumes.csv\)"):
        open_dataset(path)

    path = make_dataset(tmp_path / "rows")
    index = pd.read_csv(path / "index.csv")
    index.iloc[:-1].to_csv(path / "index.csv", index=False)
    with pytest.raises(BrainaeError, match="index.csv has 23 rows but slices.npy has 24 slices"):
        open_dataset(path)

    path = make_dataset(tmp_path / "shape")
    np.save(path / "slices.npy", np.zeros((24, 32, 16), np.float32))
    with pytest.raises(BrainaeError, match="expected N x size x size"):
        open_dataset(path)

    path = make_dataset(tmp_path / "json")
    (path / "settings.json").write_text("{not json")
    with pytest.raises(BrainaeError, match="unreadable dataset file"):
        open_dataset(path)

    path = make_dataset(tmp_path / "prep")
    (path / "settings.json").write_text(json.dumps({"version": "x"}))
    with pytest.raises(BrainaeError, match="no 'preprocessing' section"):
        open_dataset(path)
