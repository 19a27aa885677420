"""The run folder: what a training run writes, when, and how a run is resumed from it.

Run folder (``fit(..., out_dir)``)::

    config.json        the TrainConfig (+ dataset path)
    metrics.csv        one row per epoch: CSV_COLUMNS
    best.safetensors   brainae checkpoint of the best val_loss epoch (self-describing: brainae.checkpoint)
    last.safetensors   brainae checkpoint of the last epoch
    last.ckpt          Lightning checkpoint (weights, optimizer, scheduler, early stopping, epoch) for resume
    curves.png         train / val loss per epoch (thesis Fig 5.18) and the learning rate
    done               marker of a finished run (JSON summary)

Only the process of global rank 0 writes. ``last.ckpt`` is written atomically after every epoch, then
``metrics.csv``, so ``metrics.csv`` never lists an epoch whose checkpoint is missing and a run killed at any
moment resumes from its last completed epoch.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from brainae.errors import BrainaeError, BrainaeWarning
from brainae.train.config import RESUMABLE, TrainConfig, load_config
from brainae.train.module import pl

__all__ = [
    "CSV_COLUMNS",
    "RUN_FILES",
    "EpochCommit",
    "RunWriter",
    "is_finished",
    "is_rank_zero_process",
    "prepare_run_dir",
    "read_metrics",
]

CSV_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_mse",
    "val_dssim",
    "val_psnr",
    "lr",
    "seconds",
    "img_s",
)
"""Columns of ``metrics.csv``. ``epoch`` counts from 1 (as every message and the progress display do);
``val_psnr`` is the mean of per-image PSNRs capped at 100 dB; ``lr`` the learning rate used during the epoch;
``seconds`` the epoch's wall time (train + val); ``img_s`` training images per second."""

RUN_FILES = (
    "config.json",
    "metrics.csv",
    "best.safetensors",
    "last.safetensors",
    "last.ckpt",
    "curves.png",
    "done",
)


def atomic_write_text(path: Path, text: str) -> None:
    from brainae.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a run's ``metrics.csv`` as dicts of floats (``epoch`` as int); [] when there is none."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            rec: dict[str, float] = {k: float(v) for k, v in row.items() if v not in (None, "")}
            rec["epoch"] = int(rec["epoch"])
            rows.append(rec)
    return rows


def write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: (repr(float(v)) if k != "epoch" else int(v)) for k, v in row.items() if k in CSV_COLUMNS}
        )
    atomic_write_text(path, buf.getvalue())


def write_config(out: Path, config: TrainConfig, dataset: Path, version: str) -> None:
    data = {"config": config.to_dict(), "dataset": str(dataset.resolve()), "version": version}
    atomic_write_text(out / "config.json", json.dumps(data, indent=2) + "\n")


def is_finished(run_dir: str | os.PathLike) -> bool:
    """A run is finished when its ``best.safetensors`` and its ``done`` marker exist."""
    run_dir = Path(run_dir)
    return (run_dir / "best.safetensors").is_file() and (run_dir / "done").is_file()


def is_rank_zero_process() -> bool:
    """True in the process that prepares the run folder and reports (not in DDP worker processes).

    Reads the launchers' variables (Lightning, torchrun, SLURM), so it is right before the trainer exists.
    """
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK", "GROUP_RANK"):
        if int(os.environ.get(var, "0") or 0) != 0:
            return False
    return True


def check_split(n: int, split: str, dataset: Path) -> None:
    """Refuse an empty split, saying how to make one."""
    if n == 0:
        hint = (
            "re-run `brainae prepare` with a non-empty validation split (more volumes or a larger fraction)"
            if split == "val"
            else "re-run `brainae prepare` so that some volumes go to train"
        )
        raise BrainaeError(f"{dataset}: the {split!r} split has no slices; {hint}")


# ------------------------------------------------------------------------------- preparing the folder


