from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from brainae.cli import app
from brainae.dataset import open_dataset
from brainae.errors import BrainaeError, BrainaeWarning
from brainae.prepare import PrepareConfig, inspect_folder, prepare
from conftest import synthetic_head, write_volume

runner = CliRunner()
CFG = dict(size=32, mask_method="threshold")


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_prepare_writes_a_complete_dataset(cohort, tmp_path):
    before = _digest(cohort)
    out = tmp_path / "ds"
    res = prepare(
        cohort, out, PrepareConfig.from_options(demographics=str(tmp_path / "participants.csv"), **CFG)
    )
    assert _digest(cohort) == before  # inputs never written
    ds = open_dataset(out)
    assert ds.slices.shape == (res.n_slices, 32, 32) and ds.slices.dtype == np.float32
    assert 0 <= float(ds.slices.min()) and float(ds.slices.max()) <= 1
    assert len(ds.index) == res.n_slices == int(ds.volumes["n_kept"].sum())
    # no volume in two splits, every split present, demographics carried
    assert (ds.index.groupby("volume_id")["split"].nunique() == 1).all()
    assert set(ds.volumes["split"]) == {"train", "val", "test"}
    assert ds.volumes["sex"].notna().all()
    # the empty sagittal slices (5 at each end) are never kept
    assert ds.index["slice"].between(5, 24).all()
    settings = json.loads((out / "settings.json").read_text())
    assert settings["preprocessing"]["profile"] == "sagittal" and settings["preprocessing"]["size"] == 32
    assert settings["version"] and settings["select"]["method"] == "brain-mask"
    sel = pd.read_csv(out / "selection.csv")
    assert len(sel) == 8 * 30 and {"keep_brain_mask", "keep_nonzero_count", "keep_nonzero_mean"} <= set(sel)
    for fig in ("selection_counts.png", "selection_montage.png", "split.png"):
        assert (out / "figures" / fig).stat().st_size > 1000


def test_rerun_is_a_no_op_and_other_settings_need_force(cohort, tmp_path):
    out = tmp_path / "ds"
    prepare(cohort, out, PrepareConfig.from_options(**CFG))
    stamp = (out / "slices.npy").stat().st_mtime_ns
    assert prepare(cohort, out, PrepareConfig.from_options(**CFG)).reused
    assert (out / "slices.npy").stat().st_mtime_ns == stamp
    with pytest.raises(BrainaeError, match="--force"):
        prepare(cohort, out, PrepareConfig.from_options(select="nonzero-mean", **CFG))
    res = prepare(cohort, out, PrepareConfig.from_options(select="nonzero-mean", **CFG), force=True)
    assert (
        not res.reused
        and json.loads((out / "settings.json").read_text())["select"]["method"] == "nonzero-mean"
    )


@pytest.mark.parametrize("method", ["brain-mask", "nonzero-count", "nonzero-mean"])
def test_each_selection_method(cohort, tmp_path, method):
    res = prepare(cohort, tmp_path / method, PrepareConfig.from_options(select=method, **CFG))
    idx = open_dataset(tmp_path / method).index
    assert res.n_slices > 0 and idx["slice"].between(5, 24).all()


