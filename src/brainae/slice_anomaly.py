"""Stage 10 for slice autoencoders: anomaly maps and per-volume anomaly scores against a normative distribution.

Definitions (one implementation, used for NIfTI scans and for the prepared dataset alike):

- **Residual** of a slice: ``|x - recon|`` on the model's grid and [0, 1] scale, where ``x`` is the model
  input (the preprocessed slice) and ``recon`` the model's output. The map written for a volume is that
  residual brought back onto the input's voxel grid (bilinear, like the reconstruction), still in model units
  ([0, 1]: comparable between scans whatever their intensity scale); it is 0 in slices that were not scored
  and outside the field of view. ``signed=True`` gives ``x - recon`` (positive: brighter than the model
  expects).
- **Score** of a volume: the mean of the largest ``top_fraction`` (default 0.1 %) of the residual pixels,
  pooled over all scored slices of the volume (whole ``size x size`` images). High values mean that some part
  of the volume was not reproduced by the normative model.
- **Scored slices.** The prepared dataset holds only the selected slices of each volume; those are scored
  as they are. For a NIfTI scan the same kind of slices is scored: the dataset's selection (method,
  threshold and brain-mask backend, from its ``settings.json``) is stored in the normative statistics
  (``definition["selection"]``) and applied to the scan with :func:`brainae.apply.select_slices`, which
  computes the measures with :func:`brainae.select.slice_measures` exactly as ``brainae prepare`` does.
  Without it, the thesis's brain-mask selection (3000 / 256^2) is used.
- **Normative statistics** (:func:`normative_statistics`): score of every volume of the validation split
  (healthy controls not used for training); their mean, standard deviation (ddof 1) and count;
  ``z = (score - mean) / std``.

Example:
    >>> from brainae.checkpoint import load_checkpoint                  # doctest: +SKIP
    >>> model, ckpt = load_checkpoint("model.safetensors")              # doctest: +SKIP
    >>> res = anomaly(load_volume("scan.nii.gz"), model, ckpt.preprocessing,
    ...               normative=ckpt.normative)                         # doctest: +SKIP
    >>> res.score, res.z                                                 # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainae.apply import Result, Selection, as_selection, predict_slices, reconstruct
from brainae.card import Normative
from brainae.device import resolve_device
from brainae.errors import BrainaeError, BrainaeWarning
from brainae.volume import Preprocessing, SliceStack, slices_to_volume

__all__ = [
    "DEFAULT_TOP_FRACTION",
    "AnomalyResult",
    "ScoreDefinition",
    "anomaly",
    "normative_statistics",
    "store_normative_statistics",
    "residual_map",
    "residuals",
    "selection_from",
    "volume_score",
    "z_score",
]

DEFAULT_TOP_FRACTION = 0.001
"""Fraction of the largest residual pixels averaged into a volume's score (0.1 %)."""


@dataclass(frozen=True)
class ScoreDefinition:
    """The parameters of the volume score (stored with the normative statistics)."""

    top_fraction: float = DEFAULT_TOP_FRACTION
    selection: Selection | None = Selection()  # None: every slice
    residual: str = "abs"
    region: str = "whole model image of each scored slice"

    def __post_init__(self) -> None:
        if not 0 < self.top_fraction <= 1:
            raise BrainaeError(f"top_fraction {self.top_fraction}: must be in (0, 1]")

    def to_dict(self) -> dict:
        return {
            "top_fraction": float(self.top_fraction),
            "selection": None if self.selection is None else self.selection.to_dict(),
            "residual": self.residual,
            "region": self.region,
        }

    @classmethod
    def from_dict(cls, d: dict | None) -> ScoreDefinition:
        d = d or {}
        return cls(
            top_fraction=float(d.get("top_fraction", DEFAULT_TOP_FRACTION)),
            selection=None if d.get("selection", {}) is None else Selection.from_dict(d.get("selection")),
        )


def residuals(inputs: np.ndarray, outputs: np.ndarray, *, signed: bool = False) -> np.ndarray:
    """Per-pixel residual of model inputs and outputs (same shape, [0, 1] scale): ``|x - y|`` or ``x - y``."""
    diff = np.asarray(inputs, dtype=np.float32) - np.asarray(outputs, dtype=np.float32)
    return diff if signed else np.abs(diff)


