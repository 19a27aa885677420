"""Image-quality metrics and the training losses built on them — one implementation per metric.

Every metric here is a pure function of two image batches that returns one value **per image**
(``Tensor[N]``); the training losses (:func:`make_loss`) and the evaluation tables (:func:`per_image`) call
the same functions, so a DSSIM reported in a table is exactly the DSSIM that was minimised.

- :func:`ssim` is TensorFlow's ``tf.image.ssim`` (= scikit-image ``structural_similarity`` with
  ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1``): an 11 x 11 Gaussian window
  (sigma 1.5), population (co)variances, averaged over the *valid* part of the SSIM map (no padding). The
  Gaussian filtering is separable (two depthwise 1-D convolutions), which is fast on CPU and GPU and
  differentiable. It always computes in float32 (float64 if given float64), also under
  ``torch.autocast``.
- :func:`dssim` is ``(1 - SSIM) / 2`` (thesis 5.4.5.1), in [0, 1].
- :func:`mse` is the per-image mean squared error.
- :func:`psnr` is ``10 log10(peak^2 / MSE)`` per image (the formula lives in :func:`psnr_from_mse`, which
  whole-volume scores reuse) (the thesis reports per-image values; pooling the MSE
  over a batch first gives a different, smaller number). Identical images have MSE 0 and PSNR ``+inf``:
  :func:`psnr` keeps ``inf`` by default (it is the honest value); code that averages or plots PSNR should pass
  ``cap=PSNR_CAP_DB`` (100 dB, i.e. MSE 1e-10 at peak 1) or cap with :func:`cap_psnr`, and say so.

:data:`METRICS` is the one table of evaluation metrics: name -> :class:`Metric` (the function, its label,
whether higher is better, its cap, its number format and axis scale). The evaluation tables, the paired
tests, the report and the demo read names, directions, labels and caps from it; a new metric is one row.

Example:
    >>> import torch
    >>> from brainae.metrics import ssim, make_loss
    >>> x = torch.rand(4, 1, 32, 32)
    >>> ssim(x, x)
    tensor([1., 1., 1., 1.])
    >>> loss = make_loss("mse+dssim")
    >>> float(loss(x, x))
    0.0
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainae.errors import BrainaeError

__all__ = [
    "LOSSES",
    "METRICS",
    "PSNR_CAP_DB",
    "Loss",
    "Metric",
    "cap_psnr",
    "dssim",
    "gaussian_kernel1d",
    "make_loss",
    "mse",
    "parse_loss",
    "per_image",
    "psnr",
    "psnr_from_mse",
    "ssim",
]

PSNR_CAP_DB = 100.0
"""PSNR value (dB) that summary code uses in place of ``+inf`` for identical images (MSE <= 1e-10)."""


# --------------------------------------------------------------------------------------------- helpers


def _as_batch(x: Tensor | np.ndarray) -> Tensor:
    """Return ``x`` as an N x C x H x W tensor (accepts N x H x W and numpy arrays)."""
    t = torch.as_tensor(x)
    if t.ndim == 3:
        t = t.unsqueeze(1)
    if t.ndim != 4:
        raise BrainaeError(
            f"metrics expect images shaped N x 1 x H x W or N x H x W, got shape {tuple(t.shape)}; "
            "add a batch dimension for a single image"
        )
    return t


def _pair(x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Both batches as float tensors of one shape, float32 unless one of them is float64."""
    a, b = _as_batch(x), _as_batch(y)
    if a.shape != b.shape:
        raise BrainaeError(
            f"metrics need images of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    return a.to(dtype), b.to(device=a.device, dtype=dtype)


def gaussian_kernel1d(sigma: float, radius: int, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """Normalised 1-D Gaussian weights ``exp(-d^2 / (2 sigma^2))`` for ``d = -radius..radius``.

    Args:
        sigma: standard deviation in pixels (> 0).
        radius: half-width; the kernel has ``2 * radius + 1`` taps.
        dtype: dtype of the result.

    Returns:
        Tensor[2 * radius + 1] summing to 1.
    """
    d = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-(d**2) / (2.0 * sigma**2))
    return (w / w.sum()).to(dtype)


def _separable_weights(
    channels: int, win_size: int, sigma: float, device: str, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Depthwise conv weights (vertical, horizontal) of a normalised Gaussian, one per channel.

    Not cached on purpose: a cached tensor made under ``torch.inference_mode`` could not be used in autograd.
    """
    g = gaussian_kernel1d(sigma, win_size // 2).to(device=device, dtype=dtype)
    vertical = g.view(1, 1, win_size, 1).repeat(channels, 1, 1, 1)
    horizontal = g.view(1, 1, 1, win_size).repeat(channels, 1, 1, 1)
    return vertical, horizontal


def _gaussian_valid(maps: Tensor, win_size: int, sigma: float) -> Tensor:
    """Gaussian-filter each channel of N x K x H x W maps, keeping the 'valid' region only.

    Two depthwise 1-D convolutions (channels-last memory layout: markedly faster on CPU).
    """
    k = maps.shape[1]
    vertical, horizontal = _separable_weights(k, win_size, float(sigma), str(maps.device), maps.dtype)
    maps = maps.contiguous(memory_format=torch.channels_last)
    out = F.conv2d(maps, vertical, groups=k)
    return F.conv2d(out, horizontal, groups=k).contiguous()  # standard layout: faster elementwise ops


# --------------------------------------------------------------------------------------------- metrics


def ssim(
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    *,
    data_range: float = 1.0,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Per-image structural similarity, exactly as TensorFlow's ``tf.image.ssim``.

    Gaussian-weighted local means, population variances and covariance (separable filtering, 'valid'
    region only), ``C1 = (k1 * data_range)^2``, ``C2 = (k2 * data_range)^2``; the SSIM map is averaged over
    its valid part (and over channels). Differentiable; computed in float32 (float64 for float64 input) even
    under autocast.

    Args:
        x: images, N x C x H x W or N x H x W (tensor or numpy array), H and W >= ``win_size``.
        y: images of the same shape.
        data_range: dynamic range of the intensities (1 for images in [0, 1]).
        win_size: odd window size in pixels (11 in TensorFlow).
        sigma: Gaussian standard deviation in pixels (1.5).
        k1: luminance constant (0.01).
        k2: contrast constant (0.03).

    Returns:
        Tensor[N]: SSIM per image, 1 for identical images.

    Example:
        >>> x = torch.rand(2, 1, 16, 16)
        >>> ssim(x, x).tolist()
        [1.0, 1.0]
    """
    if win_size % 2 != 1 or win_size < 1:
        raise BrainaeError(f"SSIM window size must be odd and positive, got {win_size}")
    device_type = torch.as_tensor(x).device.type
    with torch.autocast(device_type=device_type, enabled=False):
        a, b = _pair(x, y)
        n, c, h, w = a.shape
        if h < win_size or w < win_size:
            raise BrainaeError(
                f"SSIM needs images of at least {win_size} x {win_size} pixels, got {h} x {w}; "
                "use a smaller win_size"
            )
        maps = torch.cat((a, b, a * a, b * b, a * b), dim=1)  # N x 5C x H x W
        filt = _gaussian_valid(maps, win_size, sigma)  # N x 5C x (H - win + 1) x (W - win + 1)
        mu_x, mu_y, e_xx, e_yy, e_xy = filt.split(c, dim=1)
        c1 = (k1 * data_range) ** 2
        c2 = (k2 * data_range) ** 2
        mu_xy = mu_x * mu_y
        mu_x2 = mu_x * mu_x
        mu_y2 = mu_y * mu_y
        var_x = e_xx - mu_x2
        var_y = e_yy - mu_y2
        cov = e_xy - mu_xy
        num = (2.0 * mu_xy + c1) * (2.0 * cov + c2)
        den = (mu_x2 + mu_y2 + c1) * (var_x + var_y + c2)
        return (num / den).mean(dim=(1, 2, 3))


def dssim(x: Tensor | np.ndarray, y: Tensor | np.ndarray, **ssim_options: float) -> Tensor:
    """Per-image structural dissimilarity ``(1 - SSIM) / 2`` (0 for identical images).

    Args:
        x: images, N x C x H x W or N x H x W.
        y: images of the same shape.
        **ssim_options: keyword options of :func:`ssim`.

    Returns:
        Tensor[N].
    """
    return (1.0 - ssim(x, y, **ssim_options)) / 2.0


def mse(x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> Tensor:
    """Per-image mean squared error (computed in float32, or float64 for float64 input).

    Args:
        x: images, N x C x H x W or N x H x W.
        y: images of the same shape.

    Returns:
        Tensor[N].
    """
    device_type = torch.as_tensor(x).device.type
    with torch.autocast(device_type=device_type, enabled=False):
        a, b = _pair(x, y)
        return (a - b).square().mean(dim=(1, 2, 3))


def psnr(
    x: Tensor | np.ndarray, y: Tensor | np.ndarray, *, peak: float = 1.0, cap: float | None = None
) -> Tensor:
    """Per-image peak signal-to-noise ratio ``10 log10(peak^2 / MSE)`` in dB.

    Identical images give ``+inf``. Keep it for per-image tables; pass ``cap=PSNR_CAP_DB`` (or apply
    :func:`cap_psnr` later) before averaging, plotting or testing, and report that the cap was used.

    Args:
        x: images, N x C x H x W or N x H x W.
        y: images of the same shape.
        peak: maximum possible intensity (1 for images in [0, 1]).
        cap: if given, values above ``cap`` (including ``inf``) are replaced by ``cap``.

    Returns:
        Tensor[N].

    Example:
        >>> x = torch.zeros(1, 1, 8, 8)
        >>> psnr(x, x + 0.1).round().tolist()
        [20.0]
    """
    value = psnr_from_mse(mse(x, y), peak)
    return value if cap is None else cap_psnr(value, cap)


def psnr_from_mse(err: Any, peak: float = 1.0) -> Any:
    """``10 log10(peak^2 / err)`` in dB: the one PSNR formula (``+inf`` for a zero error).

    Args:
        err: mean squared error(s): a tensor, a numpy array or a float.
        peak: maximum possible intensity.

    Returns:
        The same kind as ``err`` (a float for a float).

    Example:
        >>> psnr_from_mse(0.01)
        20.0
        >>> psnr_from_mse(0.0)
        inf
    """
    if isinstance(err, Tensor):
        return 10.0 * torch.log10(peak**2 / err)
    with np.errstate(divide="ignore"):
        value = 10.0 * np.log10(peak**2 / np.asarray(err, dtype=np.float64))
    return float(value) if np.ndim(value) == 0 else value


def cap_psnr(values: Tensor, cap: float = PSNR_CAP_DB) -> Tensor:
    """Replace PSNR values above ``cap`` (notably ``+inf`` for identical images) by ``cap``."""
    return torch.clamp(values, max=cap)


@dataclass(frozen=True)
class Metric:
    """One evaluation metric: its function and how tables, tests and figures read it.

    Calling it computes the per-image values (``Tensor[N]``, uncapped). ``cap`` is applied by code that
    averages, tests or plots (:meth:`capped`), which must say that it did.

    Example:
        >>> m = METRICS["psnr"]
        >>> m.label, m.higher_is_better, m.cap
        ('PSNR (dB)', True, 100.0)
        >>> m.format(31.456), METRICS["mse"].format(0.00123)
        ('31.46', '1.23e-03')
    """

    name: str
    fn: Callable[..., Tensor]
    label: str
    higher_is_better: bool
    cap: float | None = None
    log_scale: bool = False
    fmt: str = ".2e"

    def __call__(self, x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> Tensor:
        return self.fn(x, y)

    @property
    def short(self) -> str:
        """The label without its unit: ``"PSNR"``."""
        return self.label.split(" (")[0]

    @property
    def unit(self) -> str:
        """The unit in the label's parentheses (``"dB"``), or ``""``."""
        return self.label.partition(" (")[2].rstrip(")")

    def capped(self, values: Any) -> np.ndarray:
        """``values`` as float64 numpy, above-cap values (``+inf`` PSNR of identical images) set to the cap."""
        arr = np.asarray(values, dtype=np.float64)
        return arr if self.cap is None else np.minimum(arr, self.cap)

    def format(self, value: float) -> str:
        """One number as tables show it (empty for a missing value)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return format(float(value), self.fmt)

    def best(self, values: Any) -> int:
        """Position of the best of ``values`` (NaN ignored)."""
        arr = np.asarray(values, dtype=np.float64)
        return int(np.nanargmax(arr) if self.higher_is_better else np.nanargmin(arr))


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("mse", mse, "MSE", higher_is_better=False, log_scale=True),
        Metric("dssim", dssim, "DSSIM", higher_is_better=False, log_scale=True),
        Metric("psnr", psnr, "PSNR (dB)", higher_is_better=True, cap=PSNR_CAP_DB, fmt=".2f"),
    )
}
"""Evaluation metrics by name, in table order; ``METRICS[name](x, y) -> Tensor[N]`` (one value per image)."""


def per_image(
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    names: tuple[str, ...] | list[str] = ("mse", "dssim", "psnr"),
) -> dict[str, np.ndarray]:
    """Evaluation-table helper: the named metrics per image, as float64 numpy arrays.

    Same code as the losses (no separate numpy implementation); PSNR keeps ``inf`` for identical images.

    Args:
        x: images (e.g. reconstructions), N x C x H x W or N x H x W, tensor or numpy array.
        y: reference images of the same shape.
        names: metric names from :data:`METRICS`.

    Returns:
        ``{name: array[N]}``.
    """
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise BrainaeError(f"unknown metric {unknown[0]!r}; valid metrics: {', '.join(sorted(METRICS))}")
    with torch.no_grad():
        return {name: METRICS[name](x, y).detach().cpu().double().numpy() for name in names}


# ---------------------------------------------------------------------------------------------- losses

LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"mse": mse, "dssim": dssim}
"""Per-image loss terms by name; :class:`Loss` averages a weighted sum of them over the batch."""

_TERM = re.compile(r"^\s*(?:(?P<w>[0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*\*\s*)?(?P<name>[a-z_]+)\s*$")


def parse_loss(spec: str | Mapping[str, float]) -> dict[str, float]:
    """Turn a loss specification into ``{term name: weight}``.

    Accepted forms: ``"mse"``, ``"dssim"``, ``"mse+dssim"`` (weights 1), ``"0.5*mse+0.5*dssim"``, or a
    mapping ``{"mse": 0.5, "dssim": 0.5}``. Names are case-insensitive.

    Raises:
        BrainaeError: unknown term, negative/non-finite weight, or empty specification.
    """
    valid = ", ".join(sorted(LOSSES))
    if isinstance(spec, Mapping):
        items = [(str(k).strip().lower(), v) for k, v in spec.items()]
    elif isinstance(spec, str):
        items = []
        for part in spec.lower().split("+"):
            m = _TERM.match(part)
            if m is None:
                raise BrainaeError(
                    f"cannot read loss {spec!r}: write names joined by '+', optionally weighted like "
                    f"'0.5*mse+0.5*dssim'; valid names: {valid}"
                )
            items.append((m["name"], float(m["w"]) if m["w"] else 1.0))
    else:
        raise BrainaeError(f"a loss is a name like 'mse' or a mapping of names to weights, got {spec!r}")
    weights: dict[str, float] = {}
    for name, weight in items:
        if name not in LOSSES:
            raise BrainaeError(
                f"unknown loss {name!r}; valid losses: {valid} (or weighted sums like 'mse+dssim')"
            )
        weight = float(weight)
        if not math.isfinite(weight) or weight < 0:
            raise BrainaeError(f"loss weight for {name!r} must be a non-negative number, got {weight}")
        weights[name] = weights.get(name, 0.0) + weight
    if not weights or sum(weights.values()) == 0:
        raise BrainaeError(f"loss {spec!r} has no term with a positive weight; valid losses: {valid}")
    return weights


class Loss(nn.Module):
    """Weighted sum of per-image loss terms, averaged over the batch.

    Args:
        weights: ``{term name: weight}``, names from :data:`LOSSES`.

    Example:
        >>> loss = Loss({"mse": 1.0, "dssim": 0.5})
        >>> loss.spec
        'mse+0.5*dssim'
    """

    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__()
        self.weights: dict[str, float] = parse_loss(weights)

    @property
    def spec(self) -> str:
        """Canonical string form, parseable by :func:`make_loss` (stored in checkpoints/configs)."""
        return "+".join(name if w == 1.0 else f"{w:g}*{name}" for name, w in self.weights.items())

    def terms(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Batch mean of each unweighted term (for logging)."""
        return {name: LOSSES[name](pred, target).mean() for name in self.weights}

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Loss value.

        Args:
            pred: reconstructions, N x 1 x H x W.
            target: clean images, N x 1 x H x W.

        Returns:
            Scalar tensor (float32): mean over the batch of ``sum_k w_k * term_k(pred, target)``.
        """
        return self.combine({name: LOSSES[name](pred, target) for name in self.weights}).mean()

    def combine(self, terms: Mapping[str, Tensor]) -> Tensor:
        """Per-image loss from per-image terms already computed (e.g. by a validation loop that also reports
        them): ``sum_k w_k * terms[k]``, a Tensor[N]."""
        total: Tensor | None = None
        for name, w in self.weights.items():
            value = w * terms[name]
            total = value if total is None else total + value
        assert total is not None
        return total

    def extra_repr(self) -> str:
        return repr(self.spec)


def make_loss(spec: str | Mapping[str, float]) -> Loss:
    """Build the training loss from a name (``"mse"``, ``"dssim"``), a sum (``"mse+dssim"``,
    ``"0.5*mse+0.5*dssim"``) or a mapping of names to weights.

    Raises:
        BrainaeError: naming the valid losses when a name is unknown.

    Example:
        >>> make_loss("dssim")
        Loss('dssim')
    """
    return Loss(parse_loss(spec))
