"""Classical baselines that brainae's models are measured against (pure numpy / scikit-image): the one place
for them, used by :mod:`brainae.evaluate` (2-D slices) and the benchmarks (whole volumes).

Non-local means has ONE definition of its settings, :data:`NLM` (patch 5, distance 6, ``h = 0.6 sigma``,
scikit-image's fast mode; the SPEC's best setting for the head). Its two uses differ only in what they are
given, which is why their numbers differ:

- :func:`nlm_denoise`: 3-D, a whole volume, the given (true) noise sd: the benchmarks' and the README's numbers
  (``benchmarks/denoise.py``). The volume is divided by a robust scale (its 99.5th percentile of absolute
  values) and run in float32, then scaled back, so any intensity range gives the same result as the [0, 1] case.
- :func:`nlm_denoise_slice`: 2-D, one slice in [0, 1], the sd estimated from the slice
  (:func:`estimate_noise_sigma`) unless given; output clipped to [0, 1]: ``brainae evaluate``'s ``nlm``.

:data:`SLICE_BASELINES` is the table of ``brainae evaluate``'s baselines (identity, nlm, biharmonic): what each
does, on which conditions it runs (:func:`baseline_applies`) and how (:func:`run_slice_baseline`).

- :func:`biharmonic_inpaint`: scikit-image ``inpaint_biharmonic`` in 3-D, solved only in the bounding box of
  each connected component of the mask plus a margin; unmasked voxels are returned bit-identical
  (:func:`biharmonic_inpaint_slice`: one 2-D slice in [0, 1], for ``brainae evaluate``).
- :func:`intensity_zscore`: the "intensity z-score of the same scan" anomaly baseline: ``|I - median| /
  (1.4826 MAD)`` over the brain voxels of the scan, zero outside the brain (``signed=True`` keeps the sign).

Example:
    >>> rng = np.random.default_rng(0)
    >>> clean = np.zeros((24, 24, 24), np.float32); clean[6:18, 6:18, 6:18] = 100.0
    >>> noisy = clean + rng.normal(0, 10, clean.shape).astype(np.float32)
    >>> out = nlm_denoise(noisy, 10.0)
    >>> bool(np.abs(out - clean).mean() < np.abs(noisy - clean).mean())
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "NLM",
    "SLICE_BASELINES",
    "Baseline",
    "NLMSettings",
    "baseline_applies",
    "biharmonic_inpaint",
    "biharmonic_inpaint_slice",
    "estimate_noise_sigma",
    "intensity_zscore",
    "nlm_denoise",
    "nlm_denoise_slice",
    "run_slice_baseline",
]


@dataclass(frozen=True)
class NLMSettings:
    """Settings of scikit-image's ``denoise_nl_means``: ``h = h_over_sigma x sigma``."""

    patch_size: int = 5
    patch_distance: int = 6
    h_over_sigma: float = 0.6
    fast_mode: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


NLM = NLMSettings()
"""The non-local means settings of every NLM baseline (slices and volumes)."""


def nlm_denoise(
    volume: np.ndarray,
    sigma: float,
    *,
    patch_size: int = NLM.patch_size,
    patch_distance: int = NLM.patch_distance,
    h_factor: float = NLM.h_over_sigma,
    fast: bool = NLM.fast_mode,
) -> np.ndarray:
    """3-D non-local means of a whole volume with a known noise sd.

    Args:
        volume: 3-D array (any intensity range).
        sigma: the noise standard deviation, in the volume's units (the true one in benchmarks).
        patch_size: patch side in voxels.
        patch_distance: search radius in voxels.
        h_factor: filtering strength ``h = h_factor x sigma``.
        fast: scikit-image's fast mode (uniform patch weights, much faster).

    Returns:
        float32 volume of the same shape.

    Example:
        >>> x = np.random.default_rng(1).normal(50, 5, (16, 16, 16)).astype(np.float32)
        >>> bool(nlm_denoise(x, 5.0).std() < x.std())
        True
    """
    from skimage.restoration import denoise_nl_means

    data = np.asarray(volume, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"nlm_denoise: expected a 3-D volume, got shape {data.shape}")
    if sigma <= 0:
        return data.copy()
    scale = float(np.percentile(np.abs(data), 99.5))
    if not np.isfinite(scale) or scale <= 0:
        scale = float(np.abs(data).max()) or 1.0
    s = float(sigma) / scale
    out = denoise_nl_means(
        data / np.float32(scale),
        patch_size=patch_size,
        patch_distance=patch_distance,
        h=h_factor * s,
        sigma=s,
        fast_mode=fast,
        channel_axis=None,
    )
    return (np.asarray(out, dtype=np.float32) * np.float32(scale)).astype(np.float32)


