"""Relevant-slice selection (thesis 5.2.1.2): three methods, measured side by side on every slice.

Measures are computed on each slice at the volume's own resolution and expressed as fractions, so that
thresholds work at any resolution:

- ``nonzero_frac``: fraction of the slice's pixels that are not zero;
- ``nonzero_mean``: mean of the non-zero pixels divided by the volume's 99.5th percentile of non-zero voxels
  (so that scanners with different intensity scales are comparable);
- ``brain_frac``: fraction of the slice's pixels inside the brain mask (:mod:`brainae.brainmask`).

Methods:

- ``nonzero-count``: keep slices whose ``nonzero_frac`` is above the cohort's first quartile;
- ``nonzero-mean``: keep slices whose ``nonzero_mean`` is above the cohort's first quartile;
- ``brain-mask`` (default): keep slices whose ``brain_frac`` is above ``brain_fraction`` (default 0.045: the
  thesis's 3000 brain pixels of a 256 x 256 slice).
"""

from __future__ import annotations

import numpy as np

from brainae.errors import BrainaeError

METHODS = ("brain-mask", "nonzero-count", "nonzero-mean")
MEASURE = {"brain-mask": "brain_frac", "nonzero-count": "nonzero_frac", "nonzero-mean": "nonzero_mean"}
KEEP_COLUMN = {m: "keep_" + m.replace("-", "_") for m in METHODS}
DEFAULT_BRAIN_FRACTION = 3000 / (256 * 256)


def check_method(method: str) -> str:
    """Return ``method`` or raise a clear error listing the valid names."""
    if method not in METHODS:
        raise BrainaeError(f"unknown selection method {method!r}; choose one of {', '.join(METHODS)}")
    return method


def slice_measures(view: np.ndarray, brain_view: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The three measures for a stack of slices ``view`` (n, H, W); ``brain_view`` is its brain mask.

    Example:
        >>> v = np.zeros((3, 4, 4), np.float32); v[1, :2] = 5.0; v[2] = 1.0
        >>> m = slice_measures(v)
        >>> m["nonzero_frac"].tolist()
        [0.0, 0.5, 1.0]
    """
    n = view.shape[0]
    flat = view.reshape(n, -1)
    nz = flat != 0
    count = nz.sum(axis=1)
    nonzero_voxels = view[view != 0]
    scale = float(np.percentile(nonzero_voxels, 99.5)) if nonzero_voxels.size else 1.0
    scale = scale if scale > 0 else 1.0
    sums = np.where(nz, flat, 0).sum(axis=1, dtype=np.float64)
    mean = np.divide(sums, count, out=np.zeros(n), where=count > 0) / scale
    out = {"nonzero_frac": count / flat.shape[1], "nonzero_mean": mean}
    if brain_view is not None:
        out["brain_frac"] = brain_view.reshape(n, -1).mean(axis=1)
    else:
        out["brain_frac"] = np.full(n, np.nan)
    return out


def cohort_thresholds(measures, brain_fraction: float = DEFAULT_BRAIN_FRACTION) -> dict[str, float]:
    """Thresholds of the three methods for a cohort table with the measure columns (one row per slice)."""
    return {
        "nonzero-count": float(np.quantile(measures["nonzero_frac"], 0.25)),
        "nonzero-mean": float(np.quantile(measures["nonzero_mean"], 0.25)),
        "brain-mask": float(brain_fraction),
    }


def keep_flags(measures, thresholds: dict[str, float]):
    """Add ``keep_<method>`` columns (strictly above the threshold) to a copy of the measures table."""
    out = measures.copy()
    for method in METHODS:
        values = out[MEASURE[method]].to_numpy(dtype=float)
        out[KEEP_COLUMN[method]] = np.nan_to_num(values, nan=-np.inf) > thresholds[method]
    return out
