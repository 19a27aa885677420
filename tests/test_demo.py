from __future__ import annotations

import json

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

from brainae.cli import app


def test_demo_runs_end_to_end_in_quick_mode(tmp_path):
    out = tmp_path / "demo"
    r = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "Report:" in r.output and "denoised" in r.output
    # each long step reports its progress in a log (CliRunner is not a terminal) and says when it is done
    for step in ("measuring slices: ", "evaluating: "):
        assert any(ln.startswith(step) and " done in " in ln for ln in r.output.splitlines()), r.output
    html = (out / "report.html").read_text()
    assert "<section" in html and 'src="http' not in html
    assert (
        "No inspect.csv" not in html and "Inspected volumes" in html
    )  # the demo makes what its report reads
    assert "demo-skip-cae-mse-1-epoch" in html and "too few volumes" in html.lower()  # 1 test volume
    for part in (
        "dataset/slices.npy",
        "demo-skip-cae-mse-1-epoch/best.safetensors",
        "inspect/inspect.csv",
        "eval/summary.csv",
        "stats/stats.csv",
    ):
        assert (out / part).is_file(), part
    noisy, den = nib.load(str(out / "denoise/noisy.nii.gz")), nib.load(str(out / "denoise/denoised.nii.gz"))
    assert noisy.shape == den.shape == (120, 120, 90) and np.allclose(noisy.affine, den.affine)
    facts = json.loads((out / "demo.json").read_text())
    assert facts["quick"] and facts["denoise"]["slices_processed"] > 0
    assert (
        facts["denoise"]["psnr_denoised_db"] > facts["denoise"]["psnr_noisy_db"]
    )  # brainae's denoiser helps
    assert (out / "denoise/denoised_run.nii.gz").is_file()
    # a second run into the same demo folder replaces it; a foreign folder is refused
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    r = CliRunner().invoke(app, ["demo", "--quick", "--out", str(other)])
    assert r.exit_code == 1 and "not a brainae demo folder" in r.output
    assert (other / "keep.txt").read_text() == "x"