def test_broken_inputs_are_skipped_with_warnings(cohort, tmp_path):
    (cohort / "IXI900-HH-9000-T1.nii.gz").write_bytes(b"\x1f\x8b garbage")
    nib.save(
        nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.float32), np.eye(4)), str(cohort / "IXI901-HH-9001-T1.nii")
    )
    bad = synthetic_head().astype(np.float32)
    bad[0, 0, 0] = np.nan
    write_volume(cohort / "IXI902-HH-9002-T1.nii.gz", bad)
    write_volume(cohort / "IXI100-HH-1000-T1-repeat.nii.gz", synthetic_head())  # duplicated subject
    with pytest.warns(Warning) as record:
        res = prepare(cohort, tmp_path / "ds", PrepareConfig.from_options(**CFG))
    text = " ".join(str(w.message) for w in record)
    for name in ("IXI900", "IXI901", "IXI902", "IXI100-HH-1000-T1-repeat"):
        assert name in text
    assert res.n_volumes == 8 and len(res.skipped) == 4
    table = inspect_folder(cohort)
    status = dict(zip(table["file"], table["status"]))
    assert status["IXI900-HH-9000-T1.nii.gz"] == "unreadable"
    assert status["IXI901-HH-9001-T1.nii"] == "not-3d"
    assert status["IXI902-HH-9002-T1.nii.gz"] == "nan"
    pair = {status["IXI100-HH-1000-T1-repeat.nii.gz"], status["IXI100-HH-1000-T1.nii.gz"]}
    assert pair == {"ok", "duplicate"}


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_bad_inputs_one_line_no_traceback(cohort, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["prepare", empty, "--out", tmp_path / "o1"], "no .nii or .nii.gz files"),
        (["prepare", cohort, "--out", tmp_path / "o2", "--select", "otsu"], "unknown selection method"),
        (
            ["prepare", cohort, "--out", tmp_path / "o3", "--demographics", tmp_path / "none.csv"],
            "no such demographics",
        ),
        (["inspect", tmp_path / "missing", "--out", tmp_path / "o4"], "no such folder"),
    ]
    weird = tmp_path / "weird.csv"
    weird.write_text("participant_id,age,sex\nsub-1,30,M\n")
    cases.append(
        (
            [
                "prepare",
                cohort,
                "--out",
                tmp_path / "o5",
                "--demographics",
                weird,
                "--size",
                32,
                "--mask-method",
                "threshold",
            ],
            "none of its IDs matches",
        )
    )
    only_4d = tmp_path / "only4d"
    only_4d.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.float32), np.eye(4)), str(only_4d / "x.nii.gz"))
    cases.append((["prepare", only_4d, "--out", tmp_path / "o6"], "no usable 3-D volume"))
    for args, message in cases:
        r = _cli(*args)
        assert r.exit_code == 1, (args, r.output)
        assert message in r.output and "Traceback" not in r.output, r.output
        assert r.output.count("error:") == 1
    for i in range(1, 7):
        assert not (tmp_path / f"o{i}").exists()  # nothing half-written


def test_cli_inspect_and_prepare(cohort, tmp_path):
    r = _cli("inspect", cohort, "--out", tmp_path / "insp")
    assert r.exit_code == 0, r.output
    table = pd.read_csv(tmp_path / "insp" / "inspect.csv")
    assert len(table) == 8 and (table["axcodes"] == "PSR").all() and (table["shape"] == "40x40x30").all()
    r = _cli("prepare", cohort, "--out", tmp_path / "ds", "--size", 32, "--mask-method", "threshold")
    assert r.exit_code == 0, r.output
    assert "prepared 8 volumes" in r.output
    r = _cli(
        "prepare",
        cohort,
        "--out",
        tmp_path / "ds",
        "--size",
        32,
        "--mask-method",
        "threshold",
        "--workers",
        2,
    )
    assert "nothing to do" in r.output  # the number of workers is not a setting of the dataset
    r = _cli(
        "prepare",
        cohort,
        "--out",
        tmp_path / "ds2",
        "--size",
        32,
        "--mask-method",
        "threshold",
        "--workers",
        2,
    )
    assert r.exit_code == 0, r.output
    for name in ("slices.npy", "index.csv", "volumes.csv", "selection.csv"):
        assert (tmp_path / "ds" / name).read_bytes() == (tmp_path / "ds2" / name).read_bytes(), name


def test_no_brain_extraction_for_the_nonzero_methods(cohort, tmp_path):
    res = prepare(
        cohort,
        tmp_path / "nz",
        PrepareConfig.from_options(select="nonzero-count", size=32, mask_method="none"),
    )
    sel = pd.read_csv(tmp_path / "nz" / "selection.csv")
    assert res.n_slices > 0 and sel["brain_frac"].isna().all() and not sel["keep_brain_mask"].any()
    with pytest.raises(BrainaeError, match="needs brain masks"):
        prepare(
            cohort,
            tmp_path / "bm",
            PrepareConfig.from_options(select="brain-mask", size=32, mask_method="none"),
        )


