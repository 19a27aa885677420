from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainae.cohort import age_group, match_demographics, read_demographics
from brainae.errors import BrainaeError
from brainae.split import stratified_split
from conftest import IXI_2MM


@pytest.mark.data("ixi-t1-2mm")
def test_read_real_ixi_xls():
    t = read_demographics(IXI_2MM / "IXI.xls")
    assert t["key"].is_unique  # duplicated IXI_IDs merged
    assert 560 < len(t) < 619
    assert set(t["sex"].dropna()) == {"M", "F"}
    assert set(t["ethnicity"].dropna()) == {"white", "other"}
    files = sorted(IXI_2MM.glob("*.nii.gz"))
    m = match_demographics(files, t, "IXI.xls")
    assert m["age"].notna().all() and m["sex"].notna().all()


@pytest.mark.data("ixi-t1-2mm")
def test_participants_csv_matches_by_subject(tmp_path):
    t = read_demographics(IXI_2MM / "participants.csv")
    files = [Path("IXI443-HH-2215_T1.nii.gz"), Path("IXI999-XX-0000_T1.nii.gz")]
    m = match_demographics(files, t, "participants.csv")
    assert m.loc[0, "sex"] == "M" and m.loc[0, "age_group"] == "elderly" and pd.isna(m.loc[1, "age"])


def test_demographics_matching_nothing_is_an_error(tmp_path):
    p = tmp_path / "p.tsv"
    p.write_text("participant_id\tage\tsex\nsub-99\t30\tF\n")
    t = read_demographics(p)
    with pytest.raises(BrainaeError, match="none of its IDs matches"):
        match_demographics([Path("IXI001-HH-0001-T1.nii.gz")], t, p)
    q = tmp_path / "q.csv"
    q.write_text("name,age\nx,3\n")
    with pytest.raises(BrainaeError, match="no ID column"):
        read_demographics(q)


def test_age_groups():
    assert [age_group(a) for a in (10, 25, 64.9, 65, None)] == ["young", "adult", "adult", "elderly", None]


def _table(n=200, seed=0):
    rng = np.random.default_rng(seed)
    t = pd.DataFrame(
        {
            "subject_id": [
                f"s{i // 2 if i < 20 else i}" for i in range(n)
            ],  # first 10 subjects have 2 volumes
            "sex": rng.choice(["M", "F"], n),
            "age_group": rng.choice(["young", "adult", "elderly"], n, p=[0.1, 0.7, 0.2]),
            "ethnicity": rng.choice(["white", "other"], n, p=[0.8, 0.2]),
        }
    )
    t.loc[190:, ["sex", "age_group", "ethnicity"]] = None  # no metadata
    return t


def test_split_by_subject_stratified_and_seeded():
    t = _table()
    s = stratified_split(t, val=0.14, test=0.08, seed=3)
    assert (s.groupby(t["subject_id"]).nunique() == 1).all()  # no subject in two splits
    assert (s[190:] == "train").all()  # no metadata -> train
    assert s.equals(stratified_split(t, val=0.14, test=0.08, seed=3))
    assert not s.equals(stratified_split(t, val=0.14, test=0.08, seed=4))
    subj = t.assign(split=s).groupby("subject_id").first().iloc[:-10]
    for col in ("sex", "age_group"):
        overall = subj[col].value_counts(normalize=True)
        for part in ("train", "val"):
            frac = subj[subj["split"] == part][col].value_counts(normalize=True)
            assert (frac - overall).abs().max() < 0.1, (col, part)
    counts = subj["split"].value_counts(normalize=True)
    assert counts["val"] == pytest.approx(0.14, abs=0.02) and counts["test"] == pytest.approx(0.08, abs=0.02)


def test_small_cohorts_get_every_split():
    t = pd.DataFrame(
        {
            "subject_id": list("abcde"),
            "sex": list("MFMFM"),
            "age_group": ["adult"] * 5,
            "ethnicity": [None] * 5,
        }
    )
    assert set(stratified_split(t, seed=0)) == {"train", "val", "test"}
