"""The settings of one training run (:class:`TrainConfig`), saved as ``config.json`` in the run folder."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from brainae.errors import BrainaeError

__all__ = ["DATA_MODES", "MIN_DELTA", "PRECISIONS", "RESUMABLE", "TrainConfig", "load_config"]

PRECISIONS = ("32", "bf16-mixed", "16-mixed")

DATA_MODES = ("auto", "memory", "stream")
"""Where the training batches come from: the whole split copied to the device (``memory``), read batch by
batch from ``slices.npy`` (``stream``), or ``auto``: memory when the split fits the memory budget."""

MIN_DELTA = {"mse": 2e-7, "dssim": 5e-5}
"""Thesis min delta (early stopping and reduce-on-plateau) per loss term; a sum takes the largest."""

RESUMABLE = (
    "epochs",
    "accelerator",
    "devices",
    "num_nodes",
    "strategy",
    "precision",
    "data",
    "memory_limit",
)
"""Config fields that may change when a run is resumed; all others must match the run's config.json."""


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
        bn_momentum: torch batch-norm momentum while training; None chooses it from the run's number of
            steps (:func:`brainae.train.module.auto_bn_momentum`): the thesis's Keras value (0.99 in Keras
            terms, torch 0.01) for runs of at least 300 steps, up to torch's 0.1 for shorter runs, whose
            running statistics would otherwise not settle and leave the model poor in eval mode.
        data: ``"auto"``, ``"memory"`` or ``"stream"`` (:data:`DATA_MODES`).
        memory_limit: bytes the training data may take on the device (``auto`` streams above it); None:
            half of the device's free memory.
        augment_options: fields of :class:`brainae.corrupt.AugmentConfig` that differ from its defaults.
        init: a checkpoint (brainae ``.safetensors`` or a thesis Keras ``.h5``) of the same architecture whose
            weights the run starts from (fine-tuning), or None to start from a random initialisation.
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
    data: str = "auto"
    memory_limit: int | None = None
    augment_options: dict[str, Any] | None = field(default=None)
    init: str | None = None

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
        if self.data not in DATA_MODES:
            raise BrainaeError(f"unknown data mode {self.data!r}; choose one of {', '.join(DATA_MODES)}")
        for name in ("epochs", "batch_size", "num_nodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise BrainaeError(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_steps_per_epoch", "latent_channels", "memory_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BrainaeError(f"{name} must be positive, got {value}")
        if self.bn_momentum is not None and not 0 < self.bn_momentum <= 1:
            raise BrainaeError(f"bn_momentum must be in (0, 1], got {self.bn_momentum}")
        if not (self.l2 >= 0 and math.isfinite(self.l2)):
            raise BrainaeError(f"l2 must be a non-negative number, got {self.l2}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise BrainaeError(
                f"--lr {self.lr}: the learning rate must be a positive finite number, e.g. 1e-3"
            )
        if self.lr_patience < 1 or self.patience < 1:
            raise BrainaeError("patience and lr_patience must be at least 1")
        if self.init is not None and not Path(self.init).is_file():
            raise BrainaeError(
                f"{self.init}: no such checkpoint to start from; give an existing file to --init"
            )
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
