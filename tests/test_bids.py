"""Tests of brainae.bids and of the apply commands on a BIDS dataset: derivatives whose every name and sidecar
follows BIDS (checked against the derivatives patterns), and the inputs left as they were."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from brainae import __version__
from brainae.bids import derivative_name, find_t1w, flat_entities, is_bids, parse_entities
from brainae.cli import app
from brainae.errors import BrainaeError
from conftest import make_bids, synthetic_head, write_volume

runner = CliRunner()
LABEL = r"[a-zA-Z0-9]+"
ENTS = rf"sub-(?P<sub>{LABEL})(?:_ses-(?P<ses>{LABEL}))?(?:_acq-{LABEL})?(?:_ce-{LABEL})?(?:_rec-{LABEL})?(?:_run-[0-9]+)?"
#: BIDS derivatives of an anat image: the raw entities in order, then desc, then the suffix (T1w or mask).
DERIVATIVE = re.compile(
    rf"^sub-(?P<dsub>{LABEL})/(?:ses-(?P<dses>{LABEL})/)?anat/{ENTS}_desc-{LABEL}_(?:T1w|mask)\.(?:nii\.gz|json)$"
)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _check_derivatives(deriv: Path, bids: Path) -> list[str]:
    """Every file of ``deriv`` has a BIDS derivative name; returns the image names."""
    desc = json.loads((deriv / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["BIDSVersion"]
    assert desc["GeneratedBy"][0]["Name"] == "brainae" and desc["GeneratedBy"][0]["Version"] == __version__
    images = []
    for rel in _tree(deriv):
        if rel == "dataset_description.json":
            continue
        m = DERIVATIVE.match(rel)
        assert m, f"not a BIDS derivative name: {rel}"
        assert m["dsub"] == m["sub"] and m["dses"] == m["ses"], rel  # the folders match the name
        if rel.endswith(".nii.gz"):
            images.append(rel)
            side = json.loads((deriv / rel.replace(".nii.gz", ".json")).read_text())  # every image has one
            assert side["Description"] and side["Settings"] and side["Model"]["Name"]
            (source,) = side["Sources"]
            assert source.startswith("bids:raw:") and (bids / source[len("bids:raw:") :]).is_file()
            assert parse_entities(Path(source).name) == {
                k: v for k, v in m.groupdict().items() if k in ("sub", "ses") and v
            }
    return images


def test_names_entities_and_discovery(tmp_path):
    assert parse_entities("sub-01_ses-2_run-1_T1w.nii.gz") == {"sub": "01", "ses": "2", "run": "1"}
    assert derivative_name({"run": "1", "sub": "01", "ses": "2"}, desc="denoised", suffix="T1w") == (
        "sub-01/ses-2/anat/sub-01_ses-2_run-1_desc-denoised_T1w.nii.gz"
    )
    assert flat_entities("IXI002-Guys-0828_T1.nii.gz") == {"sub": "IXI002Guys0828T1"}
    with pytest.raises(BrainaeError, match="not a BIDS T1w file name"):
        parse_entities("sub-01_T2w.nii.gz")
    with pytest.raises(BrainaeError, match="letters and digits"):
        derivative_name({"sub": "01"}, desc="de-noised", suffix="T1w")
    bids = make_bids(tmp_path / "bids")
    assert is_bids(bids) and not is_bids(tmp_path)
    assert [s.path.relative_to(bids).as_posix() for s in find_t1w(bids)] == [
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz",
        "sub-02/ses-2/anat/sub-02_ses-2_T1w.nii.gz",
        "sub-03/anat/sub-03_T1w.nii.gz",
    ]
    wrong = bids / "sub-03" / "anat" / "sub-04_T1w.nii.gz"
    write_volume(wrong, synthetic_head())
    with pytest.raises(BrainaeError, match="its name says sub-04 but it is in sub-03"):
        find_t1w(bids)


def test_denoise_and_anomaly_write_bids_derivatives(tmp_path):
    bids = make_bids(tmp_path / "bids")
    before = _tree(bids)
    res = runner.invoke(app, ["denoise", str(bids), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "4 scans, 4 written, 0 skipped" in res.output
    res = runner.invoke(
        app, ["anomaly", str(bids), "--model", "anomaly", "--mask-method", "threshold", "--device", "cpu"]
    )
    assert res.exit_code == 0, res.output
    deriv = bids / "derivatives" / "brainae"
    images = _check_derivatives(deriv, bids)
    for scan in ("sub-01", "sub-02_ses-1", "sub-02_ses-2", "sub-03"):
        for kind in (
            "desc-denoised_T1w",
            "desc-anomaly_T1w",
            "desc-anomalycalibrated_T1w",
            "desc-anomaly_mask",
        ):
            assert sum(i.endswith(f"/{scan}_{kind}.nii.gz") for i in images) == 1, (scan, kind)
    side = json.loads((deriv / "sub-02/ses-2/anat/sub-02_ses-2_desc-anomaly_T1w.json").read_text())
    assert side["Model"]["Task"] == "anomaly" and side["Settings"]["fpr"] == 0.01
    assert set(side["Scores"]) >= {"score", "z", "flagged_fraction"}
    assert {
        k: v for k, v in _tree(bids).items() if not k.startswith("derivatives/")
    } == before  # inputs as they were


def test_bids_out_for_a_flat_folder_and_a_foreign_derivatives_folder(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(2):
        write_volume(flat / f"IXI{100 + i}-HH-{1000 + i}_T1.nii.gz", synthetic_head(seed=i))
    out = tmp_path / "deriv"
    res = runner.invoke(
        app,
        [
            "anomaly",
            str(flat),
            "--model",
            "anomaly",
            "--bids-out",
            str(out),
            "--mask-method",
            "threshold",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (out / "sub-IXI100HH1000T1" / "anat" / "sub-IXI100HH1000T1_desc-anomaly_T1w.nii.gz").is_file()
    side = json.loads((out / "sub-IXI101HH1001T1/anat/sub-IXI101HH1001T1_desc-anomaly_T1w.json").read_text())
    assert side["Sources"] == [(flat / "IXI101-HH-1001_T1.nii.gz").resolve().as_uri()]
    other = tmp_path / "fmriprep"
    other.mkdir()
    (other / "dataset_description.json").write_text(json.dumps({"GeneratedBy": [{"Name": "fMRIPrep"}]}))
    res = runner.invoke(
        app,
        ["anomaly", str(flat), "--model", "anomaly", "--bids-out", str(other), "--mask-method", "threshold"],
    )
    assert res.exit_code == 1 and "brainae did not write" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_a_single_file_with_shard_is_a_one_line_error(tmp_path):
    f = write_volume(tmp_path / "a.nii.gz", synthetic_head())
    res = runner.invoke(app, ["denoise", str(f), str(tmp_path / "o.nii.gz"), "--shard", "1/2"])
    assert res.exit_code == 1 and "not one file" in res.output
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    res = runner.invoke(app, ["denoise", str(tmp_path), str(tmp_path / "out"), "--shard", "3/2"])
    assert res.exit_code == 1 and "1 <= K <= N" in res.output
    assert hashlib.sha256(f.read_bytes()).hexdigest() == digest


def test_inspect_and_prepare_take_a_bids_dataset_with_its_participants(tmp_path):
    sessions = {f"{i:02d}": [None] for i in range(1, 9)} | {"09": ["1", "2"]}
    bids = make_bids(tmp_path / "bids", sessions=sessions)
    res = runner.invoke(app, ["inspect", str(bids), "--out", str(tmp_path / "insp")])
    assert res.exit_code == 0, res.output
    table = (tmp_path / "insp" / "inspect.csv").read_text()
    assert "sub-09_ses-2_T1w.nii.gz" in table and "same subject as sub-09_ses-1_T1w.nii.gz" in table
    args = ["prepare", str(bids), "--out", str(tmp_path / "ds"), "--size", "32", "--mask-method", "threshold"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    import pandas as pd

    vols = pd.read_csv(tmp_path / "ds" / "volumes.csv")
    assert sorted(vols["subject_id"]) == [f"sub-{i:02d}" for i in range(1, 10)]  # one volume per subject
    tsv = pd.read_csv(bids / "participants.tsv", sep="\t").set_index("participant_id")
    got = vols.set_index("subject_id")
    assert (got["age"] == tsv.loc[got.index, "age"]).all() and (got["sex"] == tsv.loc[got.index, "sex"]).all()
    settings = json.loads((tmp_path / "ds" / "settings.json").read_text())
    assert json.dumps(settings).count("participants.tsv") >= 1


def test_shard_into_the_input_folder_or_over_foreign_files_is_refused(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(2):
        write_volume(folder / f"s{i}.nii.gz", synthetic_head(seed=i))
    before = _tree(folder)
    res = runner.invoke(app, ["denoise", str(folder), str(folder), "--shard", "1/1"])
    assert res.exit_code == 1 and "is the input folder" in res.output
    out = tmp_path / "out"
    out.mkdir()
    write_volume(out / "s0.nii.gz", synthetic_head(seed=5))  # a file of the user's, where an output would go
    res = runner.invoke(app, ["denoise", str(folder), str(out), "--shard", "1/1"])
    assert res.exit_code == 1 and "was not written by brainae" in res.output and "Traceback" not in res.output
    assert _tree(folder) == before


def test_inpaint_a_bids_dataset_with_a_mask_tree(tmp_path):
    import numpy as np

    bids = make_bids(tmp_path / "bids")
    masks = tmp_path / "masks"
    for scan in find_t1w(bids):
        m = np.zeros((40, 40, 30), np.uint8)
        m[18:22, 18:22, 12:16] = 1
        (masks / scan.path.relative_to(bids)).parent.mkdir(parents=True, exist_ok=True)
        write_volume(masks / scan.path.relative_to(bids), m)
    res = runner.invoke(app, ["inpaint", str(bids), str(masks), "--model", "biharmonic", "--shard", "1/2"])
    assert res.exit_code == 0, res.output
    assert "shard 1/2 of" in res.output and "2 scans, 2 written, 0 skipped" in res.output
    deriv = bids / "derivatives" / "brainae"
    images = _check_derivatives(deriv, bids)
    assert sorted(images) == [
        "sub-01/anat/sub-01_desc-inpainted_T1w.nii.gz",
        "sub-02/ses-2/anat/sub-02_ses-2_desc-inpainted_T1w.nii.gz",
    ]
    side = json.loads((deriv / "sub-01/anat/sub-01_desc-inpainted_T1w.json").read_text())
    assert side["Settings"]["mask"].endswith("sub-01/anat/sub-01_T1w.nii.gz")
