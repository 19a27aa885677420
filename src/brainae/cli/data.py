"""``brainae inspect`` and ``brainae prepare``: a cohort folder -> facts, and -> a prepared dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from brainae.cli._app import command, console, track


@command("inspect")
def inspect_cmd(
    folder: Annotated[
        Path,
        typer.Argument(help="Folder of NIfTI volumes (.nii / .nii.gz), or a BIDS dataset (its *_T1w scans)."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for inspect.csv and inspect.png.")],
) -> None:
    """Shape, voxel size, orientation, dtype and intensity range of every volume; problems listed, never a crash.

    Writes OUT/inspect.csv (one row per file, with a status and reason) and OUT/inspect.png (thesis Fig 5.2).
    """
    from rich.table import Table

    from brainae.prepare import write_inspect

    table = write_inspect(folder, out, track=track)
    ok = table[table["status"] == "ok"]
    summary = Table(title=f"{folder}: {len(table)} NIfTI files, {len(ok)} usable", show_lines=False)
    for col in ("shape", "zooms", "axcodes", "dtype", "profile"):
        summary.add_column(col)
    summary.add_column("volumes", justify="right")
    if len(ok):
        groups = ok.groupby(["shape", "zooms", "axcodes", "dtype", "profile"], dropna=False).size()
        for key, n in groups.items():
            summary.add_row(*[str(k) for k in key], str(n))
    console.print(summary)
    bad = table[table["status"] != "ok"]
    for _, row in bad.iterrows():
        console.print(
            f"[yellow]{escape(str(row['status']))}[/yellow] {escape(str(row['file']))}: "
            f"{escape(str(row['reason']))}",
            markup=True,
        )
    console.print(f"wrote {out / 'inspect.csv'} and {out / 'inspect.png'}")


@command("prepare")
def prepare_cmd(
    folder: Annotated[
        Path,
        typer.Argument(
            help="Folder of T1 NIfTI volumes (IXI names or any *.nii[.gz]), or a BIDS dataset: its "
            "sub-*/[ses-*/]anat/*_T1w scans, one per subject (the first session), participants.tsv as the "
            "demographics unless --demographics is given."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to create.")],
    demographics: Annotated[
        Path | None,
        typer.Option(
            help="IXI.xls, or a participants CSV/TSV (ID, age, sex[, ethnicity]) for the stratified split."
        ),
    ] = None,
    select: Annotated[
        str, typer.Option(help="Relevant-slice method: brain-mask, nonzero-count or nonzero-mean.")
    ] = "brain-mask",
    size: Annotated[
        int, typer.Option(help="Slice size in pixels after bilinear resampling (multiple of 8).")
    ] = 128,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
    val: Annotated[
        float,
        typer.Option(
            help="Fraction of subjects with metadata for validation (of all subjects when none has any)."
        ),
    ] = 0.14,
    test: Annotated[
        float,
        typer.Option(help="Fraction of subjects with metadata for test (of all subjects when none has any)."),
    ] = 0.08,
    scaling: Annotated[
        str,
        typer.Option(
            help="Intensity scaling to [0, 1]: slice-minmax (thesis), volume-minmax, volume-percentile."
        ),
    ] = "slice-minmax",
    profile: Annotated[
        str, typer.Option(help="Slicing profile: auto (from voxel sizes), sagittal, coronal, axial.")
    ] = "auto",
    fov: Annotated[
        str,
        typer.Option(
            help="Field of view: cohort (the cohort's median extent, mm per pixel fixed) or slice (thesis)."
        ),
    ] = "cohort",
    fov_mm: Annotated[
        float | None,
        typer.Option(help="Fixed field of view in mm (overrides --fov; the thesis models: 240)."),
    ] = None,
    brain_fraction: Annotated[
        float,
        typer.Option(help="brain-mask method: keep slices with more than this fraction of brain pixels."),
    ] = 3000 / 65536,
    mask_method: Annotated[
        str,
        typer.Option(
            help="Brain extraction: auto (deepbet if installed, else threshold), deepbet, threshold, none (nonzero-* only)."
        ),
    ] = "auto",
    skull_strip: Annotated[
        bool,
        typer.Option(
            "--skull-strip",
            help="Set everything outside the brain mask to the background (as lesion data sets come); models "
            "trained on the dataset record it and strip their inputs.",
        ),
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Processes that load, mask and resample volumes in parallel; the dataset is byte-identical "
            "whatever the number.",
        ),
    ] = 1,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing dataset made with other settings.")
    ] = False,
) -> None:
    """Select relevant slices, split by subject, resample and scale: write one prepared dataset folder.

    The folder holds slices.npy (N x size x size, [0, 1]), index.csv, volumes.csv, selection.csv, split.csv,
    settings.json and figures/. Re-running with the same settings does nothing.
    """
    from brainae.prepare import PrepareConfig, prepare

    config = PrepareConfig.from_options(
        select=select,
        size=size,
        seed=seed,
        val=val,
        test=test,
        scaling=scaling,
        profile=profile,
        fov=fov,
        fov_mm=fov_mm,
        brain_fraction=brain_fraction,
        mask_method=mask_method,
        skull_strip=skull_strip,
        demographics=str(demographics) if demographics else None,
    )
    result = prepare(folder, out, config, force=force, workers=workers, track=track)
    if result.reused:
        console.print(
            f"{out}: already prepared with these settings and inputs; nothing to do (use --force to redo)"
        )
        return
    import json

    settings = json.loads((out / "settings.json").read_text())
    kept = settings["select"]["kept_by_method"]
    total = settings["select"]["slices_total"]
    console.print(
        f"slices kept of {total}: "
        + ", ".join(f"{m} {n}" + (" (used)" if m == select else "") for m, n in kept.items())
        + f"; per volume in {out / 'selection.csv'} and {out / 'figures'}",
        markup=False,
    )
    splits = ", ".join(f"{k} {result.splits.get(k, 0)}" for k in ("train", "val", "test"))
    console.print(
        f"prepared {result.n_volumes} volumes -> {result.n_slices} slices ({splits}) in {out}"
        + (f"; skipped {len(result.skipped)}" if result.skipped else "")
    )