def volume_score(residual_images: np.ndarray, top_fraction: float = DEFAULT_TOP_FRACTION) -> float:
    """Mean of the largest ``top_fraction`` of the absolute residual pixels of one volume's scored slices.

    Example:
        >>> r = np.zeros((2, 10, 10), np.float32); r[0, 0, :2] = 1.0
        >>> volume_score(r, top_fraction=0.01)
        1.0
    """
    flat = np.abs(np.asarray(residual_images, dtype=np.float32)).ravel()
    if flat.size == 0:
        return float("nan")
    k = max(1, int(math.ceil(top_fraction * flat.size)))
    top = np.partition(flat, flat.size - k)[flat.size - k :]
    return float(top.astype(np.float64).mean())


def z_score(score: float, normative: Normative | dict | None) -> float | None:
    """``(score - mean) / std`` against normative statistics; None when they are missing or degenerate."""
    if not normative:
        return None
    return Normative.from_dict(normative).z(score)


def check_normative(normative: Normative | dict | None, where: str) -> Normative | None:
    """Normative statistics as stored in a checkpoint, validated: finite ``mean``, finite positive ``std``
    (when present, checked by :meth:`brainae.card.Normative.from_dict`) and a readable score definition.

    Raises:
        BrainaeError: statistics that are not numbers, not finite, or a damaged definition.
    """
    if normative is None:
        return None
    normative = Normative.from_dict(normative, where)
    try:
        ScoreDefinition.from_dict(normative.definition)
    except (TypeError, ValueError, AttributeError):
        raise BrainaeError(
            f"{where}: damaged normative score definition; re-create the checkpoint's statistics (train "
            "again, or use a checkpoint written by brainae train)"
        ) from None
    return normative


def selection_from(normative: Normative | dict | None) -> Selection | None:
    """The slice selection recorded in normative statistics (the thesis's brain-mask rule without one)."""
    definition = Normative.from_dict(normative).definition if normative else None
    return ScoreDefinition.from_dict(definition).selection


def residual_map(result: Result, *, signed: bool = False) -> np.ndarray:
    """The residual of a :class:`~brainae.apply.Result` on the input's RAS+ grid, in model units.

    Zero in slices that were not processed and outside the field of view.
    """
    res = residuals(result.inputs, result.outputs, signed=signed)
    unit = SliceStack(
        res, np.zeros(len(res)), np.ones(len(res)), result.stack.view_shape, result.stack.spacing
    )
    vol, _ = slices_to_volume(res, unit, result.prep, result.data.shape)
    return np.where(result.inside, vol, 0.0).astype(np.float32)


@dataclass
class AnomalyResult:
    """Anomaly map and score of one volume.

    Attributes:
        map: float32 RAS+ residual map on the input's grid (see module doc).
        score: the volume score; z: its z-score against the normative statistics (None without them).
        n_slices: number of scored slices; definition: the score's parameters.
        result: the underlying reconstruction.
    """

    map: np.ndarray
    score: float
    z: float | None
    n_slices: int
    definition: ScoreDefinition
    result: Result


def anomaly(
    volume,
    model,
    prep: Preprocessing,
    *,
    normative: Normative | dict | None = None,
    batch_size: int = 64,
    device: str | object = "cpu",
    selection: Selection | float | None | str = "normative",
    top_fraction: float | None = None,
    brain_mask: np.ndarray | None = None,
    signed: bool = False,
) -> AnomalyResult:
    """Residual map, volume score and z-score of one volume.

    Args:
        volume: a :class:`~brainae.io.Volume`; not modified.
        model: the normative autoencoder; prep: its preprocessing.
        normative: the checkpoint's normative statistics (their definition is used unless overridden).
        batch_size, device: as :func:`brainae.apply.reconstruct_volume`.
        selection: ``"normative"`` (default) takes the selection recorded in ``normative``; otherwise as
            :func:`brainae.apply.select_slices` (a scan scored with another selection than the normative
            volumes gives a z-score that is not comparable).
        top_fraction: override of the score's top fraction.
        brain_mask: as :func:`brainae.apply.select_slices`.
        signed: write ``x - recon`` instead of ``|x - recon|`` in the map (the score is always absolute).

    Raises:
        BrainaeError: no slice passes the selection (the score would be undefined).
    """
    base = ScoreDefinition.from_dict(Normative.from_dict(normative).definition if normative else None)
    if isinstance(selection, str):
        if selection != "normative":
            raise BrainaeError(f"selection {selection!r}: give 'normative', a Selection, a number or None")
        selection = base.selection
    res = reconstruct(
        volume, model, prep, batch_size=batch_size, device=device, selection=selection, brain_mask=brain_mask
    )
    definition = ScoreDefinition(
        top_fraction=base.top_fraction if top_fraction is None else float(top_fraction),
        selection=as_selection(selection),
    )
    if res.n_processed == 0:
        sel = definition.selection
        rule = f"{sel.method} above {sel.threshold:.3g}" if sel is not None else "all slices"
        raise BrainaeError(
            f"{getattr(volume, 'path', 'volume')}: no slice passes the selection ({rule}); "
            "is this a brain MRI volume?"
        )
    idx = res.processed
    score = volume_score(residuals(res.inputs[idx], res.outputs[idx]), definition.top_fraction)
    return AnomalyResult(
        map=residual_map(res, signed=signed),
        score=score,
        z=z_score(score, normative),
        n_slices=res.n_processed,
        definition=definition,
        result=res,
    )


