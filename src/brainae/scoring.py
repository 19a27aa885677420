"""Benchmark metrics and noise models for whole volumes (pure numpy; used by ``benchmarks/``).

Definitions (issue 8 and 9; the same code scores every method, learned or classical):

- **Peak** of a clean volume: its 99.5th percentile over all voxels (:func:`robust_peak`).
- **Head**: the clean volume's voxels above 5 % of that peak (:func:`head_mask`).
- **Head PSNR**: ``10 log10(peak^2 / MSE over the head)`` (:func:`head_psnr`).
- **Masked PSNR**: the same inside any mask, with the peak of the clean volume unless given
  (:func:`masked_psnr`); for skull-stripped inputs the benchmarks pass the 99.5th percentile of the brain.
- **Noise** of level ``f``: standard deviation ``f x peak`` (:func:`noise_sd`); Gaussian noise is added,
  Rician noise is the magnitude of the clean volume plus complex Gaussian noise of that sd per channel
  (:func:`add_noise`).
- **Voxel detection metrics** on flattened scores and binary labels: AUROC (Mann-Whitney, ties averaged),
  average precision (area under the step-wise precision-recall curve, ties grouped as scikit-learn does),
  best Dice over every threshold (exact, by sorting), Dice and false-positive rate at a given threshold
  (a voxel is flagged when its score is ``>= threshold``).

Example:
    >>> clean = np.linspace(0.0, 100.0, 1000).reshape(10, 10, 10)
    >>> noisy = add_noise(clean, 0.04, seed=0)
    >>> round(noise_sd(clean, 0.04), 3)
    3.98
    >>> 25 < head_psnr(clean, noisy) < 30
    True
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "HEAD_FRACTION",
    "PEAK_PERCENTILE",
    "add_noise",
    "auroc",
    "average_precision",
    "best_dice",
    "best_dice_threshold",
    "dice",
    "dice_at",
    "fpr_at",
    "gradient_sharpness",
    "head_mask",
    "head_psnr",
    "masked_psnr",
    "noise_sd",
    "psnr",
    "robust_peak",
    "threshold_at_fpr",
]

PEAK_PERCENTILE = 99.5
"""Percentile of the clean volume used as the PSNR peak and the noise reference."""

HEAD_FRACTION = 0.05
"""The head is the clean volume above this fraction of the peak."""


def _values_in(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``values`` as float64, only those where ``mask`` is true (all of them when ``mask`` is None)."""
    values = np.asarray(values, dtype=np.float64)
    return values if mask is None else values[np.asarray(mask, dtype=bool)]


def robust_peak(clean: np.ndarray, mask: np.ndarray | None = None) -> float:
    """The 99.5th percentile of ``clean`` (of its voxels in ``mask`` when given).

    Example:
        >>> robust_peak(np.arange(1001.0))
        995.0
    """
    values = _values_in(clean, mask)
    if values.size == 0:
        raise ValueError("robust_peak: no voxels to take a percentile of")
    return float(np.percentile(values, PEAK_PERCENTILE))


def head_mask(clean: np.ndarray) -> np.ndarray:
    """Boolean head mask: clean voxels above 5 % of the clean volume's 99.5th percentile.

    Example:
        >>> head_mask(np.array([0.0, 1.0, 50.0, 100.0])).tolist()
        [False, False, True, True]
    """
    clean = np.asarray(clean)
    return clean > HEAD_FRACTION * robust_peak(clean)


def psnr(mse: float, peak: float) -> float:
    """``10 log10(peak^2 / mse)`` in dB; ``inf`` for a zero error (:func:`brainae.metrics.psnr_from_mse`)."""
    from brainae.metrics import psnr_from_mse

    return float(psnr_from_mse(max(float(mse), 0.0), float(peak)))


