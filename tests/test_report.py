"""The HTML report: every section id, self-contained, builds from a tiny evaluation and partial inputs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainae.errors import BrainaeError
from brainae.evaluate import evaluate
from brainae.report import SECTIONS, build_report
from brainae.stats import run_stats
from conftest import make_checkpoint, make_dataset


def _run(path: Path, name: str) -> Path:
    run = path / name
    run.mkdir(parents=True)
    epochs = np.arange(1, 6)
    pd.DataFrame(
        {
            "epoch": epochs,
            "train_loss": 0.01 / epochs,
            "val_loss": 0.012 / epochs,
            "val_mse": 0.012 / epochs,
            "val_dssim": 0.05 / epochs,
            "val_psnr": 20 + epochs,
            "lr": 1e-3,
        }
    ).to_csv(run / "metrics.csv", index=False)
    (run / "config.json").write_text('{"arch": "skip-cae", "loss": "mse", "l2": 0.0, "augment": true}')
    return run


def test_report_full(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    pd.DataFrame(
        {"volume_id": ["a", "b"], "slice": [1, 2], "keep_nonzero_count": [1, 0], "keep_brain_mask": [1, 1]}
    ).to_csv(data / "selection.csv", index=False)
    pd.DataFrame({"split": ["train", "test"], "n": [2, 3]}).to_csv(data / "split.csv", index=False)
    runs = tmp_path / "runs"
    ck = make_checkpoint(_run(runs, "r1") / "best.safetensors")
    _run(runs, "r2")
    ev = evaluate([ck], data, tmp_path / "eval", conditions="clean,noise-0.04,blank-20", n_examples=2)
    run_stats(ev)
    out = build_report([data, runs, ev], tmp_path / "report.html")
    text = out.read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in text
    assert 'src="http' not in text and 'href="http' not in text and "<link" not in text
    assert len(re.findall(r'src="data:image/png;base64,', text)) >= 6
    assert "r1" in text and "identity" in text and "biharmonic" in text and "p_volume_holm" in text
    assert "No paired tests" not in text
    assert "custom corruption" in text  # the combined example condition


def test_report_partial_inputs(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _run(runs, "r1")
    out = build_report([runs / "r1"], tmp_path / "r.html", title="only <curves>")
    text = out.read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in text
    assert "No evaluation folder" in text and "No paired tests" in text and "only &lt;curves&gt;" in text
    with pytest.raises(BrainaeError, match="no such folder"):
        build_report([tmp_path / "missing"], tmp_path / "x.html")


def test_cli_report(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from brainae.cli import app

    runs = tmp_path / "runs"
    _run(runs, "r1")
    res = CliRunner().invoke(app, ["report", str(runs), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r.html").is_file()
