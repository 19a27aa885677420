"""Stage 9c: one self-contained HTML report from the tables on disk (no model code).

Inputs, in any order (a folder holding several of them, e.g. a grid of runs, is searched one level down):

- a **dataset** folder (``settings.json`` + ``index.csv``): inspect summary (``inspect.csv`` if present),
  slices kept per selection method (``selection.csv``), split distribution (``split.csv``), its figures;
- a training **run** folder (``metrics.csv``): training and validation curves (thesis Figs 5.18 / 5.21);
- an **evaluation** folder (``summary.csv``, from ``brainae evaluate``): the thesis's Table 5.2 / 5.3 layout
  on clean input, corrupted-input and baseline tables, bar charts (Figs 5.19 / 5.25), qualitative grids from
  ``examples.npz`` (Figs 5.20 / 5.22 / 5.23), provenance; its ``stats/`` subfolder if present;
- a **stats** folder (``stats.csv``, from ``brainae stats``): p-value matrices (Fig 5.24) and which
  differences survive at the volume level.

The HTML embeds every figure as a base64 PNG and has no external reference. Every section is always present
with a stable id (:data:`SECTIONS`); a missing piece gets a short note instead of content.

Example:
    >>> build_report(["prepared", "runs/res-unet", "eval"], "report.html")   # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainae.errors import BrainaeError, BrainaeWarning
from brainae.metrics import METRICS as _REGISTRY
from brainae.metrics import psnr_from_mse

__all__ = ["SECTIONS", "Inputs", "build_report", "classify"]

SECTIONS = {
    "headline": "The answer",
    "overview": "Overview",
    "data": "Data",
    "training": "Training curves",
    "results": "Test metrics on clean input",
    "corrupted": "Corrupted input",
    "baselines": "Baselines",
    "charts": "Bar charts",
    "examples": "Qualitative examples",
    "stats": "Paired tests",
    "provenance": "Provenance",
}
"""Section id -> heading, in report order."""

METRICS = tuple(_REGISTRY)
"""The metrics shown, in table order (:data:`brainae.metrics.METRICS`)."""
LABEL = {name: m.label for name, m in _REGISTRY.items()}
BASELINE_NAMES = ("identity", "nlm", "biharmonic")


@dataclass
class Inputs:
    """The folders given to the report, by kind."""

    datasets: list[Path] = field(default_factory=list)
    runs: list[Path] = field(default_factory=list)
    evals: list[Path] = field(default_factory=list)
    stats: list[Path] = field(default_factory=list)
    inspects: list[Path] = field(default_factory=list)
    unknown: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _csv_columns(path: Path) -> set[str]:
    try:
        with path.open(newline="", encoding="utf-8", errors="replace") as fh:
            first = fh.readline()
    except OSError:
        return set()
    return {c.strip().strip('"') for c in first.strip().split(",")}


EVAL_COLUMNS = {"model", "condition"}
GRID_COLUMNS = {"name", "arch", "status"}


def _kind(path: Path) -> str | None:
    """What a folder is; a ``summary.csv`` is an evaluation only with the evaluation's columns (a grid's
    ``summary.csv`` makes the folder a "grid", whose runs are searched one level down)."""
    if (path / "summary.csv").is_file():
        cols = _csv_columns(path / "summary.csv")
        if EVAL_COLUMNS <= cols:
            return "evals"
        if GRID_COLUMNS <= cols:
            return "grid"
    if (path / "stats.csv").is_file():
        return "stats"
    if (path / "settings.json").is_file() and (path / "index.csv").is_file():
        return "datasets"
    if (path / "metrics.csv").is_file():
        return "runs"
    if {"file", "status"} <= _csv_columns(path / "inspect.csv"):
        return "inspects"
    return None


def classify(paths: list[str | os.PathLike]) -> Inputs:
    """Sort folders into datasets, runs, evaluations and stats (a parent folder is searched one level down).

    Raises:
        BrainaeError: a path that does not exist.
    """
    found = Inputs()
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise BrainaeError(
                f"{p}: no such folder; give run, evaluation, stats, dataset or inspect folders"
            )
        if p.is_file():
            p = p.parent
        kind = _kind(p)
        if kind == "grid":
            note = f"{p}: a grid folder (its summary.csv is not an evaluation); its runs are included"
            if note not in found.notes:
                found.notes.append(note)
                warnings.warn(note, BrainaeWarning, stacklevel=2)
            kind = None
        targets = [(p, kind)] if kind else [(c, _kind(c)) for c in sorted(p.iterdir()) if c.is_dir()]
        targets = [(c, k) for c, k in targets if k and k != "grid"]
        if not targets:
            warnings.warn(
                f"{p}: not a run, evaluation, stats, dataset or inspect folder; skipped",
                BrainaeWarning,
                stacklevel=2,
            )
            found.unknown.append(p)
        for c, k in targets:
            lst = getattr(found, k)
            if c not in lst:
                lst.append(c)
    for e in found.evals:
        if (e / "stats" / "stats.csv").is_file() and e / "stats" not in found.stats:
            found.stats.append(e / "stats")
    return found


# ------------------------------------------------------------------------------------------ html helpers


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _png_bytes(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def _figure(image: Any, alt: str, caption: str) -> str:
    """One figure: a matplotlib figure or PNG bytes, embedded, with alt text and a caption (plain text)."""
    data = image if isinstance(image, bytes) else _png_bytes(image)
    return f"<figure>{_img(data, alt)}<figcaption>{_esc(caption)}</figcaption></figure>"


FIGURE_TEXT = {
    "inspect": (
        "Bar charts of volumes per shape, voxel size and orientation, and histograms of each volume's maximum "
        "and mean intensity.",
        "What brainae inspect found: how many volumes share each shape, voxel size and orientation, and the "
        "spread of their maximum and mean intensities.",
    ),
    "selection_counts": (
        "Histograms of each slice's brain fraction, nonzero fraction and nonzero mean with the threshold of "
        "each selection method, and a bar chart of slices kept per volume by each method.",
        "Relevant-slice selection: the per-slice measure each method thresholds (red line: its threshold) and "
        "the slices each method keeps per volume.",
    ),
    "selection_montage": (
        "Grid of every third slice of two volumes, one row per selection method, framed green where the "
        "method keeps the slice and red where it discards it.",
        "Which slices each selection method keeps (green) and discards (red), for two volumes.",
    ),
    "split": (
        "Bar charts of volumes per split and of the sex, age-group and ethnicity fractions in each split.",
        "The subject-level split: volumes per split and how sex, age group and ethnicity are distributed "
        "over train, validation and test ('unknown' where the demographics give none).",
    ),
}
"""Known figure file stems -> (alt text, caption)."""


def _file_figure(path: Path) -> str:
    alt, caption = FIGURE_TEXT.get(
        path.stem, (f"Figure {path.stem.replace('_', ' ')}", f"{path.name} from {path.parent}")
    )
    return _figure(path.read_bytes(), alt, caption)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _table(df: Any, *, bold: dict[tuple[int, str], bool] | None = None, index: bool = False) -> str:
    """A pandas table as escaped HTML; ``bold`` marks cells (row position, column) to emphasise."""
    cols = ([df.index.name or ""] if index else []) + [str(c) for c in df.columns]
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = []
    for i, (idx, row) in enumerate(df.iterrows()):
        cells = [f"<th>{_esc(idx)}</th>"] if index else []
        for c in df.columns:
            v = row[c]
            text = _esc("" if v is None or (isinstance(v, float) and np.isnan(v)) else v)
            cells.append(f"<td><b>{text}</b></td>" if bold and bold.get((i, str(c))) else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _fmt(metric: str, mean: float, std: float | None = None) -> str:
    m = _REGISTRY[metric]
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return ""
    if std is None or (isinstance(std, float) and np.isnan(std)):
        return m.format(mean)
    return f"{m.format(mean)} ± {m.format(std)}"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _read_csv(path: Path) -> Any:
    import pandas as pd

    try:
        return pd.read_csv(path)
    except (OSError, ValueError):  # unreadable or malformed (parser errors are ValueErrors): missing
        return None


# ---------------------------------------------------------------------------------------------- data


def _inspect_part(folder: Path, inspect: Any) -> str:
    parts = [f"<h4>Inspected volumes ({len(inspect)}, {folder})</h4>"]
    if "status" in inspect:
        bad = inspect[inspect["status"].astype(str) != "ok"]
        listed = "; ".join(f"{r['file']} ({r['status']})" for _, r in bad.head(10).iterrows())
        parts.append(
            f"<p>{len(inspect) - len(bad)} usable"
            + (f", {len(bad)} not: {_esc(listed)}" if listed else ", none unusable")
            + ".</p>"
        )
    cols = [c for c in ("shape", "zooms", "axcodes", "dtype") if c in inspect]
    for c in cols:
        vc = inspect[c].astype(str).value_counts().rename("volumes").to_frame()
        vc.index.name = c
        parts.append(_table(vc.head(10), index=True))
    if not cols:
        parts.append(_table(inspect.head(20)))
    if (folder / "inspect.png").is_file():
        parts.append(_file_figure(folder / "inspect.png"))
    return "".join(parts)


def _data_section(datasets: list[Path], inspects: list[Path] | None = None) -> str:
    inspects = list(inspects or [])
    parts = []
    for folder in inspects:
        table = _read_csv(folder / "inspect.csv")
        if table is not None:
            parts.append(f"<h3>{_esc(folder.name)}</h3>" + _inspect_part(folder, table))
    if not datasets:
        return "".join(parts) or _note(
            "No dataset folder given (pass the prepared dataset folder to include its summary)."
        )
    for d in datasets:
        parts.append(f"<h3>{_esc(d.name)}</h3>")
        settings = _read_json(d / "settings.json")
        prep = settings.get("preprocessing", {})
        if prep:
            parts.append(
                "<p>Preprocessing: " + _esc(", ".join(f"{k} = {v}" for k, v in prep.items())) + "</p>"
            )
        index = _read_csv(d / "index.csv")
        if index is not None and "split" in index:
            g = index.groupby("split")
            counts = g.size().rename("slices").to_frame()
            counts["volumes"] = g["volume_id"].nunique()
            parts.append("<h4>Split sizes</h4>" + _table(counts, index=True))
        inspect = _read_csv(d / "inspect.csv")
        if inspect is not None:
            parts.append(_inspect_part(d, inspect))
        elif not inspects:
            parts.append(
                _note(
                    "No inspect.csv: pass the folder that `brainae inspect FOLDER --out INSPECT` wrote to "
                    "include what it found."
                )
            )
        sel = _read_csv(d / "selection.csv")
        if sel is not None:
            keep = [c for c in sel.columns if c.startswith("keep_")]
            if keep:
                kept = sel[keep].astype(bool).sum().rename("slices kept").to_frame()
                kept.index = [k.removeprefix("keep_").replace("_", "-") for k in keep]
                kept.index.name = "selection method"
                kept["of all slices"] = [f"{v / max(len(sel), 1):.1%}" for v in kept["slices kept"]]
                parts.append("<h4>Relevant slices per selection method</h4>" + _table(kept, index=True))
        else:
            parts.append(_note("No selection.csv in the dataset folder."))
        split = _read_csv(d / "split.csv")
        if split is not None:
            parts.append("<h4>Split distribution</h4>" + _table(split))
        figs = sorted((d / "figures").glob("*.png")) if (d / "figures").is_dir() else []
        for f in figs:
            parts.append(_file_figure(f))
    return "".join(parts)


# ------------------------------------------------------------------------------------------- training


def _training_section(runs: list[Path]) -> str:
    if not runs:
        return _note("No training run folder given (pass RUN folders with a metrics.csv for the curves).")
    plt = _plt()
    frames = {r.name: _read_csv(r / "metrics.csv") for r in runs}
    frames = {k: v for k, v in frames.items() if v is not None and "epoch" in v}
    if not frames:
        return _note("The run folders have no readable metrics.csv.")
    keys = [k for k in ("train_loss", "val_loss") if any(k in v for v in frames.values())]
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(6 * max(len(keys), 1), 4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=False):
        for name, df in frames.items():
            if key in df:
                ax.plot(df["epoch"], df[key], label=name, lw=1.2)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(key.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    figure = _figure(
        fig,
        "Line charts of training and validation loss per epoch, log scale, one line per run.",
        "Training and validation loss per epoch (log scale; thesis Figs 5.18 / 5.21). The validation loss "
        "includes the L2 penalty where one was used.",
    )
    rows = []
    for run in runs:
        df = frames.get(run.name)
        cfg = _run_config(run)
        row = {
            "run": run.name,
            "arch": cfg.get("arch", ""),
            "loss": cfg.get("loss", ""),
            "L2": _l2_text(cfg.get("l2")),
            "augment": {True: "yes", False: "no"}.get(cfg.get("augment"), ""),
        }
        if df is not None and "val_loss" in df and len(df):
            best = df.loc[df["val_loss"].idxmin()]
            row.update(
                {
                    "epochs": int(df["epoch"].max()),
                    "best epoch": int(best["epoch"]),
                    "best val loss": f"{best['val_loss']:.3e}",
                }
            )
            if "val_psnr" in df:
                row["val PSNR at best"] = f"{best['val_psnr']:.2f}"
        rows.append(row)
    import pandas as pd

    return figure + _table(pd.DataFrame(rows))


def _l2_text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "" if value is None else str(value)
    return f"{value:g}" if value > 0 else "none"


def _run_config(run: Path) -> dict:
    """A run's training configuration from its config.json (flat, or under "config" as train writes it)."""
    cfg = _read_json(run / "config.json")
    return cfg["config"] if isinstance(cfg.get("config"), dict) else cfg


