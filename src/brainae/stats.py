"""Stage 9b: paired comparisons between models on one evaluation (``slices.csv`` / ``volumes.csv``).

For every condition and every pair of models scored on it (baselines included), on the slices both were scored
on:

- **per slice** (the thesis's test, 5.5 / Fig 5.24): the dependent-samples t-test on the slice metrics,
  ``scipy.stats.ttest_rel`` (N - 1 degrees of freedom). Slices of one volume are not independent, so with
  thousands of slices nearly every difference comes out "significant";
- **per volume** (the honest unit): the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, two-sided, exact
  for small samples) on the per-volume means of the metric. Distribution-free, because volume means of MSE are
  skewed; with ``n`` volumes the smallest attainable two-sided p is ``2 / 2**n`` (0.125 for 4 volumes).

Both sets of p-values are Holm-corrected across the pairs of one condition and metric (family-wise error
0.05). Pairs whose differences are all exactly zero get p = 1 (the tests are undefined there). PSNR values are
the capped ones of the evaluation tables (identical images: 100 dB).

``stats.csv`` columns: ``metric, condition, model_a, model_b, n_slices, n_volumes, mean_a, mean_b,
diff`` (a - b), ``better`` (the model with the better mean: lower MSE/DSSIM, higher PSNR), ``t_slice,
p_slice, p_slice_holm, w_volume, p_volume, p_volume_holm, significant_slice, significant_volume`` (Holm p <
``alpha``), ``p_volume_min`` (the smallest Holm-corrected per-volume p-value that this many volumes and pairs
can give at all: ``pairs x 2 / 2**n_volumes``, capped at 1) and ``volume_can_reach`` (``p_volume_min <
alpha``: False means the per-volume test has too few volumes to find any difference significant, whatever the
data).

Metric names, directions (lower MSE/DSSIM, higher PSNR is better) and PSNR's cap come from
:data:`brainae.metrics.METRICS`.

Example:
    >>> table = paired_tests(pd.read_csv("eval/slices.csv"), "mse")   # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np

from brainae.errors import BrainaeError
from brainae.metrics import METRICS

__all__ = [
    "HIGHER_IS_BETTER",
    "holm",
    "mean_ci",
    "min_volume_p",
    "paired_tests",
    "pvalue_matrix",
    "plot_pvalue_matrix",
    "run_stats",
]

HIGHER_IS_BETTER = {name: m.higher_is_better for name, m in METRICS.items()}
"""Direction of each metric, from :data:`brainae.metrics.METRICS`."""
ALPHA = 0.05


def holm(pvalues: Any) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaN stays NaN.

    Example:
        >>> holm([0.01, 0.04, 0.03]).round(3).tolist()
        [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def _ttest(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    from scipy.stats import ttest_rel

    d = a - b
    if len(d) < 2 or np.all(d == 0):
        return 0.0, 1.0
    if np.all(d == d[0]):  # constant non-zero difference: infinitely significant
        return float(np.sign(d[0]) * np.inf), 0.0
    res = ttest_rel(a, b)
    return float(res.statistic), float(res.pvalue)


def _wilcoxon(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    from scipy.stats import wilcoxon

    d = a - b
    if len(d) < 1 or np.all(d == 0):
        return 0.0, 1.0
    res = wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
    return float(res.statistic), float(res.pvalue)


_PAIRED_COLUMNS = [
    "metric",
    "condition",
    "model_a",
    "model_b",
    "n_slices",
    "n_volumes",
    "mean_a",
    "mean_b",
    "diff",
    "better",
    "t_slice",
    "p_slice",
    "p_slice_holm",
    "w_volume",
    "p_volume",
    "p_volume_holm",
    "significant_slice",
    "significant_volume",
    "p_volume_min",
    "volume_can_reach",
]
"""The columns of :func:`paired_tests`, in order."""


def _pair_record(wide: Any, ma: str, mb: str, metric: str, cond: Any) -> dict[str, Any]:
    """The two tests of one pair of models on one condition (``wide``: one column per model)."""
    pair = wide[[ma, mb]].dropna()
    a, b = pair[ma].to_numpy(float), pair[mb].to_numpy(float)
    vols = pair.groupby(level="volume_id").mean()
    va, vb = vols[ma].to_numpy(float), vols[mb].to_numpy(float)
    t, p_t = _ttest(a, b)
    w, p_w = _wilcoxon(va, vb)
    mean_a, mean_b = float(a.mean()) if len(a) else np.nan, float(b.mean()) if len(b) else np.nan
    if mean_a == mean_b:
        better = ""
    else:
        better = ma if (mean_a > mean_b) == HIGHER_IS_BETTER[metric] else mb
    return {
        "metric": metric,
        "condition": cond,
        "model_a": ma,
        "model_b": mb,
        "n_slices": len(a),
        "n_volumes": len(va),
        "mean_a": mean_a,
        "mean_b": mean_b,
        "diff": mean_a - mean_b,
        "better": better,
        "t_slice": t,
        "p_slice": p_t,
        "w_volume": w,
        "p_volume": p_w,
    }


def _adjust(block: list[dict[str, Any]], alpha: float) -> None:
    """Holm-adjust the p-values of one condition's pairs, in place; add the smallest reachable volume p."""
    for key in ("slice", "volume"):
        adj = holm([r[f"p_{key}"] for r in block])
        for r, p in zip(block, adj, strict=True):
            r[f"p_{key}_holm"] = float(p)
            r[f"significant_{key}"] = bool(p < alpha)
    for r in block:
        r["p_volume_min"] = min_volume_p(r["n_volumes"], len(block))
        r["volume_can_reach"] = bool(r["p_volume_min"] < alpha)


