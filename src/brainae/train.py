"""Stage 8: train an autoencoder on a prepared dataset (thesis 5.4.5), and run the thesis's experiment grid.

The data path is built for speed: the WHOLE train split (and the val split) is copied once into one tensor on
the training device; every step draws its batch there by index (one seeded random permutation per epoch) and
corrupts the input there with :func:`brainae.corrupt.augment` (the target stays clean). There are no
DataLoader workers and no per-sample Python: the "dataloader" Lightning iterates is :class:`IndexBatches`, a
sized iterable of index tensors that already live on the device.

The thesis's schedule, with Keras semantics:

- RMSprop, lr 1e-3, ``rho=0.9, eps=1e-7`` (Keras's defaults; torch's are ``alpha=0.99, eps=1e-8``, the update
  formula ``g / (sqrt(avg) + eps)`` is the same);
- early stopping on ``val_loss``: patience 20, min delta 2e-7 for MSE, 5e-5 when DSSIM is in the loss
  (Lightning's ``EarlyStopping`` counts exactly like Keras's);
- reduce-on-plateau on ``val_loss``: factor 0.2, patience 4, min lr 1e-7, same min delta. Keras reduces when
  ``wait >= patience``, torch when ``bad_epochs > patience``, so torch gets ``patience - 1``. The scheduler is
  stepped by the module at the end of validation (not by Lightning after the epoch), so that the ``last.ckpt``
  written at the end of validation holds the scheduler state *after* this epoch's step;
- L2 (``l2 > 0``): ``l2 * sum(w**2)`` over :func:`brainae.models.kernel_parameters` is added to the training
  loss, and, as in Keras, the reported ``val_loss`` includes the same penalty (``val_mse`` etc. do not).

Randomness is derived, not carried: the permutation of epoch ``e`` and the augmentation generator of epoch
``e`` on rank ``r`` are seeded from ``(seed, e, r)``, so a run resumed from ``last.ckpt`` draws exactly what
the uninterrupted run would have drawn. With DDP (``devices > 1`` or ``num_nodes > 1``; Lightning's standard
strategy) every rank holds the data on its device and takes a disjoint, equal shard of each epoch's
permutation.

Run folder (``fit(..., out_dir)``)::

    config.json        the TrainConfig (+ dataset path)
    metrics.csv        one row per epoch: CSV_COLUMNS
    best.safetensors   brainae checkpoint of the best val_loss epoch (self-describing: brainae.checkpoint)
    last.safetensors   brainae checkpoint of the last epoch
    last.ckpt          Lightning checkpoint (weights, optimizer, scheduler, early stopping, epoch) for resume
    curves.png         train / val loss per epoch (thesis Fig 5.18) and the learning rate
    done               marker of a finished run (JSON summary)

Example:
    >>> from brainae.train import TrainConfig, fit
    >>> config = TrainConfig(arch="res-unet", loss="mse")
    >>> best = fit("prepared", "runs/res-unet_mse_nol2_aug", config)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from brainae.errors import BrainaeError, BrainaeWarning

__all__ = [
    "CSV_COLUMNS",
    "PRECISIONS",
    "AutoencoderModule",
    "GridRun",
    "IndexBatches",
    "TrainConfig",
    "fit",
    "grid",
    "grid_configs",
    "is_finished",
    "load_config",
    "read_metrics",
    "run_name",
]

PRECISIONS = ("32", "bf16-mixed", "16-mixed")
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
"""Columns of ``metrics.csv``. ``epoch`` counts from 1; ``val_psnr`` is the mean of per-image PSNRs capped at
100 dB; ``lr`` the learning rate used during the epoch; ``seconds`` the epoch's wall time (train + val);
``img_s`` training images per second."""

MIN_DELTA = {"mse": 2e-7, "dssim": 5e-5}
"""Thesis min delta (early stopping and reduce-on-plateau) per loss term; a sum takes the largest."""

RESUMABLE = ("epochs", "accelerator", "devices", "num_nodes", "strategy", "precision")
"""Config fields that may change when a run is resumed; all others must match the run's config.json."""

