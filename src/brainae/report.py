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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainae.errors import BrainaeError, BrainaeWarning

__all__ = ["SECTIONS", "Inputs", "build_report", "classify"]

SECTIONS = {
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

METRICS = ("mse", "dssim", "psnr")
LABEL = {"mse": "MSE", "dssim": "DSSIM", "psnr": "PSNR (dB)"}
BASELINE_NAMES = ("identity", "nlm", "biharmonic")


@dataclass
class Inputs:
    """The folders given to the report, by kind."""

    datasets: list[Path] = field(default_factory=list)
    runs: list[Path] = field(default_factory=list)
    evals: list[Path] = field(default_factory=list)
    stats: list[Path] = field(default_factory=list)
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
            raise BrainaeError(f"{p}: no such folder; give run, evaluation, stats or dataset folders")
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
                f"{p}: not a run, evaluation, stats or dataset folder; skipped", BrainaeWarning, stacklevel=2
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


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return _img(buf.getvalue())


def _img(data: bytes, alt: str = "figure") -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


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
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return ""
    f = (lambda v: f"{v:.2f}") if metric == "psnr" else (lambda v: f"{v:.2e}")
    if std is None or (isinstance(std, float) and np.isnan(std)):
        return f(mean)
    return f"{f(mean)} ± {f(std)}"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _read_csv(path: Path) -> Any:
    import pandas as pd

    try:
        return pd.read_csv(path)
    except Exception:  # unreadable tables are reported as missing, never a crash
        return None


# ---------------------------------------------------------------------------------------------- data


def _data_section(datasets: list[Path]) -> str:
    if not datasets:
        return _note("No dataset folder given (pass the prepared dataset folder to include its summary).")
    parts = []
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
            parts.append(f"<h4>Inspected volumes ({len(inspect)})</h4>")
            cols = [c for c in ("shape", "zooms", "axcodes", "dtype") if c in inspect]
            for c in cols:
                vc = inspect[c].astype(str).value_counts().rename("volumes").to_frame()
                vc.index.name = c
                parts.append(_table(vc.head(10), index=True))
            if not cols:
                parts.append(_table(inspect.head(20)))
        else:
            parts.append(_note("No inspect.csv in the dataset folder (brainae inspect writes one)."))
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
            parts.append(
                f"<figure>{_img(f.read_bytes(), f.stem)}<figcaption>{_esc(f.name)}</figcaption></figure>"
            )
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
    rows = []
    for run in runs:
        df = frames.get(run.name)
        cfg = _read_json(run / "config.json")
        row = {
            "run": run.name,
            "arch": cfg.get("arch", ""),
            "loss": cfg.get("loss", ""),
            "L2": cfg.get("l2", ""),
            "augment": cfg.get("augment", ""),
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

    return _png(fig) + _table(pd.DataFrame(rows))


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

    sub = summary[summary["condition"] == condition].reset_index(drop=True)
    rows = []
    for _, r in sub.iterrows():
        t = _training_info(prov, r["model"])
        l2 = t.get("l2", t.get("weight_decay", ""))
        val = t.get("best_val_loss", t.get("val_loss", ""))
        rows.append(
            {
                "Model": r["model"],
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
            best = int(vals.idxmax() if m == "psnr" else vals.idxmin())
            bold[(best, LABEL[m])] = True
    return _table(table, bold=bold)


def _wide(summary: Any, metric: str, models: list[str]) -> Any:
    sub = summary[summary["model"].isin(models)].copy()
    sub["cell"] = [
        _fmt(metric, a, b) for a, b in zip(sub[f"{metric}_mean"], sub[f"{metric}_std"], strict=True)
    ]
    wide = sub.pivot(index="model", columns="condition", values="cell")
    wide = wide.reindex(
        index=[m for m in models if m in wide.index],
        columns=[c for c in dict.fromkeys(summary["condition"]) if c in wide.columns],
    )
    return wide.fillna("")


def _bar_charts(summary: Any, name: str) -> str:
    plt = _plt()
    out = []
    conds = list(dict.fromkeys(summary["condition"]))
    first = "clean" if "clean" in conds else conds[0]
    sub = summary[summary["condition"] == first]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colours = ["#4c72b0" if k == "model" else "#999999" for k in sub["kind"]]
    for ax, m in zip(axes, METRICS, strict=True):
        ax.bar(range(len(sub)), sub[f"{m}_mean"], yerr=sub[f"{m}_std"], color=colours, capsize=2)
        ax.set_xticks(range(len(sub)), sub["model"], rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{LABEL[m]} on {first}")
        if m != "psnr":
            ax.set_yscale("log")
    fig.suptitle(f"{name}: test metrics (mean ± sd over slices; grey = baselines)")
    fig.tight_layout()
    out.append(_png(fig))
    if len(conds) > 1:
        models = list(dict.fromkeys(summary["model"]))
        fig, axes = plt.subplots(1, 2, figsize=(15, 4.5))
        width = 0.8 / max(len(models), 1)
        for ax, m in zip(axes, ("mse", "psnr"), strict=True):
            for k, model in enumerate(models):
                s = summary[summary["model"] == model].set_index("condition").reindex(conds)
                ax.bar(np.arange(len(conds)) + k * width, s[f"{m}_mean"], width, label=model)
            ax.set_xticks(np.arange(len(conds)) + 0.4 - width / 2, conds, rotation=30, ha="right", fontsize=8)
            ax.set_title(f"{LABEL[m]} per condition (corrupted input vs clean target)")
            if m == "mse":
                ax.set_yscale("log")
        axes[1].legend(fontsize=6, ncol=2)
        fig.tight_layout()
        out.append(_png(fig))
    return "".join(out)


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
                    ax.set_xlabel(
                        f"{10 * np.log10(1 / mse):.1f} dB" if mse > 1e-10 else "identical", fontsize=6
                    )
                if r == 0:
                    ax.set_title(title, fontsize=7)
        fig.suptitle(f"{cond}" + ("" if evaluated[ci] else " (custom corruption, examples only)"), fontsize=9)
        fig.tight_layout()
        label = "" if evaluated[ci] else " (custom corruption, examples only)"
        parts.append(f"<h4>{_esc(cond)}{label}</h4>{_png(fig)}")
    rows = ", ".join(f"{v} slice {s}" for v, s in zip(ex["volume_id"], ex["slice"], strict=True))
    return f"<p>Slices: {_esc(rows)}; PSNR of each panel against the target below it.</p>" + "".join(parts)


def _eval_sections(evals: list[Path]) -> dict[str, str]:
    import pandas as pd

    out = {k: [] for k in ("results", "corrupted", "baselines", "charts", "examples", "provenance")}
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
        if "clean" in conds:
            out["results"].append(
                head + f"<p>{_esc(split)} split, clean input; mean ± sd over slices (n = slices). Best "
                "per column in bold. Layout of thesis Tables 5.2 / 5.3.</p>"
                + _results_table(summary, prov, "clean")
            )
        else:
            out["results"].append(head + _note("This evaluation has no 'clean' condition."))
        corrupted = [c for c in conds if c != "clean"]
        if corrupted:
            txt = (
                head + "<p>Each corrupted input scored against the clean target; 'identity' is the corrupted "
            )
            txt += "input itself.</p>"
            for m in METRICS:
                txt += f"<h4>{LABEL[m]}</h4>" + _table(_wide(summary, m, models), index=True)
            out["corrupted"].append(txt)
        else:
            out["corrupted"].append(head + _note("Only clean input was evaluated (use --conditions)."))
        base = [m for m in models if m in BASELINE_NAMES]
        if base:
            params = prov.get("baselines", {})
            txt = (
                head
                + "<ul>"
                + "".join(
                    f"<li><b>{_esc(b)}</b>: "
                    f"{_esc(', '.join(f'{k}={v}' for k, v in params.get(b, {}).items()))}</li>"
                    for b in base
                )
                + "</ul>"
            )
            best_model = [m for m in models if m not in BASELINE_NAMES]
            for m in ("mse", "psnr"):
                txt += f"<h4>{LABEL[m]}</h4>" + _table(_wide(summary, m, base + best_model), index=True)
            out["baselines"].append(txt)
        else:
            out["baselines"].append(head + _note("No baselines in this evaluation."))
        out["charts"].append(head + _bar_charts(summary, e.name))
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
        name = s.parent.name if s.name == "stats" else s.name
        parts.append(f"<h3>{_esc(name)}</h3>")
        if table is None or table.empty:
            parts.append(_note(f"{s}: stats.csv is empty or unreadable."))
            continue
        parts.append(
            "<p>Per-slice paired t-test (thesis) and per-volume Wilcoxon signed-rank test on volume means, "
            "both Holm-corrected across the pairs of a condition. Slices of one volume are not independent: "
            "the per-volume test is the one to trust.</p>"
        )
        for f in sorted(s.glob("pvalues_*.png")):
            parts.append(
                f"<figure>{_img(f.read_bytes(), f.stem)}<figcaption>{_esc(f.name)}</figcaption></figure>"
            )
        view = table.copy()
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
) -> Path:
    """Write one self-contained HTML report from dataset, run, evaluation and stats folders.

    Args:
        inputs: folders, any order (see the module notes).
        out: the HTML file to write (atomically).
        title: the report's title.
        force: replace an existing ``out``, which must be a report that brainae wrote.
        views: 3-D view pages (``brainae view``, ``--view``) to link from the overview; view pages lying
            directly in an input folder are linked too.

    Returns:
        The path written.

    Raises:
        BrainaeError: no inputs, a path that does not exist, ``out`` is or lies inside an input, or
            ``out`` exists (without ``force``, or is not a brainae report).
    """
    from brainae import __version__
    from brainae.io import atomic_path, check_not_input

    if not inputs:
        raise BrainaeError("give at least one run, evaluation, stats or dataset folder")
    out = Path(out)
    check_not_input(out, list(inputs), "report")
    if out.is_dir():
        raise BrainaeError(f"{out}: is a folder; -o names the HTML file to write (e.g. report.html)")
    if out.exists() or out.is_symlink():
        if not force:
            raise BrainaeError(f"{out}: already exists; add --force to replace it, or choose another -o")
        if not is_report(out):
            raise BrainaeError(
                f"{out}: exists and is not a report that brainae wrote, so --force will not replace it; "
                "choose another -o"
            )
    found = classify(list(inputs))
    body: dict[str, str] = {}
    overview = [
        f"<p>Built {time.strftime('%Y-%m-%d %H:%M')} by brainae {_esc(__version__)} from:</p><ul>",
        *(
            f"<li>{kind}: {_esc(p)}</li>"
            for kind in ("datasets", "runs", "evals", "stats")
            for p in getattr(found, kind)
        ),
        "</ul>",
    ]
    if found.unknown:
        overview.append(_note("Skipped (not recognised): " + ", ".join(str(p) for p in found.unknown)))
    for note in found.notes:
        overview.append(_note(note))
    overview.append(_view_links(out, list(views), list(inputs)))
    body["overview"] = "".join(overview)
    body["data"] = _data_section(found.datasets)
    body["training"] = _training_section(found.runs)
    if found.evals:
        body.update(_eval_sections(found.evals))
    else:
        note = _note("No evaluation folder given (run `brainae evaluate CKPT... --data DATASET --out EVAL`).")
        for k in ("results", "corrupted", "baselines", "charts", "examples", "provenance"):
            body[k] = note
    body["stats"] = _stats_section(found.stats)
    nav = "".join(f'<a href="#{k}">{_esc(v)}</a>' for k, v in SECTIONS.items())
    sections = "".join(
        f'<section id="{k}"><h2>{_esc(v)}</h2>{body.get(k) or _note("Nothing to show.")}</section>'
        for k, v in SECTIONS.items()
    )
    doc = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{GENERATOR}<title>{_esc(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1><nav>{nav}</nav>{sections}</body></html>"
    )
    with atomic_path(out) as tmp:
        tmp.write_text(doc, encoding="utf-8")
    return out


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


GENERATOR = '<meta name="generator" content="brainae">'


def is_report(path: str | os.PathLike) -> bool:
    """True for an HTML file that :func:`build_report` wrote (it carries brainae's generator tag)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return False
    return GENERATOR.encode() in head