def masked_psnr(clean: np.ndarray, test: np.ndarray, mask: np.ndarray, peak: float | None = None) -> float:
    """PSNR of ``test`` against ``clean`` over the voxels of ``mask``.

    Args:
        clean: reference volume.
        test: volume to score (same shape).
        mask: boolean mask of the voxels to score (same shape; must not be empty).
        peak: the signal peak; default the 99.5th percentile of the whole clean volume (:func:`robust_peak`).

    Example:
        >>> c = np.zeros((4, 4)); c[1:3, 1:3] = 10.0
        >>> t = c.copy(); t[1, 1] = 9.0
        >>> m = c > 0
        >>> round(masked_psnr(c, t, m, peak=10.0), 2)   # mse 1/4 over 4 voxels
        26.02
    """
    clean = np.asarray(clean, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if clean.shape != test.shape or clean.shape != mask.shape:
        raise ValueError(f"shapes differ: clean {clean.shape}, test {test.shape}, mask {mask.shape}")
    if not mask.any():
        raise ValueError("masked_psnr: empty mask")
    if peak is None:
        peak = robust_peak(clean)
    err = clean[mask] - test[mask]
    return psnr(float(np.mean(err * err)), float(peak))


def head_psnr(clean: np.ndarray, test: np.ndarray) -> float:
    """PSNR over the head (issue 8): head = clean > 5 % of its 99.5th percentile, peak = that percentile.

    Example:
        >>> c = np.zeros((10, 10)); c[2:8, 2:8] = 100.0
        >>> t = c + 1.0                  # background error is ignored
        >>> round(head_psnr(c, t), 1)    # 10 log10(100^2 / 1)
        40.0
    """
    clean = np.asarray(clean)
    peak = robust_peak(clean)
    return masked_psnr(clean, test, clean > HEAD_FRACTION * peak, peak=peak)


def noise_sd(clean: np.ndarray, fraction: float) -> float:
    """Noise standard deviation for a level: ``fraction x`` the clean 99.5th percentile.

    Example:
        >>> round(noise_sd(np.arange(1001.0), 0.02), 6)
        19.9
    """
    return float(fraction) * robust_peak(clean)


def add_noise(clean: np.ndarray, fraction: float, kind: str = "gaussian", seed: int | None = 0) -> np.ndarray:
    """Clean volume plus noise of sd ``fraction x`` its 99.5th percentile; float32.

    Args:
        clean: clean volume.
        fraction: noise level (e.g. 0.04 for 4 %).
        kind: ``gaussian`` (additive) or ``rician`` (``|clean + n1 + i n2|``, n1, n2 independent Gaussian of
            the same sd: the magnitude image of a complex acquisition).
        seed: seed of ``numpy.random.default_rng``.

    Example:
        >>> x = np.full((50, 50, 50), 100.0)
        >>> y = add_noise(x, 0.1, kind="rician", seed=1)
        >>> bool(y.min() >= 0), round(float(y.std()), 0)
        (True, 10.0)
    """
    clean = np.asarray(clean, dtype=np.float64)
    sd = noise_sd(clean, fraction)
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        out = clean + rng.normal(0.0, sd, clean.shape)
    elif kind == "rician":
        real = clean + rng.normal(0.0, sd, clean.shape)
        imag = rng.normal(0.0, sd, clean.shape)
        out = np.hypot(real, imag)
    else:
        raise ValueError(f"unknown noise kind {kind!r}; use gaussian or rician")
    return out.astype(np.float32)


def _flat(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in size")
    if not np.isfinite(s).all():
        raise ValueError("scores hold NaN or Inf values")
    return s, y


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count one half); NaN without both classes.

    Example:
        >>> auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
        0.75
    """
    from scipy.stats import rankdata

    s, y = _flat(scores, labels)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _curve(scores: np.ndarray, labels: np.ndarray):
    """Cumulative true / flagged counts at each distinct threshold (descending), and the thresholds."""
    s, y = _flat(scores, labels)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # last index of each group of equal scores
    tp = np.cumsum(y)[last].astype(np.float64)
    flagged = (last + 1).astype(np.float64)
    return tp, flagged, s[last], int(y.sum())


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the precision-recall curve, step-wise: ``sum (R_n - R_{n-1}) P_n`` over thresholds.

    Ties are one threshold (as scikit-learn's ``average_precision_score``); NaN without positives.

    Example:
        >>> average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0]))   # (1 + 2/3) / 2
        0.8333333333333333
    """
    tp, flagged, _, n_pos = _curve(scores, labels)
    if n_pos == 0:
        return float("nan")
    precision = tp / flagged
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_dice_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(best Dice, its threshold) over every threshold ``scores >= t``; (0, inf) without positives.

    Example:
        >>> best_dice_threshold(np.array([0.1, 0.9, 0.8, 0.2]), np.array([0, 1, 1, 0]))
        (1.0, 0.8)
    """
    tp, flagged, thresholds, n_pos = _curve(scores, labels)
    if n_pos == 0:
        return 0.0, float("inf")
    d = 2.0 * tp / (flagged + n_pos)
    k = int(np.argmax(d))
    return float(d[k]), float(thresholds[k])


def best_dice(scores: np.ndarray, labels: np.ndarray) -> float:
    """Best Dice over all thresholds (the literature's "best-threshold Dice", an upper bound).

    Example:
        >>> best_dice(np.array([0.1, 0.9, 0.8, 0.2]), np.array([0, 1, 1, 0]))
        1.0
    """
    return best_dice_threshold(scores, labels)[0]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean arrays (1.0 when both are empty).

    Example:
        >>> dice(np.array([1, 1, 0]), np.array([1, 0, 0]))
        0.6666666666666666
    """
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(p, t).sum() / total)


def dice_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """Dice of ``scores >= threshold`` with ``labels``.

    Example:
        >>> dice_at(np.array([0.1, 0.9, 0.8, 0.2]), np.array([0, 1, 1, 0]), 0.85)
        0.6666666666666666
    """
    return dice(np.asarray(scores) >= threshold, labels)


def fpr_at(
    scores: np.ndarray, healthy_mask_values: np.ndarray | None = None, threshold: float = 0.0
) -> float:
    """Fraction of healthy voxels flagged (``score >= threshold``).

    Args:
        scores: voxel scores.
        healthy_mask_values: boolean mask of the healthy voxels among ``scores`` (None: all are healthy).
        threshold: the decision threshold.

    Example:
        >>> fpr_at(np.array([0.1, 0.5, 0.9, 0.95]), np.array([1, 1, 1, 0]), 0.5)
        0.6666666666666666
    """
    s = _values_in(scores, healthy_mask_values)
    if s.size == 0:
        return float("nan")
    return float(np.mean(s >= threshold))


def threshold_at_fpr(healthy_scores: np.ndarray, fpr: float = 0.01) -> float:
    """The threshold that flags a fraction ``fpr`` of healthy voxels: their ``1 - fpr`` quantile.

    Example:
        >>> threshold_at_fpr(np.arange(1000.0), 0.01)
        989.01
    """
    if not 0 < fpr < 1:
        raise ValueError(f"fpr {fpr}: must be in (0, 1)")
    return float(np.quantile(np.asarray(healthy_scores, dtype=np.float64).ravel(), 1.0 - fpr))


def gradient_sharpness(volume: np.ndarray, mask: np.ndarray, zooms=(1.0, 1.0, 1.0)) -> float:
    """Mean gradient magnitude (central differences, per mm) over ``mask``: a sharpness measure.

    Compare a method's output with the clean input: a ratio below 1 means the output is blurrier.

    Example:
        >>> v = np.tile(np.arange(8.0), (8, 8, 1))
        >>> gradient_sharpness(v, np.ones(v.shape, bool), (1, 1, 2))
        0.5
    """
    g = np.gradient(np.asarray(volume, dtype=np.float32), *[float(z) for z in zooms])
    mag = np.sqrt(sum(gi.astype(np.float64) ** 2 for gi in g))
    return float(mag[np.asarray(mask, dtype=bool)].mean())
