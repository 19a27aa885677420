"""``brainae demo``: the whole pipeline on the embedded IXI sample."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from brainae.cli._app import command, console, duration, track


@command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for everything the demo makes.")] = Path(
        "brainae-demo"
    ),
    epochs: Annotated[
        int, typer.Option(min=1, help="Training epochs (a short run: the point is the pipeline).")
    ] = 4,
    from_scratch: Annotated[
        bool,
        typer.Option(
            "--from-scratch",
            help="Train from a random start instead of fine-tuning the thesis's Residual U-Net (a few epochs "
            "from scratch give a model worse than its noisy input: the machinery only).",
        ),
    ] = False,
    device: Annotated[
        str, typer.Option(help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N.")
    ] = "auto",
    quick: Annotated[
        bool, typer.Option("--quick", help="A tiny run (5 volumes, 32 x 32) to check the install.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Kept for compatibility: an earlier demo folder is replaced anyway, and a folder that brainae did "
            "not write never is.",
        ),
    ] = False,
) -> None:
    """Prepare the embedded IXI sample, fine-tune briefly, evaluate, report, and denoise a held-out volume.

    2 min 03 s measured on a 2-core CPU with little else running (longer when other jobs share it; see the
    README). Ends with where report.html and the denoised NIfTI are.
    """
    from rich.table import Table

    from brainae.cli._training import TrainDisplay, quiet_lightning
    from brainae.demo import run_demo
    from brainae.metrics import METRICS

    quiet_lightning()
    start = time.monotonic()
    display = TrainDisplay()
    try:
        res = run_demo(
            out,
            epochs=epochs,
            fine_tune=not from_scratch,
            quick=quick,
            force=force,
            device=device,
            progress=display,
            log=lambda msg: console.print(
                f"[bold]{escape(str(msg))}[/bold] [dim](at {duration(time.monotonic() - start)})[/dim]",
                markup=True,
            ),
            track=track,
        )
    finally:
        display.close()
    console.print()
    table = Table(title="test split: mean per model and condition (vs the clean target)")
    for col in ("model", "condition", *(m.label for m in METRICS.values())):
        table.add_column(col)
    for row in res.facts.get("evaluation", []):
        table.add_row(
            str(row.get("model")),
            str(row.get("condition")),
            *(m.format(row.get(f"{name}_mean", float("nan"))) for name, m in METRICS.items()),
        )
    console.print(table)
    d = res.facts["denoise"]
    console.print(
        f"denoised {d['volume']}: PSNR {d['psnr_noisy_db']} dB (noisy) -> {d['psnr_denoised_db']} dB with "
        f"brainae's denoiser ({d['slice_model']}: {d['psnr_slice_model_db']} dB)"
    )
    console.print(f"done in {res.seconds:.0f} s. Report: {res.report}")
    console.print(f"noisy input: {res.noisy}   denoised: {res.denoised}")