def estimate_noise_sigma(image: np.ndarray) -> float:
    """Gaussian noise standard deviation of one 2-D image: median(|HH|) / 0.6745 (Donoho's estimator).

    ``HH`` are the finest diagonal Haar wavelet coefficients, ``(a - b - c + d) / 2`` on 2 x 2 blocks (the idea
    of ``skimage.restoration.estimate_sigma``, which needs the optional PyWavelets).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> round(estimate_noise_sigma(0.5 + rng.normal(0, 0.04, (128, 128))), 2)
        0.04
    """
    x = np.asarray(image, dtype=np.float64)
    h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    x = x[:h, :w]
    hh = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2.0
    return float(np.median(np.abs(hh)) / 0.6745)


def nlm_denoise_slice(image: np.ndarray, *, sigma: float | None = None) -> np.ndarray:
    """2-D non-local means (:data:`NLM`) of one image in [0, 1]; ``sigma`` estimated when not given.

    Returns:
        float64 image clipped to [0, 1] (a copy of the input when the noise sd is ~0).
    """
    from skimage.restoration import denoise_nl_means

    x = np.asarray(image, dtype=np.float64)
    s = estimate_noise_sigma(x) if sigma is None else float(sigma)
    if not s > 1e-6:
        return x.copy()
    out = denoise_nl_means(
        x,
        patch_size=NLM.patch_size,
        patch_distance=NLM.patch_distance,
        h=NLM.h_over_sigma * s,
        sigma=s,
        fast_mode=NLM.fast_mode,
    )
    return np.clip(out, 0.0, 1.0)


