"""Training progress as events for a callback: the library reports, the caller (the CLI) renders.

Epochs are numbered from 1 everywhere: in these events, in ``metrics.csv`` and in every message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from brainae.train.module import pl

__all__ = ["ProgressCallback", "ProgressReporter", "TrainProgress"]


@dataclass(frozen=True)
class TrainProgress:
    """One progress event of a training run.

    Attributes:
        kind: ``"start"`` (before the first step; ``info`` says how the data are held and why),
            ``"step"`` (after each training step), ``"epoch"`` (after each validation; ``record`` is the
            epoch's ``metrics.csv`` row) or ``"end"``.
        epoch: the epoch, counted from 1 (the one running, or the one just finished).
        epochs: the maximum number of epochs of the run.
        step: training steps done in this epoch.
        steps: training steps per epoch.
        first_epoch: the first epoch this call trains (above 1 when resumed).
        record: the epoch's metrics row (``"epoch"`` events).
        info: facts about the run (``"start"`` events): ``data_mode`` (memory / stream), ``data_reason``,
            ``bn_momentum``, ``bn_recalibrated`` (short runs: batch-norm statistics re-estimated before
            each validation), ``n_train``, ``n_val``.
    """

    kind: str
    epoch: int
    epochs: int
    step: int = 0
    steps: int = 0
    first_epoch: int = 1
    record: dict[str, float] | None = None
    info: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[TrainProgress], None]


class ProgressReporter(pl.Callback):
    """Calls ``progress(event)`` on rank 0 at the start, after every step, after every epoch and at the end.

    Placed after the :class:`~brainae.train.run_folder.RunWriter` (whose rows it reports).
    """

    def __init__(self, progress: ProgressCallback, info: dict[str, Any], writer: Any) -> None:
        self.progress = progress
        self.info = info
        self.writer = writer  # the RunWriter, whose last row is the epoch's record
        self.first_epoch = 1

    def _event(self, trainer: pl.Trainer, kind: str, **kw: Any) -> None:
        if not trainer.is_global_zero:
            return
        module = trainer.lightning_module
        self.progress(
            TrainProgress(
                kind=kind,
                epoch=kw.pop("epoch", trainer.current_epoch + 1),
                epochs=int(trainer.max_epochs or 0),
                steps=module.num_steps("train"),
                first_epoch=self.first_epoch,
                **kw,
            )
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.first_epoch = (int(self.writer.rows[-1]["epoch"]) if self.writer.rows else 0) + 1  # resumed: > 1
        info = {
            **self.info,
            "bn_momentum": getattr(pl_module, "bn_momentum", None),
            "bn_recalibrated": bool(getattr(pl_module, "recalibrate", False)),
            "init": getattr(getattr(pl_module, "config", None), "init", None),
        }
        self._event(trainer, "start", info=info)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self._event(trainer, "step", step=batch_idx + 1)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.writer.rows:
            return
        record = self.writer.rows[-1]
        self._event(trainer, "epoch", epoch=int(record["epoch"]), record=dict(record))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._event(trainer, "end", epoch=trainer.current_epoch)