def paired_tests(slices: Any, metric: str = "mse", *, alpha: float = ALPHA) -> Any:
    """Paired tests between every pair of models, per condition (see the module notes).

    Args:
        slices: the evaluation's per-slice table (``slices.csv``).
        metric: a name from :data:`brainae.metrics.METRICS` (``mse``, ``dssim``, ``psnr``).
        alpha: family-wise significance level after Holm correction.

    Returns:
        pandas DataFrame, one row per (condition, pair), columns as in the module notes.
    """
    import pandas as pd

    if metric not in HIGHER_IS_BETTER:
        raise BrainaeError(f"unknown metric {metric!r}; choose one of {', '.join(HIGHER_IS_BETTER)}")
    missing = {"model", "condition", "volume_id", "slice", metric} - set(slices.columns)
    if missing:
        raise BrainaeError(
            f"the slice table lacks column(s) {', '.join(sorted(missing))}; is it a slices.csv?"
        )
    records = []
    df = slices.copy()
    df["volume_id"] = df["volume_id"].astype(str)
    for cond in pd.unique(df["condition"]):
        sub = df[df["condition"] == cond]
        wide = sub.pivot_table(index=["volume_id", "slice"], columns="model", values=metric, observed=True)
        models = [m for m in pd.unique(sub["model"]) if m in wide.columns]
        start = len(records)
        for ma, mb in itertools.combinations(models, 2):
            records.append(_pair_record(wide, ma, mb, metric, cond))
        _adjust(records[start:], alpha)
    return pd.DataFrame.from_records(records, columns=_PAIRED_COLUMNS)


MIN_VOLUMES_FOR_CI = 3
"""Fewer volumes than this: :func:`mean_ci` falls back to the slices (and says so)."""