# -------------------------------------------------------------------------------------------- results


def _training_info(prov: dict, name: str) -> dict:
    for m in prov.get("models", []):
        if m.get("name") == name:
            t = dict(m.get("training") or {})
            if isinstance(t.get("config"), dict):
                t = {**t["config"], **t}
            return t
    return {}


def _results_table(summary: Any, prov: dict, condition: str) -> str:
    import pandas as pd

    sub = summary[summary["condition"] == condition]
    sub = sub[[not _is_target(str(m), condition) for m in sub["model"]]].reset_index(drop=True)
    rows = []
    for _, r in sub.iterrows():
        t = _training_info(prov, r["model"])
        l2 = t.get("l2", t.get("weight_decay", ""))
        val = t.get("best_val_loss", t.get("val_loss", ""))
        rows.append(
            {
                "Model": r["model"],
                "trained": _origin(prov, str(r["model"]), str(r["kind"])),
                "arch": next(
                    (m.get("arch") for m in prov.get("models", []) if m["name"] == r["model"]), r["kind"]
                ),
                "loss": t.get("loss", ""),
                "L2": ("Yes" if float(l2) > 0 else "No") if isinstance(l2, int | float) and l2 != "" else l2,
                "Val loss": f"{val:.2e}" if isinstance(val, int | float) else val,
                **{LABEL[m]: _fmt(m, r[f"{m}_mean"], r[f"{m}_std"]) for m in METRICS},
                "n": int(r["n"]),
            }
        )
    table = pd.DataFrame(rows)
    bold: dict[tuple[int, str], bool] = {}
    for m in METRICS:
        vals = sub[f"{m}_mean"].where(sub["kind"] == "model")
        if vals.notna().any():
            best = int(vals.index[_REGISTRY[m].best(vals.to_numpy())])
            bold[(best, LABEL[m])] = True
    return _table(table, bold=bold)