RUN_FILES = (
    "config.json",
    "metrics.csv",
    "best.safetensors",
    "last.safetensors",
    "last.ckpt",
    "curves.png",
    "done",
)


# ---------------------------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` in the run folder.

    Attributes:
        arch: architecture name (see :func:`brainae.models.architecture_names`).
        loss: ``"mse"``, ``"dssim"``, ``"mse+dssim"`` or a weighted sum (:func:`brainae.metrics.make_loss`).
        augment: corrupt the training inputs (thesis "AUG"); the target always stays clean.
        l2: Keras-style kernel L2 factor (thesis: 1e-5), 0 for none.
        l2_transposed: also penalise transposed-convolution kernels (the thesis's Keras code did not).
        epochs: maximum number of epochs.
        batch_size: images per step (per device with DDP).
        lr: initial learning rate of RMSprop.
        rho: RMSprop's moving-average factor (Keras ``rho``, torch ``alpha``).
        eps: RMSprop's epsilon (Keras 1e-7).
        patience: early-stopping patience in epochs.
        min_delta: early-stopping and plateau min delta; None takes the thesis's value for the loss.
        lr_factor: reduce-on-plateau factor.
        lr_patience: reduce-on-plateau patience, Keras semantics (reduce after this many epochs without
            improvement).
        min_lr: lower bound of the learning rate.
        precision: ``"32"``, ``"bf16-mixed"`` or ``"16-mixed"``.
        accelerator: ``"auto"``, ``"cpu"``, ``"gpu"`` (any Lightning accelerator name).
        devices: devices per node (int or ``"auto"``).
        num_nodes: number of nodes (DDP).
        strategy: Lightning strategy (``"auto"`` uses DDP for more than one device).
        seed: seeds weights, permutations and augmentation.
        latent_channels: latent feature maps (None: the thesis's 128).
        max_steps_per_epoch: cap on the steps of an epoch (None: the whole train split each epoch).
        channels_last: channels-last memory format (faster with mixed precision on GPUs).
        compile: run the model through ``torch.compile``.
        bn_momentum: torch batch-norm momentum while training; None keeps the thesis's Keras value (0.99 in
            Keras terms, torch 0.01), whose running statistics need a few hundred steps to settle. Short runs
            (the demo, quick experiments) should use torch's 0.1, or the model is poor in eval mode.
        augment_options: fields of :class:`brainae.corrupt.AugmentConfig` that differ from its defaults.
    """

    arch: str = "res-unet"
    loss: str = "mse"
    augment: bool = True
    l2: float = 0.0
    l2_transposed: bool = True
    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    rho: float = 0.9
    eps: float = 1e-7
    patience: int = 20
    min_delta: float | None = None
    lr_factor: float = 0.2
    lr_patience: int = 4
    min_lr: float = 1e-7
    precision: str = "32"
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    seed: int = 0
    latent_channels: int | None = None
    max_steps_per_epoch: int | None = None
    channels_last: bool = False
    compile: bool = False
    bn_momentum: float | None = None
    augment_options: dict[str, Any] | None = field(default=None)

    def validate(self) -> TrainConfig:
        """Check names and ranges; return ``self``.

        Raises:
            BrainaeError: unknown architecture / loss / precision (listing the valid ones) or bad numbers.
        """
        from brainae.metrics import parse_loss
        from brainae.models import architecture_names

        if self.arch not in architecture_names():
            raise BrainaeError(
                f"unknown architecture {self.arch!r}; valid names: {', '.join(architecture_names())}"
            )
        parse_loss(self.loss)
        if str(self.precision) not in PRECISIONS:
            raise BrainaeError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        self.precision = str(self.precision)
        for name in ("epochs", "batch_size", "num_nodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise BrainaeError(f"{name} must be a positive integer, got {value!r}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise BrainaeError(f"max_steps_per_epoch must be positive, got {self.max_steps_per_epoch}")
        if self.bn_momentum is not None and not 0 < self.bn_momentum <= 1:
            raise BrainaeError(f"bn_momentum must be in (0, 1], got {self.bn_momentum}")
        if self.latent_channels is not None and self.latent_channels < 1:
            raise BrainaeError(f"latent_channels must be positive, got {self.latent_channels}")
        if not (self.l2 >= 0 and math.isfinite(self.l2)):
            raise BrainaeError(f"l2 must be a non-negative number, got {self.l2}")
        if not self.lr > 0:
            raise BrainaeError(f"lr must be positive, got {self.lr}")
        if self.lr_patience < 1 or self.patience < 1:
            raise BrainaeError("patience and lr_patience must be at least 1")
        return self

    @property
    def resolved_min_delta(self) -> float:
        """The min delta in use: ``min_delta`` or the thesis's value for the loss."""
        if self.min_delta is not None:
            return float(self.min_delta)
        from brainae.metrics import parse_loss

        return max(MIN_DELTA.get(term, 0.0) for term in parse_loss(self.loss))

    def arch_kwargs(self) -> dict[str, Any]:
        """Constructor arguments for :func:`brainae.models.build_model`."""
        return {} if self.latent_channels is None else {"latent_channels": int(self.latent_channels)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def load_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The :class:`TrainConfig` of a run folder (its ``config.json``)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise BrainaeError(f"{path}: not found; {Path(run_dir)} is not a brainae training run")
    try:
        return TrainConfig.from_dict(json.loads(path.read_text())["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BrainaeError(
            f"{path}: unreadable run config ({exc}); start the run again with --force"
        ) from None


# --------------------------------------------------------------------------------------- seeds, batches


def derived_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (seed, epoch, rank, stream); stable across platforms."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def shard_batches(
    n: int,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    max_steps: int | None = None,
) -> list[Tensor]:
    """Index batches of one epoch for one rank: a seeded permutation of ``range(n)``, this rank's shard.

    Every rank computes the same permutation (CPU generator seeded from ``(seed, epoch)``) and takes the
    ``rank``-th of ``world`` equal contiguous chunks (``n // world`` indices; the remainder sits out this
    epoch, as a distributed sampler with ``drop_last`` does). The last batch may be smaller.

    Returns:
        List of int64 CPU tensors; concatenated they are this rank's shard, each index once.
    """
    g = torch.Generator().manual_seed(derived_seed(seed, epoch, 0))
    perm = torch.randperm(n, generator=g)
    per_rank = n // world if world > 1 else n
    shard = perm[rank * per_rank : (rank + 1) * per_rank]
    steps = math.ceil(per_rank / batch_size)
    if max_steps is not None:
        steps = min(steps, max_steps)
    return list(shard[: steps * batch_size].split(batch_size))


class IndexBatches:
    """The sized iterable Lightning iterates: each item is a batch of indices already on the device.

    ``split="train"``: :meth:`AutoencoderModule.epoch_batches` for the module's current epoch (a fresh
    permutation per epoch). ``split="val"``: ``(start, stop)`` ranges of this rank's part of the val split.
    """

    def __init__(self, module: AutoencoderModule, split: str) -> None:
        self.module = module
        self.split = split

    def __len__(self) -> int:
        return self.module.num_steps(self.split)

    def __iter__(self) -> Iterator[Any]:
        if self.split == "train":
            return iter(self.module.epoch_batches(self.module.current_epoch))
        return iter(self.module.val_ranges())


# ---------------------------------------------------------------------------------------------- module


def _import_lightning():
    try:
        import lightning.pytorch as pl
    except ModuleNotFoundError:  # pragma: no cover - lightning is a dependency
        raise BrainaeError("training needs the 'lightning' package: pip install lightning") from None
    return pl


pl = _import_lightning()


class AutoencoderModule(pl.LightningModule):
    """Lightning wrapper that trains one autoencoder (``self.model``) on images held on the device.

    Args:
        config: the run's :class:`TrainConfig`.
        train_images: N x H x W float32 images in [0, 1] (numpy or tensor, CPU); copied to the device at fit
            start.
        val_images: M x H x W validation images, or None (no validation).

    Example:
        >>> module = AutoencoderModule(TrainConfig(arch="skip-cae"), np.zeros((4, 32, 32), np.float32), None)
        >>> module.num_steps("train")
        1
    """

    def __init__(
        self,
        config: TrainConfig,
        train_images: np.ndarray | Tensor,
        val_images: np.ndarray | Tensor | None = None,
    ) -> None:
        super().__init__()
        from brainae.metrics import make_loss
        from brainae.models import build_model

        self.config = config.validate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(config.seed, -1, 0))
            self.model = build_model(config.arch, **config.arch_kwargs())
        if config.bn_momentum is not None:
            for module in self.model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.momentum = float(config.bn_momentum)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = make_loss(config.loss)
        self._train_cpu = torch.as_tensor(np.asarray(train_images, dtype=np.float32))
        self._val_cpu = (
            None if val_images is None else torch.as_tensor(np.asarray(val_images, dtype=np.float32))
        )
        self.train_images: Tensor | None = None  # N x 1 x H x W on the device (set in on_fit_start)
        self.val_images: Tensor | None = None
        self._augment_config = None
        if config.augment:
            from brainae.corrupt import AugmentConfig

            self._augment_config = AugmentConfig.from_dict(dict(config.augment_options or {}))
        self.__dict__["_compiled"] = torch.compile(self.model) if config.compile else None
        self._generator: torch.Generator | None = None
        self._plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict | None = None
        self._train_sum: Tensor | None = None
        self._train_count = 0
        self._val_sums: Tensor | None = None
        self._epoch_t0 = 0.0
        self._train_seconds = 0.0
        self.last_record: dict[str, float] | None = None

    # ---- data on the device

    def _rank_world(self) -> tuple[int, int]:
        trainer = self._trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def num_steps(self, split: str) -> int:
        """Steps of one epoch on this rank (``"train"``) or validation batches (``"val"``)."""
        rank, world = self._rank_world()
        if split == "train":
            n = len(self._train_cpu)
            per_rank = n // world if world > 1 else n
            steps = math.ceil(per_rank / self.config.batch_size)
            if self.config.max_steps_per_epoch is not None:
                steps = min(steps, self.config.max_steps_per_epoch)
            return steps
        return len(self.val_ranges())

    def epoch_batches(self, epoch: int) -> list[Tensor]:
        """This rank's index batches of ``epoch`` (on the module's device); see :func:`shard_batches`."""
        rank, world = self._rank_world()
        batches = shard_batches(
            len(self._train_cpu),
            self.config.batch_size,
            seed=self.config.seed,
            epoch=epoch,
            rank=rank,
            world=world,
            max_steps=self.config.max_steps_per_epoch,
        )
        if not batches:
            return []
        flat = torch.cat(batches).to(self.device)  # one host-to-device copy per epoch
        return list(flat.split([len(b) for b in batches]))

    def val_ranges(self) -> list[tuple[int, int]]:
        """``(start, stop)`` batches covering this rank's contiguous part of the val split."""
        if self._val_cpu is None:
            return []
        rank, world = self._rank_world()
        n = len(self._val_cpu)
        lo, hi = n * rank // world, n * (rank + 1) // world
        bs = self.config.batch_size
        return [(s, min(s + bs, hi)) for s in range(lo, hi, bs)]

    def to_device_data(self) -> None:
        """Copy the images to the module's device as N x 1 x H x W tensors (once)."""
        dev = self.device
        if self.train_images is None or self.train_images.device != dev:
            self.train_images = self._train_cpu.to(dev).unsqueeze(1)
        if self._val_cpu is not None and (self.val_images is None or self.val_images.device != dev):
            self.val_images = self._val_cpu.to(dev).unsqueeze(1)

    # ---- the model

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruct. Shapes: N x 1 x H x W -> N x 1 x H x W, values in (0, 1)."""
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        net = self.__dict__.get("_compiled") or self.model
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

    # ---- Lightning hooks

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
        self.to_device_data()

    def on_train_start(self) -> None:  # after Lightning restored a checkpoint (on_fit_start is before)
        if self._plateau is not None and self._plateau_state is not None:
            self._plateau.load_state_dict(self._plateau_state)
            self._plateau_state = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._plateau is not None:
            checkpoint["brainae_plateau"] = self._plateau.state_dict()
        checkpoint["brainae_config"] = self.config.to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._plateau_state = checkpoint.get("brainae_plateau")

    def on_train_epoch_start(self) -> None:
        self._epoch_t0 = time.perf_counter()
        self._generator = None  # re-seeded from (seed, epoch, rank) at the first batch
        self._train_sum = torch.zeros(
            (), device=self.device, dtype=torch.float64 if self._f64 else torch.float32
        )
        self._train_count = 0

    @property
    def _f64(self) -> bool:
        return self.device.type != "mps"

    def training_step(self, idx: Tensor, batch_idx: int) -> Tensor:
        """One step: gather the clean batch on the device, corrupt it, reconstruct, loss."""
        target = self.train_images[idx]
        loss = self.training_loss(self.corrupt(target), target)
        n = idx.shape[0]
        self._train_sum += loss.detach() * n
        self._train_count += n
        if batch_idx % 16 == 0:
            self.log(
                "loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False, batch_size=n
            )
        return loss

    def on_validation_epoch_start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._train_seconds = time.perf_counter() - self._epoch_t0
        dtype = torch.float64 if self._f64 else torch.float32
        self._val_sums = torch.zeros(5, device=self.device, dtype=dtype)

    def validation_step(self, bounds: tuple[int, int], batch_idx: int) -> None:
        """Clean input vs clean target: accumulate per-image loss, MSE, DSSIM, PSNR sums."""
        from brainae.metrics import PSNR_CAP_DB, dssim, mse

        start, stop = (int(b) for b in bounds)
        target = self.val_images[start:stop]
        pred = self(target).float()
        m = mse(pred, target)
        d = dssim(pred, target)
        p = torch.clamp(10.0 * torch.log10(1.0 / m), max=PSNR_CAP_DB)
        terms = {"mse": m, "dssim": d}
        loss = sum(w * terms[name] for name, w in self.loss_fn.weights.items())
        n = torch.full_like(m, 1.0)
        sums = torch.stack([loss.sum(), m.sum(), d.sum(), p.sum(), n.sum()])
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
        val_loss = float(val[0]) / count + penalty
        train_count = float(train[1])
        lr = float(self.trainer.optimizers[0].param_groups[0]["lr"])
        seconds = time.perf_counter() - self._epoch_t0
        self.last_record = {
            "epoch": self.current_epoch + 1,
            "train_loss": float(train[0]) / max(train_count, 1.0),
            "val_loss": val_loss,
            "val_mse": float(val[1]) / count,
            "val_dssim": float(val[2]) / count,
            "val_psnr": float(val[3]) / count,
            "lr": lr,
            "seconds": seconds,
            "img_s": train_count / max(self._train_seconds, 1e-9),
        }
        self.log("val_loss", val_loss, prog_bar=True, logger=False, sync_dist=False)
        self.log("train_loss", self.last_record["train_loss"], prog_bar=True, logger=False, sync_dist=False)
        if self._plateau is not None:
            self._plateau.step(val_loss)


# ----------------------------------------------------------------------------------------- run writing


def _atomic_write_text(path: Path, text: str) -> None:
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


def _write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: (repr(float(v)) if k != "epoch" else int(v)) for k, v in row.items() if k in CSV_COLUMNS}
        )
    _atomic_write_text(path, buf.getvalue())


def plot_curves(rows: list[dict[str, float]], path: str | os.PathLike, title: str = "") -> Path:
    """Training curves (thesis Fig 5.18): train and val loss per epoch (log scale) and the learning rate."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from brainae.io import atomic_path

    epochs = [r["epoch"] for r in rows]
    fig, (ax, ax_lr) = plt.subplots(
        2, 1, figsize=(6.4, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, constrained_layout=True
    )
    ax.plot(epochs, [r["train_loss"] for r in rows], "o-", ms=3, label="train loss")
    ax.plot(epochs, [r["val_loss"] for r in rows], "s-", ms=3, label="val loss")
    if rows:
        best = min(rows, key=lambda r: r["val_loss"])
        ax.axvline(best["epoch"], color="0.6", ls=":", lw=1)
        ax.annotate(
            f"best {best['val_loss']:.3g} (epoch {best['epoch']})",
            (best["epoch"], best["val_loss"]),
            textcoords="offset points",
            xytext=(4, 8),
            fontsize=8,
        )
    if all(r["train_loss"] > 0 and r["val_loss"] > 0 for r in rows):
        ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    ax_lr.plot(epochs, [r["lr"] for r in rows], "k.-", ms=3)
    ax_lr.set_yscale("log")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    ax_lr.grid(alpha=0.3)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


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

    def on_train_start(self, trainer: pl.Trainer, pl_module: AutoencoderModule) -> None:
        # after the checkpoint is restored (on_fit_start is too early): the rows of the epochs that the
        # checkpoint we resume from has seen (stored in it; older checkpoints: from metrics.csv)
        start = trainer.current_epoch
        if self._restored_rows is not None:  # exactly the epochs the checkpoint has seen
            self.rows = list(self._restored_rows)
        else:
            self.rows = [r for r in read_metrics(self.out) if r["epoch"] <= start]

    def training_dict(self, pl_module: AutoencoderModule) -> dict[str, Any]:
        return {
            **self.training_info,
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val,
            "epochs_run": self.rows[-1]["epoch"] if self.rows else 0,
        }

    def save(self, name: str, pl_module: AutoencoderModule) -> None:
        from brainae.checkpoint import save_checkpoint

        save_checkpoint(
            self.out / name,
            pl_module.model,
            preprocessing=self.preprocessing,
            training=self.training_dict(pl_module),
        )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: AutoencoderModule) -> None:
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

    def on_validation_end(self, trainer: pl.Trainer, pl_module: AutoencoderModule) -> None:
        if trainer.sanity_checking or not self.writer.pending:
            return
        from brainae.io import atomic_path

        out = self.writer.out
        if trainer.is_global_zero:
            with atomic_path(out / "last.ckpt") as tmp:
                trainer.save_checkpoint(tmp)
        else:  # a collective call; only rank 0 writes
            trainer.save_checkpoint(out / "last.ckpt")
        if trainer.is_global_zero:
            _write_metrics(out / "metrics.csv", self.writer.rows)
        self.writer.pending = False


# ---------------------------------------------------------------------------------------------- fitting


def is_finished(run_dir: str | os.PathLike) -> bool:
    """A run is finished when its ``best.safetensors`` and its ``done`` marker exist."""
    run_dir = Path(run_dir)
    return (run_dir / "best.safetensors").is_file() and (run_dir / "done").is_file()


def _is_launcher_rank_zero() -> bool:
    """True in the process that prepares the run folder (not in DDP worker processes started later)."""
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK", "GROUP_RANK"):
        if int(os.environ.get(var, "0") or 0) != 0:
            return False
    return True


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


def _prepare_run_dir(
    out: Path, config: TrainConfig, *, resume: bool, force: bool, dataset: Path | None = None
) -> Path | None:
    """Check and prepare the run folder; return the Lightning checkpoint to resume from, if any.

    A folder that holds no completed epoch (a run killed during its first epoch) is simply started again.
    ``force`` deletes only the run's own files (:data:`RUN_FILES`) of a folder that ``brainae train`` wrote.
    """
    from brainae.io import check_not_input, remove_stale_temporaries, write_marker

    if dataset is not None:
        check_not_input(out, [dataset], "run folder")
    if out.exists() and not out.is_dir():
        raise BrainaeError(f"{out}: is a file; --out names the run folder")
    for name in RUN_FILES:
        remove_stale_temporaries(out / name)
    last = out / "last.ckpt"
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if resume:
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
                "resume with the same settings (only epochs and devices may change) or use --force"
            )
        (out / "done").unlink(missing_ok=True)
        if not last.is_file():
            warnings.warn(
                f"{out}: no epoch had completed before the interruption; training starts at epoch 1",
                BrainaeWarning,
                stacklevel=3,
            )
            return None
        return last
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
                stacklevel=3,
            )
    elif existing:
        state = "a finished run" if is_finished(out) else "an unfinished run"
        raise BrainaeError(
            f"{out} holds {state} ({', '.join(existing)}); "
            "pass --resume to continue it or --force to start over"
        )
    for name in existing:
        (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "run")
    return None