def biharmonic_inpaint_slice(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fill ``mask`` (True = missing) of one 2-D image in [0, 1] by biharmonic inpainting, clipped to [0, 1]."""
    from skimage.restoration import inpaint_biharmonic

    x = np.asarray(image, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return x.copy()
    if m.all():
        return np.zeros_like(x)
    return np.clip(inpaint_biharmonic(x, m), 0.0, 1.0)


@dataclass(frozen=True)
class Baseline:
    """A baseline of ``brainae evaluate``: an extra "model" run on the same corrupted slices.

    Attributes:
        what: what it does, in words (``provenance.json``).
        families: the condition kinds it runs on, alone (``None``: every condition).
        run: ``run(image, mask, sigma)`` on one 2-D slice in [0, 1] (``None``: the corrupted input itself).
        settings: its settings as recorded in ``provenance.json``.
    """

    what: str
    families: tuple[str, ...] | None
    run: Callable[[np.ndarray, np.ndarray | None, float | None], np.ndarray] | None = None
    settings: dict[str, Any] | None = None

    def provenance(self, sigma: float | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"what": self.what, **(self.settings or {})}
        if sigma is not None and self.settings is not None and "sigma" in self.settings:
            d["sigma"] = sigma
        conditions = "all" if self.families is None else ", ".join(f"{f}-*" for f in self.families)
        return {**d, "conditions": conditions}


def _nlm(image: np.ndarray, mask: np.ndarray | None, sigma: float | None) -> np.ndarray:
    return nlm_denoise_slice(image, sigma=sigma)


def _biharmonic(image: np.ndarray, mask: np.ndarray | None, sigma: float | None) -> np.ndarray:
    return biharmonic_inpaint_slice(image, mask if mask is not None else np.zeros(image.shape, bool))


SLICE_BASELINES: dict[str, Baseline] = {
    "identity": Baseline("the corrupted input itself", None),
    "nlm": Baseline(
        "skimage.restoration.denoise_nl_means",
        ("noise", "rician"),
        _nlm,
        {**NLM.to_dict(), "sigma": "estimated per slice (Haar-MAD, estimate_noise_sigma)"},
    ),
    "biharmonic": Baseline(
        "skimage.restoration.inpaint_biharmonic with the blank-out mask", ("blank",), _biharmonic
    ),
}
"""``brainae evaluate``'s baselines by name (NLM only on noise conditions: it is a denoiser, and at about
30 ms per 128 x 128 slice, ``benchmarks/baseline_timing.py``, it would dominate the run time elsewhere; biharmonic only where a mask marks a hole)."""


def baseline_applies(baseline: str, condition: str) -> bool:
    """Whether a baseline is run on a condition name (a ``+``-joined combination runs only ``identity``).

    Raises:
        ValueError: unknown baseline.

    Example:
        >>> baseline_applies("nlm", "noise-0.04"), baseline_applies("nlm", "blur+noise-0.04")
        (True, False)
    """
    if baseline not in SLICE_BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; valid: {', '.join(SLICE_BASELINES)}")
    families = SLICE_BASELINES[baseline].families
    if families is None:
        return True
    parts = [p.strip() for p in condition.split("+")]
    return len(parts) == 1 and parts[0].split("-", 1)[0] in families


def run_slice_baseline(
    name: str, image: np.ndarray, mask: np.ndarray | None = None, sigma: float | None = None
) -> np.ndarray:
    """One baseline on one 2-D slice in [0, 1] (``mask``: the blank-out mask; ``sigma``: NLM's noise sd)."""
    run = SLICE_BASELINES[name].run
    return np.array(image, copy=True) if run is None else run(image, mask, sigma)


def biharmonic_inpaint(volume: np.ndarray, mask: np.ndarray, *, margin: int = 4) -> np.ndarray:
    """Fill the masked voxels by biharmonic inpainting, component by component.

    Each connected component of ``mask`` is solved in its bounding box grown by ``margin`` voxels (clipped to
    the volume), with every masked voxel in that box unknown; only the component's own voxels are written.
    The values of masked voxels in the input are never read.

    Args:
        volume: 3-D array.
        mask: boolean array of the same shape (True = fill).
        margin: context voxels around each component's bounding box.

    Returns:
        A float copy (float32 for float32 input) whose unmasked voxels equal the input's exactly.

    Example:
        >>> v = np.tile(np.arange(10.0), (10, 10, 1))          # a linear ramp along the last axis
        >>> m = np.zeros(v.shape, bool); m[4:6, 4:6, 4:6] = True
        >>> out = biharmonic_inpaint(v, m)
        >>> bool(np.allclose(out[m], v[m], atol=1e-6)), bool((out[~m] == v[~m]).all())
        (True, True)
    """
    from scipy import ndimage
    from skimage.restoration import inpaint_biharmonic

    data = np.asarray(volume)
    out = data.astype(data.dtype if np.issubdtype(data.dtype, np.floating) else np.float64, copy=True)
    m = np.asarray(mask, dtype=bool)
    if m.shape != data.shape:
        raise ValueError(f"mask shape {m.shape} differs from the volume's {data.shape}")
    if not m.any():
        return out
    labels, _ = ndimage.label(m)
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        grown = tuple(
            slice(max(0, s.start - margin), min(n, s.stop + margin))
            for s, n in zip(box, data.shape, strict=True)
        )
        sub_mask = m[grown]
        sub = np.where(sub_mask, 0.0, data[grown].astype(np.float64))
        filled = inpaint_biharmonic(sub, sub_mask)
        own = labels[grown] == k
        region = out[grown]
        region[own] = filled[own].astype(out.dtype)
    return out


def intensity_zscore(volume: np.ndarray, brain_mask: np.ndarray, *, signed: bool = False) -> np.ndarray:
    """Robust intensity z-score of each brain voxel against the brain of the same scan.

    ``z = (I - median) / (1.4826 MAD)`` with median and MAD over the brain voxels; ``|z|`` unless ``signed``;
    0 outside the brain.

    Args:
        volume: 3-D array.
        brain_mask: boolean brain mask of the same shape.
        signed: keep the sign (positive = brighter than the brain's median).

    Returns:
        float32 map.

    Example:
        >>> v = np.array([[0.0, 10.0, 11.0, 9.0, 30.0]]); b = v > 0
        >>> [round(float(z), 2) for z in intensity_zscore(v, b)[0]]
        [0.0, 0.34, 0.34, 1.01, 13.15]
    """
    data = np.asarray(volume, dtype=np.float64)
    brain = np.asarray(brain_mask, dtype=bool)
    if brain.shape != data.shape:
        raise ValueError(f"brain mask shape {brain.shape} differs from the volume's {data.shape}")
    out = np.zeros(data.shape, dtype=np.float32)
    if not brain.any():
        return out
    values = data[brain]
    med = float(np.median(values))
    sd = 1.4826 * float(np.median(np.abs(values - med)))
    if sd <= 0:
        sd = float(values.std()) or 1.0
    z = (values - med) / sd
    out[brain] = z if signed else np.abs(z)
    return out