def _is_run_dir(out: Path) -> bool:
    """A folder that ``brainae train`` wrote: its marker, or (older runs) a readable brainae config.json."""
    from brainae.io import read_marker

    marker = read_marker(out)
    if marker is not None:
        return marker.get("kind") == "run"
    try:
        data = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("config"), dict) and "version" in data


def _completed_epochs(out: Path) -> bool:
    return any((out / name).exists() for name in ("last.ckpt", "best.safetensors", "metrics.csv"))


def _resume_from(out: Path, config: TrainConfig, existing: list[str]) -> Path | None:
    """The checkpoint to resume ``out`` from (None: no epoch completed, start at epoch 1)."""
    last = out / "last.ckpt"
    if not last.is_file() and not (existing and _is_run_dir(out) and not _completed_epochs(out)):
        raise BrainaeError(f"{out}: nothing to resume (no last.ckpt); start the run without --resume")
    saved = load_config(out)
    diff = [
        f"{f.name}={getattr(saved, f.name)!r} (now {getattr(config, f.name)!r})"
        for f in fields(TrainConfig)
        if f.name not in RESUMABLE and getattr(saved, f.name) != getattr(config, f.name)
    ]
    if diff:
        raise BrainaeError(
            f"{out}: --resume with settings that differ from the run's config.json: {'; '.join(diff)}; "
            "resume with the same settings (only epochs, devices and data mode may change) or use --force"
        )
    (out / "done").unlink(missing_ok=True)
    if not last.is_file():
        warnings.warn(
            f"{out}: no epoch had completed before the interruption; training starts at epoch 1",
            BrainaeWarning,
            stacklevel=4,
        )
        return None
    return last


def _check_restart(out: Path, existing: list[str], force: bool) -> None:
    """May the run files in ``out`` be deleted for a fresh start? Refuse, warn, or allow."""
    if existing and (force or not _completed_epochs(out)):
        if not _is_run_dir(out):
            raise BrainaeError(
                f"{out}: holds {', '.join(existing)} but is not a run folder that brainae wrote, so they are "
                "not replaced; choose another --out"
            )
        if not force:  # killed during its first epoch: nothing completed is lost by starting again
            warnings.warn(
                f"{out}: an earlier run stopped before its first epoch ended; starting again",
                BrainaeWarning,
                stacklevel=4,
            )
    elif existing:
        state = "a finished run" if is_finished(out) else "an unfinished run"
        raise BrainaeError(
            f"{out} holds {state} ({', '.join(existing)}); "
            "pass --resume to continue it or --force to start over"
        )


def prepare_run_dir(
    out: Path, config: TrainConfig, *, resume: bool, force: bool, dataset: Path | None = None
) -> Path | None:
    """Check and prepare the run folder; return the Lightning checkpoint to resume from, if any.

    A folder that holds no completed epoch (a run killed during its first epoch) is simply started again.
    ``force`` deletes only the run's own files (:data:`RUN_FILES`) of a folder that ``brainae train`` wrote.
    """
    from brainae.io import check_not_input, remove_stale_temporaries, write_marker

    check_not_input(out, [dataset, config.init], "run folder")  # --force must not delete an --init checkpoint
    if out.exists() and not out.is_dir():
        raise BrainaeError(f"{out}: is a file; --out names the run folder")
    for name in RUN_FILES:
        remove_stale_temporaries(out / name)
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if resume:
        return _resume_from(out, config, existing)
    _check_restart(out, existing, force)
    for name in existing:
        (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "run")
    return None


# -------------------------------------------------------------------------------- writing every epoch


