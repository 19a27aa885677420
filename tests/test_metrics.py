"""Behaviour of brainae.metrics: SSIM parity with scikit-image / tf.image.ssim, PSNR, MSE, losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from brainae.errors import BrainaeError
from brainae.metrics import (
    METRICS,
    PSNR_CAP_DB,
    cap_psnr,
    dssim,
    make_loss,
    mse,
    per_image,
    psnr,
    psnr_from_mse,
    ssim,
)


def _skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(
        a.astype(np.float64),
        b.astype(np.float64),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
    )


def _smooth_image(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = (
        0.5
        + 0.3 * np.sin(6 * xx + rng.uniform(0, 3)) * np.cos(4 * yy)
        + 0.05 * rng.standard_normal((size, size))
    )
    return np.clip(img, 0, 1)


@pytest.mark.parametrize("size", [11, 24, 64])
def test_ssim_matches_scikit_image(size: int) -> None:
    rng = np.random.default_rng(size)
    x = np.stack([_smooth_image(rng, size) for _ in range(3)] + [rng.random((size, size))])
    y = np.clip(x + rng.normal(0, 0.08, x.shape), 0, 1)
    y[1] = 1 - x[1]  # a very dissimilar pair
    ours = ssim(torch.from_numpy(x).float(), torch.from_numpy(y).float()).numpy()
    ref = np.array([_skimage_ssim(a, b) for a, b in zip(x, y, strict=True)])
    assert np.abs(ours - ref).max() < 1e-5
    ours64 = ssim(x, y).numpy()  # numpy float64 in -> float64 computation
    assert np.abs(ours64 - ref).max() < 1e-10


def test_ssim_identical_is_one_and_dssim_bounds() -> None:
    x = torch.rand(4, 1, 32, 32)
    assert torch.allclose(ssim(x, x), torch.ones(4), atol=1e-6)
    assert torch.allclose(dssim(x, x), torch.zeros(4), atol=1e-6)
    d = dssim(x, 1 - x)
    assert ((d >= 0) & (d <= 1)).all() and (d > 0.1).all()


def test_ssim_accepts_n_h_w_and_rejects_small_or_mismatched() -> None:
    x = torch.rand(2, 16, 16)
    assert ssim(x, x).shape == (2,)
    with pytest.raises(BrainaeError, match="at least 11"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    with pytest.raises(BrainaeError, match="same shape"):
        ssim(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 17))


def test_ssim_gradient_flows_and_autocast_is_float32() -> None:
    x = torch.rand(2, 1, 24, 24, requires_grad=True)
    y = torch.rand(2, 1, 24, 24)
    dssim(x, y).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = ssim(x.bfloat16(), y)
    assert value.dtype == torch.float32


def test_ssim_under_inference_mode_then_autograd() -> None:
    x = torch.rand(1, 1, 16, 16)
    with torch.inference_mode():
        ssim(x, x)
    z = x.clone().requires_grad_(True)
    ssim(z, x).sum().backward()
    assert z.grad is not None


def test_mse_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.random((3, 1, 9, 7)), rng.random((3, 1, 9, 7))
    ref = ((x - y) ** 2).mean(axis=(1, 2, 3))
    assert np.allclose(mse(x, y).numpy(), ref, rtol=0, atol=1e-12)


def test_psnr_of_gaussian_noise_is_close_to_minus_20_log10_sd() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 64, 64, generator=g)
    for sd in (0.01, 0.05):
        noisy = x + sd * torch.randn(x.shape, generator=g)  # no clipping: MSE == sd^2 in expectation
        values = psnr(x, noisy)  # per image: MSE of 4096 pixels, relative sd ~2 %, i.e. ~0.1 dB
        assert torch.allclose(values, torch.full((8,), -20 * math.log10(sd)), atol=0.4)
        assert values.mean().item() == pytest.approx(-20 * math.log10(sd), abs=0.1)


def test_psnr_identical_is_inf_and_capped_on_request() -> None:
    x = torch.rand(2, 1, 8, 8)
    assert torch.isinf(psnr(x, x)).all()
    assert (psnr(x, x, cap=100.0) == 100.0).all()
    assert (cap_psnr(torch.tensor([float("inf"), 30.0])) == torch.tensor([100.0, 30.0])).all()
    assert psnr(x, x + 0.1, peak=1.0).round().tolist() == [20.0, 20.0]


def test_per_image_table_uses_the_same_functions() -> None:
    x, y = torch.rand(3, 1, 16, 16), torch.rand(3, 1, 16, 16)
    table = per_image(x.numpy(), y.numpy())
    assert set(table) == set(METRICS) == {"mse", "dssim", "psnr"}
    assert np.allclose(table["dssim"], dssim(x, y).numpy())
    with pytest.raises(BrainaeError, match="valid metrics"):
        per_image(x, y, names=["ssimm"])


def test_make_loss_parses_names_sums_and_weights() -> None:
    x, y = torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16)
    m, d = mse(x, y).mean(), dssim(x, y).mean()
    assert torch.allclose(make_loss("mse")(x, y), m)
    assert torch.allclose(make_loss("DSSIM")(x, y), d)
    assert torch.allclose(make_loss("mse+dssim")(x, y), m + d)
    assert torch.allclose(make_loss("0.5*mse + 0.5*dssim")(x, y), 0.5 * m + 0.5 * d)
    loss = make_loss({"mse": 0.25, "dssim": 1.0})
    assert torch.allclose(loss(x, y), 0.25 * m + d)
    assert make_loss(loss.spec).weights == loss.weights
    assert make_loss("mse")(x, x).item() == 0.0
    assert isinstance(make_loss("mse"), torch.nn.Module)


@pytest.mark.parametrize("spec", ["ssim", "mse+l1", {"mae": 1.0}, "", "mse*2", {"mse": -1.0}])
def test_make_loss_rejects_bad_specs(spec: object) -> None:
    with pytest.raises(BrainaeError) as info:
        make_loss(spec)  # type: ignore[arg-type]
    assert "mse" in str(info.value) or "weight" in str(info.value)


def test_unknown_loss_names_the_valid_ones() -> None:
    with pytest.raises(BrainaeError, match="valid losses: dssim, mse"):
        make_loss("huber")


# ------------------------------------------------------------------------------------- the metric registry


def test_registry_rows_say_direction_label_cap_and_scale() -> None:
    assert list(METRICS) == ["mse", "dssim", "psnr"]  # table order
    assert [m.higher_is_better for m in METRICS.values()] == [False, False, True]
    assert METRICS["psnr"].cap == PSNR_CAP_DB and METRICS["mse"].cap is None
    assert METRICS["mse"].log_scale and not METRICS["psnr"].log_scale
    assert METRICS["psnr"].label == "PSNR (dB)" and METRICS["psnr"].short == "PSNR"
    x = torch.rand(2, 1, 16, 16)
    assert torch.isinf(METRICS["psnr"](x, x)).all()  # calling a row is its function (uncapped)
    assert METRICS["psnr"].capped([np.inf, 30.0]).tolist() == [PSNR_CAP_DB, 30.0]
    assert METRICS["mse"].capped([1e9]).tolist() == [1e9]
    assert METRICS["psnr"].best([20.0, np.nan, 31.0]) == 2 and METRICS["mse"].best([0.2, 0.1, np.nan]) == 1
    assert METRICS["mse"].format(float("nan")) == ""


def test_psnr_is_one_formula_for_tensors_arrays_and_floats() -> None:
    from brainae.scoring import psnr as volume_psnr

    err = torch.tensor([0.01, 0.0, 1e-4])
    assert psnr_from_mse(err).tolist() == pytest.approx([20.0, math.inf, 40.0])
    assert psnr_from_mse(err.numpy().astype(np.float64)).tolist() == pytest.approx([20.0, math.inf, 40.0])
    assert psnr_from_mse(0.01) == pytest.approx(20.0) and psnr_from_mse(0.0) == math.inf
    assert psnr_from_mse(1.0, peak=10.0) == pytest.approx(20.0)
    assert volume_psnr(1.0, 10.0) == psnr_from_mse(1.0, 10.0) and volume_psnr(0.0, 1.0) == math.inf
    x, y = torch.rand(3, 1, 8, 8), torch.rand(3, 1, 8, 8)
    assert torch.allclose(psnr(x, y), psnr_from_mse(mse(x, y)))


def test_stats_and_evaluation_read_the_registry() -> None:
    from brainae.evaluate import METRIC_NAMES
    from brainae.stats import HIGHER_IS_BETTER

    assert METRIC_NAMES == tuple(METRICS)
    assert HIGHER_IS_BETTER == {n: m.higher_is_better for n, m in METRICS.items()}
