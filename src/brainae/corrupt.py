"""Augmentations and MRI corruptions: sample parameters, then apply them deterministically.

Every corruption ``X`` comes as two pieces (the TorchIO pattern, our own code):

- ``sample_X(n, generator, device, ...) -> XParams``: draws explicit per-image parameters (tensors) from an
  explicit ``torch.Generator``. Random numbers are drawn on the generator's device and moved to ``device``;
  for speed on a GPU, use a generator on that GPU (``torch.Generator(device="cuda")``). A level given as a
  float is fixed; given as a ``(low, high)`` tuple it is drawn uniformly per image; ``p`` is the probability
  that an image is corrupted at all (images that are not get level 0, i.e. the identity).
- ``apply_X(batch, params) -> batch``: a pure, deterministic, vectorised function (no per-image Python
  loops). It never writes into ``batch``; it returns a new tensor.

Batches are ``N x C x H x W`` float tensors in [0, 1] (C = 1 for our slices), on any device.

Corruptions (thesis 5.4.3 and beyond):

- **dropout**: zero each pixel with probability ``rate`` (thesis: ``rate ~ U(0, 0.05)`` per image). Kept
  pixels are *not* rescaled by ``1 / (1 - rate)`` by default (the thesis's ``tf.nn.dropout`` did rescale):
  intensities live in [0, 1] and the target is the clean image, so rescaling would only add a brightness
  shift. ``rescale=True`` restores the thesis behaviour (values may then exceed 1).
- **noise**: additive Gaussian noise, ``sd ~ U(0, 0.04)``, result clipped to [0, 1].
- **blank**: a zero square of side ``U{10..40}`` pixels at 128 x 128 (scaled with ``min(H, W) / 128``), placed
  uniformly at random anywhere inside the image (the thesis code put it on the diagonal only: a defect),
  with probability 0.2. :func:`blank_mask` gives the blanked pixels.
- **blur**: Gaussian blur, sigma 0.6, with probability 0.1 (separable kernel truncated at 3 sigma, reflect
  padding).
- **rician**: Rician noise, the magnitude of complex Gaussian noise ``sqrt((x + sd z1)^2 + (sd z2)^2)``,
  clipped at 1. On a zero image its mean is ``sd * sqrt(pi / 2)``.
- **bias**: smooth multiplicative bias field ``exp(sum_k c_k P_k(y, x))`` over the monomials ``y^i x^j``,
  ``1 <= i + j <= order`` (coordinates in [-1, 1]), coefficients ``c_k ~ U(-strength, strength)``; clipped
  to [0, 1].
- **motion**: rigid in-plane translation during part of the acquisition: a random subset (``fraction``) of
  the phase-encoding lines of k-space (rows, dimension H) gets the linear phase of a shift of ``shift``
  pixels in a random direction (``torch.fft``); the magnitude image is returned, clipped to [0, 1]. It gives
  ghosting and blurring along the phase-encoding direction; the magnitude of the DC coefficient never
  changes, so the mean intensity is roughly kept.
- **spike**: a single k-space spike (herringbone artifact): ``|x + A exp(i (2 pi (fy y / H + fx x / W) +
  phi))|``, clipped at 1 — the image-space form of adding one bright k-space point.

:func:`augment` samples then applies the enabled corruptions of an :class:`AugmentConfig` in this fixed
order: **bias -> motion -> spike -> blur -> rician -> noise -> dropout -> blank** (acquisition physics
first, then the image-domain degradations, and blanking last so that blanked squares are exactly zero).

:data:`CONDITIONS` holds named fixed-level corruptions for evaluation; :func:`parse_condition` builds custom
ones such as ``"noise-0.03"`` or ``"blank-25"``.

Example:
    >>> import torch
    >>> from brainae.corrupt import AugmentConfig, augment, CONDITIONS
    >>> g = torch.Generator().manual_seed(0)
    >>> batch = torch.rand(8, 1, 64, 64)
    >>> noisy = augment(batch, AugmentConfig(), g)
    >>> noisy.shape
    torch.Size([8, 1, 64, 64])
    >>> corrupted, mask = CONDITIONS["blank-20"](batch, torch.Generator().manual_seed(1))
    >>> bool((corrupted[mask] == 0).all())
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from brainae.errors import BrainaeError

__all__ = [
    "CONDITIONS",
    "CONDITION_KINDS",
    "CORRUPTIONS",
    "AugmentConfig",
    "AugmentParams",
    "BiasParams",
    "BlankParams",
    "BlurParams",
    "Condition",
    "Corruption",
    "DropoutParams",
    "MotionParams",
    "NoiseParams",
    "RicianParams",
    "SpikeParams",
    "apply_augment",
    "apply_bias",
    "apply_blank",
    "apply_blur",
    "apply_dropout",
    "apply_motion",
    "apply_noise",
    "apply_rician",
    "apply_spike",
    "augment",
    "bias_field",
    "blank_mask",
    "parse_condition",
    "sample_augment",
    "sample_bias",
    "sample_blank",
    "sample_blur",
    "sample_dropout",
    "sample_motion",
    "sample_noise",
    "sample_rician",
    "sample_spike",
]

REFERENCE_SIZE = 128
"""Image size (pixels) at which blank-square sides and motion shifts are expressed; scaled to other sizes."""

Level = float | tuple[float, float]
Size = tuple[int, int]


# ------------------------------------------------------------------------------------------ sampling help


def _rand(shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str | None) -> Tensor:
    """U[0, 1) draws made on the generator's device, then moved to ``device``."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _randn(shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str | None) -> Tensor:
    """N(0, 1) draws made on the generator's device, then moved to ``device``."""
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def _levels(
    level: Level, n: int, p: float, generator: torch.Generator, device: torch.device | str | None
) -> Tensor:
    """Per-image levels: fixed (float) or U(low, high) (tuple), set to 0 with probability ``1 - p``."""
    if isinstance(level, tuple):
        low, high = (float(v) for v in level)
        values = low + (high - low) * _rand((n,), generator, device)
    else:
        values = torch.full((n,), float(level), device=device)
    gate = _rand((n,), generator, device) < p
    return values * gate


