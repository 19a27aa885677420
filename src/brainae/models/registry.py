"""Registry of the autoencoder architectures by name: :func:`build_model`, :data:`ARCHITECTURES`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from brainae.errors import BrainaeError
from brainae.models.myronenko import MyronenkoAE
from brainae.models.res_unet import ResUNet
from brainae.models.shallow_res import shallow_res_original, shallow_res_preact
from brainae.models.skip_cae import SkipCAE
from brainae.models.unet3d import UNet3d

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "shallow-res-original": shallow_res_original,
    "shallow-res-preact": shallow_res_preact,
    "myronenko": MyronenkoAE,
    "skip-cae": SkipCAE,
    "res-unet": ResUNet,
    "unet3d": UNet3d,
}
"""Architecture name -> constructor. Defaults give the thesis's models; ``unet3d`` is brainae's own
volumetric model (:mod:`brainae.models.unet3d`)."""

THESIS_PARAMETERS: dict[str, int] = {
    "shallow-res-original": 460_993,
    "shallow-res-preact": 460_609,
    "myronenko": 991_041,
    "skip-cae": 191_041,
    "res-unet": 483_649,
}
"""Parameter counts of the thesis's Keras models (batch-norm moving statistics included, as Keras counts)."""


def architecture_names() -> list[str]:
    """The slice (2-D) autoencoders of the thesis, in thesis order: what ``train`` and ``grid`` accept."""
    return list(THESIS_PARAMETERS)


def architecture_kwargs(name: str) -> dict[str, Any]:
    """The constructor arguments of architecture ``name`` with their defaults."""
    factory = _factory(name)
    sig = inspect.signature(factory)
    return {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def _factory(name: str) -> Callable[..., nn.Module]:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        valid = ", ".join(ARCHITECTURES)
        raise BrainaeError(f"unknown architecture {name!r}; valid names: {valid}") from None


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build architecture ``name`` (see :data:`ARCHITECTURES`) with constructor ``kwargs``.

    The model carries ``brainae_arch`` (the name) and ``brainae_arch_kwargs`` (all constructor arguments,
    defaults filled in) so that it can be saved as a self-describing checkpoint.

    Raises:
        BrainaeError: unknown name (the message lists the valid ones) or unknown / invalid arguments.
    """
    factory = _factory(name)
    allowed = architecture_kwargs(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise BrainaeError(
            f"architecture {name!r} has no argument(s) {', '.join(unknown)}; valid: {', '.join(allowed)}"
        )
    for key in ("in_channels", "latent_channels"):
        value = kwargs.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BrainaeError(f"{key} must be a positive integer, got {value!r}")
    full = {**allowed, **kwargs}
    model = factory(**full)
    model.brainae_arch = name
    model.brainae_arch_kwargs = dict(full)
    return model


def count_parameters(model: nn.Module) -> int:
    """Parameters + batch-norm moving statistics, i.e. the number Keras's ``model.summary()`` reports."""
    n = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            n += m.running_mean.numel() + m.running_var.numel()
    return n