def _check_split(images: np.ndarray, split: str, dataset: Path) -> None:
    if len(images) == 0:
        hint = (
            "re-run `brainae prepare` with a non-empty validation split (more volumes or a larger fraction)"
            if split == "val"
            else "re-run `brainae prepare` so that some volumes go to train"
        )
        raise BrainaeError(f"{dataset}: the {split!r} split has no slices; {hint}")


def _normative(model: torch.nn.Module, ds: Any, device: torch.device) -> dict | None:
    try:
        from brainae.slice_anomaly import normative_statistics
    except ImportError:
        return None
    try:
        return normative_statistics(model, ds, split="val", device=device)
    except BrainaeError as exc:
        warnings.warn(f"normative statistics not stored: {exc}", BrainaeWarning, stacklevel=2)
        return None


def fit(
    dataset_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: TrainConfig,
    progress: bool = True,
    *,
    resume: bool = False,
    force: bool = False,
) -> Path:
    """Train ``config.arch`` on a prepared dataset; return the best checkpoint (``out_dir/best.safetensors``).

    Args:
        dataset_path: prepared dataset folder (see ``docs/dataset-format.md``).
        out_dir: run folder (see the module docstring).
        config: the run's settings.
        progress: show a rich progress bar.
        resume: continue the run in ``out_dir`` from its ``last.ckpt`` (same settings; ``epochs`` and the
            device settings may change).
        force: delete an existing run in ``out_dir`` first.

    Raises:
        BrainaeError: unknown arch/loss, incomplete dataset, an empty train/val split, an existing run without
            ``resume``/``force``, ``resume`` with nothing to resume or with different settings.

    Example:
        >>> fit("prepared", "runs/test", TrainConfig(arch="skip-cae", epochs=2))  # doctest: +SKIP
        PosixPath('runs/test/best.safetensors')
    """
    from brainae import __version__
    from brainae.dataset import open_dataset

    config.validate()
    dataset_path = Path(dataset_path)
    ds = open_dataset(dataset_path)
    train_images = ds.split_array("train")
    val_images = ds.split_array("val")
    _check_split(train_images, "train", dataset_path)
    _check_split(val_images, "val", dataset_path)
    out = Path(out_dir)
    main = _is_launcher_rank_zero()
    if main:
        ckpt_path = _prepare_run_dir(out, config, resume=resume, force=force, dataset=dataset_path)
        _atomic_write_text(
            out / "config.json",
            json.dumps(
                {"config": config.to_dict(), "dataset": str(dataset_path.resolve()), "version": __version__},
                indent=2,
            )
            + "\n",
        )
    else:
        ckpt_path = out / "last.ckpt" if resume else None

    preprocessing = ds.settings.get("preprocessing")
    training_info = {
        **config.to_dict(),
        "min_delta": config.resolved_min_delta,
        "dataset": str(dataset_path.resolve()),
        "n_train": int(len(train_images)),
        "n_val": int(len(val_images)),
        "version": __version__,
    }
    module = AutoencoderModule(config, train_images, val_images)
    writer = RunWriter(out, training_info, preprocessing)
    callbacks: list[pl.Callback] = [
        writer,
        pl.callbacks.EarlyStopping(
            monitor="val_loss",
            min_delta=config.resolved_min_delta,
            patience=config.patience,
            mode="min",
            check_on_train_epoch_end=False,
        ),
        EpochCommit(writer),  # after early stopping, so that last.ckpt holds its state of this epoch
    ]
    if progress:
        callbacks.append(pl.callbacks.RichProgressBar(refresh_rate=8, console_kwargs={"stderr": True}))
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
        trainer = pl.Trainer(
            accelerator=config.accelerator,
            devices=config.devices,
            num_nodes=config.num_nodes,
            strategy=config.strategy,
            precision=config.precision,
            max_epochs=config.epochs,
            logger=False,
            callbacks=callbacks,
            enable_progress_bar=progress,
            enable_model_summary=False,
            enable_checkpointing=False,  # EpochCommit writes last.ckpt (atomically, after every epoch)
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            benchmark=True,
            default_root_dir=str(out),
        )
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        try:
            trainer.fit(
                module,
                train_dataloaders=IndexBatches(module, "train"),
                val_dataloaders=IndexBatches(module, "val"),
                ckpt_path=str(ckpt_path) if ckpt_path is not None else None,
            )
        except SIGTERMException:
            done = writer.rows[-1]["epoch"] if writer.rows else 0
            raise BrainaeError(
                f"{out}: training stopped by SIGTERM after {done} completed epoch(s); continue it with "
                "`brainae train ... --resume`"
            ) from None
    best = out / "best.safetensors"
    if trainer.interrupted:
        raise KeyboardInterrupt
    if not trainer.is_global_zero:
        return best
    if not best.is_file():  # no epoch ran in this call (e.g. resumed at its last epoch): keep what is there
        raise BrainaeError(f"{out}: no epoch was trained; raise --epochs above the epochs already run")
    from brainae.checkpoint import load_model, update_checkpoint

    device = trainer.strategy.root_device  # the module itself is back on the CPU after fit
    normative = _normative(load_model(best, device), ds, device)
    training = writer.training_dict(module)
    training["stopped_early"] = bool(
        trainer.should_stop and writer.rows and writer.rows[-1]["epoch"] < config.epochs
    )
    update_checkpoint(best, training=training, normative=normative)
    if (out / "last.safetensors").is_file():
        update_checkpoint(out / "last.safetensors", training=training, normative=normative)
    with contextlib.suppress(Exception):  # a figure must never fail a finished training
        plot_curves(writer.rows, out / "curves.png", title=out.name)
    _atomic_write_text(out / "done", json.dumps(training, indent=2, default=str) + "\n")
    return best


