"""``fit``: train one autoencoder on a prepared dataset into a run folder (thesis 5.4.5).

A sequence of named steps: open the dataset's splits -> prepare the run folder (rank 0) -> build the
trainer -> choose how the data are held (memory or streamed, :func:`~brainae.train.data.choose_data_mode`)
-> train -> finish the run folder (checkpoint cards, curves, ``done``).

Normative statistics are not part of training: they are a later step
(:func:`brainae.slice_anomaly.store_normative_statistics`) that ``brainae train``, ``grid`` and ``demo`` run
on the finished run.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from brainae.errors import BrainaeError, BrainaeWarning
from brainae.train.config import TrainConfig
from brainae.train.data import IndexBatches, StreamedSplit, choose_data_mode
from brainae.train.module import AutoencoderModule, pl
from brainae.train.progress import ProgressCallback, ProgressReporter
from brainae.train.run_folder import (
    EpochCommit,
    RunWriter,
    atomic_write_text,
    check_split,
    is_rank_zero_process,
    prepare_run_dir,
    write_config,
)

__all__ = ["fit"]

_QUIET = (  # Lightning warnings about choices made on purpose here
    ".*does not have many workers.*",
    ".*is smaller than the logging interval.*",
    ".*Checkpoint directory .* exists and is not empty.*",
)


def _open_splits(dataset_path: Path) -> tuple[Any, Any, Any]:
    """The opened dataset and the row numbers of its train and val splits (both non-empty)."""
    from brainae.dataset import open_dataset

    ds = open_dataset(dataset_path)
    train_rows, val_rows = ds.split_rows("train"), ds.split_rows("val")
    check_split(len(train_rows), "train", dataset_path)
    check_split(len(val_rows), "val", dataset_path)
    return ds, train_rows, val_rows


def _make_trainer(config: TrainConfig, callbacks: list[pl.Callback], out: Path) -> pl.Trainer:
    distributed = config.num_nodes > 1 or (isinstance(config.devices, int) and config.devices > 1)
    # batch statistics over the global batch, as one process would see them (torch has no CPU SyncBatchNorm:
    # CPU ranks normalise by their own batch's statistics)
    gpu = config.accelerator in ("gpu", "cuda") or (
        config.accelerator == "auto" and torch.cuda.is_available()
    )
    return pl.Trainer(
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=config.precision,
        max_epochs=config.epochs,
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=False,  # progress goes to the caller's callback (ProgressReporter)
        enable_model_summary=False,
        enable_checkpointing=False,  # EpochCommit writes last.ckpt (atomically, after every epoch)
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        sync_batchnorm=distributed and gpu,
        benchmark=True,
        default_root_dir=str(out),
    )


def _splits(ds: Any, train_rows: Any, val_rows: Any, config: TrainConfig, device: torch.device):
    """``(train split, val split, mode, reason)``: held in memory or streamed from ``slices.npy``."""
    size = ds.slices.shape[1] * ds.slices.shape[2] * 4
    mode, reason = choose_data_mode(
        config.data, (len(train_rows) + len(val_rows)) * size, device, config.memory_limit
    )
    if mode == "stream":
        path = ds.path / "slices.npy"
        return StreamedSplit(path, train_rows), StreamedSplit(path, val_rows), mode, reason
    return ds.split_array("train"), ds.split_array("val"), mode, reason


def _train(trainer: pl.Trainer, module: AutoencoderModule, ckpt: Path | None, writer: RunWriter) -> None:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        trainer.fit(
            module,
            train_dataloaders=IndexBatches(module, "train"),
            val_dataloaders=IndexBatches(module, "val"),
            ckpt_path=str(ckpt) if ckpt is not None else None,
        )
    except SIGTERMException:
        done = writer.rows[-1]["epoch"] if writer.rows else 0
        raise BrainaeError(
            f"{writer.out}: training stopped by SIGTERM after {done} completed epoch(s); continue it with "
            "`brainae train ... --resume`"
        ) from None
    if trainer.interrupted:
        raise KeyboardInterrupt


def _finish(trainer: pl.Trainer, module: AutoencoderModule, writer: RunWriter, config: TrainConfig) -> Path:
    """Rank 0, after training: the final training card in both checkpoints, the curves, ``done``."""
    from brainae.checkpoint import update_checkpoint
    from brainae.figures import training_curves_figure

    out = writer.out
    best = out / "best.safetensors"
    if not best.is_file():  # no epoch ran in this call (e.g. resumed at its last epoch): keep what is there
        raise BrainaeError(f"{out}: no epoch was trained; raise --epochs above the epochs already run")
    training = writer.training_dict(module)
    training["stopped_early"] = bool(
        trainer.should_stop and writer.rows and writer.rows[-1]["epoch"] < config.epochs
    )
    update_checkpoint(best, training=training)
    if (out / "last.safetensors").is_file():
        update_checkpoint(out / "last.safetensors", training=training)
    try:
        training_curves_figure(writer.rows, out / "curves.png", title=out.name)
    except (OSError, ValueError, RuntimeError) as exc:  # a figure must not fail a finished training
        warnings.warn(f"{out / 'curves.png'} not written: {exc}", BrainaeWarning, stacklevel=3)
    atomic_write_text(out / "done", json.dumps(training, indent=2, default=str) + "\n")
    return best


def fit(
    dataset_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: TrainConfig,
    progress: ProgressCallback | None = None,
    *,
    resume: bool = False,
    force: bool = False,
) -> Path:
    """Train ``config.arch`` on a prepared dataset; return the best checkpoint (``out_dir/best.safetensors``).

    Args:
        dataset_path: prepared dataset folder (see ``docs/dataset-format.md``).
        out_dir: run folder (see :mod:`brainae.train.run_folder`).
        config: the run's settings.
        progress: called with a :class:`~brainae.train.progress.TrainProgress` at the start (with how the
            data are held, and why), after every step and after every epoch (rank 0 only); None: silent.
        resume: continue the run in ``out_dir`` from its ``last.ckpt`` (same settings; ``epochs``, the
            device settings and the data mode may change).
        force: delete an existing run in ``out_dir`` first.

    Raises:
        BrainaeError: unknown arch/loss, incomplete dataset, an empty train/val split, an existing run without
            ``resume``/``force``, ``resume`` with nothing to resume or with different settings.

    Example:
        >>> fit("prepared", "runs/test", TrainConfig(arch="skip-cae", epochs=2))  # doctest: +SKIP
        PosixPath('runs/test/best.safetensors')
    """
    from brainae import __version__

    config.validate()
    dataset_path, out = Path(dataset_path), Path(out_dir)
    ds, train_rows, val_rows = _open_splits(dataset_path)
    if is_rank_zero_process():
        ckpt_path = prepare_run_dir(out, config, resume=resume, force=force, dataset=dataset_path)
        write_config(out, config, dataset_path, __version__)
    else:
        ckpt_path = out / "last.ckpt" if resume else None
    info: dict[str, Any] = {
        **config.to_dict(),
        "min_delta": config.resolved_min_delta,
        "dataset": str(dataset_path.resolve()),
        "n_train": len(train_rows),
        "n_val": len(val_rows),
        "version": __version__,
    }
    writer = RunWriter(out, info, ds.settings.get("preprocessing"))
    early = pl.callbacks.EarlyStopping(
        monitor="val_loss",
        min_delta=config.resolved_min_delta,
        patience=config.patience,
        mode="min",
        check_on_train_epoch_end=False,
    )
    callbacks = [writer, early, EpochCommit(writer)]  # EpochCommit after early stopping: its state is saved
    if progress:  # None or False: silent
        callbacks.append(ProgressReporter(progress, info, writer))
    with warnings.catch_warnings():
        for message in _QUIET:
            warnings.filterwarnings("ignore", message=message)
        trainer = _make_trainer(config, callbacks, out)
        train_split, val_split, info["data_mode"], info["data_reason"] = _splits(
            ds, train_rows, val_rows, config, trainer.strategy.root_device
        )
        module = AutoencoderModule(config, train_split, val_split)
        _train(trainer, module, ckpt_path, writer)
    if not trainer.is_global_zero:
        return out / "best.safetensors"
    return _finish(trainer, module, writer, config)
