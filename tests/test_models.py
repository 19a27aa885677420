"""Tests of brainae.models: the five architectures, their blocks and the registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainae.errors import BrainaeError
from brainae.models import (
    THESIS_PARAMETERS,
    architecture_kwargs,
    architecture_names,
    build_model,
    count_parameters,
    kernel_parameters,
)
from brainae.models.blocks import SameConv2d, SameConvTranspose2d

NAMES = ["shallow-res-original", "shallow-res-preact", "myronenko", "skip-cae", "res-unet"]
COUNTS = [460_993, 460_609, 991_041, 191_041, 483_649]


def test_registry_names_in_thesis_order() -> None:
    assert architecture_names() == NAMES


@pytest.mark.parametrize(("name", "count"), zip(NAMES, COUNTS, strict=True))
def test_parameter_counts_match_the_thesis_keras_models(name: str, count: int) -> None:
    model = build_model(name)
    assert count_parameters(model) == count == THESIS_PARAMETERS[name]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [64, 128])
def test_output_shape_and_range(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = torch.rand(2, 1, size, size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert torch.all(y > 0) and torch.all(y < 1)


@pytest.mark.parametrize("name", NAMES)
def test_latent_is_16x16x128_at_128(name: str) -> None:
    model = build_model(name).eval()
    assert model.latent_shape(128, 128) == (128, 16, 16)
    assert model.latent_ratio() == pytest.approx(2.0)
    with torch.no_grad():
        z = model.encode(torch.rand(1, 1, 128, 128))
    assert tuple(z.shape) == (1, 128, 16, 16)


@pytest.mark.parametrize("name", NAMES)
def test_narrow_latent_and_rectangular_input_train_step(name: str) -> None:
    model = build_model(name, latent_channels=8)
    assert model.latent_shape(32, 48) == (8, 4, 6)
    x = torch.rand(2, 1, 32, 48)
    y = model(x)
    assert y.shape == x.shape
    assert tuple(model.encode(x).shape) == (2, 8, 4, 6)
    loss = nn.functional.mse_loss(y, x) + 1e-5 * sum((w**2).sum() for w in kernel_parameters(model))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_in_channels() -> None:
    model = build_model("res-unet", in_channels=2).eval()
    assert model(torch.rand(1, 2, 32, 32)).shape == (1, 2, 32, 32)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(BrainaeError, match="valid names: shallow-res-original.*res-unet"):
        build_model("unet")


def test_unknown_or_bad_kwarg() -> None:
    with pytest.raises(BrainaeError, match="no argument"):
        build_model("skip-cae", dropout=0.2)
    with pytest.raises(BrainaeError, match="positive integer"):
        build_model("skip-cae", latent_channels=0)
    assert architecture_kwargs("myronenko") == {"in_channels": 1, "latent_channels": 128, "dropout": 0.1}


def test_size_not_divisible_by_8() -> None:
    with pytest.raises(BrainaeError, match="divisible by 8"):
        build_model("skip-cae")(torch.rand(1, 1, 36, 32))


def test_model_carries_its_description() -> None:
    model = build_model("myronenko", latent_channels=16)
    assert model.brainae_arch == "myronenko"
    assert model.brainae_arch_kwargs == {"in_channels": 1, "latent_channels": 16, "dropout": 0.1}


def test_kernel_parameters_are_conv_kernels_only() -> None:
    model = build_model("skip-cae")
    kernels = list(kernel_parameters(model))
    assert len(kernels) == 7  # 3 convs, 3 transposed convs, output conv
    assert all(k.dim() == 4 for k in kernels)
    assert len(list(kernel_parameters(model, include_transposed=False))) == 4


def test_batchnorm_uses_keras_defaults() -> None:
    bns = [m for m in build_model("res-unet").modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == pytest.approx(0.01) for m in bns)


def test_same_conv_pads_bottom_right_like_keras() -> None:
    conv = SameConv2d(1, 1, 3, stride=2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0  # picks the top-left tap
        conv.bias.zero_()
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # Keras pads nothing on top/left with stride 2 on an even size: output (i, j) starts at input (2i, 2j).
    assert torch.equal(conv(x)[0, 0], x[0, 0, ::2, ::2])


def test_same_transposed_conv_doubles_and_drops_last_row_and_column() -> None:
    tconv = SameConvTranspose2d(1, 1, 3, stride=2)
    ref = nn.ConvTranspose2d(1, 1, 3, stride=2)
    ref.load_state_dict(tconv.state_dict())
    x = torch.rand(1, 1, 4, 5)
    y = tconv(x)
    assert y.shape == (1, 1, 8, 10)
    assert torch.equal(y, ref(x)[..., :8, :10])


def test_myronenko_dropout_only_in_training() -> None:
    model = build_model("myronenko").eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
