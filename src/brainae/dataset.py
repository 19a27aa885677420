"""A prepared dataset folder (see ``docs/dataset-format.md``): open it, check it, pick a split.

Example:
    >>> ds = open_dataset("prepared")                 # doctest: +SKIP
    >>> x = ds.split_array("train")                   # N x size x size float32, in memory  # doctest: +SKIP
    >>> ds.preprocessing.size                          # doctest: +SKIP
    128
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainae.errors import BrainaeError
from brainae.volume import Preprocessing

REQUIRED = ("slices.npy", "index.csv", "volumes.csv", "settings.json")
SPLITS = ("train", "val", "test")


@dataclass
class PreparedDataset:
    """An opened dataset folder. ``slices`` is memory-mapped (read-only)."""

    path: Path
    slices: np.ndarray
    index: object  # pandas.DataFrame
    volumes: object  # pandas.DataFrame
    settings: dict

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.settings["preprocessing"])

    def split_rows(self, split: str) -> np.ndarray:
        """Row numbers (into ``slices`` and ``index``) of one split."""
        if split not in SPLITS:
            raise BrainaeError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return np.flatnonzero(self.index["split"].to_numpy() == split)

    def split_array(self, split: str) -> np.ndarray:
        """The slices of one split, read into memory as one float32 array (N x size x size)."""
        rows = self.split_rows(split)
        return np.ascontiguousarray(self.slices[rows], dtype=np.float32)


def open_dataset(path: str | Path) -> PreparedDataset:
    """Open and check a prepared dataset folder.

    Raises:
        BrainaeError: the folder is missing or incomplete, or its files disagree.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_dir():
        raise BrainaeError(
            f"{path}: no such dataset folder; make one with `brainae prepare DIR --out {path}`"
        )
    missing = [f for f in REQUIRED if not (path / f).is_file()]
    if missing:
        raise BrainaeError(
            f"{path}: incomplete dataset (missing {', '.join(missing)}); re-run `brainae prepare ... --out {path} --force`"
        )
    try:
        settings = json.loads((path / "settings.json").read_text())
        slices = np.load(path / "slices.npy", mmap_mode="r")
        index = pd.read_csv(path / "index.csv")
        volumes = pd.read_csv(path / "volumes.csv")
    except Exception as exc:
        raise BrainaeError(
            f"{path}: unreadable dataset file ({type(exc).__name__}: {str(exc)[:100]}); "
            "re-run `brainae prepare ... --force`"
        ) from None
    if slices.ndim != 3 or slices.shape[1] != slices.shape[2]:
        raise BrainaeError(f"{path / 'slices.npy'}: expected N x size x size, found {slices.shape}")
    if len(index) != slices.shape[0]:
        raise BrainaeError(
            f"{path}: index.csv has {len(index)} rows but slices.npy has {slices.shape[0]} slices; "
            "re-run `brainae prepare ... --force`"
        )
    if "preprocessing" not in settings:
        raise BrainaeError(f"{path / 'settings.json'}: no 'preprocessing' section; re-run `brainae prepare`")
    return PreparedDataset(path=path, slices=slices, index=index, volumes=volumes, settings=settings)