def test_skull_strip_zeroes_outside_the_brain_and_is_recorded(cohort, tmp_path):
    import dataclasses

    from brainae.apply import skull_strip_for
    from brainae.io import load_volume
    from brainae.volume import Preprocessing

    base = dict(select="brain-mask", size=32, mask_method="threshold")
    plain = prepare(cohort, tmp_path / "plain", PrepareConfig.from_options(**base))
    stripped = prepare(cohort, tmp_path / "stripped", PrepareConfig.from_options(**base, skull_strip=True))
    a, b = open_dataset(plain.path), open_dataset(stripped.path)
    assert b.settings["preprocessing"]["skull_strip"] is True
    assert a.settings["preprocessing"]["skull_strip"] is False
    # the scalp shell is gone: fewer non-zero pixels in every kept slice
    assert (np.asarray(b.slices) > 0).mean() < (np.asarray(a.slices) > 0).mean()
    with pytest.raises(BrainaeError, match="--skull-strip needs brain masks"):
        PrepareConfig.from_options(select="nonzero-mean", mask_method="none", skull_strip=True).check()

    prep = Preprocessing.from_dict(b.settings["preprocessing"])
    assert prep.skull_strip
    vol = load_volume(sorted(cohort.glob("*.nii.gz"))[0])
    out = skull_strip_for(vol, prep, brain_mask=vol.data >= 60)  # the synthetic brain, not its scalp
    assert (out.data > 0).sum() < (vol.data > 0).sum()
    assert out.data is not vol.data and vol.data.max() > 0  # input untouched
    again = skull_strip_for(out, prep, method="threshold")  # small, constant background: taken as stripped
    np.testing.assert_array_equal(again.data, out.data)  # an already stripped volume is used as it is
    assert skull_strip_for(vol, dataclasses.replace(prep, skull_strip=False)) is vol


@pytest.mark.data("ixi-t1-2mm")
def test_workers_give_a_byte_identical_dataset(tmp_path):
    """prepare --workers 2 on real IXI volumes == one process, file for file (figures included)."""
    from conftest import IXI_2MM

    cohort = tmp_path / "ixi"
    cohort.mkdir()
    for f in sorted(IXI_2MM.glob("*.nii.gz"))[:4]:
        (cohort / f.name).symlink_to(f)
    cfg = PrepareConfig.from_options(size=64, mask_method="threshold", val=0.25, test=0.25)
    with pytest.warns(BrainaeWarning):  # no demographics: a random split (the same in both runs)
        one = prepare(cohort, tmp_path / "one", cfg)
        two = prepare(cohort, tmp_path / "two", cfg, workers=2)
    assert one.n_slices == two.n_slices > 0 and one.n_volumes == 4
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert Path("slices.npy") in files and Path("settings.json") in files
    for rel in files:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes(), rel


def test_screen_uses_typed_volume_problems(tmp_path):
    from brainae.io import VolumeError, load_volume
    from brainae.prepare import screen

    four_d = tmp_path / "IXI901-HH-9001-T1.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.float32), np.eye(4)), str(four_d))
    junk = tmp_path / "IXI900-HH-9000-T1.nii.gz"
    junk.write_bytes(b"\x1f\x8b garbage")
    good = write_volume(tmp_path / "IXI100-HH-1000-T1.nii.gz", synthetic_head())
    nan = synthetic_head().astype(np.float32)
    nan[0, 0, 0] = np.nan
    with pytest.raises(VolumeError) as info:
        load_volume(write_volume(tmp_path / "nan.nii.gz", nan))
    assert info.value.kind == "nan"
    with pytest.warns(BrainaeWarning, match="4-D image"):
        screened = screen([four_d, junk, good])
    assert list(screened.headers) == [good] and screened.skipped == [four_d.name, junk.name]
    kinds = inspect_folder(tmp_path).set_index("file")["status"]
    assert (
        kinds[four_d.name] == "not-3d" and kinds[junk.name] == "unreadable" and kinds["nan.nii.gz"] == "nan"
    )


def test_config_holds_one_preprocessing_and_saves_the_flat_options():
    from brainae.volume import Preprocessing

    cfg = PrepareConfig.from_options(size=64, profile="axial", fov_mm=240.0, scaling="volume-minmax")
    assert cfg.preprocessing == Preprocessing("axial", 64, 240.0, "volume-minmax")
    assert not cfg.auto_profile and cfg.fov == "fixed"
    flat = cfg.to_dict()
    assert flat["profile"] == "axial" and flat["fov_mm"] == 240.0 and flat["fov"] == "cohort"
    assert PrepareConfig().to_dict()["profile"] == "auto" and PrepareConfig().to_dict()["fov_mm"] is None
    with pytest.raises(BrainaeError, match="unknown profile"):
        PrepareConfig.from_options(profile="oblique")
