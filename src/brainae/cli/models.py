"""Stage 7-8 commands: ``import-keras`` (and, later, ``train`` and ``grid``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brainae.cli._app import command, console


@command("import-keras")
def import_keras_command(
    file: Annotated[Path, typer.Argument(help="Keras .h5 model of the thesis (res_skip_cae_MSE_AUG_...h5).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (.safetensors).")],
    arch: Annotated[
        str | None,
        typer.Option(help="Architecture name; detected from the file when left out."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing checkpoint (only one that brainae wrote).")
    ] = False,
) -> None:
    """Import one of the thesis's trained Keras models into a brainae checkpoint (no TensorFlow needed)."""
    from brainae.checkpoint import check_checkpoint_output

    check_checkpoint_output(out, [file], force)

    from brainae.checkpoint import import_keras_checkpoint

    info = import_keras_checkpoint(file, out, arch=arch)
    console.print(f"arch        {info['arch']}")
    console.print(f"parameters  {info['parameters']:,}")
    console.print(f"wrote       {out}")


# ------------------------------------------------------------------------------------------ train, grid


def _split_names(values: list[str] | None) -> list[str] | None:
    """``--arch a --arch b`` or ``--arch a,b`` -> ``["a", "b"]``; None when not given."""
    if not values:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _devices(value: str | None) -> int | str | None:
    if value is None:
        return None
    return int(value) if value.strip().isdigit() else value.strip()


