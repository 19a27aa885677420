"""Stage 9a: checkpoints + a prepared dataset -> per-slice, per-volume and summary metric tables.

Every model (and every baseline) is scored on the **same** slices of one split under the **same** corrupted
inputs: MSE, DSSIM and PSNR (peak 1) from :mod:`brainae.metrics` (the implementation the losses use), each
corrupted input scored against the CLEAN target.

Output folder (``brainae evaluate ... --out EVAL``), written atomically:

- ``slices.csv``: ``model, condition, volume_id, slice, row, mse, dssim, psnr`` (``row``: row of the
  dataset's ``slices.npy`` / ``index.csv``);
- ``volumes.csv``: the slice metrics averaged within each volume (``n_slices`` per volume);
- ``summary.csv``: per model and condition, mean and sample standard deviation (ddof 1) over slices, ``n``
  (slices) and ``n_volumes``; ``kind`` says ``model`` or ``baseline``;
- ``provenance.json``: each checkpoint's path, sha256, architecture, source, training and preprocessing; the
  dataset's path and settings; split, seed, conditions, baselines and their parameters, versions;
- ``examples.npz``: a few fixed slices for qualitative grids: ``rows``, ``volume_id``, ``slice``,
  ``conditions`` (C), ``models`` (M), ``target`` (K x S x S), ``inputs`` (C x K x S x S), ``outputs``
  (M x C x K x S x S, NaN where a baseline does not apply). Besides the evaluated conditions it holds one
  combined corruption (default ``blur+noise-0.04+dropout-0.05+blank-40``, in the order of
  :func:`brainae.corrupt.augment`; the thesis's "fully augmented" image of
  Figs 5.22/5.23), shown in the report only.

**PSNR of identical images** (e.g. the ``identity`` baseline on ``clean``: MSE 0) is capped at
:data:`brainae.metrics.PSNR_CAP_DB` (100 dB) in every table, so that means, volume averages and paired tests
stay finite; ``mse`` keeps the exact 0.

**Conditions**: ``clean`` or a corruption name of :data:`brainae.corrupt.CONDITIONS` (``noise-0.04``,
``blank-40``, ...), a custom level read by :func:`brainae.corrupt.parse_condition` (``noise-0.03``), or
several joined with ``+`` (applied left to right with one generator; masks are combined).

**Seeding (how to recompute one row)**: the corrupted input of dataset row ``r`` under condition ``c`` depends
only on ``(seed, c, r)`` -- not on the batch size, the device, the split or the other models::

    import torch
    from brainae.dataset import open_dataset
    from brainae.checkpoint import load_checkpoint
    from brainae.evaluate import corrupt_rows
    from brainae.metrics import per_image
    ds = open_dataset("DATASET")
    clean = torch.from_numpy(ds.slices[[r]].astype("float32"))[:, None]      # 1 x 1 x S x S
    noisy, mask = corrupt_rows(c, clean, [r], seed=0)                          # equivalently, by hand:
    # g = torch.Generator().manual_seed(row_seed(0, c, r)); noisy, mask = CONDITIONS[c](clean, g)
    model, _ = load_checkpoint("CKPT")
    with torch.no_grad():
        print(per_image(model(noisy), clean))        # = the row of slices.csv (psnr capped at 100 dB)

where ``row_seed(seed, c, r)`` is the first 8 bytes (big-endian, top bit cleared) of
``sha256(f"{seed}:{c}:{r}")``. Corruptions run on the CPU (one generator per slice), so the numbers do not
depend on the accelerator's random number generator; models run on ``device``.

**Baselines** (extra "models" on the same slices and inputs):

- ``identity``: the corrupted input itself ("do nothing"); every condition.
- ``nlm``: non-local means, ``skimage.restoration.denoise_nl_means(x, patch_size=5, patch_distance=6,
  h=0.6 * sigma, sigma=sigma, fast_mode=True)`` (scikit-image's recommended ``h`` when ``sigma`` is given
  in fast mode), output clipped to [0, 1]; ``sigma`` per slice from :func:`estimate_noise_sigma` (Donoho's
  median absolute deviation of the finest diagonal Haar wavelet coefficients / 0.6745 -- the idea of
  ``skimage.restoration.estimate_sigma``, which needs the optional PyWavelets) unless given. Run only on the
  noise conditions (``noise-*``, ``rician-*``): it is a denoiser, and at about 30 ms per 128 x 128 slice on
  one CPU core (``benchmarks/baseline_timing.py``) it would dominate the run time on conditions it is not meant for.
- ``biharmonic``: ``skimage.restoration.inpaint_biharmonic(x, mask)`` given the blank-out mask, output clipped
  to [0, 1]; only on the ``blank-*`` conditions (the only ones whose mask marks a region to fill).

Example:
    >>> evaluate(["runs/res-unet/best.safetensors"], "prepared", "eval",
    ...          conditions=["clean", "noise-0.04"])   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from brainae.baselines import (
    SLICE_BASELINES,
    biharmonic_inpaint_slice,
    estimate_noise_sigma,
    nlm_denoise_slice,
)
from brainae.baselines import baseline_applies as _baseline_applies
from brainae.device import resolve_device
from brainae.errors import BrainaeError, BrainaeWarning
from brainae.metrics import METRICS

__all__ = [
    "BASELINES",
    "DEFAULT_EXAMPLE_CONDITION",
    "METRIC_NAMES",
    "NLM_PARAMETERS",
    "ModelSpec",
    "baseline_applies",
    "check_preprocessing",
    "corrupt_rows",
    "estimate_noise_sigma",
    "evaluate",
    "model_names",
    "nlm_denoise_slice",
    "biharmonic_inpaint_slice",
    "resolve_checkpoint",
    "resolve_conditions",
    "row_seed",
    "sha256_file",
]

METRIC_NAMES = tuple(METRICS)
"""The columns of the tables: every metric of :data:`brainae.metrics.METRICS`, in its order."""
BASELINES = tuple(SLICE_BASELINES)
DEFAULT_EXAMPLE_CONDITION = "blur+noise-0.04+dropout-0.05+blank-40"
NLM_PARAMETERS: dict[str, Any] = SLICE_BASELINES["nlm"].settings
"""Parameters of the ``nlm`` baseline (recorded in ``provenance.json``; :data:`brainae.baselines.NLM`)."""

PREPROCESSING_KEYS = ("size", "profile", "scaling", "fov_mm")


# ------------------------------------------------------------------------------------------- conditions


def row_seed(seed: int, condition: str, row: int) -> int:
    """The generator seed of dataset row ``row`` under ``condition``: a hash of ``(seed, condition, row)``.

    Example:
        >>> row_seed(0, "noise-0.04", 7) == row_seed(0, "noise-0.04", 7)
        True
    """
    digest = hashlib.sha256(f"{int(seed)}:{condition}:{int(row)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def _condition_parts(name: str) -> list[Callable]:
    """The corruption functions of a (possibly ``+``-joined) condition name; ``clean`` has none."""
    from brainae import corrupt

    fns = []
    for part in name.split("+"):
        part = part.strip()
        if part == "clean":
            continue
        fn = corrupt.CONDITIONS.get(part)
        if fn is None:
            try:
                fn = corrupt.parse_condition(part)
            except BrainaeError:
                fn = None
            except (ValueError, KeyError, TypeError):
                fn = None
        if fn is None:
            valid = ", ".join(["clean", *corrupt.CONDITIONS])
            raise BrainaeError(
                f"unknown condition {part!r}; valid: {valid}, a custom level such as 'noise-0.03', "
                "or several joined with '+'"
            )
        fns.append(fn)
    return fns


def resolve_conditions(spec: str | Sequence[str]) -> list[str]:
    """Condition names from ``"clean,noise-0.04"``, ``"all"`` or a list; checked, duplicates dropped.

    ``all`` means ``clean`` and every name of :data:`brainae.corrupt.CONDITIONS`.

    Raises:
        BrainaeError: an unknown condition (the message lists the valid ones) or an empty list.
    """
    from brainae import corrupt

    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        item = item.lower()
        expanded = ["clean", *corrupt.CONDITIONS] if item == "all" else [item]
        for name in expanded:
            _condition_parts(name)
            if name not in names:
                names.append(name)
    if not names:
        raise BrainaeError("no condition given; e.g. --conditions clean,noise-0.04 or --conditions all")
    return names


def _as_mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    import torch

    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    m = m.astype(bool) if m.dtype == bool else m > 0.5
    return m.reshape(shape)


def corrupt_rows(
    condition: str, clean: Any, rows: Sequence[int], *, seed: int = 0
) -> tuple[Any, np.ndarray | None]:
    """Corrupt a batch of dataset rows, each with its own generator seeded by :func:`row_seed`.

    Args:
        condition: condition name (see :func:`resolve_conditions`).
        clean: clean images, Tensor N x 1 x S x S (CPU), row ``i`` being dataset row ``rows[i]``.
        rows: the dataset rows of the batch.
        seed: the evaluation seed.

    Returns:
        ``(corrupted, mask)``: Tensor N x 1 x S x S on the CPU, and a boolean array N x 1 x S x S marking the
        pixels a corruption removed (blank-out, dropout), or ``None`` when no corruption gave a mask.
    """
    import torch

    fns = _condition_parts(condition)
    if not fns or len(rows) == 0:
        return clean.clone(), None
    outs, masks, any_mask = [], [], False
    for i, row in enumerate(rows):
        gen = torch.Generator().manual_seed(row_seed(seed, condition, int(row)))
        x = clean[i : i + 1]
        m_total = np.zeros(x.shape, dtype=bool)
        for fn in fns:
            x, m = fn(x, gen)
            m = _as_mask(m, tuple(x.shape))
            if m is not None:
                any_mask = True
                m_total |= m
        outs.append(x.detach().to("cpu", torch.float32))
        masks.append(m_total)
    return torch.cat(outs), (np.concatenate(masks) if any_mask else None)


def baseline_applies(baseline: str, condition: str) -> bool:
    """Whether a baseline is run on a condition (see the module notes and :data:`brainae.baselines.SLICE_BASELINES`)."""
    try:
        return _baseline_applies(baseline, condition)
    except ValueError as exc:
        raise BrainaeError(str(exc)) from None


# --------------------------------------------------------------------------------------------- baselines


def _one_baseline(args: tuple[str, np.ndarray, np.ndarray | None, float | None]) -> np.ndarray:
    from brainae.baselines import run_slice_baseline

    return run_slice_baseline(*args)


def _run_baseline(
    name: str, corrupted: np.ndarray, mask: np.ndarray | None, sigma: float | None, pool: Any = None
) -> np.ndarray:
    """Baseline output for a batch N x 1 x S x S (numpy float32); slices spread over ``pool`` if given."""
    if name == "identity":
        return corrupted.copy()
    jobs = [
        (name, corrupted[i, 0], None if mask is None else mask[i, 0], sigma) for i in range(len(corrupted))
    ]
    results = list(pool.map(_one_baseline, jobs)) if pool is not None else [_one_baseline(j) for j in jobs]
    out = np.empty_like(corrupted)
    for i, r in enumerate(results):
        out[i, 0] = r
    return out


# --------------------------------------------------------------------------------------------- models


@dataclass
class ModelSpec:
    """A loaded checkpoint to evaluate."""

    name: str
    path: Path
    model: Any = field(repr=False)
    checkpoint: Any = field(repr=False)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder's ``best.safetensors`` (else ``last.safetensors``)."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (p / name).is_file():
                return p / name
        raise BrainaeError(
            f"{p}: a folder without best.safetensors or last.safetensors; give a checkpoint file"
        )
    if not p.is_file():
        raise BrainaeError(f"{p}: no such checkpoint; give a .safetensors file or a training run folder")
    return p


def model_names(paths: Sequence[str | os.PathLike], reserved: Iterable[str] = BASELINES) -> list[str]:
    """Unique table names: the file stem, or the run folder's name for ``best``/``last`` files.

    ``runs/a/best.safetensors`` -> ``a``; ``runs/a/last.safetensors`` -> ``a-last``; ``m/unet.safetensors`` ->
    ``unet``. Clashes (with each other or with a baseline name) get the parent folder prefixed, then ``-2``,
    ``-3``...

    Example:
        >>> model_names(["r1/best.safetensors", "r2/best.safetensors", "x/r1.safetensors"])
        ['r1', 'r2', 'x-r1']
    """
    taken = set(reserved)
    names: list[str] = []
    for raw in paths:
        p = Path(raw)
        stem = p.name.split(".")[0]
        if stem == "best":
            base = p.parent.name or stem
        elif stem == "last":
            base = f"{p.parent.name}-last" if p.parent.name else stem
        else:
            base = stem
        name = base
        if name in taken and p.parent.name and not base.startswith(p.parent.name):
            name = f"{p.parent.name}-{base}"
        k = 2
        candidate = name
        while candidate in taken:
            candidate = f"{name}-{k}"
            k += 1
        taken.add(candidate)
        names.append(candidate)
    return names


def _plain(part: Any) -> dict[str, Any] | None:
    """A checkpoint card part in its stored (JSON) form."""
    return None if part is None else part.to_dict()


def _prep_dict(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    value = dict(value)
    if "preprocessing" in value and isinstance(value["preprocessing"], dict):
        value = dict(value["preprocessing"])
    return value


def check_preprocessing(ckpt_prep: Any, dataset_prep: Any, *, where: str, size: int) -> None:
    """Refuse a checkpoint trained on differently prepared slices (size, profile, scaling, field of view).

    Args:
        ckpt_prep: the checkpoint's ``preprocessing`` (dict, or ``None`` when it records none).
        dataset_prep: the dataset's preprocessing (dict or :class:`brainae.volume.Preprocessing`).
        where: the checkpoint's name for messages.
        size: the dataset's slice size in pixels.

    Raises:
        BrainaeError: one line naming the first differing setting and both values.
    """
    cp, dp = _prep_dict(ckpt_prep), _prep_dict(dataset_prep) or {}
    if cp is None:
        warnings.warn(
            f"{where}: the checkpoint records no preprocessing; only the image size is checked",
            BrainaeWarning,
            stacklevel=2,
        )
        return
    for key in PREPROCESSING_KEYS:
        if key not in cp or key not in dp:
            continue
        a, b = cp[key], dp[key]
        if key == "fov_mm" and (a is None) != (b is None):
            # One side squeezed each slice's own extent (the thesis), the other a fixed field of view: equal
            # for cohorts such as IXI whose slices all span the same millimetres, so warn, don't refuse.
            warnings.warn(
                f"{where}: trained with fov_mm={a!r}, the dataset has fov_mm={b!r}; equivalent only if every "
                "slice spans that field of view (IXI: 240 mm)",
                BrainaeWarning,
                stacklevel=2,
            )
            continue
        same = a == b
        if isinstance(a, int | float) and isinstance(b, int | float) and a is not None and b is not None:
            same = math.isclose(float(a), float(b), rel_tol=1e-6)
        if not same:
            raise BrainaeError(
                f"{where}: trained on slices with {key}={a!r} but the dataset has {key}={b!r}; "
                f"prepare the data with the checkpoint's preprocessing (--{key.replace('_', '-')} {a})"
            )
    if "size" in cp and int(cp["size"]) != int(size):
        raise BrainaeError(
            f"{where}: trained on {cp['size']} x {cp['size']} slices but the dataset has {size} x {size}; "
            f"prepare the data with --size {cp['size']}"
        )


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_models(paths: Sequence[str | os.PathLike], ds: Any, device: str) -> list[ModelSpec]:
    from brainae.checkpoint import load_checkpoint, read_checkpoint

    files = [resolve_checkpoint(p) for p in paths]
    names = model_names(files)
    size = int(ds.slices.shape[1])
    specs = []
    for name, path in zip(names, files, strict=True):
        card = read_checkpoint(path, weights=False)
        if card.volumetric:
            raise BrainaeError(
                f"{path}: a volumetric model for {card.preprocessing.task} (from brainae fit); evaluate scores "
                "slice autoencoders (from brainae train or import-keras): give one of those"
            )
        model, ckpt = load_checkpoint(path, device)
        check_preprocessing(ckpt.preprocessing, ds.settings.get("preprocessing"), where=path.name, size=size)
        in_ch = (ckpt.arch_kwargs or {}).get("in_channels", 1)
        if int(in_ch) != 1:
            raise BrainaeError(f"{path.name}: a model with {in_ch} input channels; evaluation needs 1")
        specs.append(ModelSpec(name=name, path=path, model=model, checkpoint=ckpt))
    return specs


# ------------------------------------------------------------------------------------------- evaluation


def _example_positions(n: int, k: int) -> np.ndarray:
    """``k`` positions spread evenly over a split of ``n`` slices (fixed, so every run shows the same)."""
    if n == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, num=min(k, n) + 2)[1:-1].round().astype(np.int64))


def _provenance(
    specs: Sequence[ModelSpec],
    ds: Any,
    *,
    split: str,
    seed: int,
    conditions: list[str],
    baselines: list[str],
    nlm_sigma: float | None,
    batch_size: int,
    device: str,
    example_condition: str | None,
    n_slices: int,
) -> dict[str, Any]:
    import skimage
    import torch

    from brainae import __version__
    from brainae.metrics import PSNR_CAP_DB

    return {
        "brainae_version": __version__,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "scikit-image": skimage.__version__,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dataset": {
            "path": str(Path(ds.path).resolve()),
            "settings": ds.settings,
            "n_slices_total": int(ds.slices.shape[0]),
            "slice_size": int(ds.slices.shape[1]),
        },
        "split": split,
        "n_slices": n_slices,
        "n_volumes": int(ds.index.iloc[ds.split_rows(split)]["volume_id"].nunique()),
        "seed": seed,
        "seeding": "corruption of dataset row r under condition c: torch.Generator().manual_seed("
        "row_seed(seed, c, r)), row_seed = first 8 bytes of sha256(f'{seed}:{c}:{r}') & (2**63-1); CPU",
        "conditions": conditions,
        "example_condition": example_condition,
        "metrics": list(METRIC_NAMES),
        "psnr_peak": 1.0,
        "psnr_cap_db": PSNR_CAP_DB,
        "std_ddof": 1,
        "batch_size": batch_size,
        "device": device,
        "baselines": {
            name: SLICE_BASELINES[name].provenance(nlm_sigma if name == "nlm" else None) for name in baselines
        },
        "models": [
            {
                "name": s.name,
                "kind": "model",
                "path": str(s.path.resolve()),
                "sha256": sha256_file(s.path),
                "arch": s.checkpoint.arch,
                "arch_kwargs": s.checkpoint.arch_kwargs,
                "source": _plain(s.checkpoint.source),
                "training": _plain(s.checkpoint.training),
                "preprocessing": _plain(s.checkpoint.preprocessing),
                "checkpoint_version": getattr(s.checkpoint, "version", None),
            }
            for s in specs
        ],
    }


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[Any]:
    """A process pool (fork) for the CPU-bound baselines, or ``None`` for one process."""
    if workers <= 1:
        yield None
        return
    from brainae.workers import process_pool

    with process_pool(workers) as ex:  # workers die with this process; their errors come back intact
        yield ex


def _batches(rows: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(rows), batch_size):
        yield rows[start : start + batch_size]


def _run_model(model: Any, x: Any, device: str) -> Any:
    import torch

    with torch.inference_mode():
        y = model(x.to(device))
    if tuple(y.shape) != tuple(x.shape):
        raise BrainaeError(f"a model returned shape {tuple(y.shape)} for input {tuple(x.shape)}")
    return y.float()


def _scores(output: Any, target: Any) -> dict[str, np.ndarray]:
    from brainae.metrics import per_image

    values = per_image(output, target, METRIC_NAMES)
    return {name: METRICS[name].capped(v) for name, v in values.items()}  # PSNR: identical images 100 dB


def evaluate(
    checkpoints: Sequence[str | os.PathLike],
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "test",
    conditions: str | Sequence[str] = ("clean",),
    seed: int = 0,
    batch_size: int = 64,
    device: str = "auto",
    baselines: Sequence[str] = BASELINES,
    nlm_sigma: float | None = None,
    n_examples: int = 4,
    example_condition: str | None = DEFAULT_EXAMPLE_CONDITION,
    force: bool = False,
    workers: int = 1,
    progress: Callable[[Iterable, int], Iterable] | None = None,
) -> Path:
    """Evaluate checkpoints (and baselines) on one split under several conditions; write the tables.

    Streams: slices are read, corrupted, run through every model and scored one batch at a time; rows go to
    ``slices.csv`` as they are computed and only the few example slices are kept in memory.

    Args:
        checkpoints: checkpoint files or run folders (their ``best.safetensors``); may be empty.
        dataset: prepared dataset folder.
        out: output folder (refused if it exists, unless ``force``; never one that is, contains or lies inside
            an input, and ``force`` replaces only an evaluation folder that brainae wrote).
        split: ``train``, ``val`` or ``test``.
        conditions: condition names or one comma-separated string (``"all"`` for every condition).
        seed: evaluation seed (see the module notes).
        batch_size: slices per batch.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``.
        baselines: which of :data:`BASELINES` to add.
        nlm_sigma: noise sd for the ``nlm`` baseline; ``None`` estimates it per slice.
        n_examples: how many fixed slices to keep in ``examples.npz``.
        example_condition: an extra (combined) corruption for the qualitative grids only; ``None`` for none.
        force: replace an existing ``out``.
        workers: processes for the NLM / biharmonic baselines (CPU-bound, about 30 ms per 128 x 128 slice each,
            ``benchmarks/baseline_timing.py``);
            1 runs them in this process. Results do not depend on it.
        progress: wraps the iterator of (batch, condition) steps (``progress(iterable, total)``), e.g. a
            progress bar.

    Returns:
        The output folder.

    Raises:
        BrainaeError: unknown condition or baseline, empty split, checkpoint/dataset mismatch,
            existing output.
    """

    from brainae.io import atomic_dir, check_output, write_marker

    out = Path(out)
    check_output(out, "evaluation", [dataset, *checkpoints], force=force)
    plan = _plan(
        checkpoints,
        dataset,
        split,
        conditions,
        seed,
        batch_size,
        device,
        baselines,
        nlm_sigma,
        example_condition,
    )
    needs_pool = workers > 1 and any(
        b != "identity" and baseline_applies(b, c) for b in plan.baselines for c in plan.conds
    )
    with atomic_dir(out) as tmp, _pool(workers if needs_pool else 1) as pool:
        _write_slices(tmp / "slices.csv", plan, batch_size, pool, progress)
        _tables(tmp, plan.names, plan.conds)
        _examples(tmp, plan, example_condition, n_examples)
        _write_provenance(tmp, plan, split, batch_size, example_condition)
        write_marker(tmp, "evaluation")
    return out


@dataclass
class _Plan:
    """What one evaluation runs: the split's rows of a dataset, the models and baselines, the conditions."""

    ds: Any
    rows: np.ndarray
    specs: list[ModelSpec]
    baselines: list[str]
    conds: list[str]
    seed: int
    dev: str
    nlm_sigma: float | None

    @property
    def names(self) -> list[str]:
        """The models' names, then the baselines'."""
        return [s.name for s in self.specs] + list(self.baselines)

    def unpack(self) -> tuple:
        """The fields, in order (not copied, unlike :func:`dataclasses.astuple`)."""
        return tuple(getattr(self, f.name) for f in fields(self))


