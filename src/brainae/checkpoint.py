"""Self-describing model checkpoints: ONE safetensors file that is all later commands need.

Weights are stored as tensors (the model's ``state_dict``); a JSON string under the safetensors metadata key
``"brainae"`` describes them (the *card*)::

    {"format": 1, "version": "<brainae version>", "arch": "res-unet", "arch_kwargs": {...},
     "preprocessing": {...} | null, "training": {...} | null, "normative": {...} | null, "source": {...}}

:func:`read_checkpoint` turns the card into typed parts: ``preprocessing`` a
:class:`~brainae.volume.Preprocessing` (slice models) or :class:`~brainae.volume.VolumetricPreprocessing`
(``brainae fit`` models), ``training`` a :class:`Training`, ``normative`` the healthy validation volumes'
statistics (:class:`Normative`), ``source`` where the weights came from with their licence (:class:`Source`).
:func:`load_checkpoint` is the one loader every consumer uses (it also imports a thesis Keras ``.h5`` file on
the fly). Files are written atomically (temp file + rename).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from brainae.card import CardPreprocessing, Normative, Source, Training, card_parts
from brainae.errors import BrainaeError
from brainae.volume import VolumetricPreprocessing

FORMAT = 1
"""Version of the checkpoint layout written by this brainae."""

METADATA_KEY = "brainae"

_UNSET: Any = object()


KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")


@dataclass
class Checkpoint:
    """The contents of a checkpoint file: the architecture, the weights and the typed card."""

    arch: str
    arch_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    preprocessing: CardPreprocessing | None = None
    training: Training | None = None
    normative: Normative | None = None
    source: Source | None = None
    version: str | None = None
    format: int = FORMAT
    path: Path | None = None

    @property
    def volumetric(self) -> bool:
        """True for a volumetric (``brainae fit``) model."""
        return isinstance(self.preprocessing, VolumetricPreprocessing)

    def metadata(self) -> dict[str, Any]:
        """The JSON-able description stored under the ``"brainae"`` metadata key."""

        def plain(part: Any) -> Any:
            return None if part is None else part.to_dict()

        return {
            "format": self.format,
            "version": self.version,
            "arch": self.arch,
            "arch_kwargs": self.arch_kwargs,
            "preprocessing": plain(self.preprocessing),
            "training": plain(self.training),
            "normative": plain(self.normative),
            "source": plain(self.source),
        }


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | torch.Tensor):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, set | tuple):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


def _check_fit(
    state: dict[str, torch.Tensor], arch: str, arch_kwargs: dict[str, Any], where: str
) -> nn.Module:
    """Build the architecture and check that ``state`` fits it exactly; return the (untrained) model."""
    from brainae.models import build_model

    _probe(state, arch, arch_kwargs, where)
    return build_model(arch, **arch_kwargs)


def _probe(state: dict[str, torch.Tensor], arch: str, arch_kwargs: dict[str, Any], where: str) -> nn.Module:
    """The architecture built on the ``meta`` device (shapes only, nothing allocated), checked to fit
    ``state`` exactly."""
    from brainae.models import build_model

    _check_sizes(arch_kwargs, where)
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated before the weights are known to fit
            probe = build_model(arch, **arch_kwargs)
    except BrainaeError as exc:
        raise BrainaeError(f"{where}: {exc}") from None
    except (TypeError, ValueError, RuntimeError) as exc:
        raise BrainaeError(
            f"{where}: architecture settings {arch_kwargs} are not valid for {arch!r} ({exc}); the file is "
            "damaged or mislabelled"
        ) from None
    _compare(state, probe.state_dict(), arch, arch_kwargs, where)
    return probe


def verify_checkpoint(path: str | os.PathLike) -> tuple[Checkpoint, int]:
    """(the checkpoint, its number of parameters) with every check :func:`load_checkpoint` makes (settings in
    bounds, weights that fit the architecture exactly, no NaN/Inf weight), without building the model: what
    ``brainae info`` shows, at no cost in memory whatever the card claims.

    Raises:
        BrainaeError: as :func:`load_checkpoint`.
    """
    ckpt = read_checkpoint(path)
    name = Path(path).name
    probe = _probe(ckpt.state_dict, ckpt.arch, ckpt.arch_kwargs, name)
    check_finite_weights(ckpt.state_dict, name)
    from brainae.models.registry import count_parameters

    return ckpt, int(count_parameters(probe))


MAX_SIZE_SETTING = 1 << 16  # channels, widths, sizes: far above any real model, far below an absurd one


def _check_sizes(arch_kwargs: dict[str, Any], where: str) -> None:
    """Numbers in the architecture settings must be finite and within sane bounds (crafted files)."""
    for key, value in arch_kwargs.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if not math.isfinite(float(v)) or abs(float(v)) > MAX_SIZE_SETTING:
                raise BrainaeError(
                    f"{where}: architecture setting {key}={value!r} is out of bounds (|value| <= "
                    f"{MAX_SIZE_SETTING}); the checkpoint is damaged or crafted, re-create it"
                )
            if isinstance(v, int) and v < 0:
                raise BrainaeError(
                    f"{where}: architecture setting {key}={value!r} is negative; the file is damaged"
                )


def check_finite_weights(state: dict[str, torch.Tensor], where: str) -> None:
    """Refuse NaN/Inf weights (a diverged run or a damaged file would give NaN outputs)."""
    bad = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise BrainaeError(
            f"{where}: {len(bad)} weight tensor(s) hold NaN/Inf values (first: {bad[0]!r}); the training "
            "diverged or the file is damaged: use another checkpoint (e.g. an earlier best.safetensors)"
        )


def _compare(
    state: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    arch: str,
    arch_kwargs: dict[str, Any],
    where: str,
) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise BrainaeError(
            f"{where}: weights do not fit architecture {arch!r} {arch_kwargs}: {what} "
            f"({len(missing)} missing, {len(unexpected)} unexpected); the file is damaged or mislabelled"
        )
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise BrainaeError(
                f"{where}: weights do not fit architecture {arch!r} {arch_kwargs}: {key!r} has shape "
                f"{tuple(state[key].shape)}, expected {tuple(ref.shape)}; the file is damaged or mislabelled"
            )


def _write(path: Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from brainae.io import atomic_path

    try:
        text = json.dumps(meta, default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise BrainaeError(f"{path.name}: checkpoint description is not JSON serialisable: {exc}") from None
    with atomic_path(path) as tmp:
        save_file(state, os.fspath(tmp), metadata={METADATA_KEY: text})


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    preprocessing: CardPreprocessing | dict[str, Any] | None = None,
    training: Training | dict[str, Any] | None = None,
    normative: Normative | dict[str, Any] | None = None,
    source: Source | dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` and its description to one safetensors file, atomically.

    Args:
        path: output file (conventionally ``*.safetensors``); its folder is created.
        model: the model (DataParallel / DDP / ``torch.compile`` wrappers are unwrapped).
        arch: architecture name; defaults to the ``brainae_arch`` that :func:`brainae.models.build_model` set.
        arch_kwargs: constructor arguments; defaults to the model's ``brainae_arch_kwargs``.
        preprocessing: how inputs are made (:class:`~brainae.volume.Preprocessing` or
            :class:`~brainae.volume.VolumetricPreprocessing`, or its stored dict form).
        training: the run's settings and record (:class:`Training` or its dict form).
        normative: statistics of healthy volumes (:class:`Normative` or its dict form).
        source: provenance and licence (:class:`Source` or its dict form).

    Returns:
        The path written.

    Raises:
        BrainaeError: unknown architecture, weights that do not fit it, a card part that cannot be read, or
            a description that is not JSON.
    """
    path = Path(path)
    parts = card_parts(
        path.name, preprocessing=preprocessing, training=training, normative=normative, source=source
    )
    inner = _unwrap(model)
    arch = arch if arch is not None else getattr(inner, "brainae_arch", None)
    if arch is None:
        raise BrainaeError(f"{path.name}: say which architecture the model is (arch=...)")
    if arch_kwargs is None:
        arch_kwargs = dict(getattr(inner, "brainae_arch_kwargs", {}))
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in inner.state_dict().items()}
    _check_fit(state, arch, arch_kwargs, path.name)
    from brainae import __version__

    meta = Checkpoint(
        arch=arch,
        arch_kwargs=dict(arch_kwargs),
        state_dict=state,
        **parts,
        version=__version__,
    ).metadata()
    _write(path, state, meta)
    return path


