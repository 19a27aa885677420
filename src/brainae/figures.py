"""Figures of the data stages (inspect, slice selection, split), written as PNG. matplotlib only.

- :func:`inspect_figure`: thesis Fig 5.2 (volumes per size of the slicing axis) with voxel sizes, orientations
  and intensity ranges beside it;
- :func:`selection_counts_figure`: the measure distributions with each method's threshold (Figs 5.3 / 5.4)
  and the slices kept per volume by each method;
- :func:`selection_montage_figure`: every slice of a few volumes, framed green (kept) or red (discarded),
  one row of panels per method (Figs 5.5 / 5.7);
- :func:`split_figure`: the distribution of each attribute per split (Fig 5.9);
- :func:`training_curves_figure`: a training run's loss curves and learning rate (Fig 5.18).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from brainae.io import atomic_path

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    finally:
        _plt().close(fig)
    return path


def inspect_figure(table, path: Path) -> Path:
    """Summary figure of an ``inspect`` table (rows with ``status == 'ok'``)."""
    plt = _plt()
    ok = table[table["status"] == "ok"]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    panels = [
        ("shape", "volumes per shape (voxels)"),
        ("zooms", "volumes per voxel size (mm)"),
        ("axcodes", "volumes per orientation"),
    ]
    for ax, (col, title) in zip(axes, panels):
        counts = ok[col].astype(str).value_counts().sort_index()
        ax.bar(range(len(counts)), counts.to_numpy(), color="#4c72b0")
        ax.set_xticks(range(len(counts)), counts.index, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("volumes")
    ax = axes[3]
    if len(ok):
        ax.hist(ok["max"].astype(float), bins=min(20, max(len(ok), 2)), color="#dd8452", label="max")
        ax.hist(
            ok["mean"].astype(float), bins=min(20, max(len(ok), 2)), color="#55a868", alpha=0.7, label="mean"
        )
        ax.legend(fontsize=8)
    ax.set_title("intensity per volume", fontsize=10)
    bad = len(table) - len(ok)
    fig.suptitle(f"{len(ok)} readable volumes" + (f", {bad} with problems (see inspect.csv)" if bad else ""))
    return _save(fig, path)


def selection_counts_figure(selection, thresholds: dict[str, float], path: Path) -> Path:
    """Distributions of the three measures with thresholds, and slices kept per volume per method."""
    from brainae.select import KEEP_COLUMN, MEASURE, METHODS

    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    for ax, method in zip(axes, METHODS):
        values = selection[MEASURE[method]].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        ax.hist(values, bins=50, color="#4c72b0")
        ax.axvline(thresholds[method], color="#c44e52", lw=2, label=f"threshold {thresholds[method]:.3g}")
        ax.set_title(f"{method}: {MEASURE[method]}", fontsize=10)
        ax.set_ylabel("slices")
        ax.legend(fontsize=8)
    ax = axes[3]
    per_volume = selection.groupby("volume_id")[[KEEP_COLUMN[m] for m in METHODS]].sum()
    x = np.arange(len(per_volume))
    width = 0.27
    for i, method in enumerate(METHODS):
        ax.bar(x + (i - 1) * width, per_volume[KEEP_COLUMN[method]], width, label=method)
    total = selection.groupby("volume_id").size().to_numpy()
    ax.plot(x, total, "k_", ms=10, label="all slices")
    ax.set_xticks(x, [v[:14] for v in per_volume.index], rotation=90, fontsize=6)
    ax.set_ylabel("slices kept")
    ax.set_title("slices kept per volume", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def selection_montage_figure(montages: list[tuple[str, np.ndarray, object]], path: Path) -> Path:
    """Montage of every slice of a few volumes with green (kept) / red (discarded) frames for each method.

    Drawn as one RGB image (one row of thumbnails per volume and method), so it stays fast for any cohort.

    Args:
        montages: ``(volume_id, thumbnails (n, h, w) in [0, 1], selection rows of that volume)`` per volume.
    """
    from brainae.select import KEEP_COLUMN, METHODS

    plt = _plt()
    n_max = max(t.shape[0] for _, t, _ in montages)
    cols = min(n_max, 30)
    step = int(np.ceil(n_max / cols))
    h, w = montages[0][1].shape[1:]
    pad = max(2, h // 16)
    cell_h, cell_w = h + 2 * pad, w + 2 * pad
    rows = len(montages) * len(METHODS)
    canvas = np.ones((rows * cell_h, cols * cell_w, 3), np.float32)
    labels = []
    green, red = np.array([0.17, 0.63, 0.17]), np.array([0.84, 0.15, 0.16])
    for v, (vid, thumbs, sel) in enumerate(montages):
        for m, method in enumerate(METHODS):
            r = v * len(METHODS) + m
            labels.append(f"{vid[:14]} {method}")
            keep = sel[KEEP_COLUMN[method]].to_numpy()
            for c in range(cols):
                k = c * step
                if k >= thumbs.shape[0]:
                    continue
                y, x = r * cell_h, c * cell_w
                canvas[y : y + cell_h, x : x + cell_w] = green if keep[k] else red
                canvas[y + pad : y + pad + h, x + pad : x + pad + w] = np.clip(thumbs[k], 0, 1)[..., None]
    fig, ax = plt.subplots(figsize=(min(cols * 0.55, 18), rows * 0.6 + 0.6))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_yticks([(i + 0.5) * cell_h for i in range(rows)], labels, fontsize=7)
    ax.set_xticks([(c + 0.5) * cell_w for c in range(cols)], [str(c * step) for c in range(cols)], fontsize=6)
    ax.set_xlabel("slice index")
    ax.set_title("slices kept (green) and discarded (red) by each method", fontsize=9)
    return _save(fig, path)


def split_figure(volumes, path: Path) -> Path:
    """Bars of each attribute's distribution per split (fractions of the split's volumes)."""
    plt = _plt()
    attrs = [a for a in ("sex", "age_group", "ethnicity") if a in volumes]
    fig, axes = plt.subplots(1, len(attrs) + 1, figsize=(4.2 * (len(attrs) + 1), 3.6), squeeze=False)
    splits = [s for s in ("train", "val", "test") if (volumes["split"] == s).any()]
    counts = volumes["split"].value_counts()
    ax = axes[0, 0]
    ax.bar(splits, [counts.get(s, 0) for s in splits], color=["#4c72b0", "#dd8452", "#55a868"][: len(splits)])
    ax.set_title("volumes per split", fontsize=10)
    for ax, attr in zip(axes[0, 1:], attrs):
        values = sorted(volumes[attr].fillna("unknown").astype(str).unique())
        width = 0.8 / max(len(splits), 1)
        for i, s in enumerate(splits):
            part = volumes[volumes["split"] == s][attr].fillna("unknown").astype(str)
            frac = [float((part == val).mean()) if len(part) else 0.0 for val in values]
            ax.bar(np.arange(len(values)) + i * width, frac, width, label=s)
        ax.set_xticks(np.arange(len(values)) + width * (len(splits) - 1) / 2, values, fontsize=8)
        ax.set_title(f"{attr} per split (fraction)", fontsize=10)
        ax.legend(fontsize=7)
    return _save(fig, path)


def training_curves_figure(rows: list[dict], path: Path, title: str = "") -> Path:
    """Training curves (thesis Fig 5.18): train and val loss per epoch (log scale) and the learning rate.

    Args:
        rows: the rows of a run's ``metrics.csv`` (:func:`brainae.train.read_metrics`).
        path: the PNG to write.
        title: the figure's title (e.g. the run's name).
    """
    plt = _plt()
    epochs = [r["epoch"] for r in rows]
    fig, (ax, ax_lr) = plt.subplots(
        2, 1, figsize=(6.4, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, constrained_layout=True
    )
    ax.plot(epochs, [r["train_loss"] for r in rows], "o-", ms=3, label="train loss")
    ax.plot(epochs, [r["val_loss"] for r in rows], "s-", ms=3, label="val loss")
    if rows:
        best = min(rows, key=lambda r: r["val_loss"])
        ax.axvline(best["epoch"], color="0.6", ls=":", lw=1)
        ax.annotate(
            f"best {best['val_loss']:.3g} (epoch {best['epoch']})",
            (best["epoch"], best["val_loss"]),
            textcoords="offset points",
            xytext=(4, 8),
            fontsize=8,
        )
    if all(r["train_loss"] > 0 and r["val_loss"] > 0 for r in rows):
        ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    ax_lr.plot(epochs, [r["lr"] for r in rows], "k.-", ms=3)
    ax_lr.set_yscale("log")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    ax_lr.grid(alpha=0.3)
    return _save(fig, Path(path))
