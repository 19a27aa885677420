"""The thesis's experiment grid: architectures x losses x {L2, none} x {augmentation, none}, one run each."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from itertools import product
from pathlib import Path

from brainae.errors import BrainaeError
from brainae.train.config import TrainConfig
from brainae.train.fitting import fit
from brainae.train.progress import ProgressCallback
from brainae.train.run_folder import atomic_write_text, best_row, check_split, is_finished, read_metrics

__all__ = ["GRID_LOSSES", "THESIS_L2", "GridRun", "grid", "grid_configs", "run_name"]

GRID_LOSSES = ("mse", "dssim")
THESIS_L2 = 1e-5


def run_name(arch: str, loss: str, l2: bool, augment: bool) -> str:
    """Run folder name of one grid configuration, e.g. ``res-unet_mse_l2_aug``."""
    loss_name = loss.replace("+", "-").replace("*", "x")
    return f"{arch}_{loss_name}_{'l2' if l2 else 'nol2'}_{'aug' if augment else 'noaug'}"


def grid_configs(
    archs: list[str] | None = None,
    losses: list[str] | None = None,
    l2: list[bool] | None = None,
    augment: list[bool] | None = None,
    base: TrainConfig | None = None,
    l2_value: float = THESIS_L2,
) -> list[tuple[str, TrainConfig]]:
    """The thesis grid (archs x losses x {L2, none} x {aug, none}) or a subset, as ``(run name, config)``."""
    from brainae.models import architecture_names

    base = base or TrainConfig()
    archs = archs or architecture_names()
    losses = losses or list(GRID_LOSSES)
    l2 = [True, False] if l2 is None else l2
    augment = [True, False] if augment is None else augment
    runs = []
    for arch, loss, use_l2, use_aug in product(archs, losses, l2, augment):
        d = {
            **base.to_dict(),
            "arch": arch,
            "loss": loss,
            "l2": l2_value if use_l2 else 0.0,
            "augment": use_aug,
        }
        cfg = TrainConfig.from_dict(d).validate()
        runs.append((run_name(arch, loss, use_l2, use_aug), cfg))
    return runs


@dataclass
class GridRun:
    """One row of the grid summary."""

    name: str
    arch: str
    loss: str
    l2: float
    augment: bool
    status: str  # "trained", "resumed", "skipped" (already finished), "failed: ..."
    epochs: int = 0
    best_epoch: int = 0
    val_loss: float = math.nan
    val_mse: float = math.nan
    val_dssim: float = math.nan
    val_psnr: float = math.nan


def _run_one(
    dataset_path: str | os.PathLike,
    run_dir: Path,
    cfg: TrainConfig,
    progress: ProgressCallback | None,
    after_run: Callable[[Path, TrainConfig], None] | None,
) -> str:
    """Train (or resume, or skip) one configuration; its status. A failure is a status, not an error."""
    if is_finished(run_dir):
        return "skipped"
    resume = (run_dir / "last.ckpt").is_file()
    try:
        fit(dataset_path, run_dir, cfg, progress, resume=resume, force=not resume)
        if after_run is not None:
            after_run(run_dir, cfg)
    except BrainaeError as exc:  # one bad configuration must not stop the grid
        return f"failed: {exc}"
    return "resumed" if resume else "trained"


def _summary_row(name: str, cfg: TrainConfig, status: str, run_dir: Path) -> GridRun:
    row = GridRun(name=name, arch=cfg.arch, loss=cfg.loss, l2=cfg.l2, augment=cfg.augment, status=status)
    rows = read_metrics(run_dir)
    best = best_row(rows)
    if best is not None:
        row.epochs = rows[-1]["epoch"]
        row.best_epoch = best["epoch"]
        row.val_loss, row.val_mse = best["val_loss"], best["val_mse"]
        row.val_dssim, row.val_psnr = best["val_dssim"], best["val_psnr"]
    return row


def grid(
    dataset_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    runs: list[tuple[str, TrainConfig]],
    progress: ProgressCallback | None = None,
    on_start: Callable[[int, int, str], None] | None = None,
    after_run: Callable[[Path, TrainConfig], None] | None = None,
) -> list[GridRun]:
    """Train every ``(name, config)`` into ``out_dir/name``; finished runs are skipped, unfinished resumed.

    Writes ``out_dir/summary.csv`` (one row per run, best epoch's validation metrics) and returns its rows.

    Args:
        dataset_path: prepared dataset folder.
        out_dir: folder of run folders.
        runs: from :func:`grid_configs`.
        progress: passed to :func:`~brainae.train.fit` for every run.
        on_start: ``on_start(i, n, name)`` before each run (for the CLI's messages).
        after_run: ``after_run(run_dir, config)`` after each run trained here (e.g. the normative statistics
            step); a :class:`~brainae.errors.BrainaeError` it raises marks the run failed.
    """
    from brainae.dataset import open_dataset

    ds = open_dataset(dataset_path)  # dataset problems stop the grid before any run
    for split in ("train", "val"):
        check_split(len(ds.split_rows(split)), split, Path(dataset_path))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: list[GridRun] = []
    for i, (name, cfg) in enumerate(runs):
        if on_start is not None:
            on_start(i, len(runs), name)
        status = _run_one(dataset_path, out / name, cfg, progress, after_run)
        summary.append(_summary_row(name, cfg, status, out / name))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[f.name for f in fields(GridRun)], lineterminator="\n")
    writer.writeheader()
    for row in summary:
        writer.writerow(asdict(row))
    atomic_write_text(out / "summary.csv", buf.getvalue())
    return summary