def _plan(
    checkpoints: Sequence[str | os.PathLike],
    dataset: str | os.PathLike,
    split: str,
    conditions: str | Sequence[str],
    seed: int,
    batch_size: int,
    device: str,
    baselines: Sequence[str],
    nlm_sigma: float | None,
    example_condition: str | None,
) -> _Plan:
    """Check the options, open the dataset and load the models (in that order: cheap checks first)."""
    from brainae.dataset import open_dataset

    baselines = _known_baselines(baselines)
    if batch_size < 1:
        raise BrainaeError(f"--batch-size {batch_size}: must be at least 1")
    conds = resolve_conditions(conditions)
    if example_condition:
        _condition_parts(example_condition)
    ds = open_dataset(dataset)
    rows = _split_rows(ds, split)
    dev = str(resolve_device(device))
    specs = _load_models(checkpoints, ds, dev)
    if not specs and not baselines:
        raise BrainaeError("nothing to evaluate: give at least one checkpoint or keep a baseline")
    return _Plan(ds, rows, specs, baselines, conds, seed, dev, nlm_sigma)


def _write_provenance(
    folder: Path, plan: _Plan, split: str, batch_size: int, example_condition: str | None
) -> None:
    """``provenance.json``: what was evaluated, on what, how (see :func:`_provenance`)."""
    prov = _provenance(
        plan.specs,
        plan.ds,
        split=split,
        seed=plan.seed,
        conditions=plan.conds,
        baselines=list(plan.baselines),
        nlm_sigma=plan.nlm_sigma,
        batch_size=batch_size,
        device=plan.dev,
        example_condition=example_condition,
        n_slices=int(len(plan.rows)),
    )
    prov["baseline_names"] = list(plan.baselines)
    (folder / "provenance.json").write_text(json.dumps(prov, indent=2, default=str, allow_nan=True))


