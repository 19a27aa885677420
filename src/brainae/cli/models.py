"""Stage 7-8 commands: ``import-keras`` (and, later, ``train`` and ``grid``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brainae.cli._app import command, console

THESIS_PREPROCESSING = {
    "profile": "sagittal",
    "size": 128,
    "fov_mm": None,
    "scaling": "slice-minmax",
    "percentiles": [0.5, 99.5],
}
"""The thesis's preprocessing, recorded in checkpoints imported from its Keras models."""

THESIS_LICENSE = "MIT"
THESIS_CREDIT = "Adrián Arnaiz-Rodríguez, 2020"


@command("import-keras")
def import_keras_command(
    file: Annotated[Path, typer.Argument(help="Keras .h5 model of the thesis (res_skip_cae_MSE_AUG_...h5).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (.safetensors).")],
    arch: Annotated[
        str | None,
        typer.Option(help="Architecture name; detected from the file when left out."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing checkpoint.")] = False,
) -> None:
    """Import one of the thesis's trained Keras models into a brainae checkpoint (no TensorFlow needed)."""
    from brainae.errors import BrainaeError

    if out.exists() and not force:
        raise BrainaeError(f"{out} exists; pass --force to overwrite it or choose another --out")
    if out.resolve() == file.resolve():
        raise BrainaeError(f"{out}: the output would replace the input; choose another --out")

    from brainae.checkpoint import save_checkpoint
    from brainae.models.keras_import import import_keras

    model, info = import_keras(file, arch=arch)
    source = {
        "type": "keras-h5",
        "file": info["file"],
        "keras_version": info["keras_version"],
        "license": THESIS_LICENSE,
        "credit": THESIS_CREDIT,
        "note": "published with the thesis 'Deep Convolutional Autoencoder for control brain MRI'",
    }
    save_checkpoint(
        out,
        model,
        arch=info["arch"],
        arch_kwargs=info["arch_kwargs"],
        preprocessing=dict(THESIS_PREPROCESSING),
        source=source,
    )
    console.print(f"arch        {info['arch']}")
    console.print(f"parameters  {info['parameters']:,}")
    console.print(f"wrote       {out}")
