"""Stage 7-8 commands: ``import-keras``, ``train`` and ``grid`` (their shared options: :mod:`brainae.cli._training`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brainae.cli import _training as T
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


@command("train")
def train_command(
    ctx: typer.Context,
    dataset: Annotated[
        Path, typer.Argument(help="Prepared dataset folder (made by `brainae prepare DIR --out DATASET`).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder, e.g. runs/res-unet_mse_aug.")],
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
    epochs: T.Epochs = 100,
    batch_size: T.BatchSize = 32,
    precision: T.Precision = "32",
    accelerator: T.Accelerator = "auto",
    devices: T.Devices = "1",
    num_nodes: T.NumNodes = 1,
    strategy: T.Strategy = "auto",
    seed: T.Seed = 0,
    latent_channels: T.LatentChannels = None,
    max_steps_per_epoch: T.MaxSteps = None,
    channels_last: T.ChannelsLast = False,
    compile: T.Compile = False,
    bn_momentum: T.BnMomentum = None,
    data: T.Data = "auto",
    memory_limit: T.MemoryLimit = None,
    lr: Annotated[
        float,
        typer.Option(min=0.0, help="Initial learning rate of RMSprop (thesis 1e-3; 1e-4 suits --init)."),
    ] = 1e-3,
    init: Annotated[
        Path | None,
        typer.Option(
            metavar="CKPT",
            help="Start from this checkpoint's weights (fine-tuning), e.g. a thesis model or an earlier run's "
            "best.safetensors; same architecture and latent size.",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue the run in --out from its last.ckpt (options given here override)."
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Delete an existing run in --out first.")] = False,
    progress: T.Progress = True,
) -> None:
    """Train an autoencoder with the thesis's schedule (RMSprop, early stopping, reduce-on-plateau).

    Writes best.safetensors, last.safetensors, last.ckpt (for --resume), metrics.csv, config.json and
    curves.png into the run folder, then stores the normative statistics of the val split in the checkpoints.
    """
    from brainae.errors import BrainaeError
    from brainae.slice_anomaly import store_normative_statistics
    from brainae.train import TrainConfig, fit, is_rank_zero_process, load_config, read_metrics

    if resume and force:
        raise BrainaeError("--resume and --force contradict each other; choose one")
    if resume and init is not None:
        raise BrainaeError("--init starts a new run from a checkpoint; --resume continues one: choose one")
    values = T.config_values(locals())
    if resume:
        config = load_config(out)
        given = T.given_on_command_line(ctx, [*T.CONFIG_OPTIONS, "arch", "loss", "augment", "l2", "lr"])
        for name in given:  # settings that may not change are reported by fit
            setattr(config, name, values.get(name, locals()[name]))
    else:
        if arch is None:
            from brainae.models import architecture_names

            raise BrainaeError(f"say which architecture to train: --arch {' | '.join(architecture_names())}")
        config = TrainConfig(
            arch=arch,
            loss=loss,
            augment=augment,
            l2=l2,
            lr=lr,
            init=None if init is None else str(init),
            **values,
        )
    config.validate()
    T.quiet_lightning()
    main = is_rank_zero_process()
    if main:
        _describe_model(config, dataset, out, resume)
    display = T.TrainDisplay(progress)
    try:
        best = fit(dataset, out, config, display if main else None, resume=resume, force=force)
    finally:
        display.close()
    if not main:  # a DDP worker process: rank 0 reports and finishes the run
        return
    T.print_best(read_metrics(out))
    store_normative_statistics(out, dataset, T.normative_device(config.accelerator))
    console.print(f"wrote       {best}", markup=False, soft_wrap=True)
    console.print(f"curves      {out / 'curves.png'}", markup=False, soft_wrap=True)


def _describe_model(config, dataset: Path, out: Path, resume: bool) -> None:  # noqa: ANN001
    from brainae.dataset import open_dataset
    from brainae.models import build_model, count_parameters

    ds = open_dataset(dataset)
    size = ds.preprocessing.size
    model = build_model(config.arch, **config.arch_kwargs())
    ratio = model.latent_ratio(size, size) if hasattr(model, "latent_ratio") else float("nan")
    n_train, n_val = len(ds.split_rows("train")), len(ds.split_rows("val"))
    console.print(
        f"{'resume' if resume else 'train':<12}{config.arch} ({count_parameters(model):,} parameters, "
        f"latent/input {ratio:.2g}), loss {config.loss}, l2 {config.l2:g}, "
        f"{'aug' if config.augment else 'no aug'}, {n_train} train / {n_val} val slices of {size} x {size}",
        markup=False,
        soft_wrap=True,
    )
    console.print(f"run         {out}", markup=False, soft_wrap=True)


@command("grid")
def grid_command(
    dataset: Annotated[Path, typer.Argument(help="Prepared dataset folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder of run folders (one per configuration).")],
    arch: Annotated[
        list[str] | None,
        typer.Option(help="Architecture(s), repeated or comma-separated; leave out for all five."),
    ] = None,
    loss: Annotated[
        list[str] | None, typer.Option(help="Loss(es); leave out for both mse and dssim.")
    ] = None,
    l2: Annotated[
        bool | None, typer.Option("--l2/--no-l2", help="Only with / only without L2; leave out for both.")
    ] = None,
    augment: Annotated[
        bool | None,
        typer.Option(
            "--augment/--no-augment", help="Only with / only without augmentation; leave out for both."
        ),
    ] = None,
    l2_value: Annotated[float, typer.Option(help="The L2 factor of the L2 runs.", show_default=True)] = 1e-5,
    epochs: T.Epochs = 100,
    batch_size: T.BatchSize = 32,
    precision: T.Precision = "32",
    accelerator: T.Accelerator = "auto",
    devices: T.Devices = "1",
    num_nodes: T.NumNodes = 1,
    strategy: T.Strategy = "auto",
    seed: T.Seed = 0,
    latent_channels: T.LatentChannels = None,
    max_steps_per_epoch: T.MaxSteps = None,
    channels_last: T.ChannelsLast = False,
    compile: T.Compile = False,
    bn_momentum: T.BnMomentum = None,
    data: T.Data = "auto",
    memory_limit: T.MemoryLimit = None,
    progress: T.Progress = True,
) -> None:
    """Run the thesis's experiment grid (architectures x losses x L2 x augmentation) or a subset.

    One run folder per configuration (e.g. res-unet_mse_l2_aug); finished runs are skipped, interrupted
    ones resumed; a summary table is printed and written to OUT/summary.csv.
    """
    from brainae.slice_anomaly import store_normative_statistics
    from brainae.train import TrainConfig, grid, grid_configs, is_rank_zero_process

    base = TrainConfig(**T.config_values(locals()))
    runs = grid_configs(
        archs=_split_names(arch),
        losses=_split_names(loss),
        l2=None if l2 is None else [l2],
        augment=None if augment is None else [augment],
        base=base,
        l2_value=l2_value,
    )
    T.quiet_lightning()
    main = is_rank_zero_process()

    def announce(i: int, n: int, name: str) -> None:
        if main:
            console.print(f"[{i + 1}/{n}] {name}", markup=False)

    def normative(run_dir: Path, cfg: TrainConfig) -> None:
        if is_rank_zero_process():
            store_normative_statistics(run_dir, dataset, T.normative_device(cfg.accelerator))

    display = T.TrainDisplay(progress)
    try:
        rows = grid(dataset, out, runs, display if main else None, on_start=announce, after_run=normative)
    finally:
        display.close()
    if not main:
        return
    _print_grid_table(rows, out)
    console.print(f"wrote       {out / 'summary.csv'}", markup=False, soft_wrap=True)


def _print_grid_table(rows: list, out: Path) -> None:
    """The grid's summary table, best validation loss first within each loss."""
    from rich.table import Table

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