def _known_baselines(baselines: Sequence[str]) -> list[str]:
    """The requested baselines in the order of :data:`BASELINES`; refuses an unknown one."""
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise BrainaeError(f"unknown baseline {unknown[0]!r}; valid: {', '.join(BASELINES)}")
    return [b for b in BASELINES if b in baselines]


def _split_rows(ds: Any, split: str) -> np.ndarray:
    """The dataset rows of ``split``; refuses an empty split."""
    rows = ds.split_rows(split)
    if len(rows) == 0:
        counts = ds.index["split"].value_counts().to_dict()
        raise BrainaeError(
            f"{ds.path}: the {split!r} split is empty (split sizes: {counts}); choose another --split "
            "or re-prepare the dataset"
        )
    return rows


def _write_slices(
    path: Path,
    plan: _Plan,
    batch_size: int,
    pool: Any,
    progress: Callable[[Iterable, int], Iterable] | None,
) -> None:
    """``slices.csv``: one batch at a time, corrupt, run every model and baseline, score, write the rows."""
    import torch

    ds, rows, specs, baselines, conds, seed, dev, nlm_sigma = plan.unpack()
    vol_ids = ds.index["volume_id"].astype(str).to_numpy()
    slice_ids = ds.index["slice"].to_numpy()
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", "condition", "volume_id", "slice", "row", *METRIC_NAMES])
        # one step per (batch, condition), so that progress moves every few seconds even with few batches
        steps: Iterable[tuple[np.ndarray, str]] = (
            (batch_rows, cond) for batch_rows in _batches(rows, batch_size) for cond in conds
        )
        if progress is not None:
            steps = progress(steps, math.ceil(len(rows) / batch_size) * len(conds))
        loaded: np.ndarray | None = None
        for batch_rows, cond in steps:
            if batch_rows is not loaded:
                loaded = batch_rows
                clean = torch.from_numpy(np.asarray(ds.slices[batch_rows], dtype=np.float32)).unsqueeze(1)
                target = clean.to(dev)
            corrupted, mask = corrupt_rows(cond, clean, batch_rows, seed=seed)
            for spec in specs:
                _write_rows(
                    writer,
                    spec.name,
                    cond,
                    batch_rows,
                    vol_ids,
                    slice_ids,
                    _scores(_run_model(spec.model, corrupted, dev), target),
                )
            for b in baselines:
                if not baseline_applies(b, cond):
                    continue
                res = torch.from_numpy(_run_baseline(b, corrupted.numpy(), mask, nlm_sigma, pool))
                _write_rows(writer, b, cond, batch_rows, vol_ids, slice_ids, _scores(res, clean))