def _origin(prov: dict, name: str, kind: str) -> str:
    """Where a model comes from, in a few words: trained here (and how long), imported, or a baseline."""
    if kind == "baseline":
        return "baseline"
    m = next((m for m in prov.get("models", []) if m.get("name") == name), {})
    source = m.get("source") or {}
    if source:
        return f"imported ({source.get('type', 'external')})" + (
            f", {source['credit']}" if source.get("credit") else ""
        )
    t = m.get("training") or {}
    epochs = t.get("epochs_run", t.get("epochs"))
    return f"here, {epochs} epoch(s)" if epochs else "here"


def _wide(summary: Any, metric: str, models: list[str]) -> Any:
    sub = summary[summary["model"].isin(models)].copy()
    sub["cell"] = [
        "= target" if _is_target(str(m), str(c)) else _fmt(metric, a, b)
        for m, c, a, b in zip(
            sub["model"], sub["condition"], sub[f"{metric}_mean"], sub[f"{metric}_std"], strict=True
        )
    ]
    wide = sub.pivot(index="model", columns="condition", values="cell")
    wide = wide.reindex(
        index=[m for m in models if m in wide.index],
        columns=[c for c in dict.fromkeys(summary["condition"]) if c in wide.columns],
    )
    return wide.fillna("")


HEADLINE_METRIC = "psnr"
"""The metric the headline ranks by (a name of :data:`brainae.metrics.METRICS`)."""


def _is_target(model: str, condition: str) -> bool:
    """identity on clean input returns the target itself: MSE 0, PSNR capped; not a competitor."""
    return model == "identity" and condition == "clean"


def _cis(slices: Any, metrics: tuple[str, ...] = METRICS) -> dict[tuple[str, str, str], tuple]:
    """``{(model, condition, metric): (mean, low, high, unit)}``: 95 % CIs as :func:`brainae.stats.mean_ci`."""
    from brainae.stats import mean_ci

    out: dict[tuple[str, str, str], tuple] = {}
    if slices is None:
        return out
    for (model, cond), g in slices.groupby(["model", "condition"], sort=False):
        for m in metrics:
            if m in g:
                out[(str(model), str(cond), m)] = mean_ci(g[m].to_numpy(float), g["volume_id"].to_numpy())
    return out