def normative_statistics(
    model,
    dataset,
    split: str = "val",
    device: str | object = "cpu",
    *,
    batch_size: int = 64,
    top_fraction: float = DEFAULT_TOP_FRACTION,
) -> dict:
    """Volume scores of one split of a prepared dataset, and their mean / std / count.

    Slices are grouped by ``volume_id``; each volume's score is :func:`volume_score` of the residuals of its
    (selected) slices, exactly as :func:`anomaly` scores a NIfTI volume.

    Args:
        model: the trained autoencoder.
        dataset: a :class:`~brainae.dataset.PreparedDataset`.
        split: the split of healthy volumes not used for training (``val``).
        device: where to run the model.
        batch_size: slices per forward pass.
        top_fraction: the score's top fraction.

    Returns:
        JSON-able dict: ``split``, ``n``, ``mean``, ``std`` (ddof 1; None for fewer than 2 volumes),
        ``scores`` ({volume_id: score}), ``n_slices`` ({volume_id: count}), ``definition``
        (:class:`ScoreDefinition` as a dict, with the dataset's slice selection).
    """
    definition = ScoreDefinition(
        top_fraction=float(top_fraction), selection=Selection.from_settings(dataset.settings.get("select"))
    )
    rows = dataset.split_rows(split)
    ids = dataset.index["volume_id"].to_numpy()[rows]
    scores: dict[str, float] = {}
    counts: dict[str, int] = {}
    for vid in dict.fromkeys(ids.tolist()):
        vrows = rows[ids == vid]
        x = np.ascontiguousarray(dataset.slices[vrows], dtype=np.float32)
        y = predict_slices(model, x, batch_size=batch_size, device=device)
        scores[str(vid)] = volume_score(residuals(x, y), definition.top_fraction)
        counts[str(vid)] = len(vrows)
    values = np.array(list(scores.values()), dtype=np.float64)
    if len(values) < 2:
        warnings.warn(
            f"normative statistics from {len(values)} {split} volume(s): z-scores need at least 2; "
            "give the dataset a larger validation split",
            BrainaeWarning,
            stacklevel=2,
        )
    return {
        "split": split,
        "n": len(values),
        "mean": float(values.mean()) if len(values) else None,
        "std": float(values.std(ddof=1)) if len(values) >= 2 else None,
        "scores": scores,
        "n_slices": counts,
        "definition": definition.to_dict(),
    }


def store_normative_statistics(
    run_dir: str | os.PathLike, dataset: str | os.PathLike, device: str | object = "cpu"
) -> dict | None:
    """The step after training: the normative statistics of a finished run, stored in its checkpoints.

    Computes :func:`normative_statistics` of the run's best model on the dataset's val split (healthy
    volumes not used for training) and writes them into ``best.safetensors`` (and ``last.safetensors``), so
    that ``brainae anomaly`` can give z-scores with that checkpoint alone. Run by ``brainae train``, ``grid``
    and ``demo`` after :func:`brainae.train.fit`.

    Returns:
        The statistics, or None (with a warning) when they cannot be computed, e.g. a val split whose
        volumes have no selected slices; the checkpoints are then left without them.
    """
    from brainae.checkpoint import load_model, update_checkpoint
    from brainae.dataset import open_dataset

    run_dir = Path(run_dir)
    best = run_dir / "best.safetensors"
    dev = resolve_device(device)
    try:
        stats = normative_statistics(load_model(best, dev), open_dataset(dataset), split="val", device=dev)
    except BrainaeError as exc:
        warnings.warn(f"{best}: normative statistics not stored: {exc}", BrainaeWarning, stacklevel=2)
        return None
    for path in (best, run_dir / "last.safetensors"):
        if path.is_file():
            update_checkpoint(path, normative=stats)
    return stats