def _write_rows(
    writer: Any,
    model: str,
    cond: str,
    rows: np.ndarray,
    vol_ids: np.ndarray,
    slice_ids: np.ndarray,
    values: dict[str, np.ndarray],
) -> None:
    cols = [values[m] for m in METRIC_NAMES]
    for i, r in enumerate(rows):
        writer.writerow(
            [model, cond, vol_ids[r], int(slice_ids[r]), int(r), *(repr(float(c[i])) for c in cols)]
        )


def _tables(folder: Path, names: list[str], conds: list[str]) -> None:
    """Sort ``slices.csv`` (model, condition, row) and derive ``volumes.csv`` and ``summary.csv``."""
    import pandas as pd

    df = pd.read_csv(folder / "slices.csv", dtype={"volume_id": str})
    df["model"] = pd.Categorical(df["model"], categories=names, ordered=True)
    df["condition"] = pd.Categorical(df["condition"], categories=conds, ordered=True)
    df = df.sort_values(["model", "condition", "row"], kind="stable")
    df.to_csv(folder / "slices.csv", index=False)
    metrics = list(METRIC_NAMES)
    vol = df.groupby(["model", "condition", "volume_id"], observed=True, sort=True)
    volumes = vol[metrics].mean()
    volumes.insert(0, "n_slices", vol.size())
    volumes.reset_index().to_csv(folder / "volumes.csv", index=False)
    g = df.groupby(["model", "condition"], observed=True, sort=True)
    summary = pd.DataFrame({"n": g.size(), "n_volumes": g["volume_id"].nunique()})
    for m in metrics:
        summary[f"{m}_mean"] = g[m].mean()
        summary[f"{m}_std"] = g[m].std(ddof=1)
    summary = summary.reset_index()
    summary.insert(1, "kind", ["baseline" if str(m) in BASELINES else "model" for m in summary["model"]])
    summary.to_csv(folder / "summary.csv", index=False)


