"""The typed parts of a checkpoint's card: where the weights come from, how they were trained, and the
healthy-data statistics (the preprocessing types live in :mod:`brainae.volume`).

Each part reads and writes the JSON form stored in a checkpoint (:mod:`brainae.checkpoint`) with
``from_dict`` / ``to_dict``; keys it does not name are kept in ``details`` / ``record`` so a card round-trips.

Example:
    >>> Source.from_dict({"type": "keras-h5", "license": "MIT", "keras_version": "2.4.0"}).license
    'MIT'
    >>> Normative(n=2, mean=1.0, std=0.5).z(2.0)
    2.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from brainae.errors import BrainaeError
from brainae.volume import Preprocessing, VolumetricPreprocessing, preprocessing_from_dict


def _number(d: dict, key: str, where: str, *, nonneg: bool = False) -> float | None:
    value = d.get(key)
    if value is None:
        return None
    fix = "re-create the checkpoint's statistics (train again, or use a checkpoint written by brainae train)"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BrainaeError(f"{where}: normative {key} {value!r} is not a number; {fix}") from None
    if not math.isfinite(number) or (nonneg and number < 0):
        raise BrainaeError(f"{where}: normative {key} {value!r} is not a finite valid value; {fix}")
    return number


@dataclass(frozen=True)
class Source:
    """Where a checkpoint's weights come from, under which licence.

    Attributes:
        license: licence of the weights (e.g. ``"MIT"``).
        credit: who made them.
        kind: how they were made (``"keras-h5"`` for an imported thesis model; ``None`` for brainae's own).
        file: the imported file's name.
        note: a sentence of provenance.
        details: the rest of the provenance as stored (``keras_version``, ``trained_by``, ``data``, ...).
    """

    license: str | None = None
    credit: str | None = None
    kind: str | None = None
    file: str | None = None
    note: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    _KEYS = (
        ("type", "kind"),
        ("file", "file"),
        ("license", "license"),
        ("credit", "credit"),
        ("note", "note"),
    )

    def to_dict(self) -> dict[str, Any]:
        d = {key: getattr(self, attr) for key, attr in self._KEYS if getattr(self, attr) is not None}
        return {**d, **self.details}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Source:
        known = {attr: d[key] for key, attr in cls._KEYS if d.get(key) is not None}
        return cls(**known, details={k: v for k, v in d.items() if k not in dict(cls._KEYS)})


TRAINING_RECORD_KEYS = (
    "min_delta", "dataset", "n_train", "n_val", "version", "best_epoch", "best_val_loss", "epochs_run",
    "stopped_early",
)  # fmt: skip
"""Keys of a ``brainae train`` card that the run recorded (the others are its settings)."""


@dataclass(frozen=True)
class Training:
    """How the weights were trained: the run's settings and what the run recorded.

    Attributes:
        recipe: the settings (``brainae train``'s ``TrainConfig`` or ``brainae fit``'s recipe, as a dict).
        record: what the run used and measured (dataset or split and volumes, best epoch, losses, timing).
        nested: stored as ``{"recipe": {...}, ...record}`` (``brainae fit``) rather than flat (``train``).
    """

    recipe: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    nested: bool = False

    def get(self, key: str, default: Any = None) -> Any:
        """One setting or recorded value (the record first)."""
        if key in self.record:
            return self.record[key]
        return self.recipe.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        if self.nested:
            return {"recipe": dict(self.recipe), **self.record}
        return {**self.recipe, **self.record}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Training:
        if isinstance(d.get("recipe"), dict):
            return cls(dict(d["recipe"]), {k: v for k, v in d.items() if k != "recipe"}, nested=True)
        record = {k: v for k, v in d.items() if k in TRAINING_RECORD_KEYS}
        return cls({k: v for k, v in d.items() if k not in record}, record)


@dataclass(frozen=True)
class Normative:
    """Normative statistics: how healthy validation volumes score, and how a score is defined.

    Attributes:
        n: number of healthy volumes.
        mean: mean of their scores; std: their standard deviation (ddof 1; ``None`` with one volume).
        scores: each volume's score by id.
        definition: the score's parameters (a slice model's :class:`~brainae.slice_anomaly.ScoreDefinition`
            as a dict; words for a volumetric model).
        kind: ``"voxel-residual"`` for a volumetric anomaly model's voxel calibration, else ``None``.
        levels, thresholds: the voxel calibration: ``-log10`` tail probability -> residual (volumetric).
        details: the rest as stored (``split``, ``n_slices``, ``voxels``, ``note``).
    """

    n: int | None = None
    mean: float | None = None
    std: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    definition: dict[str, Any] | None = None
    kind: str | None = None
    levels: tuple[float, ...] = ()
    thresholds: tuple[float, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    _KEYS = ("kind", "n", "mean", "std", "scores", "definition", "levels", "thresholds")

    @property
    def calibrated(self) -> bool:
        """True when it holds a voxel calibration (levels and thresholds)."""
        return bool(self.thresholds)

    def z(self, score: float) -> float | None:
        """``(score - mean) / std``; None when the statistics are degenerate or the score is not finite."""
        if self.mean is None or self.std is None or not self.std > 0 or not math.isfinite(score):
            return None
        return float((score - self.mean) / self.std)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind} if self.kind is not None else {}
        d.update(n=self.n, mean=self.mean, std=self.std, scores=dict(self.scores), definition=self.definition)
        if self.calibrated:
            d.update(levels=list(self.levels), thresholds=list(self.thresholds))
        return {**d, **self.details}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "checkpoint") -> Normative:
        """Read stored statistics, checking that ``mean`` and ``std`` are finite numbers (``std`` >= 0).

        Raises:
            BrainaeError: statistics that are not a table, not numbers, or not finite.
        """
        if isinstance(d, Normative):
            return d
        if not isinstance(d, dict):
            raise BrainaeError(
                f"{where}: damaged normative statistics (not a table); re-create the checkpoint's statistics"
            )
        try:
            return cls(
                n=None if d.get("n") is None else int(d["n"]),
                mean=_number(d, "mean", where),
                std=_number(d, "std", where, nonneg=True),
                scores=dict(d.get("scores") or {}),
                definition=d.get("definition"),
                kind=d.get("kind"),
                levels=tuple(float(v) for v in d.get("levels") or ()),
                thresholds=tuple(float(v) for v in d.get("thresholds") or ()),
                details={k: v for k, v in d.items() if k not in cls._KEYS},
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise BrainaeError(f"{where}: damaged normative statistics ({exc}); re-create them") from None


CardPreprocessing = Preprocessing | VolumetricPreprocessing


def card_parts(
    where: str,
    *,
    preprocessing: Any = None,
    training: Any = None,
    normative: Any = None,
    source: Any = None,
) -> dict[str, Any]:
    """The typed card parts from typed parts or their stored (dict) form.

    Raises:
        BrainaeError: a part that cannot be read (named with ``where``).
    """
    out: dict[str, Any] = {}
    try:
        if preprocessing is not None and not isinstance(preprocessing, CardPreprocessing):
            preprocessing = preprocessing_from_dict(preprocessing)
        if training is not None and not isinstance(training, Training):
            training = Training.from_dict(dict(training))
        if source is not None and not isinstance(source, Source):
            source = Source.from_dict(dict(source))
    except BrainaeError as exc:
        raise BrainaeError(f"{where}: {exc}; re-create the checkpoint") from None
    except (TypeError, ValueError, AttributeError):
        raise BrainaeError(f"{where}: damaged checkpoint card; re-create the checkpoint") from None
    if normative is not None:
        normative = Normative.from_dict(normative, where)
    out.update(preprocessing=preprocessing, training=training, normative=normative, source=source)
    return out