@command("train")
def train_command(
    dataset: Annotated[
        Path, typer.Argument(help="Prepared dataset folder (`brainae prepare ... --out DATASET`).")
    ],
    arch: Annotated[
        str | None,
        typer.Option(
            help="Architecture: shallow-res-original, shallow-res-preact, myronenko, "
            "skip-cae, res-unet (required unless --resume)."
        ),
    ] = None,
    loss: Annotated[
        str, typer.Option(help="mse, dssim, mse+dssim (or weighted, e.g. 0.5*mse+0.5*dssim).")
    ] = "mse",
    augment: Annotated[
        bool, typer.Option("--augment/--no-augment", help="Corrupt the training inputs.")
    ] = True,
    l2: Annotated[
        float, typer.Option(help="Kernel L2 factor as Keras's kernel_regularizer (thesis: 1e-5).")
    ] = 0.0,
    epochs: Annotated[
        int | None, typer.Option(help="Maximum epochs [default: 100]; with --resume: the new total.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per step (per device).")] = 32,
    precision: Annotated[str | None, typer.Option(help="32, bf16-mixed or 16-mixed [default: 32].")] = None,
    devices: Annotated[
        str | None, typer.Option(help="Devices per node: a number or 'auto' [default: 1].")
    ] = None,
    num_nodes: Annotated[int | None, typer.Option(help="Nodes for multi-node DDP [default: 1].")] = None,
    accelerator: Annotated[str | None, typer.Option(help="auto, cpu or gpu [default: auto].")] = None,
    seed: Annotated[int, typer.Option(help="Seeds weights, batch order and augmentation.")] = 0,
    latent_channels: Annotated[
        int | None, typer.Option(help="Latent feature maps (thesis: 128; fewer makes a real bottleneck).")
    ] = None,
    max_steps_per_epoch: Annotated[int | None, typer.Option(help="Cap the steps of an epoch.")] = None,
    channels_last: Annotated[
        bool, typer.Option(help="Channels-last memory format (GPU, mixed precision).")
    ] = False,
    compile_model: Annotated[
        bool, typer.Option("--compile", help="Run the model through torch.compile.")
    ] = False,
    bn_momentum: Annotated[
        float | None,
        typer.Option(
            help="Batch-norm momentum (torch terms) [default: the thesis's 0.01]; 0.1 for short runs."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run folder [default: runs/ARCH_LOSS_L2_AUG].")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last.ckpt.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Delete an existing run in --out first.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Train an autoencoder with the thesis's schedule (RMSprop, early stopping, reduce-on-plateau).

    Writes best.safetensors, last.safetensors, last.ckpt (for --resume), metrics.csv, config.json and
    curves.png into the run folder.
    """
    from brainae.errors import BrainaeError
    from brainae.train import TrainConfig, fit, load_config, read_metrics, run_name

    if resume and force:
        raise BrainaeError("--resume and --force contradict each other; choose one")
    overrides = {
        "epochs": epochs,
        "precision": precision,
        "devices": _devices(devices),
        "num_nodes": num_nodes,
        "accelerator": accelerator,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if resume:
        if out is None:
            raise BrainaeError("--resume needs the run folder: --out RUN")
        config = load_config(out)
        for key, value in overrides.items():
            setattr(config, key, value)
    else:
        if arch is None:
            from brainae.models import architecture_names

            raise BrainaeError(
                f"say which architecture to train: --arch {{{','.join(architecture_names())}}}"
            )
        config = TrainConfig(
            arch=arch,
            loss=loss,
            augment=augment,
            l2=l2,
            batch_size=batch_size,
            seed=seed,
            latent_channels=latent_channels,
            max_steps_per_epoch=max_steps_per_epoch,
            channels_last=channels_last,
            compile=compile_model,
            bn_momentum=bn_momentum,
            **overrides,
        )
    config.validate()
    if out is None:
        out = Path("runs") / run_name(config.arch, config.loss, config.l2 > 0, config.augment)
    _describe_model(config, dataset, out, resume)
    best = fit(dataset, out, config, progress=progress, resume=resume, force=force)
    rows = read_metrics(out)
    if rows:
        top = min(rows, key=lambda r: r["val_loss"])
        console.print(
            f"best        epoch {top['epoch']} of {rows[-1]['epoch']}: val_loss {top['val_loss']:.4g}, "
            f"MSE {top['val_mse']:.4g}, DSSIM {top['val_dssim']:.4g}, PSNR {top['val_psnr']:.2f} dB"
        )
    console.print(f"wrote       {best}")
    console.print(f"curves      {out / 'curves.png'}")


def _describe_model(config, dataset: Path, out: Path, resume: bool) -> None:  # noqa: ANN001
    from brainae.dataset import open_dataset
    from brainae.models import build_model, count_parameters

    ds = open_dataset(dataset)
    size = ds.preprocessing.size
    model = build_model(config.arch, **config.arch_kwargs())
    ratio = model.latent_ratio(size, size) if hasattr(model, "latent_ratio") else float("nan")
    n_train, n_val = len(ds.split_rows("train")), len(ds.split_rows("val"))
    console.print(
        f"{'resume' if resume else 'train'}       {config.arch} ({count_parameters(model):,} parameters, "
        f"latent/input {ratio:.2g}), loss {config.loss}, l2 {config.l2:g}, "
        f"{'aug' if config.augment else 'no aug'}, {n_train} train / {n_val} val slices of {size} x {size}"
    )
    console.print(f"run         {out}")


@command("grid")
def grid_command(
    dataset: Annotated[Path, typer.Argument(help="Prepared dataset folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder of run folders (one per configuration).")],
    arch: Annotated[
        list[str] | None, typer.Option(help="Architecture(s) (repeat or comma-separate) [default: all five].")
    ] = None,
    loss: Annotated[list[str] | None, typer.Option(help="Loss(es) [default: mse and dssim].")] = None,
    l2: Annotated[
        bool | None, typer.Option("--l2/--no-l2", help="Only with / without L2 [default: both].")
    ] = None,
    augment: Annotated[
        bool | None,
        typer.Option("--augment/--no-augment", help="Only with / without augmentation [default: both]."),
    ] = None,
    l2_value: Annotated[float, typer.Option(help="The L2 factor of the L2 runs.")] = 1e-5,
    epochs: Annotated[int, typer.Option(help="Maximum epochs per run.")] = 100,
    batch_size: Annotated[int, typer.Option(help="Images per step (per device).")] = 32,
    precision: Annotated[str, typer.Option(help="32, bf16-mixed or 16-mixed.")] = "32",
    devices: Annotated[str, typer.Option(help="Devices per node: a number or 'auto'.")] = "1",
    num_nodes: Annotated[int, typer.Option(help="Nodes for multi-node DDP.")] = 1,
    accelerator: Annotated[str, typer.Option(help="auto, cpu or gpu.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of every run.")] = 0,
    latent_channels: Annotated[int | None, typer.Option(help="Latent feature maps [default: 128].")] = None,
    max_steps_per_epoch: Annotated[int | None, typer.Option(help="Cap the steps of an epoch.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Run the thesis's experiment grid (architectures x losses x L2 x augmentation) or a subset.

    One run folder per configuration (e.g. res-unet_mse_l2_aug); finished runs are skipped, interrupted
    ones resumed; a summary table is printed and written to OUT/summary.csv.
    """
    from rich.table import Table

    from brainae.train import TrainConfig, grid, grid_configs

    base = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        precision=precision,
        devices=_devices(devices),
        num_nodes=num_nodes,
        accelerator=accelerator,
        seed=seed,
        latent_channels=latent_channels,
        max_steps_per_epoch=max_steps_per_epoch,
    )
    runs = grid_configs(
        archs=_split_names(arch),
        losses=_split_names(loss),
        l2=None if l2 is None else [l2],
        augment=None if augment is None else [augment],
        base=base,
        l2_value=l2_value,
    )

    def announce(i: int, n: int, name: str) -> None:
        console.print(f"[{i + 1}/{n}] {name}")

    rows = grid(dataset, out, runs, progress=progress, on_start=announce)
    table = Table(title=f"grid {out} ({len(rows)} runs)")
    for col in ("run", "status", "epochs", "best", "val_loss", "MSE", "DSSIM", "PSNR"):
        table.add_column(col, justify="left" if col in ("run", "status") else "right")
    for r in sorted(rows, key=lambda r: (r.loss, r.val_loss)):
        table.add_row(
            r.name,
            r.status,
            str(r.epochs),
            str(r.best_epoch),
            f"{r.val_loss:.4g}",
            f"{r.val_mse:.4g}",
            f"{r.val_dssim:.4g}",
            f"{r.val_psnr:.2f}",
        )
    console.print(table)
    console.print(f"wrote       {out / 'summary.csv'}")