def _ci_unit_note(cis: dict) -> str:
    units = {v[3] for v in cis.values()}
    if "slices" in units:
        return (
            "95 % confidence intervals over slices, because the split has fewer than 3 volumes: slices of one "
            "volume are not independent, so these intervals are too narrow."
        )
    return "95 % confidence intervals over volumes (t-interval of the per-volume means)."


def _error_bars(means: Any, keys: list[tuple[str, str, str]], cis: dict) -> np.ndarray | None:
    """2 x N asymmetric error bars (mean - low, high - mean) from ``cis``; None when none is known."""
    lo = np.array([means[i] - cis[k][1] if k in cis else np.nan for i, k in enumerate(keys)], float)
    hi = np.array([cis[k][2] - means[i] if k in cis else np.nan for i, k in enumerate(keys)], float)
    if np.isnan(lo).all():
        return None
    return np.nan_to_num(np.vstack([lo, hi]), nan=0.0)


def _bar_charts(summary: Any, name: str, cis: dict | None = None) -> str:
    plt = _plt()
    cis = cis or {}
    out = []
    conds = list(dict.fromkeys(summary["condition"]))
    first = "clean" if "clean" in conds else conds[0]
    sub = summary[summary["condition"] == first]
    sub = sub[[not _is_target(str(m), first) for m in sub["model"]]].reset_index(drop=True)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 4))
    colours = ["#4c72b0" if k == "model" else "#999999" for k in sub["kind"]]
    for ax, m in zip(np.atleast_1d(axes), METRICS, strict=True):
        means = sub[f"{m}_mean"].to_numpy(float)
        keys = [(str(x), first, m) for x in sub["model"]]
        ax.bar(range(len(sub)), means, yerr=_error_bars(means, keys, cis), color=colours, capsize=3)
        ax.set_xticks(range(len(sub)), sub["model"], rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{LABEL[m]} on {first}")
        if _REGISTRY[m].log_scale:
            ax.set_yscale("log")
    fig.suptitle(f"{name}: mean per model on {first} input (blue: models, grey: baselines)")
    fig.tight_layout()
    left_out = " identity is left out: on clean input it returns the target (MSE 0, PSNR capped at 100 dB)."
    out.append(
        _figure(
            fig,
            f"Bar charts of mean {', '.join(_REGISTRY[m].short for m in METRICS)} per model on {first} input, "
            "with error bars.",
            f"Mean of each metric per model on {first} input; lower MSE and DSSIM, higher PSNR is better; "
            f"MSE and DSSIM on log scales. Error bars: {_ci_unit_note(cis) if cis else 'none (no slices.csv)'}"
            + (left_out if first == "clean" and "identity" in set(summary["model"]) else ""),
        )
    )
    if len(conds) > 1:
        models = list(dict.fromkeys(summary["model"]))
        shown = ("mse", "psnr")
        fig, axes = plt.subplots(1, len(shown), figsize=(15, 4.5))
        width = 0.8 / max(len(models), 1)
        for ax, m in zip(axes, shown, strict=True):
            for k, model in enumerate(models):
                s = summary[summary["model"] == model].set_index("condition").reindex(conds)
                means = np.array(
                    [
                        np.nan if _is_target(model, c) else v
                        for c, v in zip(conds, s[f"{m}_mean"], strict=True)
                    ]
                )
                keys = [(model, c, m) for c in conds]
                bars = _error_bars(means, keys, cis)
                ax.bar(np.arange(len(conds)) + k * width, means, width, yerr=bars, capsize=2, label=model)
            ax.set_xticks(np.arange(len(conds)) + 0.4 - width / 2, conds, rotation=30, ha="right", fontsize=8)
            ax.set_title(f"{LABEL[m]} per condition (corrupted input vs clean target)")
            if _REGISTRY[m].log_scale:
                ax.set_yscale("log")
        axes[-1].legend(
            fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0)
        )  # beside, not over, the bars
        fig.tight_layout()
        out.append(
            _figure(
                fig,
                "Grouped bar charts of mean MSE (log scale) and PSNR per condition, one bar per model and "
                "baseline, with error bars.",
                "Each model's mean MSE and PSNR on every condition, scored against the clean target; 'identity' "
                "is the corrupted input itself, the bar to beat. Error bars: "
                + (_ci_unit_note(cis) if cis else "none (no slices.csv).")
                + (
                    " identity on clean input (MSE 0, PSNR capped at 100 dB) is not drawn."
                    if "clean" in conds
                    else ""
                ),
            )
        )
    return "".join(out)


def _pair_test(tests: Any, cond: str, a: str, b: str) -> Any:
    if tests is None or tests.empty:
        return None
    hit = tests[
        (tests["condition"].astype(str) == cond)
        & (
            ((tests["model_a"] == a) & (tests["model_b"] == b))
            | ((tests["model_a"] == b) & (tests["model_b"] == a))
        )
    ]
    return None if hit.empty else hit.iloc[0]


def _significance(row: Any, alpha: float = 0.05) -> tuple[str, str]:
    """(per-volume verdict, per-slice verdict) of one stats row, in words."""
    if row is None:
        return "not tested", "not tested"
    slice_txt = f"Holm p = {row['p_slice_holm']:.2g}" + (" (significant)" if row["significant_slice"] else "")
    n = int(row["n_volumes"])
    can_reach = bool(row.get("volume_can_reach", True))
    if not can_reach:
        vol_txt = (
            f"too few volumes ({n}) to reach significance: the smallest possible Holm p is "
            f"{float(row.get('p_volume_min', 1.0)):.2f}"
        )
    else:
        verdict = "significant" if row["significant_volume"] else "not significant"
        vol_txt = f"{verdict} (Holm p = {row['p_volume_holm']:.2g}, {n} volumes)"
    return vol_txt, slice_txt