def _sd_and_normal(
    n: int,
    generator: torch.Generator,
    device: torch.device | str | None,
    size: Size,
    sd: Level,
    p: float,
    channels: int,
) -> tuple[Tensor, Tensor]:
    """Per-image noise sds (:func:`_levels`), then N x ``channels`` x H x W standard normal draws (Gaussian: 1
    channel; Rician: real and imaginary)."""
    return _levels(sd, n, p, generator, device), _randn((n, channels, *size), generator, device)


def _per_image(t: Tensor) -> Tensor:
    """Tensor[N] -> N x 1 x 1 x 1 for broadcasting over images."""
    return t.view(-1, 1, 1, 1)


def _fresh(batch: Tensor) -> Tensor:
    if batch.ndim != 4:
        raise BrainaeError(f"corruptions expect a batch shaped N x C x H x W, got shape {tuple(batch.shape)}")
    return batch


# ---------------------------------------------------------------------------------------------- dropout


@dataclass(frozen=True)
class DropoutParams:
    """Pixel dropout: ``rate`` Tensor[N]; ``uniform`` N x 1 x H x W draws (drop where ``uniform < rate``)."""

    rate: Tensor
    uniform: Tensor


def sample_dropout(
    n: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    *,
    size: Size,
    rate: Level = (0.0, 0.05),
    p: float = 1.0,
) -> DropoutParams:
    """Sample pixel-dropout parameters (thesis: ``rate ~ U(0, 0.05)`` per image)."""
    rates = _levels(rate, n, p, generator, device)
    return DropoutParams(rate=rates, uniform=_rand((n, 1, *size), generator, device))


def apply_dropout(batch: Tensor, params: DropoutParams, *, rescale: bool = False) -> Tensor:
    """Zero the dropped pixels; with ``rescale`` divide the kept ones by ``1 - rate`` (thesis code)."""
    rate = _per_image(params.rate).to(batch.dtype)
    out = batch * (params.uniform >= rate)
    if rescale:
        out = out / (1.0 - rate)
    return out


