"""Stage 8: train an autoencoder on a prepared dataset (thesis 5.4.5), and run the thesis's experiment grid.

Where things are:

- :mod:`~brainae.train.config`: :class:`TrainConfig`, the settings of a run (saved as ``config.json``);
- :mod:`~brainae.train.data`: the seeded index batches (one permutation per epoch, DDP shards) and the splits
  they index, held on the device or streamed from ``slices.npy``;
- :mod:`~brainae.train.module`: :class:`AutoencoderModule`, the Lightning module (corruption on the device,
  loss, the thesis's optimiser and schedule, validation metrics);
- :mod:`~brainae.train.run_folder`: what a run writes (metrics CSV, checkpoints, ``last.ckpt``) and resume;
- :mod:`~brainae.train.progress`: progress events for a callback (the CLI renders them);
- :mod:`~brainae.train.fitting`: :func:`fit`, one run, as a sequence of named steps;
- :mod:`~brainae.train.grid_runs`: :func:`grid`, the thesis's experiment grid.

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
  loss, and, as in Keras, the reported ``val_loss`` includes the same penalty (``val_mse`` etc. do not);
- batch-norm momentum: Keras's (torch 0.01) for runs of 300 steps or more, larger for shorter runs
  (:func:`~brainae.train.module.auto_bn_momentum`).

Randomness is derived, not carried: the permutation of epoch ``e`` and the augmentation generator of epoch
``e`` on rank ``r`` are seeded from ``(seed, e, r)``, so a run resumed from ``last.ckpt`` draws exactly what
the uninterrupted run would have drawn. With DDP (``devices > 1`` or ``num_nodes > 1``; Lightning's standard
strategy) each step's global batch is split into disjoint, equal shards, one per rank, and batch norm is
synchronised, so that ``N`` ranks of batch ``B`` follow one process of batch ``N * B`` (with augmentation
off: each rank draws its own corruptions).

Example:
    >>> from brainae.train import TrainConfig, fit
    >>> config = TrainConfig(arch="res-unet", loss="mse")
    >>> best = fit("prepared", "runs/res-unet_mse_nol2_aug", config)  # doctest: +SKIP
"""

from __future__ import annotations

from brainae.train.config import DATA_MODES, PRECISIONS, RESUMABLE, TrainConfig, load_config
from brainae.train.data import IndexBatches, choose_data_mode, derived_seed, shard_batches
from brainae.train.fitting import fit
from brainae.train.grid_runs import GridRun, grid, grid_configs, run_name
from brainae.train.module import AutoencoderModule, auto_bn_momentum, pl, recalibrate_batch_norm
from brainae.train.progress import ProgressCallback, TrainProgress
from brainae.train.run_folder import (
    CSV_COLUMNS,
    RUN_FILES,
    EpochCommit,
    RunWriter,
    best_row,
    is_finished,
    is_rank_zero_process,
    read_metrics,
)

__all__ = [
    "CSV_COLUMNS",
    "DATA_MODES",
    "PRECISIONS",
    "RESUMABLE",
    "RUN_FILES",
    "AutoencoderModule",
    "EpochCommit",
    "GridRun",
    "IndexBatches",
    "ProgressCallback",
    "RunWriter",
    "TrainConfig",
    "TrainProgress",
    "auto_bn_momentum",
    "best_row",
    "choose_data_mode",
    "derived_seed",
    "fit",
    "grid",
    "grid_configs",
    "is_finished",
    "is_rank_zero_process",
    "load_config",
    "pl",
    "read_metrics",
    "recalibrate_batch_norm",
    "run_name",
    "shard_batches",
]