# ------------------------------------------------------------------------------------------------- grid

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


def grid(
    dataset_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    runs: list[tuple[str, TrainConfig]],
    progress: bool = True,
    on_start: Any = None,
) -> list[GridRun]:
    """Train every ``(name, config)`` into ``out_dir/name``; finished runs are skipped, unfinished resumed.

    Writes ``out_dir/summary.csv`` (one row per run, best epoch's validation metrics) and returns its rows.
    ``on_start(i, n, name)`` is called before each run (for the CLI's messages).
    """
    from brainae.dataset import open_dataset

    ds = open_dataset(dataset_path)  # dataset problems stop the grid before any run
    for split in ("train", "val"):
        _check_split(ds.split_rows(split), split, Path(dataset_path))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: list[GridRun] = []
    for i, (name, cfg) in enumerate(runs):
        run_dir = out / name
        if on_start is not None:
            on_start(i, len(runs), name)
        if is_finished(run_dir):
            status = "skipped"
        else:
            resume = (run_dir / "last.ckpt").is_file()
            try:
                fit(dataset_path, run_dir, cfg, progress, resume=resume, force=not resume)
                status = "resumed" if resume else "trained"
            except BrainaeError as exc:  # one bad configuration must not stop the grid
                status = f"failed: {exc}"
        rows = read_metrics(run_dir)
        row = GridRun(name=name, arch=cfg.arch, loss=cfg.loss, l2=cfg.l2, augment=cfg.augment, status=status)
        if rows:
            best = min(rows, key=lambda r: r["val_loss"])
            row.epochs = rows[-1]["epoch"]
            row.best_epoch = best["epoch"]
            row.val_loss, row.val_mse = best["val_loss"], best["val_mse"]
            row.val_dssim, row.val_psnr = best["val_dssim"], best["val_psnr"]
        summary.append(row)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[f.name for f in fields(GridRun)], lineterminator="\n")
    writer.writeheader()
    for row in summary:
        writer.writerow(asdict(row))
    _atomic_write_text(out / "summary.csv", buf.getvalue())
    return summary