def mean_ci(values: Any, volumes: Any, *, level: float = 0.95) -> tuple[float, float, float, str]:
    """Mean of per-slice ``values`` with a ``level`` confidence interval, and the unit it was computed over.

    With at least :data:`MIN_VOLUMES_FOR_CI` volumes the interval is Student's t over the per-volume means
    (volumes are the independent unit) and the unit is ``"volumes"``; with fewer it is over the slices,
    unit ``"slices"``: slices of one volume are not independent, so that interval is too narrow, and callers
    must say so. Paired differences work the same way (pass the per-slice differences).

    Args:
        values: one number per slice.
        volumes: the volume of each slice (same length).
        level: confidence level.

    Returns:
        ``(mean, low, high, unit)``; ``low``/``high`` are NaN when there are fewer than 2 units.

    Example:
        >>> m, lo, hi, unit = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], ["a", "a", "b", "b", "c", "c"])
        >>> round(m, 2), unit, round(lo, 2), round(hi, 2)
        (3.5, 'volumes', -1.47, 8.47)
    """
    import pandas as pd
    from scipy.stats import t as student

    df = pd.DataFrame({"v": np.asarray(values, dtype=np.float64), "g": np.asarray(volumes).astype(str)})
    df = df[np.isfinite(df["v"])]
    per_volume = df.groupby("g")["v"].mean()
    if len(per_volume) >= MIN_VOLUMES_FOR_CI:
        sample, unit = per_volume.to_numpy(), "volumes"
    else:
        sample, unit = df["v"].to_numpy(), "slices"
    n = len(sample)
    mean = float(df["v"].mean()) if unit == "slices" else float(sample.mean()) if n else float("nan")
    if n < 2:
        return mean, float("nan"), float("nan"), unit
    half = float(student.ppf(0.5 + level / 2, n - 1) * sample.std(ddof=1) / np.sqrt(n))
    return mean, mean - half, mean + half, unit


def min_volume_p(n_volumes: int, n_pairs: int = 1) -> float:
    """The smallest Holm-corrected p-value a two-sided Wilcoxon signed-rank test on ``n_volumes`` paired
    volumes can give in a family of ``n_pairs`` tests: ``n_pairs * 2 / 2**n_volumes`` (capped at 1).

    When it is not below alpha, no difference can be found significant per volume, however large: the test
    has too few volumes, and its p-values say nothing about the models.

    Example:
        >>> min_volume_p(1), min_volume_p(4), min_volume_p(8, n_pairs=6)
        (1.0, 0.125, 0.046875)
    """
    if n_volumes < 1:
        return 1.0
    return float(min(1.0, max(n_pairs, 1) * 2.0 / 2.0**n_volumes))


def pvalue_matrix(table: Any, condition: str, *, level: str = "volume", holm_adjusted: bool = True) -> Any:
    """Symmetric model x model matrix of p-values for one condition (diagonal 1).

    Args:
        table: the output of :func:`paired_tests` (one metric).
        condition: which condition.
        level: ``slice`` (t-test) or ``volume`` (Wilcoxon).
        holm_adjusted: use the Holm-corrected p-values.
    """
    import pandas as pd

    if level not in ("slice", "volume"):
        raise BrainaeError(f"level must be 'slice' or 'volume', got {level!r}")
    col = f"p_{level}_holm" if holm_adjusted else f"p_{level}"
    sub = table[table["condition"] == condition]
    models = list(dict.fromkeys([*sub["model_a"], *sub["model_b"]]))
    mat = pd.DataFrame(np.ones((len(models), len(models))), index=models, columns=models)
    for _, r in sub.iterrows():
        mat.loc[r["model_a"], r["model_b"]] = r[col]
        mat.loc[r["model_b"], r["model_a"]] = r[col]
    return mat


_BINS = (0.0, 0.001, 0.01, 0.05, 1.0000001)
_BIN_LABELS = ("p < 0.001", "p < 0.01", "p < 0.05", "n.s.")
_BIN_COLOURS = ("#1a1a1a", "#7b3294", "#e78ac3", "#f0f0f0")


