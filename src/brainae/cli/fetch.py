"""``brainae fetch``: download the public data the tests and benchmarks use into the cache folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brainae.cli._app import command, say


@command("fetch")
def fetch_cmd(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Data sets to fetch: ixi-t1-2mm, seed-weights (default: both)."),
    ] = None,
    mirror: Annotated[
        str | None,
        typer.Option(
            help="A mirror laid out as MIRROR/<data set>/<file>: a folder, file:// or http(s):// address "
            "(default $BRAINAE_DATA_URL; without one, each file's public address).",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--dir", help="Cache folder (default $BRAINAE_DATA, else the user's cache folder)."),
    ] = None,
    list_only: Annotated[
        bool, typer.Option("--list", help="List the data sets and where they are; fetch nothing.")
    ] = False,
) -> None:
    """Download the 2 mm IXI sample and the thesis's Keras models into the cache folder, checking every file's
    SHA-256 (a file that does not match is refused, never kept).

    Files already in the cache with the right checksum are kept. The tests find the data in ../shared/data
    beside the checkout, else in this cache (set BRAINAE_DATA to the same folder). The Keras reference
    outputs (seed-weights/reference) have no public address: they come only from a mirror.
    """
    import pooch

    from brainae.datasets import DATASETS, data_home, fetch, missing

    home = data_home(data_dir)
    if list_only:
        for ds in DATASETS.values():
            absent = missing(ds.name, home)
            state = "complete" if not absent else f"{len(absent)} of {len(ds.files)} files missing"
            say(f"{ds.name}: {ds.description}; {ds.licence}; {home / ds.name}: {state}")
        return
    pooch.get_logger().setLevel("WARNING")  # pooch's "Downloading ..." lines: we say it ourselves
    counts: dict[str, dict[str, int]] = {}

    def progress(name: str, path: str, how: str) -> None:
        counts.setdefault(name, {}).setdefault(how, 0)
        counts[name][how] += 1

    folders = fetch(names or None, home=home, mirror=mirror, progress=progress)
    for name, folder in folders.items():
        done = ", ".join(f"{n} {how}" for how, n in counts.get(name, {}).items())
        say(f"{name}: {sum(counts.get(name, {}).values())} files ({done}) in {folder}")
    say(f"the tests use them with: BRAINAE_DATA={home} pytest -q")