def _paired_difference(slices: Any, cond: str, a: str, b: str) -> str | None:
    """Mean of ``a - b`` over the slices both were scored on, with its 95 % CI (None without slices)."""
    from brainae.stats import mean_ci

    if slices is None:
        return None
    metric = _REGISTRY[HEADLINE_METRIC]
    pair = slices[slices["condition"].astype(str) == cond]
    wide = pair.pivot_table(index=["volume_id", "slice"], columns="model", values=HEADLINE_METRIC)
    if a not in wide or b not in wide:
        return None
    both = wide[[a, b]].dropna()
    mean, lo, hi, _ = mean_ci((both[a] - both[b]).to_numpy(float), both.index.get_level_values("volume_id"))
    return metric.format(mean) + ("" if np.isnan(lo) else f" [{metric.format(lo)}, {metric.format(hi)}]")


def _headline(e: Path, summary: Any, slices: Any, cis: dict) -> str:
    """Per condition: the best entry by :data:`HEADLINE_METRIC`, its margin over the runner-up, CIs, tests."""
    import pandas as pd

    from brainae.stats import paired_tests

    metric = _REGISTRY[HEADLINE_METRIC]
    tests = (
        paired_tests(slices, HEADLINE_METRIC) if slices is not None and HEADLINE_METRIC in slices else None
    )
    rows, sentences = [], []
    for cond in dict.fromkeys(summary["condition"]):
        sub = summary[(summary["condition"] == cond)]
        sub = sub[[not _is_target(str(m), str(cond)) for m in sub["model"]]].reset_index(drop=True)
        if sub.empty:
            continue
        means = sub[f"{HEADLINE_METRIC}_mean"].to_numpy(float)
        order = sorted(range(len(sub)), key=lambda i: -means[i] if metric.higher_is_better else means[i])
        best = str(sub["model"][order[0]])

        def ci_text(model: str, cond: str = str(cond)) -> str:
            c = cis.get((model, cond, HEADLINE_METRIC))
            return "" if c is None or np.isnan(c[1]) else f" [{metric.format(c[1])}, {metric.format(c[2])}]"

        row = {
            "condition": cond,
            "best": best,
            f"best {metric.label} [95 % CI]": metric.format(means[order[0]]) + ci_text(best),
        }
        if len(order) > 1:
            second = str(sub["model"][order[1]])
            diff_txt = _paired_difference(slices, str(cond), best, second) or metric.format(
                means[order[0]] - means[order[1]]
            )
            vol_txt, slice_txt = _significance(_pair_test(tests, str(cond), best, second))
            row.update(
                {
                    "runner-up": second,
                    f"runner-up {metric.label}": metric.format(means[order[1]]) + ci_text(second),
                    "difference [95 % CI]": diff_txt,
                    "per-volume test (Wilcoxon)": vol_txt,
                    "per-slice test (t)": slice_txt,
                }
            )
            unit = f" {metric.unit}" if metric.unit else ""
            sentences.append(
                f"<li><b>{_esc(cond)}</b>: <b>{_esc(best)}</b> is best, {_esc(metric.short)} "
                f"{_esc(metric.format(means[order[0]]))}{_esc(unit)}, {'higher' if metric.higher_is_better else 'lower'} "
                f"than the runner-up {_esc(second)} by {_esc(diff_txt)}{_esc(unit)}; "
                f"per-volume test: {_esc(vol_txt)}.</li>"
            )
        else:
            sentences.append(
                f"<li><b>{_esc(cond)}</b>: only <b>{_esc(best)}</b> was scored "
                f"({_esc(metric.short)} {_esc(metric.format(means[order[0]]))}{' ' + _esc(metric.unit) if metric.unit else ''}).</li>"
            )
        rows.append(row)
    if not rows:
        return _note(f"{e.name}: no condition to rank.")
    n_vol = int(summary["n_volumes"].max()) if "n_volumes" in summary else 0
    intro = (
        f"<p>Ranked by mean {_esc(metric.label)} against the clean target ({'higher' if metric.higher_is_better else 'lower'} "
        f"is better) on {n_vol} test volume(s); identity on clean input is left out (it is the target). "
        f"{_esc(_ci_unit_note(cis)) if cis else ''} Per-volume Wilcoxon and per-slice t-tests are Holm-corrected "
        "over the pairs of a condition; the per-volume test is the one to trust.</p>"
    )
    return intro + "<ul>" + "".join(sentences) + "</ul>" + _table(pd.DataFrame(rows))


def _short_runs(prov: dict) -> str:
    """A note for models trained for only a few epochs: what to expect of them."""
    notes = []
    for m in prov.get("models", []):
        t = m.get("training") or {}
        epochs = t.get("epochs_run", t.get("epochs"))
        if isinstance(epochs, int) and epochs < 20 and not m.get("source") and t.get("init"):
            notes.append(
                f"{m.get('name')} was fine-tuned for {epochs} epoch(s) from the weights of "
                f"{Path(str(t['init'])).name}: a short run that adapts a trained model, so it starts from that "
                "model's quality rather than from scratch."
            )
        elif isinstance(epochs, int) and epochs < 20 and not m.get("source"):
            notes.append(
                f"{m.get('name')} was trained for {epochs} epoch(s) (the thesis trains up to 100 with early "
                "stopping): a short run shows the pipeline, not a converged model, so expect it to score well "
                "below a fully trained one."
            )
    return "".join(_note(n) for n in notes)


