"""Evaluation tables: metrics, baselines, determinism, recomputation of one row, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from brainae.corrupt import CONDITIONS
from brainae.errors import BrainaeError
from brainae.evaluate import (
    baseline_applies,
    check_preprocessing,
    corrupt_rows,
    estimate_noise_sigma,
    evaluate,
    model_names,
    resolve_conditions,
    row_seed,
)
from brainae.metrics import dssim, mse, psnr
from brainae.models import build_model
from conftest import SLICE_PREP, make_checkpoint, make_dataset

SIZE = 32
PREP = SLICE_PREP


# ------------------------------------------------------------------------------------------- metrics


def test_metrics_match_numpy_references() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((3, SIZE, SIZE))
    y = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1)
    ref_mse = ((x - y) ** 2).mean(axis=(1, 2))
    np.testing.assert_allclose(mse(x, y).numpy(), ref_mse, rtol=1e-10)
    np.testing.assert_allclose(psnr(x, y).numpy(), 10 * np.log10(1 / ref_mse), rtol=1e-10)
    from skimage.metrics import structural_similarity

    ref_ssim = [
        structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1
        )
        for a, b in zip(x, y, strict=True)
    ]
    np.testing.assert_allclose(dssim(x, y).numpy(), (1 - np.array(ref_ssim)) / 2, atol=1e-6)


def test_row_seed_and_conditions() -> None:
    assert row_seed(0, "noise-0.04", 3) == row_seed(0, "noise-0.04", 3)
    assert (
        len(
            {
                row_seed(0, "noise-0.04", 3),
                row_seed(1, "noise-0.04", 3),
                row_seed(0, "noise-0.02", 3),
                row_seed(0, "noise-0.04", 4),
            }
        )
        == 4
    )
    assert resolve_conditions("clean, noise-0.04,noise-0.04") == ["clean", "noise-0.04"]
    assert resolve_conditions("all")[0] == "clean" and "blank-40" in resolve_conditions("all")
    assert resolve_conditions(["noise-0.03", "blur+blank-20"]) == ["noise-0.03", "blur+blank-20"]
    with pytest.raises(BrainaeError, match="unknown"):
        resolve_conditions("clean,snow-3")
    assert baseline_applies("nlm", "rician-0.04") and not baseline_applies("nlm", "blank-20")
    assert baseline_applies("biharmonic", "blank-20") and not baseline_applies("biharmonic", "clean")


def test_corrupt_rows_is_per_row_deterministic() -> None:
    clean = torch.rand(4, 1, SIZE, SIZE)
    a, _ = corrupt_rows("noise-0.04", clean, [10, 11, 12, 13], seed=0)
    b, _ = corrupt_rows("noise-0.04", clean[2:], [12, 13], seed=0)  # another batching
    torch.testing.assert_close(a[2:], b)
    c, _ = corrupt_rows("noise-0.04", clean, [10, 11, 12, 13], seed=1)
    assert not torch.equal(a, c)
    blanked, mask = corrupt_rows("blank-20", clean, [0, 1, 2, 3], seed=0)
    assert mask is not None and mask.shape == (4, 1, SIZE, SIZE) and mask.any()
    assert torch.all(blanked[torch.from_numpy(mask)] == 0)


def test_noise_sigma_estimate() -> None:
    rng = np.random.default_rng(0)
    assert abs(estimate_noise_sigma(0.5 + rng.normal(0, 0.04, (64, 64))) - 0.04) < 0.005


def test_model_names_unique() -> None:
    names = model_names(
        [
            "r1/best.safetensors",
            "r2/best.safetensors",
            "x/r1.safetensors",
            "r1/last.safetensors",
            "a/identity.safetensors",
            "b/unet.safetensors",
            "c/unet.safetensors",
        ]
    )
    assert names[:4] == ["r1", "r2", "x-r1", "r1-last"]
    assert names[4] == "a-identity"
    assert len(set(names)) == len(names)


# ------------------------------------------------------------------------------------------ evaluate


def test_evaluate_tables(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    ck1 = make_checkpoint(tmp_path / "runs" / "a" / "best.safetensors", seed=0)
    ck2 = make_checkpoint(tmp_path / "runs" / "b" / "best.safetensors", seed=1)
    out = evaluate(
        [ck1, tmp_path / "runs" / "b"],
        data,
        tmp_path / "eval",
        conditions="clean,noise-0.04,blank-20",
        batch_size=5,
        seed=3,
    )
    assert ck2.is_file()
    sl = pd.read_csv(out / "slices.csv", dtype={"volume_id": str})
    assert list(sl.columns) == ["model", "condition", "volume_id", "slice", "row", "mse", "dssim", "psnr"]
    n_test = 12
    counts = sl.groupby(["model", "condition"]).size().to_dict()
    for m in ("a", "b", "identity"):
        for c in ("clean", "noise-0.04", "blank-20"):
            assert counts[(m, c)] == n_test
    assert counts[("nlm", "noise-0.04")] == n_test and ("nlm", "clean") not in counts
    assert counts[("biharmonic", "blank-20")] == n_test and ("biharmonic", "noise-0.04") not in counts
    # identity on clean: MSE exactly 0, PSNR capped at 100 dB
    ident = sl[(sl.model == "identity") & (sl.condition == "clean")]
    assert (ident.mse == 0).all() and (ident.psnr == 100).all()
    vol = pd.read_csv(out / "volumes.csv")
    assert len(vol[(vol.model == "a") & (vol.condition == "clean")]) == 3
    summ = pd.read_csv(out / "summary.csv")
    row = summ[(summ.model == "a") & (summ.condition == "noise-0.04")].iloc[0]
    sub = sl[(sl.model == "a") & (sl.condition == "noise-0.04")]
    assert row.n == n_test and row.n_volumes == 3 and row.kind == "model"
    assert np.isclose(row.mse_mean, sub.mse.mean()) and np.isclose(row.psnr_std, sub.psnr.std(ddof=1))
    # inpainting beats doing nothing on the blanked squares
    bih = summ[(summ.model == "biharmonic") & (summ.condition == "blank-20")].mse_mean.iloc[0]
    idn = summ[(summ.model == "identity") & (summ.condition == "blank-20")].mse_mean.iloc[0]
    assert bih < idn
    prov = json.loads((out / "provenance.json").read_text())
    assert [m["name"] for m in prov["models"]] == ["a", "b"]
    assert len(prov["models"][0]["sha256"]) == 64 and prov["seed"] == 3
    assert prov["dataset"]["settings"]["preprocessing"]["size"] == SIZE
    ex = np.load(out / "examples.npz")
    assert ex["outputs"].shape[:2] == (5, 4) and ex["inputs"].shape[0] == 4  # 3 conditions + combined
    assert ex["target"].shape[1:] == (SIZE, SIZE)
    with pytest.raises(BrainaeError, match="already exists"):
        evaluate([ck1], data, out)


def test_determinism_and_one_row_recomputed(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    ck = make_checkpoint(tmp_path / "m.safetensors")
    kw = {"conditions": ["noise-0.04", "dropout-0.05"], "seed": 7, "baselines": ["identity"], "n_examples": 0}
    e1 = evaluate([ck], data, tmp_path / "e1", batch_size=3, **kw)
    e2 = evaluate([ck], data, tmp_path / "e2", batch_size=64, **kw)
    t1, t2 = pd.read_csv(e1 / "slices.csv"), pd.read_csv(e2 / "slices.csv")
    pd.testing.assert_frame_equal(t1, t2)  # batch size does not matter

    # one row by hand, exactly as the module docstring says
    pick = t1[(t1.model == "m") & (t1.condition == "noise-0.04")].iloc[5]
    r = int(pick.row)
    clean = torch.from_numpy(np.load(data / "slices.npy")[[r]]).unsqueeze(1)
    g = torch.Generator().manual_seed(row_seed(7, "noise-0.04", r))
    noisy, _ = CONDITIONS["noise-0.04"](clean, g)
    from brainae.checkpoint import load_checkpoint

    model, _ = load_checkpoint(ck)
    with torch.no_grad():
        out = model(noisy)
    np.testing.assert_allclose(float(((out - clean) ** 2).mean()), pick.mse, rtol=1e-5)
    np.testing.assert_allclose(float(dssim(out, clean)[0]), pick.dssim, rtol=1e-5, atol=1e-7)
    ident = t1[(t1.model == "identity") & (t1.condition == "noise-0.04") & (t1.row == r)].iloc[0]
    np.testing.assert_allclose(float(((noisy - clean) ** 2).mean()), ident.mse, rtol=1e-6)


def test_two_models_see_identical_corruptions(tmp_path: Path) -> None:
    """Two copies of one checkpoint under different names give identical rows."""
    data = make_dataset(tmp_path / "data", volumes={"test": 2})
    ck = make_checkpoint(tmp_path / "x" / "m.safetensors")
    ck2 = tmp_path / "y" / "m.safetensors"
    ck2.parent.mkdir()
    ck2.write_bytes(ck.read_bytes())
    out = evaluate(
        [ck, ck2], data, tmp_path / "e", conditions="noise-0.08,blank-40", baselines=[], n_examples=2
    )
    sl = pd.read_csv(out / "slices.csv")
    assert set(sl.model) == {"m", "y-m"}
    a = sl[sl.model == "m"].drop(columns="model").reset_index(drop=True)
    b = sl[sl.model == "y-m"].drop(columns="model").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_identity_psnr_matches_gaussian_noise(tmp_path: Path) -> None:
    """Mid-grey images (no clipping at 0.5 +- 12 sd): identity PSNR = -10 log10(0.04^2) = 27.96 dB."""
    data = make_dataset(tmp_path / "data", volumes={"test": 4}, grey=True, size=64)
    out = evaluate([], data, tmp_path / "e", conditions="noise-0.04", baselines=["identity"], n_examples=0)
    summ = pd.read_csv(out / "summary.csv").iloc[0]
    assert abs(summ.psnr_mean - (-10 * np.log10(0.04**2))) < 0.1
    assert abs(summ.mse_mean - 0.0016) < 0.0001


def test_trained_denoiser_beats_identity(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", volumes={"train": 4, "test": 2})
    train = torch.from_numpy(np.load(data / "slices.npy")[:16]).unsqueeze(1)
    torch.manual_seed(0)
    model = build_model("skip-cae", latent_channels=8)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(150):
        noisy, _ = CONDITIONS["noise-0.04"](train, g)
        loss = ((model(noisy) - train) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    # batch-norm statistics of the final weights (a short run leaves the running averages behind)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        for _ in range(3):
            model(CONDITIONS["noise-0.04"](train, g)[0])
    ck = make_checkpoint(tmp_path / "denoiser.safetensors", model=model.eval())
    out = evaluate([ck], data, tmp_path / "e", conditions="noise-0.04", baselines=["identity"], n_examples=0)
    summ = pd.read_csv(out / "summary.csv").set_index("model")
    assert summ.loc["denoiser", "mse_mean"] < summ.loc["identity", "mse_mean"]
    assert summ.loc["denoiser", "psnr_mean"] > summ.loc["identity", "psnr_mean"]


def test_errors(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    ck = make_checkpoint(tmp_path / "m.safetensors")
    with pytest.raises(BrainaeError, match="unknown condition"):
        evaluate([ck], data, tmp_path / "e1", conditions="clean,snow")
    empty = make_dataset(tmp_path / "empty", volumes={"train": 1})
    with pytest.raises(BrainaeError, match="split is empty"):
        evaluate([ck], empty, tmp_path / "e2")
    big = make_dataset(tmp_path / "big", volumes={"test": 1}, size=64)
    with pytest.raises(BrainaeError, match="size"):
        evaluate([ck], big, tmp_path / "e3")
    axial = make_dataset(tmp_path / "axial", prep={**PREP, "profile": "axial"})
    with pytest.raises(BrainaeError, match="profile"):
        evaluate([ck], axial, tmp_path / "e4")
    with pytest.raises(BrainaeError, match="no such checkpoint"):
        evaluate([tmp_path / "nope.safetensors"], data, tmp_path / "e5")
    with pytest.raises(BrainaeError, match="unknown baseline"):
        evaluate([ck], data, tmp_path / "e6", baselines=["bm3d"])
    assert not any((tmp_path / f"e{i}").exists() for i in range(1, 7))
    with pytest.raises(BrainaeError, match="scaling"):
        check_preprocessing({**PREP, "scaling": "volume-minmax"}, PREP, where="m", size=SIZE)


def test_cli_evaluate_and_stats(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from brainae.cli import app

    data = make_dataset(tmp_path / "data")
    ck = make_checkpoint(tmp_path / "m.safetensors")
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "evaluate",
            str(ck),
            "--data",
            str(data),
            "--conditions",
            "clean,noise-0.04",
            "--out",
            str(tmp_path / "e"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "e" / "summary.csv").is_file()
    res = runner.invoke(
        app, ["evaluate", str(ck), "--data", str(data), "--conditions", "fog", "--out", str(tmp_path / "e2")]
    )
    assert res.exit_code == 1 and "error:" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["stats", str(tmp_path / "e"), "--metric", "mse"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "e" / "stats" / "stats.csv").is_file()


def test_imported_thesis_model_evaluates(tmp_path: Path) -> None:
    """The shipped Keras import (res-unet, 128 x 128) goes through the same command and tables."""
    from brainae.checkpoint import read_checkpoint
    from brainae.pretrained import THESIS_RES_UNET

    prep = read_checkpoint(THESIS_RES_UNET).preprocessing.to_dict()
    data = make_dataset(tmp_path / "data", volumes={"test": 1}, size=128, prep=prep)
    ours = make_checkpoint(tmp_path / "ours.safetensors", prep=prep)
    out = evaluate([THESIS_RES_UNET, ours], data, tmp_path / "e", baselines=["identity"], n_examples=1)
    summ = pd.read_csv(out / "summary.csv")
    assert list(summ.model) == ["thesis-res-unet-mse", "ours", "identity"]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["models"][0]["source"]["type"] == "keras-h5" and prov["models"][0]["arch"] == "res-unet"
    # the thesis model reconstructs clean input far better than a random network
    assert summ.psnr_mean[0] > summ.psnr_mean[1] + 5


def test_baseline_workers_give_identical_rows(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", volumes={"test": 1})
    kw = {"conditions": "noise-0.04,blank-20", "baselines": ["nlm", "biharmonic"], "n_examples": 0}
    one = evaluate([], data, tmp_path / "e1", **kw)
    two = evaluate([], data, tmp_path / "e2", workers=2, **kw)
    pd.testing.assert_frame_equal(pd.read_csv(one / "slices.csv"), pd.read_csv(two / "slices.csv"))


def test_progress_steps_are_batches_times_conditions_and_change_nothing(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")  # 3 test volumes x 4 slices
    ck = make_checkpoint(tmp_path / "m.safetensors")
    seen: list[int] = []

    def progress(steps, total):
        seen.append(total)
        for step in steps:
            seen.append(-1)
            yield step

    kw = dict(conditions="clean,noise-0.04", baselines=["identity"], n_examples=1)
    a = evaluate([ck], data, tmp_path / "a", batch_size=5, progress=progress, **kw)
    assert seen[0] == 3 * 2 and seen.count(-1) == 6  # ceil(12 / 5) batches x 2 conditions
    b = evaluate([ck], data, tmp_path / "b", batch_size=12, **kw)
    assert (a / "slices.csv").read_text() == (b / "slices.csv").read_text()
