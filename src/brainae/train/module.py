"""The Lightning module that trains one autoencoder: batches, corruption, loss, the thesis's optimiser.

The module holds the model (``self.model``), it is not the model. Each epoch's batches come from its splits
(:mod:`brainae.train.data`), the input of each step is the clean batch corrupted on the device by
:func:`brainae.corrupt.augment` (the target stays clean), and validation accumulates per-image loss, MSE,
DSSIM and PSNR (:mod:`brainae.metrics`) into one row of ``metrics.csv`` per epoch (:attr:`last_record`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np  # noqa: F401 (the docstring example)
import torch
from torch import Tensor

from brainae.errors import BrainaeError
from brainae.train.config import TrainConfig
from brainae.train.data import InMemorySplit, StreamedSplit, as_split, derived_seed, shard_batches

__all__ = ["AutoencoderModule", "auto_bn_momentum", "pl", "recalibrate_batch_norm"]

KERAS_BN_MOMENTUM = 0.01
"""Keras's batch-norm momentum 0.99 in torch terms (the weight of the new batch)."""

SHORT_RUN_STEPS = 300
"""Runs of fewer planned steps are short: larger batch-norm momentum and re-estimated statistics."""

RECALIBRATION_BATCHES = 8
"""Training batches whose batch-norm statistics replace the running ones before each validation of a short run."""


def _import_lightning():
    try:
        import lightning.pytorch as pl
    except ModuleNotFoundError:  # pragma: no cover - lightning is a dependency
        raise BrainaeError("training needs the 'lightning' package: pip install lightning") from None
    return pl


pl = _import_lightning()


def auto_bn_momentum(total_steps: int) -> float:
    """Batch-norm momentum (torch terms) for a run of ``total_steps`` optimiser steps.

    ``min(0.1, max(0.01, 3 / total_steps))``: the thesis's Keras value 0.01 from 300 steps on; shorter runs
    get a larger momentum, so that the running statistics forget the first (untrained) batches: after
    ``total_steps`` steps their weight is about ``exp(-3)`` = 5 %. With 0.01, a 30-step run would evaluate
    with running statistics still 74 % made of their initial values.

    Example:
        >>> auto_bn_momentum(1000), auto_bn_momentum(100), auto_bn_momentum(10)
        (0.01, 0.03, 0.1)
    """
    return float(min(0.1, max(KERAS_BN_MOMENTUM, 3.0 / max(int(total_steps), 1))))


@torch.no_grad()
def recalibrate_batch_norm(model: torch.nn.Module, inputs: Iterator[Tensor]) -> int:
    """Replace the running batch-norm statistics by their plain average over ``inputs`` (train-mode passes).

    The weights do not change. Returns the number of batches used (0: the model has no batch norm).
    """
    norms = _batch_norms(model)
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    was_training = model.training
    model.train()
    n = 0
    try:
        for x in inputs:
            model(x)
            n += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return n


def _batch_norms(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def load_initial_weights(model: torch.nn.Module, config: TrainConfig) -> None:
    """Copy the weights of ``config.init`` (a checkpoint of the same architecture) into ``model``.

    Raises:
        BrainaeError: the checkpoint is of another architecture or shape (naming both).
    """
    from brainae.checkpoint import load_checkpoint

    source, ckpt = load_checkpoint(config.init)
    theirs, ours = source.state_dict(), model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in theirs.items()}
    if ckpt.arch != config.arch or shapes != {k: tuple(v.shape) for k, v in ours.items()}:
        raise BrainaeError(
            f"{config.init}: a {ckpt.arch} checkpoint ({dict(ckpt.arch_kwargs or {})}) does not fit a "
            f"{config.arch} run with {config.arch_kwargs() or 'the default settings'}; give a checkpoint of "
            "the same architecture and latent size to --init"
        )
    model.load_state_dict(theirs)