def _examples(folder: Path, plan: _Plan, example_condition: str | None, n_examples: int) -> None:
    """``examples.npz``: inputs, every model's outputs and targets for a few fixed slices."""
    import torch

    ds, rows, specs, baselines, conds, seed, dev, nlm_sigma = plan.unpack()
    ex_rows = rows[_example_positions(len(rows), n_examples)]
    all_conds = list(conds) + (
        [example_condition] if example_condition and example_condition not in conds else []
    )
    names = [s.name for s in specs] + list(baselines)
    s = int(ds.slices.shape[1])
    k = len(ex_rows)
    clean = torch.from_numpy(np.asarray(ds.slices[ex_rows], dtype=np.float32)).unsqueeze(1)
    inputs = np.zeros((len(all_conds), k, s, s), np.float32)
    outputs = np.full((len(names), len(all_conds), k, s, s), np.nan, np.float32)
    masks = np.zeros((len(all_conds), k, s, s), bool)
    for ci, cond in enumerate(all_conds if k else []):
        corrupted, mask = corrupt_rows(cond, clean, ex_rows, seed=seed)
        inputs[ci] = corrupted[:, 0].numpy()
        if mask is not None:
            masks[ci] = mask[:, 0]
        for mi, spec in enumerate(specs):
            outputs[mi, ci] = _run_model(spec.model, corrupted, dev)[:, 0].cpu().numpy()
        for bi, b in enumerate(baselines):
            if baseline_applies(b, cond):
                outputs[len(specs) + bi, ci] = _run_baseline(b, corrupted.numpy(), mask, nlm_sigma)[:, 0]
    np.savez_compressed(
        folder / "examples.npz",
        rows=ex_rows.astype(np.int64),
        volume_id=np.array([str(v) for v in ds.index["volume_id"].to_numpy()[ex_rows]], dtype=str),
        slice=ds.index["slice"].to_numpy()[ex_rows].astype(np.int64),
        conditions=np.array(all_conds),
        evaluated=np.array([c in conds for c in all_conds]),
        models=np.array(names),
        target=clean[:, 0].numpy(),
        inputs=inputs,
        masks=masks,
        outputs=outputs,
    )