class RunWriter(pl.Callback):
    """Writes ``best.safetensors`` and ``last.safetensors`` after every validation (rank 0).

    Runs first at the end of validation; :class:`EpochCommit` runs last and writes ``last.ckpt`` and then
    ``metrics.csv``. Its best-so-far and its metric rows are part of ``last.ckpt``, so a run resumed from
    ``last.ckpt`` has exactly the rows of the epochs that checkpoint has seen.
    """

    def __init__(
        self, out: Path, training_info: dict[str, Any], preprocessing: dict[str, Any] | None
    ) -> None:
        self.out = out
        self.training_info = training_info
        self.preprocessing = preprocessing
        self.best_val = math.inf
        self.best_epoch = 0
        self.rows: list[dict[str, float]] = []
        self.pending = False  # an epoch whose rows are not yet in metrics.csv
        self._restored_rows: list[dict[str, float]] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_val": float(self.best_val),
            "best_epoch": int(self.best_epoch),
            "rows": [dict(r) for r in self.rows],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_val = float(state_dict["best_val"])
        self.best_epoch = int(state_dict["best_epoch"])
        rows = state_dict.get("rows")
        self._restored_rows = [dict(r) for r in rows] if rows is not None else None
        if self._restored_rows is not None:
            self.rows = list(self._restored_rows)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after the checkpoint is restored (on_fit_start is too early): the rows of the epochs that the
        # checkpoint we resume from has seen (stored in it; older checkpoints: from metrics.csv)
        start = trainer.current_epoch
        if self._restored_rows is not None:
            self.rows = list(self._restored_rows)
        else:
            self.rows = [r for r in read_metrics(self.out) if r["epoch"] <= start]

    def training_dict(self, pl_module: pl.LightningModule) -> dict[str, Any]:
        return {
            **self.training_info,
            "bn_momentum_used": getattr(pl_module, "bn_momentum", None),
            "bn_recalibrated": bool(getattr(pl_module, "recalibrate", False)),
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val,
            "epochs_run": self.rows[-1]["epoch"] if self.rows else 0,
        }

    def save(self, name: str, pl_module: pl.LightningModule) -> None:
        from brainae.checkpoint import save_checkpoint

        save_checkpoint(
            self.out / name,
            pl_module.model,
            preprocessing=self.preprocessing,
            training=self.training_dict(pl_module),
        )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or pl_module.last_record is None:
            return
        record = pl_module.last_record
        pl_module.last_record = None
        improved = record["val_loss"] < self.best_val
        if improved:
            self.best_val, self.best_epoch = record["val_loss"], int(record["epoch"])
        self.pending = True  # on every rank: EpochCommit's checkpoint is a collective call
        self.rows = [r for r in self.rows if r["epoch"] < record["epoch"]] + [record]
        if not trainer.is_global_zero:
            return
        if improved:
            self.save("best.safetensors", pl_module)
        self.save("last.safetensors", pl_module)


class EpochCommit(pl.Callback):
    """Ends every epoch's validation (placed after early stopping): ``last.ckpt``, then ``metrics.csv``.

    ``last.ckpt`` is written atomically after every epoch, with the state of every callback (early
    stopping, the best-so-far and the metric rows); ``metrics.csv`` follows, so it never lists an epoch
    whose checkpoint is missing. A run killed at any moment resumes from the last completed epoch.
    """

    def __init__(self, writer: RunWriter) -> None:
        self.writer = writer

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.writer.pending:
            return
        from brainae.io import atomic_path

        out = self.writer.out
        if trainer.is_global_zero:
            with atomic_path(out / "last.ckpt") as tmp:
                trainer.save_checkpoint(tmp, weights_only=False)  # the full state, for --resume
        else:  # a collective call; only rank 0 writes
            trainer.save_checkpoint(out / "last.ckpt", weights_only=False)
        if trainer.is_global_zero:
            write_metrics(out / "metrics.csv", self.writer.rows)
        self.writer.pending = False


def best_row(rows: list[dict[str, float]]) -> dict[str, float] | None:
    """The row of the lowest ``val_loss`` (the first of ties), None for no rows."""
    if not rows:
        return None
    return rows[int(np.argmin([r["val_loss"] for r in rows]))]
