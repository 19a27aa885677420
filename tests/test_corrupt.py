"""Behaviour of brainae.corrupt: determinism, identities, statistics of each corruption, conditions."""

from __future__ import annotations

import math

import pytest
import torch

from brainae.corrupt import (
    CONDITIONS,
    AugmentConfig,
    BiasParams,
    BlankParams,
    BlurParams,
    DropoutParams,
    MotionParams,
    NoiseParams,
    RicianParams,
    SpikeParams,
    apply_bias,
    apply_blank,
    apply_blur,
    apply_dropout,
    apply_motion,
    apply_noise,
    apply_rician,
    apply_spike,
    augment,
    bias_field,
    blank_mask,
    parse_condition,
    sample_blank,
    sample_dropout,
    sample_motion,
    sample_noise,
    sample_rician,
)
from brainae.errors import BrainaeError

ALL_ON = AugmentConfig(rician=True, bias=True, motion=True, spike=True, motion_p=1.0, spike_p=1.0)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _brainish(n: int = 8, size: int = 32) -> torch.Tensor:
    """Smooth blobs in [0.2, 0.8] on a zero background: a tiny stand-in for brain slices."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    blob = ((xx**2 + yy**2) < 0.6).float() * (0.5 + 0.3 * torch.sin(4 * xx) * torch.cos(3 * yy))
    return blob.expand(n, 1, size, size).clone()


@pytest.mark.parametrize("config", [AugmentConfig(), ALL_ON])
def test_same_seed_same_output_different_seed_differs(config: AugmentConfig) -> None:
    x = _brainish()
    a, b, c = augment(x, config, _gen(1)), augment(x, config, _gen(1)), augment(x, config, _gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("config", [AugmentConfig(), ALL_ON, AugmentConfig.off()])
def test_input_is_never_modified(config: AugmentConfig) -> None:
    x = _brainish()
    before = x.clone()
    out = augment(x, config, _gen(0))
    assert torch.equal(x, before)
    assert out.data_ptr() != x.data_ptr()


def test_disabled_and_level_zero_are_identities() -> None:
    x = _brainish()
    assert torch.equal(augment(x, AugmentConfig.off(), _gen(0)), x)
    zero = AugmentConfig(dropout_rate=0.0, noise_sd=0.0, blank_p=0.0, blur_p=0.0)
    assert torch.equal(augment(x, zero, _gen(0)), x)
    n, size = x.shape[0], (32, 32)
    z = torch.zeros(n)
    field = torch.randn(n, 1, *size)
    assert torch.equal(apply_dropout(x, DropoutParams(z, torch.rand(n, 1, *size))), x)
    assert torch.equal(apply_noise(x, NoiseParams(z, field)), x)
    assert torch.equal(apply_blank(x, BlankParams(z.long(), z.long(), z.long())), x)
    assert torch.allclose(apply_blur(x, BlurParams(z, 2)), x, atol=1e-7)
    assert torch.allclose(apply_rician(x, RicianParams(z, torch.randn(n, 2, *size))), x, atol=1e-7)
    assert torch.allclose(apply_bias(x, BiasParams(torch.zeros(n, 9), 3)), x)
    assert torch.allclose(
        apply_motion(x, MotionParams(torch.zeros(n, 2), torch.ones(n, 32).bool())), x, atol=1e-6
    )
    assert torch.allclose(apply_spike(x, SpikeParams(torch.ones(n, 2), z, z)), x, atol=1e-6)


def test_dropout_zero_fraction_matches_rate() -> None:
    x = torch.full((16, 1, 64, 64), 0.5)
    for rate in (0.02, 0.05):
        out = apply_dropout(x, sample_dropout(16, _gen(3), size=(64, 64), rate=rate))
        assert (out == 0).float().mean().item() == pytest.approx(rate, abs=0.005)
        assert ((out == 0) | (out == 0.5)).all()  # kept pixels are not rescaled by default
    rescaled = apply_dropout(x, sample_dropout(16, _gen(3), size=(64, 64), rate=0.05), rescale=True)
    assert torch.allclose(rescaled[rescaled > 0], torch.tensor(0.5 / 0.95))


def test_dropout_rates_are_uniform_per_image() -> None:
    params = sample_dropout(4000, _gen(0), size=(2, 2))
    assert params.rate.min() >= 0 and params.rate.max() <= 0.05
    assert params.rate.mean().item() == pytest.approx(0.025, abs=0.001)


def test_noise_residual_std_matches_sd() -> None:
    x = torch.full((8, 1, 64, 64), 0.5)
    out = apply_noise(x, sample_noise(8, _gen(4), size=(64, 64), sd=0.03))
    assert (out - x).std().item() == pytest.approx(0.03, rel=0.03)
    sds = sample_noise(4000, _gen(4), size=(1, 1)).sd
    assert sds.max() <= 0.04 and sds.mean().item() == pytest.approx(0.02, abs=0.001)


def test_blank_squares_land_everywhere_not_on_the_diagonal() -> None:
    n, size = 4000, (128, 128)
    params = sample_blank(n, _gen(5), size=size, p=1.0)
    side = params.side.float()
    assert side.min() == 10 and side.max() == 40
    cy, cx = params.top.float() + side / 2, params.left.float() + side / 2
    for top_half in (True, False):
        for left_half in (True, False):
            quadrant = ((cy < 64) == top_half) & ((cx < 64) == left_half)
            assert quadrant.float().mean().item() == pytest.approx(0.25, abs=0.03)
    corr = torch.corrcoef(torch.stack((cy, cx)))[0, 1].item()
    assert abs(corr) < 0.05
    assert (params.top + params.side <= 128).all() and (params.left + params.side <= 128).all()
    mask = blank_mask(params, size)
    assert torch.equal(mask.sum(dim=(1, 2, 3)), params.side**2)


def test_blank_probability_and_scaling_with_image_size() -> None:
    params = sample_blank(5000, _gen(6), size=(128, 128))
    assert (params.side > 0).float().mean().item() == pytest.approx(0.2, abs=0.02)
    small = sample_blank(2000, _gen(6), size=(64, 64), p=1.0)
    assert small.side.min() == 5 and small.side.max() == 20


def test_blank_zeroes_exactly_the_mask() -> None:
    x = _brainish() + 0.1
    corrupted, mask = CONDITIONS["blank-20"](x, _gen(7))
    assert mask is not None and mask.dtype == torch.bool
    assert (corrupted[mask] == 0).all() and torch.equal(corrupted[~mask], x[~mask])
    assert (mask.sum(dim=(1, 2, 3)) == 5 * 5).all()  # 20 px at 128 -> 5 px at 32


def test_rician_bias_on_zero_image() -> None:
    sd = 0.04
    x = torch.zeros(16, 1, 64, 64)
    out = apply_rician(x, sample_rician(16, _gen(8), size=(64, 64), sd=sd))
    assert out.mean().item() == pytest.approx(sd * math.sqrt(math.pi / 2), rel=0.02)


def test_bias_field_is_smooth_and_positive() -> None:
    params = BiasParams((torch.rand(6, 9, generator=_gen(9)) * 2 - 1) * 0.3, 3)
    field = bias_field(params, (64, 64))
    assert (field > 0).all()
    assert field.min() > math.exp(-0.3 * 9) and field.max() < math.exp(0.3 * 9)
    step = (field[..., 1:, :] - field[..., :-1, :]).abs().max()
    assert step < 0.1 * field.max()  # neighbouring pixels hardly differ
    assert not torch.allclose(field, torch.ones_like(field))


def test_motion_changes_the_image_but_keeps_mean_intensity() -> None:
    x = _brainish(4, 64)
    out = apply_motion(x, sample_motion(4, _gen(10), size=(64, 64), shift=4.0))
    assert (out - x).abs().mean() > 0.005
    assert out.mean().item() == pytest.approx(x.mean().item(), rel=0.1)


def test_spike_adds_stripes_everywhere() -> None:
    x = torch.zeros(2, 1, 16, 16)
    out = apply_spike(
        x, SpikeParams(torch.tensor([[2.0, 1.0], [1.0, 0.0]]), torch.full((2,), 0.05), torch.zeros(2))
    )
    assert torch.allclose(out, torch.full_like(out, 0.05))  # magnitude of a pure spike is flat on zeros
    x = torch.full((1, 1, 16, 16), 0.5)
    out = apply_spike(x, SpikeParams(torch.tensor([[2.0, 0.0]]), torch.tensor([0.05]), torch.zeros(1)))
    assert out.std() > 0.02


def test_augment_default_blanks_and_blurs_some_images() -> None:
    x = _brainish(200, 32) + 0.1
    out = augment(x, AugmentConfig(dropout=False, noise=False, blur=False), _gen(11))
    blanked = (out == 0).flatten(1).any(dim=1).float().mean().item()
    assert blanked == pytest.approx(0.2, abs=0.08)


@pytest.mark.parametrize("name", list(CONDITIONS))
def test_every_condition_runs_and_is_deterministic(name: str) -> None:
    x = _brainish(4, 32)
    a, mask_a = CONDITIONS[name](x, _gen(12))
    b, mask_b = CONDITIONS[name](x, _gen(12))
    assert torch.equal(a, b)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert (mask_a is None) == (not name.startswith("blank"))
    if mask_a is not None:
        assert torch.equal(mask_a, mask_b)
    if name == "clean":
        assert torch.equal(a, x) and a.data_ptr() != x.data_ptr()
    else:
        assert not torch.equal(a, x)


def test_required_conditions_exist() -> None:
    required = {"clean", "noise-0.02", "noise-0.04", "noise-0.08", "dropout-0.05", "blank-20", "blank-40"}
    required |= {"blur", "rician-0.04", "bias", "motion"}
    assert required <= set(CONDITIONS)


def test_parse_condition_custom_levels() -> None:
    assert parse_condition("noise-0.03").level == 0.03
    assert parse_condition("blank-25").name == "blank-25"
    assert parse_condition("Blur").level == 0.6
    x = torch.full((2, 1, 32, 32), 0.5)
    out, _ = parse_condition("noise-0.03")(x, _gen(0))
    assert (out - x).std().item() == pytest.approx(0.03, rel=0.1)


@pytest.mark.parametrize("name", ["jpeg-0.1", "noise-abc", "noise--1", "dropout-1.5", "clean-3", "nois"])
def test_bad_conditions_raise_brainae_error(name: str) -> None:
    with pytest.raises(BrainaeError):
        parse_condition(name)


def test_unknown_condition_names_the_valid_ones() -> None:
    with pytest.raises(BrainaeError, match="noise-0.02"):
        parse_condition("gibbs")


def test_bad_config_raises() -> None:
    with pytest.raises(BrainaeError, match="probability"):
        AugmentConfig(blank_p=1.5)
    with pytest.raises(BrainaeError, match="unknown augmentation"):
        AugmentConfig.from_dict({"noise_sdd": 0.1})
    assert AugmentConfig.from_dict(AugmentConfig().to_dict()) == AugmentConfig()