def plot_pvalue_matrix(table: Any, condition: str, path: str | os.PathLike, *, metric: str = "") -> Path:
    """Save the thesis's Fig 5.24 for one condition: per-slice t-test and per-volume Wilcoxon side by side.

    Cells are coloured by significance band (black p < 0.001, purple < 0.01, pink < 0.05, grey n.s.; Holm
    corrected) and annotated with the p-value.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    from brainae.io import atomic_path

    cmap = ListedColormap(_BIN_COLOURS)
    norm = BoundaryNorm(_BINS, cmap.N)
    mats = [pvalue_matrix(table, condition, level=lv) for lv in ("slice", "volume")]
    n = len(mats[0])
    size = max(4.0, 0.55 * n + 2.0)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size), constrained_layout=True)
    titles = ["per slice: paired t-test (Holm)", "per volume: Wilcoxon signed-rank (Holm)"]
    sub = table[table["condition"] == condition]
    if "volume_can_reach" in sub and len(sub) and not sub["volume_can_reach"].any():
        n_vol = int(sub["n_volumes"].max())
        titles[1] += f"\ntoo few volumes ({n_vol}) to reach significance:\nsmallest possible p "
        titles[1] += f"{float(sub['p_volume_min'].min()):.2f}"
    for ax, mat, title in zip(axes, mats, titles, strict=True):
        values = mat.to_numpy(float)
        ax.imshow(np.nan_to_num(values, nan=1.0), cmap=cmap, norm=norm)
        ax.set_xticks(range(n), mat.columns, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), mat.index, fontsize=8)
        ax.set_title(title, fontsize=10 if "\n" not in title else 9)
        if n <= 16:
            for i in range(n):
                for j in range(n):
                    if i == j:
                        continue
                    v = values[i, j]
                    ax.text(
                        j,
                        i,
                        "nan" if np.isnan(v) else f"{v:.0e}" if v < 0.01 else f"{v:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if v < 0.01 else "black",
                    )
    handles = [Patch(color=c, label=lab) for c, lab in zip(_BIN_COLOURS, _BIN_LABELS, strict=True)]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8)
    label = METRICS[metric].short if metric in METRICS else metric.upper()
    fig.suptitle(f"{label} paired comparisons, condition {condition}".strip())
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def run_stats(
    eval_dir: str | os.PathLike,
    *,
    metrics: tuple[str, ...] | list[str] = ("mse",),
    out: str | os.PathLike | None = None,
    alpha: float = ALPHA,
) -> Path:
    """Paired tests of an evaluation folder: ``stats.csv`` and ``pvalues_<metric>_<condition>.png``.

    Args:
        eval_dir: a ``brainae evaluate`` output folder.
        metrics: which metrics to test.
        out: output folder (default ``EVAL/stats``); an existing one is replaced only if it is a stats
            folder that brainae wrote.
        alpha: family-wise significance level.

    Returns:
        The output folder.
    """
    import pandas as pd

    from brainae.io import atomic_dir, read_marker, relation, write_marker

    eval_dir = Path(eval_dir)
    path = eval_dir / "slices.csv"
    if not path.is_file():
        raise BrainaeError(f"{eval_dir}: no slices.csv; give a folder written by `brainae evaluate`")
    slices = pd.read_csv(path, dtype={"volume_id": str})
    if slices.empty:
        raise BrainaeError(f"{path}: no rows to compare")
    out = Path(out) if out is not None else eval_dir / "stats"
    if relation(out, eval_dir) in ("is", "contains"):
        raise BrainaeError(
            f"{out}: the stats folder would replace the evaluation {eval_dir}; choose another --out"
        )
    if out.is_file() or (
        out.is_dir() and any(out.iterdir()) and (read_marker(out) or {}).get("kind") != "stats"
    ):
        raise BrainaeError(
            f"{out}: exists and is not a stats folder that brainae wrote; brainae replaces only its own, so "
            "choose another --out"
        )
    tables = []
    for metric in metrics:
        tables.append(paired_tests(slices, metric, alpha=alpha))
    result = pd.concat(tables, ignore_index=True)
    with atomic_dir(out) as tmp:  # a rerun replaces the earlier stats folder as a whole
        for metric, table in zip(metrics, tables, strict=True):
            for cond in pd.unique(table["condition"]):
                plot_pvalue_matrix(
                    table, cond, tmp / f"pvalues_{metric}_{_safe(str(cond))}.png", metric=metric
                )
        result.to_csv(tmp / "stats.csv", index=False)
        write_marker(tmp, "stats")
    return out
