"""Stage 9 commands: ``evaluate`` (metric tables), ``stats`` (paired tests), ``report`` (one HTML file)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brainae.cli._app import command, console, track

DEFAULT_CONDITIONS = "clean,noise-0.04,dropout-0.05,blank-20,blank-40,blur"


@command("evaluate")
def evaluate_command(
    data: Annotated[Path, typer.Option("--data", help="Prepared dataset folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for the tables.")],
    checkpoints: Annotated[
        list[Path] | None,
        typer.Argument(help="Checkpoint files (.safetensors) or run folders (their best.safetensors)."),
    ] = None,
    split: Annotated[str, typer.Option(help="Which split to score: train, val or test.")] = "test",
    conditions: Annotated[
        str,
        typer.Option(
            help="Comma-separated conditions: clean, noise-0.04, blank-40, rician-0.04, bias, motion, ...; "
            "custom levels like noise-0.03; combinations like blur+noise-0.04; or 'all'."
        ),
    ] = DEFAULT_CONDITIONS,
    seed: Annotated[int, typer.Option(help="Corruption seed (see brainae.evaluate).")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Slices per batch.")] = 64,
    device: Annotated[
        str, typer.Option(help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps.")
    ] = "auto",
    baselines: Annotated[
        str, typer.Option(help="Baselines: identity, nlm, biharmonic (comma-separated), or none.")
    ] = "identity,nlm,biharmonic",
    nlm_sigma: Annotated[
        float | None, typer.Option("--nlm-sigma", help="Noise sd for NLM (default: estimated per slice).")
    ] = None,
    examples: Annotated[int, typer.Option(help="Fixed slices kept in examples.npz for the report.")] = 4,
    workers: Annotated[int, typer.Option(help="Processes for the NLM/biharmonic baselines (CPU-bound).")] = 1,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output folder.")] = False,
) -> None:
    """Score checkpoints and baselines on every slice of a split, clean and corrupted (MSE, DSSIM, PSNR)."""
    import pandas as pd

    from brainae.evaluate import evaluate
    from brainae.metrics import METRICS

    chosen = [] if baselines.strip().lower() in ("", "none") else [b.strip() for b in baselines.split(",")]
    out_dir = evaluate(
        list(checkpoints or []),
        data,
        out,
        split=split,
        conditions=conditions,
        seed=seed,
        batch_size=batch_size,
        device=device,
        baselines=chosen,
        nlm_sigma=nlm_sigma,
        n_examples=examples,
        force=force,
        workers=workers,
        progress=lambda it, total: track(it, "evaluating", total=total),
    )
    summary = pd.read_csv(out_dir / "summary.csv")
    console.print(f"wrote {out_dir}/ (slices.csv, volumes.csv, summary.csv, provenance.json, examples.npz)")
    first = summary[summary["condition"] == summary["condition"].iloc[0]]
    for _, r in first.iterrows():
        scores = "  ".join(f"{m.label} {m.format(r[f'{name}_mean'])}" for name, m in METRICS.items())
        console.print(f"  {r['model']:<28} {r['condition']:<12} {scores}")


@command("stats")
def stats_command(
    eval_dir: Annotated[Path, typer.Argument(help="An evaluation folder (brainae evaluate --out).")],
    metric: Annotated[str, typer.Option(help="mse, dssim, psnr, or several comma-separated.")] = "mse",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Default EVAL/stats.")] = None,
    alpha: Annotated[float, typer.Option(help="Family-wise significance level (Holm).")] = 0.05,
) -> None:
    """Paired tests between models per condition: per-slice t-test, per-volume Wilcoxon, Holm-corrected."""
    import pandas as pd

    from brainae.stats import run_stats

    metrics = [m.strip().lower() for m in metric.split(",") if m.strip()]
    out_dir = run_stats(eval_dir, metrics=metrics, out=out, alpha=alpha)
    table = pd.read_csv(out_dir / "stats.csv")
    console.print(
        f"wrote {out_dir}/stats.csv and p-value figures: {len(table)} comparisons; significant after Holm "
        f"(alpha {alpha}): {int(table['significant_slice'].sum())} per slice, "
        f"{int(table['significant_volume'].sum())} per volume"
    )
    short = table[~table["volume_can_reach"].astype(bool)]
    if len(short):
        console.print(
            f"note: {len(short)} of {len(table)} comparisons have too few volumes "
            f"({', '.join(str(n) for n in sorted(set(short['n_volumes'])))}) for the per-volume test to reach "
            f"significance at {alpha} (smallest possible Holm p {short['p_volume_min'].min():.2f}), whatever "
            "the models do; evaluate on more volumes"
        )


@command("report")
def report_command(
    inputs: Annotated[list[Path], typer.Argument(help="Run, eval, stats or dataset folders.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")] = Path("report.html"),
    title: Annotated[str, typer.Option(help="Title of the report.")] = "brainae report",
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing report (only one that brainae wrote).")
    ] = False,
    view: Annotated[
        list[Path] | None,
        typer.Option(
            "--view",
            help="A 3-D view page (from brainae view or --view) to link from the report; repeatable. Pages in "
            "the input folders are linked too.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """One self-contained HTML report (figures embedded) from runs, evaluations and datasets.

    A grid folder's summary.csv is not an evaluation: its runs are included. OUT must not be or lie inside
    an input, and an existing OUT is replaced only with --force.
    """
    from brainae.report import build_report

    console.print(
        f"wrote {build_report(inputs, out, title=title, force=force, views=view or [], track=track)}"
    )