def import_keras_checkpoint(
    h5_path: str | Path, out: str | Path, *, arch: str | None = None
) -> dict[str, Any]:
    """Import a thesis Keras model (:func:`~brainae.models.keras_import.import_keras`) and write it as a brainae checkpoint ``out``.

    The checkpoint records the thesis's preprocessing and the source with its licence and credit.

    Returns:
        The ``info`` dict of :func:`~brainae.models.keras_import.import_keras`.
    """
    from brainae.models.keras_import import import_keras

    model, info = import_keras(h5_path, arch=arch)
    save_checkpoint(
        out,
        model,
        arch=info["arch"],
        arch_kwargs=info["arch_kwargs"],
        preprocessing=info["preprocessing"],
        source=info["source"],
    )
    return info


def check_checkpoint_output(out: str | os.PathLike, inputs: list, force: bool) -> None:
    """Refuse ``--out`` for a checkpoint when it is (or lies in) an input, a folder, an existing file without
    ``--force``, or an existing file that is not a brainae checkpoint (``--force`` replaces only those)."""
    from brainae.io import check_output_file

    check_output_file(
        out, inputs, force=force, is_ours=is_checkpoint, what="a brainae checkpoint", option="--out"
    )


def is_checkpoint(path: str | os.PathLike) -> bool:
    """True for a safetensors file with brainae's description (what ``--force`` may overwrite)."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            return METADATA_KEY in (f.metadata() or {})
    except Exception:  # damaged or another format
        return False


def read_checkpoint(path: str | os.PathLike, *, weights: bool = True) -> Checkpoint:
    """Read a checkpoint's description and weights (CPU tensors) without building the model.

    ``weights=False`` reads the card only (``state_dict`` is empty): what a command needs to decide what kind
    of model a file holds, without reading its tensors.

    Raises:
        BrainaeError: missing file, not a safetensors file, not a brainae checkpoint, or a newer format.
    """
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        raise BrainaeError(f"{path}: is a folder; give the checkpoint file (.safetensors) written by brainae")
    if not path.is_file():
        raise BrainaeError(f"{path}: no such checkpoint file; give a .safetensors file written by brainae")
    try:
        with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            keys = list(f.keys()) if weights else []
            state = {k: f.get_tensor(k) for k in keys}
    except Exception:  # safetensors raises several types for damaged headers
        raise BrainaeError(
            f"{path.name}: not a safetensors file (damaged or another format); give a brainae checkpoint"
        ) from None
    raw = meta.get(METADATA_KEY)
    if raw is None:
        raise BrainaeError(
            f"{path.name}: a safetensors file but not a brainae checkpoint (no '{METADATA_KEY}' metadata); "
            "use a checkpoint written by brainae train / import-keras"
        )
    try:
        info = json.loads(raw)
        fmt = int(info.get("format", 0))
        arch = str(info["arch"])
        arch_kwargs = dict(info.get("arch_kwargs") or {})
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BrainaeError(
            f"{path.name}: damaged brainae checkpoint description; re-create the checkpoint"
        ) from None
    if fmt > FORMAT:
        raise BrainaeError(
            f"{path.name}: checkpoint format {fmt} is newer than this brainae understands ({FORMAT}); "
            "upgrade brainae"
        )
    parts = card_parts(
        path.name,
        preprocessing=info.get("preprocessing"),
        training=info.get("training"),
        normative=info.get("normative"),
        source=info.get("source"),
    )
    return Checkpoint(
        arch=arch,
        arch_kwargs=arch_kwargs,
        state_dict=state,
        **parts,
        version=info.get("version"),
        format=fmt,
        path=path,
    )


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Checkpoint]:
    """Build the checkpoint's model with its weights, in eval mode on ``device``: the one model loader.

    A thesis Keras file (``.h5``) is imported on the fly (:func:`brainae.models.keras_import.import_keras`,
    with the card an imported checkpoint gets).

    Example:
        >>> model, ckpt = load_checkpoint("model.safetensors")       # doctest: +SKIP
        >>> ckpt.preprocessing.size, ckpt.source.license              # doctest: +SKIP
        (128, 'MIT')

    Raises:
        BrainaeError: as :func:`read_checkpoint`, architecture settings out of bounds, weights that do not
            fit the described architecture, or NaN/Inf weights.
    """
    if Path(path).suffix.lower() in KERAS_SUFFIXES:
        from brainae.models.keras_import import import_keras

        model, info = import_keras(path)
        ckpt = Checkpoint(
            arch=info["arch"],
            arch_kwargs=dict(info["arch_kwargs"]),
            state_dict=model.state_dict(),
            preprocessing=info["preprocessing"],
            source=info["source"],
            path=Path(path),
        )
        return model.to(device).eval(), ckpt
    ckpt = read_checkpoint(path)
    name = Path(path).name
    model = _check_fit(ckpt.state_dict, ckpt.arch, ckpt.arch_kwargs, name)
    check_finite_weights(ckpt.state_dict, name)
    model.load_state_dict(ckpt.state_dict, strict=True)
    return model.to(device).eval(), ckpt


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The checkpoint's model in eval mode on ``device`` (see :func:`load_checkpoint`)."""
    return load_checkpoint(path, device)[0]


def update_checkpoint(
    path: str | os.PathLike,
    *,
    preprocessing: CardPreprocessing | dict[str, Any] | None = _UNSET,
    training: Training | dict[str, Any] | None = _UNSET,
    normative: Normative | dict[str, Any] | None = _UNSET,
    source: Source | dict[str, Any] | None = _UNSET,
) -> Checkpoint:
    """Replace some of a checkpoint's description (e.g. add ``normative`` statistics), atomically in place.

    Arguments left out keep their stored value; the weights are rewritten unchanged.
    """
    ckpt = read_checkpoint(path)
    given = {
        name: value
        for name, value in (
            ("preprocessing", preprocessing),
            ("training", training),
            ("normative", normative),
            ("source", source),
        )
        if value is not _UNSET
    }
    for name, value in card_parts(Path(path).name, **given).items():
        if name in given:
            setattr(ckpt, name, value)
    from brainae import __version__

    ckpt.format = FORMAT
    ckpt.version = __version__
    _write(Path(path), ckpt.state_dict, ckpt.metadata())
    return ckpt