def _example_grids(path: Path) -> str:
    if not path.is_file():
        return _note(f"{path.parent.name}: no examples.npz.")
    plt = _plt()
    ex = np.load(path, allow_pickle=False)
    conds, models = [str(c) for c in ex["conditions"]], [str(m) for m in ex["models"]]
    evaluated = ex["evaluated"] if "evaluated" in ex else np.ones(len(conds), bool)
    target, inputs, outputs = ex["target"], ex["inputs"], ex["outputs"]
    k = target.shape[0]
    if k == 0:
        return _note(f"{path.parent.name}: examples.npz holds no slices.")
    parts = []
    for ci, cond in enumerate(conds):
        shown = [mi for mi in range(len(models)) if not np.isnan(outputs[mi, ci]).all()]
        cols = 2 + len(shown)
        fig, axes = plt.subplots(k, cols, figsize=(1.6 * cols, 1.7 * k), squeeze=False)
        for r in range(k):
            panels = [("input", inputs[ci, r])] + [(models[mi], outputs[mi, ci, r]) for mi in shown]
            panels.append(("target", target[r]))
            for c, (title, img) in enumerate(panels):
                ax = axes[r][c]
                ax.imshow(np.rot90(img), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if title not in ("target",):
                    mse = float(np.mean((img - target[r]) ** 2))
                    ax.set_xlabel(f"{psnr_from_mse(mse):.1f} dB" if mse > 1e-10 else "identical", fontsize=6)
                if r == 0:
                    ax.set_title(title, fontsize=7)
        fig.suptitle(f"{cond}" + ("" if evaluated[ci] else " (custom corruption, examples only)"), fontsize=9)
        fig.tight_layout()
        label = "" if evaluated[ci] else " (custom corruption, examples only)"
        names = ", ".join(models[mi] for mi in shown)
        parts.append(
            f"<h4>{_esc(cond)}{label}</h4>"
            + _figure(
                fig,
                f"Grid of {k} example slices under {cond}: columns are the corrupted input, the outputs of "
                f"{names}, and the clean target; PSNR under each panel.",
                f"{cond}{label}: each row is one fixed slice; left the corrupted input, then each model's and "
                f"baseline's output ({names}), right the clean target. Under each panel its PSNR against the "
                "target ('identical' where it equals the target).",
            )
        )
    rows = ", ".join(f"{v} slice {s}" for v, s in zip(ex["volume_id"], ex["slice"], strict=True))
    return f"<p>Slices: {_esc(rows)}; PSNR of each panel against the target below it.</p>" + "".join(parts)


def _baselines_part(summary: Any, prov: dict, models: list[str]) -> str:
    """What each baseline is, and per condition the best model against the best baseline (no table repeats)."""
    import pandas as pd

    base = [m for m in models if m in BASELINE_NAMES]
    trained = [m for m in models if m not in BASELINE_NAMES]
    params = prov.get("baselines", {})  # brainae.baselines.SLICE_BASELINES, as the evaluation recorded it
    txt = (
        "<p>Classical methods run on the same corrupted slices as the models; identity, the corrupted input "
        "itself, is the score to beat.</p><ul>"
    )
    for b in base:
        p = params.get(b) if isinstance(params.get(b), dict) else {}
        rest = ", ".join(f"{k}={v}" for k, v in p.items() if k != "what")
        txt += (
            f"<li><b>{_esc(b)}</b>: {_esc(p.get('what', ''))}"
            + (f" ({_esc(rest)})" if rest else "")
            + "</li>"
        )
    txt += "</ul>"
    metric = _REGISTRY[HEADLINE_METRIC]
    rows = []
    for cond in dict.fromkeys(summary["condition"]):
        sub = summary[summary["condition"] == cond].set_index("model")[f"{HEADLINE_METRIC}_mean"]
        bs = [b for b in base if b in sub.index and not _is_target(b, str(cond))]
        ms = [m for m in trained if m in sub.index]
        if not bs or not ms:
            continue
        bb = bs[metric.best(sub[bs].to_numpy())]
        bm = ms[metric.best(sub[ms].to_numpy())]
        diff = float(sub[bm] - sub[bb])
        wins = diff > 0 if metric.higher_is_better else diff < 0
        rows.append(
            {
                "condition": cond,
                "best model": bm,
                "best baseline": bb,
                f"model - baseline, {metric.label}": metric.format(diff),
                "model beats the baseline": "yes" if wins else "no",
            }
        )
    if rows:
        txt += (
            f"<p>Per condition, the best trained model against the best baseline that applies (mean "
            f"{_esc(metric.label)}; the full tables are under Corrupted input).</p>"
            + _table(pd.DataFrame(rows))
        )
    return txt


def _eval_sections(evals: list[Path]) -> dict[str, str]:
    import pandas as pd

    out = {
        k: [] for k in ("headline", "results", "corrupted", "baselines", "charts", "examples", "provenance")
    }
    for e in evals:
        summary = _read_csv(e / "summary.csv")
        prov = _read_json(e / "provenance.json")
        head = f"<h3>{_esc(e.name)}</h3>"
        if summary is None or summary.empty or not EVAL_COLUMNS <= set(summary.columns):
            for k in out:
                out[k].append(
                    head + _note(f"{e}: summary.csv is empty, unreadable or not an evaluation; skipped.")
                )
            continue
        conds = list(dict.fromkeys(summary["condition"]))
        models = list(dict.fromkeys(summary["model"]))
        split = prov.get("split", "test")
        slices = _read_csv(e / "slices.csv")
        if slices is not None and not {"model", "condition", "volume_id", "slice"} <= set(slices.columns):
            slices = None
        if slices is not None:
            slices["volume_id"] = slices["volume_id"].astype(str)
        cis = _cis(slices)
        out["headline"].append(head + _headline(e, summary, slices, cis) + _short_runs(prov))
        if "clean" in conds:
            out["results"].append(
                head + f"<p>{_esc(split)} split, clean input; mean ± sd over slices (n = slices). Best "
                "per column in bold. Layout of thesis Tables 5.2 / 5.3. identity is not listed: on clean "
                "input it is the target itself (MSE 0, PSNR capped at 100 dB).</p>"
                + _results_table(summary, prov, "clean")
            )
        else:
            out["results"].append(head + _note("This evaluation has no 'clean' condition."))
        corrupted = [c for c in conds if c != "clean"]
        if corrupted:
            txt = (
                head + "<p>Each corrupted input scored against the clean target; 'identity' is the corrupted "
            )
            txt += "input itself ('= target' on clean input: MSE 0, PSNR capped at 100 dB).</p>"
            for m in METRICS:
                txt += f"<h4>{LABEL[m]}</h4>" + _table(_wide(summary, m, models), index=True)
            out["corrupted"].append(txt)
        else:
            out["corrupted"].append(head + _note("Only clean input was evaluated (use --conditions)."))
        if any(m in BASELINE_NAMES for m in models):
            out["baselines"].append(head + _baselines_part(summary, prov, models))
        else:
            out["baselines"].append(head + _note("No baselines in this evaluation."))
        out["charts"].append(head + _bar_charts(summary, e.name, cis))
        out["examples"].append(head + _example_grids(e / "examples.npz"))
        out["provenance"].append(head + _provenance(prov, e))
    del pd
    return {k: "".join(v) for k, v in out.items()}


def _provenance(prov: dict, folder: Path) -> str:
    import pandas as pd

    if not prov:
        return _note(f"{folder}: no provenance.json.")
    rows = [
        {
            "model": m.get("name"),
            "arch": m.get("arch"),
            "checkpoint": m.get("path"),
            "sha256": str(m.get("sha256", ""))[:16],
            "source": json.dumps(m.get("source")) if m.get("source") else "trained with brainae",
        }
        for m in prov.get("models", [])
    ]
    ds = prov.get("dataset", {})
    facts = {
        "dataset": ds.get("path"),
        "dataset preprocessing": json.dumps(ds.get("settings", {}).get("preprocessing")),
        "split": prov.get("split"),
        "slices / volumes": f"{prov.get('n_slices')} / {prov.get('n_volumes')}",
        "conditions": ", ".join(prov.get("conditions", [])),
        "seed": prov.get("seed"),
        "seeding": prov.get("seeding"),
        "PSNR": f"peak {prov.get('psnr_peak')}, identical images capped at {prov.get('psnr_cap_db')} dB",
        "brainae version": prov.get("brainae_version"),
        "versions": json.dumps(prov.get("versions")),
        "device": prov.get("device"),
        "created": prov.get("created"),
    }
    kv = pd.DataFrame({"value": [str(v) for v in facts.values()]}, index=list(facts))
    kv.index.name = "fact"
    txt = _table(kv, index=True)
    if rows:
        txt += "<h4>Checkpoints</h4>" + _table(pd.DataFrame(rows))
    return txt


# ---------------------------------------------------------------------------------------------- stats


def _stats_section(stats_dirs: list[Path]) -> str:
    if not stats_dirs:
        return _note("No paired tests yet (run `brainae stats EVAL`, then rebuild the report).")
    parts = []
    for s in stats_dirs:
        table = _read_csv(s / "stats.csv")
        name = f"{s.parent.name}/{s.name}" if s.name == "stats" else s.name
        parts.append(f"<h3>{_esc(name)}</h3>")
        if table is None or table.empty:
            parts.append(_note(f"{s}: stats.csv is empty or unreadable."))
            continue
        parts.append(
            "<p>Per-slice paired t-test (thesis) and per-volume Wilcoxon signed-rank test on volume means, "
            "both Holm-corrected across the pairs of a condition. Slices of one volume are not independent: "
            "the per-volume test is the one to trust.</p>"
        )
        if "volume_can_reach" in table and not table["volume_can_reach"].astype(bool).all():
            short = table[~table["volume_can_reach"].astype(bool)]
            n_vol = sorted({int(v) for v in short["n_volumes"]})
            parts.append(
                _note(
                    f"Too few volumes to reach significance: with {', '.join(map(str, n_vol))} test volume(s) "
                    f"the per-volume test cannot give a Holm-corrected p below alpha in {len(short)} of "
                    f"{len(table)} comparisons (smallest possible p: {float(short['p_volume_min'].min()):.2f}), "
                    "whatever the models do. Its p-values there say nothing about the models; evaluate on more "
                    "volumes (at least 6 for a single pair at alpha 0.05)."
                )
            )
        for f in sorted(s.glob("pvalues_*.png")):
            metric, _, cond = f.stem.removeprefix("pvalues_").partition("_")
            label = _REGISTRY[metric].short if metric in _REGISTRY else metric
            parts.append(
                _figure(
                    f.read_bytes(),
                    f"Two matrices of Holm-corrected p-values between every pair of models for {label} on "
                    f"{cond}: per-slice t-test left, per-volume Wilcoxon right.",
                    f"{label}, condition {cond}: p-value of each pair of models (thesis Fig 5.24), coloured by "
                    "band (black p < 0.001, purple < 0.01, pink < 0.05, grey not significant).",
                )
            )
        target = [
            _is_target(str(a), str(c)) or _is_target(str(b), str(c))
            for a, b, c in zip(table["model_a"], table["model_b"], table["condition"], strict=True)
        ]
        view = table[[not t for t in target]].copy()  # against the target itself: not a comparison
        if any(target):
            parts.append(
                _note(f"{sum(target)} comparisons with identity on clean input (the target) not listed.")
            )
        view["survives at volume level"] = np.where(view["significant_volume"], "yes", "no")
        view = view[
            [
                "metric",
                "condition",
                "model_a",
                "model_b",
                "better",
                "diff",
                "p_slice_holm",
                "p_volume_holm",
                "significant_slice",
                "survives at volume level",
            ]
        ]
        for c in ("diff", "p_slice_holm", "p_volume_holm"):
            view[c] = [f"{v:.2e}" for v in view[c]]
        lost = int((table["significant_slice"] & ~table["significant_volume"]).sum())
        parts.append(
            f"<p>{int(table['significant_volume'].sum())} of {len(table)} differences survive at the "
            f"volume level; {lost} are significant per slice only.</p>"
        )
        parts.append(_table(view.head(300)))
        if len(view) > 300:
            parts.append(_note(f"first 300 of {len(view)} rows; see {s / 'stats.csv'}"))
    return "".join(parts)


# ----------------------------------------------------------------------------------------------- build

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1400px;
padding:0 1em;color:#222}
h1{border-bottom:2px solid #4c72b0}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f3f5f9}
td:first-child,th:first-child{text-align:left}
img{max-width:100%}figure{margin:1em 0}figcaption{font-size:12px;color:#666}
.note{color:#8a6d3b;background:#fcf8e3;padding:.4em .8em;border-left:3px solid #f0ad4e}
nav a{margin-right:1em}
"""


def build_report(
    inputs: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    title: str = "brainae report",
    force: bool = False,
    views: Sequence[str | os.PathLike] = (),
    track: Callable[..., Iterable] | None = None,
) -> Path:
    """Write one self-contained HTML report from dataset, run, evaluation and stats folders.

    Args:
        inputs: folders, any order (see the module notes).
        out: the HTML file to write (atomically).
        title: the report's title.
        force: replace an existing ``out``, which must be a report that brainae wrote.
        views: 3-D view pages (``brainae view``, ``--view``) to link from the overview; view pages lying
            directly in an input folder are linked too.
        track: wraps the list of build steps (data, training, each evaluation, stats) as
            ``track(steps, description, total)``, e.g. a progress bar; default: no progress.

    Returns:
        The path written.

    Raises:
        BrainaeError: no inputs, a path that does not exist, ``out`` is or lies inside an input, or
            ``out`` exists (without ``force``, or is not a brainae report).
    """
    from brainae.io import atomic_path, check_not_input

    if not inputs:
        raise BrainaeError("give at least one run, evaluation, stats or dataset folder")
    out = Path(out)
    check_not_input(out, list(inputs), "report")
    _check_out(out, force)
    found = classify(list(inputs))
    track = track or (lambda steps, description="", total=None: steps)
    body: dict[str, str] = {}
    body["overview"] = _overview(found, out, views, inputs)
    steps = [
        lambda: {"data": _data_section(found.datasets, found.inspects)},
        lambda: {"training": _training_section(found.runs)},
        *(lambda e=e: _eval_sections([e]) for e in found.evals),
        lambda: {"stats": _stats_section(found.stats)},
    ]
    for step in track(steps, "building the report", len(steps)):
        for key, html_part in step().items():
            body[key] = body.get(key, "") + html_part
    if not found.evals:
        note = _note("No evaluation folder given (run `brainae evaluate CKPT... --data DATASET --out EVAL`).")
        for k in ("headline", "results", "corrupted", "baselines", "charts", "examples", "provenance"):
            body[k] = note
    doc = _page(title, body)
    with atomic_path(out) as tmp:
        tmp.write_text(doc, encoding="utf-8")
    return out


def _check_out(out: Path, force: bool) -> None:
    """Refuse an ``out`` that is a folder, or that exists (without ``force``, or not a brainae report)."""
    from brainae.io import check_html_output

    check_html_output(
        out,
        force,
        is_report,
        what="a report that brainae wrote",
        name_it="-o names",
        other="-o",
        example="report.html",
    )


def _overview(found: Any, out: Path, views: Sequence[str | os.PathLike], inputs: list) -> str:
    """The overview section: when and from which folders the report was built, notes, links to 3-D views."""
    from brainae import __version__

    overview = [
        f"<p>Built {time.strftime('%Y-%m-%d %H:%M')} by brainae {_esc(__version__)} from:</p><ul>",
        *(
            f"<li>{_KIND_LABEL[kind]}: {_esc(p)}</li>"
            for kind in ("inspects", "datasets", "runs", "evals", "stats")
            for p in getattr(found, kind)
        ),
        "</ul>",
    ]
    if found.unknown:
        overview.append(_note("Skipped (not recognised): " + ", ".join(str(p) for p in found.unknown)))
    for note in found.notes:
        overview.append(_note(note))
    overview.append(_view_links(out, list(views), list(inputs)))
    return "".join(overview)


def _page(title: str, body: dict[str, str]) -> str:
    """The whole HTML document: title, navigation and every section of :data:`SECTIONS` in order."""
    nav = "".join(f'<a href="#{k}">{_esc(v)}</a>' for k, v in SECTIONS.items())
    sections = "".join(
        f'<section id="{k}"><h2>{_esc(v)}</h2>{body.get(k) or _note("Nothing to show.")}</section>'
        for k, v in SECTIONS.items()
    )
    doc = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{GENERATOR}<title>{_esc(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1><nav>{nav}</nav>{sections}</body></html>"
    )
    return doc


def _view_links(out: Path, views: list, inputs: list) -> str:
    """Links (relative to the report) to the given 3-D view pages and those lying in the input folders."""
    from urllib.parse import quote

    from brainae.view import is_view_page

    pages = [Path(v) for v in views]
    for p in views:
        if not is_view_page(p):
            raise BrainaeError(
                f"{p}: not a 3-D view page written by brainae view (or --view); check the path"
            )
    for folder in (Path(i) for i in inputs):
        if folder.is_dir():
            pages += [h for h in sorted(folder.glob("*.htm*")) if is_view_page(h)]
    pages = list(dict.fromkeys(p.resolve() for p in pages))
    if not pages:
        return ""
    base = out.resolve().parent
    items = "".join(
        f'<li><a href="{_esc(quote(Path(os.path.relpath(p, base)).as_posix()))}">{_esc(p.name)}</a></li>'
        for p in pages
    )
    return (
        f'<p>Interactive 3-D views (NiiVue; open in a browser with WebGL2):</p><ul class="views">{items}</ul>'
    )


_KIND_LABEL = {
    "inspects": "inspection",
    "datasets": "dataset",
    "runs": "training run",
    "evals": "evaluation",
    "stats": "paired tests",
}

GENERATOR = '<meta name="generator" content="brainae">'


def is_report(path: str | os.PathLike) -> bool:
    """True for an HTML file that :func:`build_report` wrote (it carries brainae's generator tag)."""
    from brainae.io import has_tag

    return has_tag(path, GENERATOR, 512)
