"""Command ``view``: one self-contained HTML page with an interactive 3-D view of volumes (NiiVue)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from brainae.cli._app import command, console


class ViewMode(str, Enum):
    beside = "beside"
    overlay = "overlay"


@command("view")
def view_cmd(
    inp: Annotated[Path, typer.Argument(metavar="IN", help="The scan (NIfTI) every pane starts from.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML page to write (e.g. view.html).")],
    others: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="OVERLAY",
            help="Volumes to show with IN (NIfTI): results beside it, or maps on it with --mode overlay.",
            show_default=False,
        ),
    ] = None,
    mode: Annotated[
        ViewMode,
        typer.Option(
            "--mode",
            help="beside: one pane per volume, sharing crosshair, zoom and 3-D rotation; overlay: the "
            "volumes as colour maps on IN, each with a threshold slider.",
        ),
    ] = ViewMode.beside,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            help="Initial threshold of the overlays (default: the 99th percentile of each map's non-zero "
            "voxels; 0.5 for a mask).",
            show_default=False,
        ),
    ] = None,
    title: Annotated[str | None, typer.Option("--title", help="Page title (default: IN's name).")] = None,
    max_voxels: Annotated[
        int,
        typer.Option(
            "--max-voxels",
            min=1000,
            help="Voxels kept per volume; larger volumes are reduced by 2 along their longest axis until "
            "they fit (the page says so).",
        ),
    ] = 256**3,
    map_bits: Annotated[
        int,
        typer.Option(
            "--map-bits",
            min=8,
            max=16,
            help="Precision of the overlay maps in the page: 8 or 16 (finer threshold steps and cursor "
            "values, about twice the size).",
        ),
    ] = 8,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing page (only one that brainae view wrote).")
    ] = False,
) -> None:
    """Write one HTML page with an interactive 3-D viewer (NiiVue) of IN and other volumes.

    The page is self-contained: the volumes (at 8 bits) and the viewer are embedded, so it
    opens offline in any browser with WebGL2, with no server. Volumes are placed by their affines (world
    coordinates), so they need not share IN's grid.
    """
    from brainae.io import load_volume
    from brainae.view import check_view_output, layer, write_view

    others = list(others or [])
    check_view_output(out, [inp, *others], force=force)
    base = load_volume(inp)
    layers = [layer(load_volume(p), threshold=threshold) for p in others]
    summary = write_view(
        out, layer(base), layers, mode=mode.value, title=title, max_voxels=max_voxels, map_bits=map_bits
    )
    for note in summary.notes:
        console.print(f"note: {note}")
    console.print(f"wrote {summary.path} ({summary.bytes / 1e6:.1f} MB, {len(summary.volumes)} volume(s))")