class AutoencoderModule(pl.LightningModule):
    """Lightning wrapper that trains one autoencoder (``self.model``) on images held on the device.

    Args:
        config: the run's :class:`TrainConfig`.
        train_images: N x H x W float32 images in [0, 1] (numpy or tensor, CPU; copied to the device at fit
            start) or a split object of :mod:`brainae.train.data` (e.g. streamed from ``slices.npy``).
        val_images: M x H x W validation images (or a split object), or None (no validation).

    Example:
        >>> module = AutoencoderModule(TrainConfig(arch="skip-cae"), np.zeros((4, 32, 32), np.float32), None)
        >>> module.num_steps("train")
        1
    """

    def __init__(
        self,
        config: TrainConfig,
        train_images: Any,
        val_images: Any = None,
    ) -> None:
        super().__init__()
        from brainae.metrics import make_loss
        from brainae.models import build_model

        self.config = config.validate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(config.seed, -1, 0))
            self.model = build_model(config.arch, **config.arch_kwargs())
        if config.init is not None:
            load_initial_weights(self.model, config)
        self.bn_momentum: float | None = None
        if config.bn_momentum is not None:
            self.set_bn_momentum(config.bn_momentum)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = make_loss(config.loss)
        self.train_data: InMemorySplit | StreamedSplit = as_split(train_images)
        self.val_data = None if val_images is None else as_split(val_images)
        self._augment_config = None
        if config.augment:
            from brainae.corrupt import AugmentConfig

            self._augment_config = AugmentConfig.from_dict(dict(config.augment_options or {}))
        self.__dict__["_compiled"] = torch.compile(self.model) if config.compile else None
        self._generator: torch.Generator | None = None
        self._plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict | None = None
        self._restored_bn: float | None = None
        self.recalibrate = False  # set at fit start: a short run with the automatic batch-norm momentum
        self._train_sum: Tensor | None = None
        self._train_count = 0
        self._val_sums: Tensor | None = None
        self._epoch_t0 = 0.0
        self._train_seconds = 0.0
        self.last_record: dict[str, float] | None = None

    # ---- batches

    def _rank_world(self) -> tuple[int, int]:
        trainer = self._trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def num_steps(self, split: str) -> int:
        """Steps of one epoch on this rank (``"train"``) or validation batches (``"val"``)."""
        _, world = self._rank_world()
        if split == "train":
            n = len(self.train_data)
            per_rank = n // world if world > 1 else n
            steps = math.ceil(per_rank / self.config.batch_size)
            if self.config.max_steps_per_epoch is not None:
                steps = min(steps, self.config.max_steps_per_epoch)
            return steps
        return len(self.val_ranges())

    def epoch_batches(self, epoch: int) -> list[Tensor]:
        """This rank's index batches of ``epoch``; see :func:`~brainae.train.data.shard_batches`.

        On the module's device for an in-memory split, on the CPU for a streamed one.
        """
        rank, world = self._rank_world()
        batches = shard_batches(
            len(self.train_data),
            self.config.batch_size,
            seed=self.config.seed,
            epoch=epoch,
            rank=rank,
            world=world,
            max_steps=self.config.max_steps_per_epoch,
        )
        if not batches:
            return []
        flat = torch.cat(batches).to(self.train_data.index_device(self.device))  # one copy per epoch
        return list(flat.split([len(b) for b in batches]))

    def train_batches(self, epoch: int) -> Iterator[Tensor]:
        """The clean training batches of ``epoch`` on the device, N x 1 x H x W."""
        return self.train_data.batches(self.epoch_batches(epoch), self.device)

    def val_ranges(self) -> list[tuple[int, int]]:
        """``(start, stop)`` batches covering this rank's contiguous part of the val split."""
        if self.val_data is None:
            return []
        rank, world = self._rank_world()
        n = len(self.val_data)
        lo, hi = n * rank // world, n * (rank + 1) // world
        bs = self.config.batch_size
        return [(s, min(s + bs, hi)) for s in range(lo, hi, bs)]

    def val_batches(self) -> Iterator[Tensor]:
        """This rank's validation batches on the device, in order."""
        if self.val_data is None:
            return iter(())
        return self.val_data.ranges(self.val_ranges(), self.device)

    def set_bn_momentum(self, momentum: float) -> None:
        """Set the torch momentum of every batch-norm layer."""
        self.bn_momentum = float(momentum)
        for module in _batch_norms(self.model):
            module.momentum = self.bn_momentum

    # ---- the model

    @property
    def _memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.config.channels_last else torch.contiguous_format

    def _net(self) -> torch.nn.Module:
        """The compiled model when ``--compile`` asked for it, else the model. (Not ``compiled or model``:
        the truth value of a compiled module calls ``len()``, which fails for a module without one.)"""
        compiled = self.__dict__.get("_compiled")
        return self.model if compiled is None else compiled

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruct. Shapes: N x 1 x H x W -> N x 1 x H x W, values in (0, 1)."""
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        net = self._net()
        return net(x)

    def l2_penalty(self) -> Tensor:
        """``l2 * sum(w**2)`` over the convolution kernels (a 0-d float32 tensor; 0 when ``l2 == 0``)."""
        from brainae.models import kernel_parameters

        if self.config.l2 == 0:
            return torch.zeros((), device=self.device)
        kernels = list(kernel_parameters(self.model, include_transposed=self.config.l2_transposed))
        return self.config.l2 * torch.cat([w.float().reshape(-1) for w in kernels]).square().sum()

    def corrupt(self, target: Tensor) -> Tensor:
        """The training input for a clean batch: augmented with the epoch's generator, or the batch itself."""
        if self._augment_config is None:
            return target
        from brainae.corrupt import augment

        if self._generator is None:
            self._generator = torch.Generator(device=target.device).manual_seed(
                derived_seed(self.config.seed, self.current_epoch, self._rank_world()[0], 1)
            )
        return augment(target, self._augment_config, self._generator)

    def training_loss(self, inputs: Tensor, target: Tensor) -> Tensor:
        """Loss of one batch: the data loss (batch mean) plus the L2 penalty."""
        loss = self.loss_fn(self(inputs), target)
        if self.config.l2:
            loss = loss + self.l2_penalty()
        return loss

    # ---- Lightning hooks: optimiser, state

    def configure_optimizers(self) -> torch.optim.Optimizer:
        opt = torch.optim.RMSprop(
            self.model.parameters(), lr=self.config.lr, alpha=self.config.rho, eps=self.config.eps
        )
        self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt,
            mode="min",
            factor=self.config.lr_factor,
            patience=self.config.lr_patience - 1,  # Keras: wait >= patience; torch: bad_epochs > patience
            threshold=self.config.resolved_min_delta,
            threshold_mode="abs",
            min_lr=self.config.min_lr,
        )
        return opt

    def on_fit_start(self) -> None:
        # the momentum of a resumed run is the one it started with, whatever --epochs says now
        planned = self.config.epochs * self.num_steps("train")
        if self.config.bn_momentum is None:
            self.set_bn_momentum(self._restored_bn or auto_bn_momentum(planned))
            self.recalibrate = planned < SHORT_RUN_STEPS

    def on_train_start(self) -> None:  # after Lightning restored a checkpoint (on_fit_start is before)
        if self._plateau is not None and self._plateau_state is not None:
            self._plateau.load_state_dict(self._plateau_state)
            self._plateau_state = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._plateau is not None:
            checkpoint["brainae_plateau"] = self._plateau.state_dict()
        checkpoint["brainae_config"] = self.config.to_dict()
        checkpoint["brainae_bn_momentum"] = self.bn_momentum

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._plateau_state = checkpoint.get("brainae_plateau")
        self._restored_bn = checkpoint.get("brainae_bn_momentum")

    # ---- Lightning hooks: training and validation

    def on_train_epoch_start(self) -> None:
        self._epoch_t0 = time.perf_counter()
        self._generator = None  # re-seeded from (seed, epoch, rank) at the first batch
        self._train_sum = torch.zeros((), device=self.device, dtype=self._sum_dtype)
        self._train_count = 0

    @property
    def _sum_dtype(self) -> torch.dtype:
        return torch.float32 if self.device.type == "mps" else torch.float64

    def training_step(self, target: Tensor, batch_idx: int) -> Tensor:
        """One step: corrupt the clean batch (N x 1 x H x W, on the device), reconstruct, loss."""
        loss = self.training_loss(self.corrupt(target), target)
        n = target.shape[0]
        self._train_sum += loss.detach() * n
        self._train_count += n
        return loss

    def on_validation_epoch_start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._train_seconds = time.perf_counter() - self._epoch_t0
        self._val_sums = torch.zeros(5, device=self.device, dtype=self._sum_dtype)
        if self.recalibrate:
            self._recalibrate()

    def _recalibrate(self) -> None:
        """Short runs: batch-norm statistics of the epoch's first training batches (inputs corrupted as in
        training, from their own seeded generator), so that eval mode matches the weights just trained."""
        from itertools import islice

        generator = None
        if self._augment_config is not None:
            from brainae.corrupt import augment

            seed = derived_seed(self.config.seed, self.current_epoch, self._rank_world()[0], 2)
            generator = torch.Generator(device=self.device).manual_seed(seed)
        batches = self.train_batches(self.current_epoch)
        try:
            inputs = (
                augment(t, self._augment_config, generator) if generator is not None else t
                for t in islice(batches, RECALIBRATION_BATCHES)
            )
            net = self._net()
            recalibrate_batch_norm(net, (x.contiguous(memory_format=self._memory_format) for x in inputs))
        finally:
            getattr(batches, "close", lambda: None)()

    def validation_step(self, target: Tensor, batch_idx: int) -> None:
        """Clean input vs clean target: accumulate per-image loss, MSE, DSSIM, PSNR (capped) sums."""
        from brainae.metrics import PSNR_CAP_DB, dssim, mse, psnr

        pred = self(target).float()
        terms = {"mse": mse(pred, target), "dssim": dssim(pred, target)}
        loss = self.loss_fn.combine(terms)
        p = psnr(pred, target, cap=PSNR_CAP_DB)
        n = torch.full_like(loss, 1.0)
        sums = torch.stack([loss.sum(), terms["mse"].sum(), terms["dssim"].sum(), p.sum(), n.sum()])
        self._val_sums += sums.to(self._val_sums.dtype)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or self._val_sums is None:
            return
        strategy = self.trainer.strategy
        val = strategy.reduce(self._val_sums, reduce_op="sum")
        train = torch.stack([self._train_sum, torch.full_like(self._train_sum, float(self._train_count))])
        train = strategy.reduce(train, reduce_op="sum")
        count = float(val[4])
        if count == 0:
            raise BrainaeError("the validation split has no slices on this device; use fewer devices")
        with torch.no_grad():
            penalty = float(self.l2_penalty())
        train_count = float(train[1])
        self.last_record = {
            "epoch": self.current_epoch + 1,
            "train_loss": float(train[0]) / max(train_count, 1.0),
            "val_loss": float(val[0]) / count + penalty,
            "val_mse": float(val[1]) / count,
            "val_dssim": float(val[2]) / count,
            "val_psnr": float(val[3]) / count,
            "lr": float(self.trainer.optimizers[0].param_groups[0]["lr"]),
            "seconds": time.perf_counter() - self._epoch_t0,
            "img_s": train_count / max(self._train_seconds, 1e-9),
        }
        self.log("val_loss", self.last_record["val_loss"], logger=False, sync_dist=False)
        if self._plateau is not None:
            self._plateau.step(self.last_record["val_loss"])