# ------------------------------------------------------------------------------------------------ noise


@dataclass(frozen=True)
class NoiseParams:
    """Gaussian noise: ``sd`` Tensor[N]; ``normal`` N x 1 x H x W standard normal draws."""

    sd: Tensor
    normal: Tensor


def sample_noise(
    n: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    *,
    size: Size,
    sd: Level = (0.0, 0.04),
    p: float = 1.0,
) -> NoiseParams:
    """Sample additive Gaussian noise (thesis: ``sd ~ U(0, 0.04)`` per image)."""
    return NoiseParams(*_sd_and_normal(n, generator, device, size, sd, p, channels=1))


def apply_noise(batch: Tensor, params: NoiseParams) -> Tensor:
    """Add ``sd * normal`` and clip to [0, 1]."""
    return (batch + _per_image(params.sd).to(batch.dtype) * params.normal).clamp(0.0, 1.0)


# ------------------------------------------------------------------------------------------------ blank


@dataclass(frozen=True)
class BlankParams:
    """Blank-out square per image: ``top``, ``left``, ``side`` Tensor[N] (int64 pixels; side 0 = none)."""

    top: Tensor
    left: Tensor
    side: Tensor


def sample_blank(
    n: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    *,
    size: Size,
    side: Level = (10.0, 40.0),
    p: float = 0.2,
) -> BlankParams:
    """Sample blank-out squares, placed uniformly anywhere inside the image.

    Args:
        n: number of images.
        generator: source of randomness.
        device: device of the returned tensors.
        size: image size (H, W).
        side: side in pixels *at 128 x 128* (scaled by ``min(H, W) / 128``, rounded, at least 1): a fixed
            value, or ``(low, high)`` for an integer side uniform in ``{low..high}`` (thesis: 10..40).
        p: probability that an image gets a square (thesis: 0.2).
    """
    h, w = size
    scale = min(h, w) / REFERENCE_SIZE
    if isinstance(side, tuple):
        low = max(1, round(side[0] * scale))
        high = min(min(h, w), max(low, round(side[1] * scale)))
        sides = low + torch.floor(_rand((n,), generator, device) * (high - low + 1)).clamp(max=high - low)
    else:
        fixed = min(min(h, w), max(1, round(float(side) * scale))) if side > 0 else 0
        sides = torch.full((n,), float(fixed), device=device)
    gate = _rand((n,), generator, device) < p
    sides = (sides * gate).long()
    top = torch.floor(_rand((n,), generator, device) * (h - sides + 1)).long().clamp(min=0)
    left = torch.floor(_rand((n,), generator, device) * (w - sides + 1)).long().clamp(min=0)
    return BlankParams(top=torch.minimum(top, h - sides), left=torch.minimum(left, w - sides), side=sides)


def blank_mask(params: BlankParams, size: Size) -> Tensor:
    """Boolean N x 1 x H x W mask of the blanked pixels (by coordinate comparison, no loops)."""
    h, w = size
    device = params.top.device
    rows = torch.arange(h, device=device).view(1, 1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, 1, w)
    top, left, side = _per_image(params.top), _per_image(params.left), _per_image(params.side)
    return (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)


def apply_blank(batch: Tensor, params: BlankParams) -> Tensor:
    """Set the pixels of each image's square to 0."""
    mask = blank_mask(params, (batch.shape[-2], batch.shape[-1]))
    return batch.masked_fill(mask, 0.0)


# ------------------------------------------------------------------------------------------------- blur


@dataclass(frozen=True)
class BlurParams:
    """Gaussian blur: ``sigma`` Tensor[N] in pixels (0 = none); ``radius`` kernel half-width in pixels."""

    sigma: Tensor
    radius: int


def sample_blur(
    n: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    *,
    sigma: Level = 0.6,
    p: float = 0.1,
) -> BlurParams:
    """Sample Gaussian blur (thesis: sigma 0.6 with probability 0.1)."""
    sigmas = _levels(sigma, n, p, generator, device)
    top = max(sigma) if isinstance(sigma, tuple) else float(sigma)
    return BlurParams(sigma=sigmas, radius=max(1, math.ceil(3.0 * top)))


def apply_blur(batch: Tensor, params: BlurParams) -> Tensor:
    """Separable Gaussian blur with one kernel per image (grouped convolution, reflect padding)."""
    n, c, h, w = _fresh(batch).shape
    r = min(params.radius, h - 1, w - 1)
    d = torch.arange(-r, r + 1, device=batch.device, dtype=torch.float32)
    sig = params.sigma.to(device=batch.device, dtype=torch.float32).clamp(min=1e-6).view(-1, 1)
    k = torch.exp(-(d**2) / (2.0 * sig**2))  # N x K; sigma 0 -> delta kernel (identity)
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0).to(batch.dtype)
    x = F.pad(batch.reshape(1, n * c, h, w), (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(n * c, 1, 2 * r + 1, 1), groups=n * c)
    x = F.conv2d(x, k.view(n * c, 1, 1, 2 * r + 1), groups=n * c)
    return x.view(n, c, h, w)


# ----------------------------------------------------------------------------------------------- rician


@dataclass(frozen=True)
class RicianParams:
    """Rician noise: ``sd`` Tensor[N]; ``normal`` N x 2 x H x W (real and imaginary) standard normal draws."""

    sd: Tensor
    normal: Tensor


def sample_rician(
    n: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    *,
    size: Size,
    sd: Level = (0.0, 0.04),
    p: float = 1.0,
) -> RicianParams:
    """Sample Rician noise of standard deviation ``sd`` per (real, imaginary) channel."""
    return RicianParams(*_sd_and_normal(n, generator, device, size, sd, p, channels=2))


def apply_rician(batch: Tensor, params: RicianParams) -> Tensor:
    """``sqrt((x + sd z1)^2 + (sd z2)^2)``, clipped at 1."""
    sd = _per_image(params.sd).to(batch.dtype)
    real = batch + sd * params.normal[:, :1]
    imag = sd * params.normal[:, 1:]
    return torch.sqrt(real * real + imag * imag).clamp(max=1.0)


# ------------------------------------------------------------------------------------------------- bias


@dataclass(frozen=True)
class BiasParams:
    """Bias field: ``coefficients`` N x K for the monomials ``y^i x^j``, ``1 <= i + j <= order``."""

    coefficients: Tensor
    order: int


def _monomials(order: int) -> list[tuple[int, int]]:
    return [(i, t - i) for t in range(1, order + 1) for i in range(t + 1)]


def sample_bias(
    n: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    *,
    strength: Level = (0.0, 0.3),
    order: int = 3,
    p: float = 1.0,
) -> BiasParams:
    """Sample a polynomial log-bias field; coefficients ``~ U(-strength, strength)`` per image."""
    if order < 1:
        raise BrainaeError(f"bias field order must be at least 1, got {order}")
    s = _levels(strength, n, p, generator, device)
    k = len(_monomials(order))
    coef = (2.0 * _rand((n, k), generator, device) - 1.0) * s.view(-1, 1)
    return BiasParams(coefficients=coef, order=order)


def bias_field(params: BiasParams, size: Size) -> Tensor:
    """The multiplicative field, N x 1 x H x W, positive and smooth (1 where the coefficients are 0)."""
    h, w = size
    device = params.coefficients.device
    y = torch.linspace(-1.0, 1.0, h, device=device).view(h, 1)
    x = torch.linspace(-1.0, 1.0, w, device=device).view(1, w)
    basis = torch.stack([(y**i) * (x**j) for i, j in _monomials(params.order)])  # K x H x W
    log_field = torch.einsum("nk,khw->nhw", params.coefficients.float(), basis)
    return torch.exp(log_field).unsqueeze(1)


def apply_bias(batch: Tensor, params: BiasParams) -> Tensor:
    """Multiply by the bias field and clip to [0, 1]."""
    field = bias_field(params, (batch.shape[-2], batch.shape[-1]))
    return (batch * field.to(batch.dtype)).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------- motion


@dataclass(frozen=True)
class MotionParams:
    """Motion: ``shift`` N x 2 (dy, dx) pixels; ``lines`` N x H bool, the k-space rows acquired shifted."""

    shift: Tensor
    lines: Tensor


def sample_motion(
    n: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    *,
    size: Size,
    shift: Level = (0.0, 4.0),
    fraction: float = 0.3,
    p: float = 1.0,
) -> MotionParams:
    """Sample a translation (``shift`` pixels at 128 x 128, scaled; random direction) for a random
    ``fraction`` of the phase-encoding lines."""
    h, w = size
    magnitude = _levels(shift, n, p, generator, device) * (min(h, w) / REFERENCE_SIZE)
    angle = 2.0 * math.pi * _rand((n,), generator, device)
    shifts = torch.stack((magnitude * torch.sin(angle), magnitude * torch.cos(angle)), dim=1)
    lines = _rand((n, h), generator, device) < fraction
    return MotionParams(shift=shifts, lines=lines)


def apply_motion(batch: Tensor, params: MotionParams) -> Tensor:
    """Phase-shift the selected k-space rows by the translation; magnitude image clipped to [0, 1]."""
    n, c, h, w = _fresh(batch).shape
    kspace = torch.fft.fft2(batch.float())
    ky = torch.fft.fftfreq(h, device=batch.device).view(1, h, 1)
    kx = torch.fft.fftfreq(w, device=batch.device).view(1, 1, w)
    dy = params.shift[:, 0].float().view(-1, 1, 1)
    dx = params.shift[:, 1].float().view(-1, 1, 1)
    phase = torch.polar(torch.ones((), device=batch.device), -2.0 * math.pi * (ky * dy + kx * dx))
    phase = torch.where(params.lines.view(n, h, 1), phase, torch.ones_like(phase))  # N x H x W
    out = torch.fft.ifft2(kspace * phase.unsqueeze(1)).abs()
    return out.clamp(0.0, 1.0).to(batch.dtype)


# ------------------------------------------------------------------------------------------------ spike


@dataclass(frozen=True)
class SpikeParams:
    """Spike: ``frequency`` N x 2 (cycles per image along H, W); ``amplitude``, ``phase`` Tensor[N]."""

    frequency: Tensor
    amplitude: Tensor
    phase: Tensor


def sample_spike(
    n: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    *,
    size: Size,
    amplitude: Level = (0.0, 0.05),
    p: float = 1.0,
) -> SpikeParams:
    """Sample one k-space spike per image, at 1..H/4 cycles vertically and -W/4..W/4 horizontally."""
    h, w = size
    amp = _levels(amplitude, n, p, generator, device)
    fy = 1.0 + torch.floor(_rand((n,), generator, device) * max(1, h // 4))
    fx = torch.floor(_rand((n,), generator, device) * (2 * max(1, w // 4) + 1)) - max(1, w // 4)
    phase = 2.0 * math.pi * _rand((n,), generator, device)
    return SpikeParams(frequency=torch.stack((fy, fx), dim=1), amplitude=amp, phase=phase)


def apply_spike(batch: Tensor, params: SpikeParams) -> Tensor:
    """``|x + A exp(i theta)|`` with ``theta = 2 pi (fy y / H + fx x / W) + phi``, clipped at 1."""
    n, c, h, w = _fresh(batch).shape
    y = torch.arange(h, device=batch.device, dtype=torch.float32).view(1, 1, h, 1) / h
    x = torch.arange(w, device=batch.device, dtype=torch.float32).view(1, 1, 1, w) / w
    fy, fx = _per_image(params.frequency[:, 0].float()), _per_image(params.frequency[:, 1].float())
    theta = 2.0 * math.pi * (fy * y + fx * x) + _per_image(params.phase.float())
    amp = _per_image(params.amplitude.float())
    xf = batch.float()
    out = torch.sqrt(xf * xf + 2.0 * amp * xf * torch.cos(theta) + amp * amp)
    return out.clamp(max=1.0).to(batch.dtype)


# ------------------------------------------------------------------------------------------------ config


@dataclass
class AugmentConfig:
    """Which corruptions :func:`augment` applies, with their levels (upper bounds of ``U(0, level)``) and
    probabilities. Defaults: the thesis's four on, the MRI-physics ones off.

    Sizes (blank sides, motion shifts) are in pixels at 128 x 128 and scale with the image.
    """

    dropout: bool = True
    dropout_rate: float = 0.05
    dropout_rescale: bool = False
    noise: bool = True
    noise_sd: float = 0.04
    blank: bool = True
    blank_p: float = 0.2
    blank_min_side: float = 10.0
    blank_max_side: float = 40.0
    blur: bool = True
    blur_p: float = 0.1
    blur_sigma: float = 0.6
    rician: bool = False
    rician_sd: float = 0.04
    bias: bool = False
    bias_p: float = 0.5
    bias_strength: float = 0.3
    bias_order: int = 3
    motion: bool = False
    motion_p: float = 0.2
    motion_shift: float = 4.0
    motion_fraction: float = 0.3
    spike: bool = False
    spike_p: float = 0.05
    spike_amplitude: float = 0.05

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                continue
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise BrainaeError(
                    f"augmentation setting {f.name} must be a non-negative number, got {value!r}"
                )
            if (f.name.endswith("_p") or f.name.endswith("_fraction")) and value > 1:
                raise BrainaeError(f"augmentation setting {f.name} is a probability in [0, 1], got {value}")
        if self.blank_min_side > self.blank_max_side:
            raise BrainaeError(
                f"blank_min_side ({self.blank_min_side}) must not exceed "
                f"blank_max_side ({self.blank_max_side})"
            )
        if self.dropout_rate >= 1:
            raise BrainaeError(f"dropout_rate must be below 1, got {self.dropout_rate}")

    @classmethod
    def off(cls) -> AugmentConfig:
        """A configuration with every corruption disabled (``augment`` returns a copy of the batch)."""
        return cls(**dict.fromkeys(CORRUPTIONS, False))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON/YAML next to results)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`BrainaeError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BrainaeError(
                f"unknown augmentation setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
            )
        return cls(**data)


@dataclass(frozen=True)
class AugmentParams:
    """Sampled parameters of every enabled corruption (``None`` where disabled)."""

    bias: BiasParams | None = None
    motion: MotionParams | None = None
    spike: SpikeParams | None = None
    blur: BlurParams | None = None
    rician: RicianParams | None = None
    noise: NoiseParams | None = None
    dropout: DropoutParams | None = None
    blank: BlankParams | None = None


def sample_augment(
    n: int,
    size: Size,
    config: AugmentConfig,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> AugmentParams:
    """Sample the parameters of every enabled corruption, in the fixed order of :func:`augment`."""
    params = {}
    for kind, spec in CORRUPTIONS.items():
        if getattr(config, kind):
            params[kind] = spec.sample(
                n, generator, device, **spec.size_arg(size), **spec.augment_args(config)
            )
    return AugmentParams(**params)


def apply_augment(batch: Tensor, params: AugmentParams, *, dropout_rescale: bool = False) -> Tensor:
    """Apply sampled parameters in the fixed order bias -> motion -> spike -> blur -> rician -> noise ->
    dropout -> blank. Returns a new tensor; ``batch`` is not modified."""
    out = _fresh(batch)
    for kind, spec in CORRUPTIONS.items():
        sampled = getattr(params, kind)
        if sampled is not None:
            options = {"rescale": dropout_rescale} if kind == "dropout" else {}
            out = spec.apply(out, sampled, **options)
    return out.clone() if out is batch else out


def augment(batch: Tensor, config: AugmentConfig, generator: torch.Generator) -> Tensor:
    """Corrupt a training input batch: sample per-image parameters, then apply them (see module docs).

    Args:
        batch: clean images, N x C x H x W in [0, 1], on any device (left untouched).
        config: which corruptions, at which levels.
        generator: seeded generator; put it on the batch's device for speed.

    Returns:
        The corrupted batch, a new N x C x H x W tensor on the same device.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(4, 1, 32, 32)
        >>> torch.equal(augment(x, AugmentConfig.off(), g), x)
        True
    """
    _fresh(batch)
    params = sample_augment(
        batch.shape[0], (batch.shape[-2], batch.shape[-1]), config, generator, batch.device
    )
    return apply_augment(batch, params, dropout_rescale=config.dropout_rescale)


# -------------------------------------------------------------------------------------------- conditions


@dataclass(frozen=True)
class Corruption:
    """One kind of corruption: everything :func:`augment`, :class:`Condition` and :func:`parse_condition` need.

    Attributes:
        sample: ``sample_X(n, generator, device, ...)``; apply: ``apply_X(batch, params)``.
        level_arg: the argument of ``sample`` that a condition's level fixes.
        default_level: a condition's level when its name gives none.
        meaning: what the level is, in words (for messages).
        augment_args: ``sample`` arguments from an :class:`AugmentConfig` (training augmentation).
        sized: ``sample`` takes the image ``size``.
        condition_args: further ``sample`` arguments of a fixed-level condition (e.g. ``p=1``).
        below: an exclusive upper bound of the level (dropout rates < 1), if any.
        mask: ``mask(params, size)``: the pixels a condition marks as missing (blank), if any.
    """

    sample: Callable[..., Any]
    apply: Callable[..., Tensor]
    level_arg: str
    default_level: float
    meaning: str
    augment_args: Callable[[AugmentConfig], dict[str, Any]]
    sized: bool = True
    condition_args: dict[str, Any] = field(default_factory=dict)
    below: float | None = None
    mask: Callable[[Any, Size], Tensor] | None = None

    def size_arg(self, size: Size) -> dict[str, Size]:
        return {"size": size} if self.sized else {}


CORRUPTIONS: dict[str, Corruption] = {  # in the order augment applies them
    "bias": Corruption(
        sample_bias, apply_bias, "strength", 0.3, "bias-field coefficient bound",
        lambda c: {"strength": (0.0, c.bias_strength), "order": c.bias_order, "p": c.bias_p}, sized=False,
    ),
    "motion": Corruption(
        sample_motion, apply_motion, "shift", 4.0, "motion shift in pixels at 128 x 128 (30 % of k-space lines)",
        lambda c: {"shift": (0.0, c.motion_shift), "fraction": c.motion_fraction, "p": c.motion_p},
    ),
    "spike": Corruption(
        sample_spike, apply_spike, "amplitude", 0.05, "k-space spike amplitude",
        lambda c: {"amplitude": (0.0, c.spike_amplitude), "p": c.spike_p},
    ),
    "blur": Corruption(
        sample_blur, apply_blur, "sigma", 0.6, "Gaussian blur sigma in pixels",
        lambda c: {"sigma": c.blur_sigma, "p": c.blur_p}, sized=False, condition_args={"p": 1.0},
    ),
    "rician": Corruption(
        sample_rician, apply_rician, "sd", 0.04, "Rician noise sd", lambda c: {"sd": (0.0, c.rician_sd)},
    ),
    "noise": Corruption(
        sample_noise, apply_noise, "sd", 0.04, "Gaussian noise sd", lambda c: {"sd": (0.0, c.noise_sd)},
    ),
    "dropout": Corruption(
        sample_dropout, apply_dropout, "rate", 0.05, "pixel dropout rate (< 1)",
        lambda c: {"rate": (0.0, c.dropout_rate)}, below=1.0,
    ),
    "blank": Corruption(
        sample_blank, apply_blank, "side", 30.0, "square side in pixels at 128 x 128",
        lambda c: {"side": (c.blank_min_side, c.blank_max_side), "p": c.blank_p},
        condition_args={"p": 1.0}, mask=blank_mask,
    ),
}  # fmt: skip
"""Every corruption kind, in the fixed order :func:`augment` applies them: one row per kind."""

CONDITION_KINDS = ("clean", *CORRUPTIONS)
"""The kinds of evaluation condition: ``clean`` and every corruption."""


@dataclass(frozen=True)
class Condition:
    """A fixed-level evaluation corruption; call it as ``condition(batch, generator)``.

    Attributes:
        kind: one of ``clean, noise, dropout, blank, blur, rician, bias, motion, spike``.
        level: the fixed level (see :func:`parse_condition`); ``None`` for ``clean``.
    """

    kind: str
    level: float | None = None

    @property
    def name(self) -> str:
        """Canonical name, e.g. ``noise-0.04`` (parseable by :func:`parse_condition`)."""
        return self.kind if self.level is None else f"{self.kind}-{self.level:g}"

    def __call__(self, batch: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """Corrupt every image at this condition's level.

        Args:
            batch: clean images, N x C x H x W in [0, 1] (left untouched).
            generator: seeded generator (same seed -> same output).

        Returns:
            ``(corrupted, mask)``: the corrupted N x C x H x W batch, and for ``blank`` the boolean
            N x 1 x H x W mask of blanked pixels (``None`` otherwise).
        """
        n, _, h, w = _fresh(batch).shape
        if self.kind == "clean":
            return batch.clone(), None
        spec = CORRUPTIONS[self.kind]
        size = (h, w)
        level = float(self.level) if self.kind == "blank" else self.level
        params = spec.sample(
            n,
            generator,
            batch.device,
            **spec.size_arg(size),
            **{spec.level_arg: level},
            **spec.condition_args,
        )
        return spec.apply(batch, params), (spec.mask(params, size) if spec.mask is not None else None)


def parse_condition(name: str) -> Condition:
    """Build an evaluation condition from a name: ``kind`` or ``kind-level``.

    Kinds and their level: ``clean`` (no level), ``noise-SD``, ``dropout-RATE``, ``blank-SIDE`` (pixels at
    128 x 128), ``blur[-SIGMA]`` (0.6), ``rician-SD``, ``bias[-STRENGTH]`` (0.3), ``motion[-SHIFT]`` (4 px),
    ``spike[-AMPLITUDE]`` (0.05). A kind without a level uses the default in brackets (noise 0.04, dropout
    0.05, blank 30, rician 0.04).

    Raises:
        BrainaeError: unknown kind or unreadable level, naming the valid ones.

    Example:
        >>> parse_condition("noise-0.03").name
        'noise-0.03'
    """
    text = str(name).strip().lower()
    kind, sep, level_text = text.partition("-")
    if kind != "clean" and kind not in CORRUPTIONS:
        raise BrainaeError(
            f"unknown corruption condition {name!r}; valid conditions: {', '.join(CONDITIONS)} "
            f"(or a custom level such as 'noise-0.03', 'blank-25'; kinds: {', '.join(CONDITION_KINDS)})"
        )
    if kind == "clean":
        if sep:
            raise BrainaeError(f"condition 'clean' takes no level, got {name!r}")
        return Condition("clean")
    spec = CORRUPTIONS[kind]
    if not sep:
        return Condition(kind, spec.default_level)
    try:
        level = float(level_text)
    except ValueError:
        level = float("nan")
    if not math.isfinite(level) or level < 0 or (spec.below is not None and level >= spec.below):
        raise BrainaeError(
            f"cannot read the level of condition {name!r}: expected {kind}-<{spec.meaning}>, "
            f"a non-negative number, e.g. {kind}-{spec.default_level:g}"
        )
    return Condition(kind, level)


_CONDITION_NAMES = (
    "clean",
    "noise-0.02",
    "noise-0.04",
    "noise-0.08",
    "dropout-0.05",
    "blank-20",
    "blank-40",
    "blur",
    "rician-0.04",
    "bias",
    "motion",
    "spike",
)

CONDITIONS: dict[str, Callable[[Tensor, torch.Generator], tuple[Tensor, Tensor | None]]] = {
    name: parse_condition(name) for name in _CONDITION_NAMES
}
"""Named fixed-level evaluation conditions: ``condition(batch, generator) -> (corrupted, mask_or_None)``."""
