"""Applying brainae's volumetric models to whole scans: denoise, inpaint, anomaly maps.

A volumetric checkpoint (written by ``brainae fit``) records its task and how it expects its input
(``preprocessing`` with ``kind: volumetric``: working grid, intensity reference, skull stripping); anomaly
checkpoints also carry a healthy-data calibration (``normative``). :func:`load_volumetric` reads one (or a
shipped default by task name) into a :class:`VolumetricModel`; the functions below take a RAS+
:class:`brainae.io.Volume` and return arrays on the input's grid. The input is never modified.

- :func:`denoise_volume`: normalise, estimate the noise level from the volume itself (the in-head estimate
  :func:`brainae.tasks.estimate_noise_sd`, given to the model as a second channel, and the noise sd: read in
  the air around the head when there is some, :func:`brainae.volumetric.background_noise`, else mapped
  from the in-head estimate by the checkpoint's table, :func:`noise_sd_estimate`), run the model on the
  input's own grid (blocks of at most 160 voxels per side with 16 voxels of overlap; the whole call peaks at
  1.9 GB of memory for a 256 x 256 x 150 scan) and classical estimates with that sd (3-D non-local means at several strengths,
  search radii and patch sizes, its Rician-corrected form, Gaussian blurs: :data:`COMPONENTS`,
  :func:`mix_components`), keep the shares of the model's change and of each estimate's change that the
  checkpoint's blend tables give for that noise level, kind of background and intensity class
  (:func:`calibrate_denoise`: none for a scan that is already clean), undo the normalisation. A scan with
  air and voxels smaller than the calibration scans' keeps the share of its noise that such a scan carries
  of its own (:func:`own_noise_keep`). The tables were calibrated on 2 mm volumes, where anatomy inflates the
  in-head noise estimate; a skull-stripped volume (no air to read the noise in) with voxels finer than 1.5 mm
  (geometric mean of the spacings) gets its strength (the noise channel's multiplier, :func:`sure_tune`,
  then the shares of the model's and of non-local means' changes, :func:`sure_shares`) chosen per volume by
  Stein's unbiased risk estimate with the noise read from fine Haar wavelet coefficients
  (:func:`brainae.volumetric.haar_noise_sd`). Every voxel is denoised, background and
  edge slices included; the result is computed on the input's grid (nothing is resampled), so it keeps the
  input's resolution.
- :func:`inpaint_volume`: the masked voxels are filled as the checkpoint's card says (``fill``: biharmonic
  interpolation of their surroundings, :func:`brainae.tasks.biharmonic_fill`, for brainae's current models)
  and the model corrects that fill, from a box around the mask (3-D context, 40 mm of margin); only the
  masked voxels change. This is the network path (``--model inpaint``); the default inpainter is the atlas,
  :func:`brainae.atlas.inpaint_with_atlas`.
- :func:`anomaly_volume`: skull-strip when needed, resample to the model's 2 mm grid, residual
  ``|x - f(x)|`` inside the brain, 3 x 3 x 3 median filter (as in the literature's post-processing), back to
  the input's grid; calibrated with the residuals of healthy validation volumes (:func:`calibrate`):
  ``calibrated = -log10(P(healthy residual >= r))``, so 2 means "a residual that 1 % of healthy brain voxels
  reach", whatever the scan; the lesion mask is ``calibrated >= 2`` (1 % false-positive rate on healthy
  validation brains) unless another rate is asked for. The volume score is the mean of the top 0.1 %
  residuals of the brain, with its z-score against the validation volumes' scores.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainae.card import Normative, Source, Training
from brainae.errors import BrainaeError, BrainaeWarning
from brainae.slice_anomaly import volume_score
from brainae.tasks import Task, get_task
from brainae.volume import VolumetricPreprocessing, fill_mask
from brainae.volumetric import (
    background_noise,
    fit_intensity,
    from_grid,
    haar_noise_sd,
    looks_skull_stripped,
    run_blocks,
    strip,
    to_grid,
)

__all__ = [
    "AnomalyMaps",
    "DEFAULT_ATLAS",
    "DEFAULT_MODELS",
    "VolumetricModel",
    "anomaly_volume",
    "calibrate",
    "calibrate_fitted",
    "default_model_path",
    "denoise_volume",
    "inpaint_volume",
    "is_volumetric",
    "load_volumetric",
    "own_noise_keep",
]

PRETRAINED = Path(__file__).resolve().parent / "pretrained"
DEFAULT_MODELS = {
    "denoise": PRETRAINED / "brainae-denoise.safetensors",
    "inpaint": PRETRAINED / "brainae-inpaint.safetensors",
    "anomaly": PRETRAINED / "brainae-anomaly.safetensors",
}
"""The shipped 3-D U-Net of each task (trained by ``brainae fit TASK ... --split ixi``; see docs/reference.md). The default
inpainter is the atlas (:data:`DEFAULT_ATLAS`); the inpainting network stays available as ``--model inpaint``."""

DEFAULT_ATLAS = PRETRAINED / "brainae-inpaint-atlas.npz"
"""The shipped inpainting atlas (``brainae fit atlas ... --split ixi``; :mod:`brainae.atlas`): the default inpainter."""

TOP_FRACTION = 0.001
MEDIAN_SIZE = 3
DEFAULT_FPR = 0.01
MAX_LEVEL = 6.0


@dataclass
class VolumetricModel:
    """A loaded volumetric checkpoint: the network (eval mode), its task and its card."""

    model: object
    task: Task
    preprocessing: VolumetricPreprocessing
    normative: Normative | None
    training: Training | None
    source: Source | None
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.path.name if self.path else self.task.name


def is_volumetric(preprocessing: object) -> bool:
    """True for the preprocessing card of a volumetric (``brainae fit``) checkpoint."""
    return isinstance(preprocessing, VolumetricPreprocessing)


def default_model_path(task: str) -> Path:
    """The shipped default checkpoint for ``task`` (clear error when it is not installed)."""
    if task not in DEFAULT_MODELS:
        raise BrainaeError(f"no default model for task {task!r}; tasks with one: {', '.join(DEFAULT_MODELS)}")
    path = DEFAULT_MODELS[task]
    if not path.is_file():
        raise BrainaeError(
            f"{path}: the default {task} model is missing from this installation; reinstall brainae"
        )
    return path


def load_volumetric(
    path: str | os.PathLike | None, *, task: str | None = None, device: str | object = "cpu"
) -> VolumetricModel:
    """Load a volumetric checkpoint (None: the shipped default for ``task``).

    Raises:
        BrainaeError: not a volumetric checkpoint, or one trained for another ``task`` than asked.
    """
    from brainae.checkpoint import load_checkpoint
    from brainae.device import resolve_device

    if path is None:
        if task is None:
            raise BrainaeError("say which task's default model to load")
        path = default_model_path(task)
    path = Path(path)
    if not path.exists():
        raise BrainaeError(
            f"{path}: no such checkpoint; give a file written by `brainae fit` or `brainae train`"
        )
    model, ckpt = load_checkpoint(path, resolve_device(device))
    if not is_volumetric(ckpt.preprocessing):
        raise BrainaeError(f"{path.name}: not a volumetric model (a slice autoencoder); it has no task")
    got = get_task(ckpt.preprocessing.task)
    if task is not None and got.name != task and not (task == "anomaly" and got.name == "plain-ae"):
        raise BrainaeError(
            f"{path.name}: a model trained for {got.name!r}, not {task!r}; use `brainae {got.name}` "
            f"or give a {task} model"
        )
    return VolumetricModel(model, got, ckpt.preprocessing, ckpt.normative, ckpt.training, ckpt.source, path)


# --------------------------------------------------------------------------------------------- denoise


SURE_FINER_THAN_MM = 1.5
"""Skull-stripped volumes (no background to read the noise in) whose voxel size (the geometric mean of the
three spacings, mm) is below this are denoised with the per-volume setting of :func:`sure_tune` and
:func:`sure_shares`; the others with the checkpoint's blend tables (calibrated on 2 mm volumes)."""
SURE_GAINS = (1.0, 1.5, 2.0, 3.0)
"""Multipliers of the noise estimate given to the denoiser that :func:`sure_tune` tries."""


STRENGTHS = ("auto", "tables", "sure")
"""How :func:`denoise_volume` sets its strength: ``auto`` (SURE for skull-stripped volumes finer than
:data:`SURE_FINER_THAN_MM`, the blend tables otherwise), always the ``tables``, or always ``sure``."""


def noise_sd_estimate(blend: dict | None, noise_estimate: float, background_sd: float | None) -> float:
    """The noise sd (normalised units) non-local means is given: read in the air around the head when the scan
    has some (:func:`brainae.volumetric.background_noise_sd`), else mapped from the in-head estimate by the
    checkpoint's table (``sigma_estimate`` -> ``sigma``, calibrated on validation volumes, where the in-head
    estimate reads anatomy as noise), else the in-head estimate itself."""
    if background_sd is not None:
        return float(background_sd)
    if blend and blend.get("sigma_estimate"):
        return float(np.interp(noise_estimate, blend["sigma_estimate"], blend["sigma"]))
    return float(noise_estimate)


def own_noise_keep(blend: dict | None, background_sd: float | None, zooms) -> float:
    """The share of the noise to leave in a scan with voxels finer than the calibration scans': the noise a
    scan of this voxel size carries of its own when it is acquired like them.

    The blend tables were fitted against 2 mm validation scans, which carry noise of their own (read in
    their air, ``own_noise.sd`` of the tables, about 0.007 of the intensity reference); the tables leave
    about that much in. Noise per voxel grows as voxels shrink: a scan acquired the same way with voxels of
    ``v`` mm^3 carries ``sd_own = own_noise.sd x sqrt(own_noise.voxel_mm3 / v)`` (about 0.02 at 1 mm,
    close to what real ~1 mm scans carry), noise that a comparison with that scan counts as signal. Of the
    noise ``background_sd`` read in the scan's air, the share ``(sd_own^2 - own_noise.sd^2) /
    background_sd^2`` (in [0, 1]) is that extra noise of its own, and :func:`denoise_volume` keeps that share
    of the input (the least-squares split of two independent noises). 0 for voxels as large as the
    calibration scans' or larger, for a scan without air, and for tables without ``own_noise``.

    Example:
        >>> tables = {"own_noise": {"sd": 0.007, "voxel_mm3": 8.0}}
        >>> own_noise_keep(tables, 0.03, (2.0, 2.0, 2.0))
        0.0
        >>> round(own_noise_keep(tables, 0.03, (1.0, 1.0, 1.0)), 3)
        0.381
    """
    own = (blend or {}).get("own_noise")
    if not own or not background_sd or background_sd <= 0.0:
        return 0.0
    voxel = float(np.prod(zooms))
    if voxel >= own["voxel_mm3"]:
        return 0.0
    sd = float(own["sd"])
    extra = sd * sd * (own["voxel_mm3"] / voxel - 1.0)
    return float(np.clip(extra / background_sd**2, 0.0, 1.0))


def denoise_volume(
    volume, vm: VolumetricModel, *, device: str | object = "cpu", strength: str = "auto"
) -> np.ndarray:
    """Denoised RAS+ volume on the input's grid (float32). See module doc and :data:`STRENGTHS`.

    ``strength="sure"`` targets the noise-free scan on any input (it also removes noise the scan had before,
    which a comparison with that noisy scan counts as error); ``"tables"`` keeps the shares of the change that
    minimised the error against the original 2 mm validation scans, scaled down on a scan with air and
    smaller voxels by :func:`own_noise_keep` (the noise such a scan carries of its own stays).
    """
    import torch

    from brainae.tasks import estimate_noise_sd

    if strength not in STRENGTHS:
        raise BrainaeError(f"unknown denoising strength {strength!r}; use one of {', '.join(STRENGTHS)}")
    data = volume.data
    norm = fit_intensity(data)
    x = norm.forward(data)
    est = float(estimate_noise_sd(torch.from_numpy(x)[None, None])[0])
    found = background_noise(x, volume.zooms)
    background, magnitude = (None, True) if found is None else found
    blend = vm.preprocessing.blend
    gain = 1.0
    fine_stripped = background is None and _voxel_mm(volume.zooms) < SURE_FINER_THAN_MM
    if strength == "sure" or (strength == "auto" and fine_stripped):
        haar = haar_noise_sd(x)
        sigma = est if haar is None else haar
        gain, alpha = sure_tune(vm.model, x, est, sigma, device=device)
        alpha, beta = sure_shares(vm.model, x, est, sigma, gain, device=device)
        betas = {("nlm", 2, 3, 1.0): beta}
    else:
        sigma = noise_sd_estimate(blend, est, background)
        alpha, betas = blend_weights(blend, est, background, magnitude=magnitude)
        keep = own_noise_keep(blend, background, volume.zooms)  # finer voxels: leave their own noise in
        alpha = alpha * (1.0 - keep)
        betas = {sp: b * (1.0 - keep) for sp, b in betas.items()}
    betas = {sp: b for sp, b in betas.items() if np.any(b != 0.0)}
    if np.all(alpha <= 0.0) and not betas:
        return np.maximum(norm.inverse(x), norm.lo).astype(np.float32)
    by = tuple(blend["class_by"]) if np.ndim(alpha) else None  # shares per intensity class
    specs = list(dict.fromkeys([*betas, by] if by else betas))
    estimates = dict(zip(specs, mix_components(x, sigma, specs)))
    classes = None if by is None else intensity_classes(estimates[by], blend["class_edges"])

    def share(value):
        return np.float32(value) if classes is None else np.asarray(value, dtype=np.float32)[classes]

    out = x.copy()
    if np.any(alpha > 0.0):
        with _large_volume_autocast(x.size, device):
            y = run_blocks(vm.model, np.stack([x, np.full_like(x, est * gain)]), device=device)[0]
        out += share(alpha) * (y - x)
    for sp, b in betas.items():
        out += share(b) * (estimates[sp] - x)
    return np.maximum(norm.inverse(out), norm.lo).astype(np.float32)


BF16_VOXELS = 4_000_000
"""Volumes with at least this many voxels (a ~1 mm whole-head scan) run the denoiser's network under bfloat16
autocast where the device has bfloat16 units (a GPU; a CPU with Intel AMX or AVX-512 BF16): on this project's
2-core CPU the network's part of a 256 x 256 x 150 volume takes 4.5 s instead of 10.9 s, and its output moves
by 7e-4 RMS (normalised intensities; 4 % of the network's own change), which the mix scales down further
(benchmarks/RESULTS.md). Smaller volumes run in float32."""


def _large_volume_autocast(voxels: int, device):
    """bfloat16 autocast for a volume of :data:`BF16_VOXELS` or more on a device with bfloat16 units, else a
    no-op context."""
    import contextlib

    import torch

    from brainae.device import has_bf16_units, resolve_device

    dev = resolve_device(device)
    if voxels >= BF16_VOXELS and has_bf16_units(dev):
        return torch.autocast(dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _voxel_mm(zooms) -> float:
    """The geometric mean of the voxel spacings (mm)."""
    return float(np.prod(np.asarray(zooms, dtype=np.float64))) ** (1.0 / 3.0)


def _sure_crops(fg: np.ndarray, size: int, count: int, seed: int) -> list[tuple[slice, ...]]:
    """``count`` boxes of ``size`` voxels per side (smaller where the volume is), centred on foreground voxels."""
    rng = np.random.default_rng(seed)
    where = np.argwhere(fg)
    if not len(where):
        where = np.argwhere(np.ones_like(fg))
    centres = where[rng.choice(len(where), size=min(count, len(where)), replace=False)]
    boxes = []
    for c in centres:
        box = []
        for ci, n in zip(c, fg.shape):
            side = min(size, n)
            start = int(np.clip(ci - side // 2, 0, n - side))
            box.append(slice(start, start + side))
        boxes.append(tuple(box))
    return boxes


def _sure_probes(x: np.ndarray, size: int, crops: int, floor: float, seed: int):
    """The boxes SURE is measured in (:func:`_sure_crops`) and a fixed normal field per box (the probe)."""
    boxes = _sure_crops(x > floor, size, crops, seed)
    rng = np.random.default_rng(seed + 1)
    return boxes, [rng.standard_normal(x[box].shape).astype(np.float32) for box in boxes]


def sure_tune(
    model,
    x: np.ndarray,
    est: float,
    sigma: float,
    *,
    gains: tuple[float, ...] = SURE_GAINS,
    device: str | object = "cpu",
    size: int = 48,
    crops: int = 4,
    keep: int = 8,
    floor: float = 0.1,
    seed: int = 0,
) -> tuple[float, float]:
    """The denoiser setting for one volume that minimises Stein's unbiased risk estimate (SURE).

    For each ``gain`` (the model gets ``est x gain`` as its noise channel) and the output
    ``x + alpha (f(x) - x)``, the expected squared error against the noise-free volume, for Gaussian noise of
    sd ``sigma``, is ``alpha^2 A - sigma^2 + 2 sigma^2 (1 - alpha + alpha D)`` per voxel, with
    ``A = mean (f(x) - x)^2`` and ``D`` the mean divergence of ``f`` (estimated by Monte Carlo: one extra pass
    with the input perturbed by ``0.01 sigma`` times a fixed normal field), so the best ``alpha`` is
    ``sigma^2 (1 - D) / A`` (clipped to [0, 1]). Both are measured inside ``crops`` boxes of ``size`` voxels
    centred on foreground voxels (``x > floor``), on their central part (``keep`` voxels trimmed per side) and
    its foreground. No clean data or noise level from the user is needed, only ``sigma``
    (:func:`brainae.volumetric.haar_noise_sd` in :func:`denoise_volume`). SURE measures the error against
    the noise-free volume: on a scan that carries noise of its own, it removes that noise too.

    Returns:
        ``(gain, alpha)``; ``(1, 0)`` (keep the input) when ``sigma`` is ~0.
    """
    if not sigma > 1e-6:
        return 1.0, 0.0
    boxes, probes = _sure_probes(x, size, crops, floor, seed)
    eps = 0.01 * sigma
    best: tuple[float, float, float] | None = None
    for gain in gains:
        total_a = total_d = 0.0
        count = 0
        for box, probe in zip(boxes, probes):
            piece = x[box]
            channel = np.full_like(piece, est * gain)
            f = run_blocks(model, np.stack([piece, channel]), device=device)[0]
            f2 = run_blocks(model, np.stack([piece + eps * probe, channel]), device=device)[0]
            inner = tuple(slice(min(keep, n // 4), n - min(keep, n // 4)) for n in piece.shape)
            use = piece[inner] > floor
            total_a += float(np.sum(((f - piece)[inner][use]).astype(np.float64) ** 2))
            total_d += float(np.sum((probe * (f2 - f))[inner][use], dtype=np.float64)) / eps
            count += int(use.sum())
        if count == 0:
            return 1.0, 0.0
        a, d = total_a / count, total_d / count
        alpha = float(np.clip(sigma**2 * (1.0 - d) / a, 0.0, 1.0)) if a > 0 else 0.0
        risk = alpha * alpha * a - sigma**2 + 2.0 * sigma**2 * (1.0 - alpha + alpha * d)
        if best is None or risk < best[0]:
            best = (risk, gain, alpha)
    return best[1], best[2]


def blend_weights(
    blend: dict | None, noise_estimate: float, background_sd: float | None = None, *, magnitude: bool = True
) -> tuple[float | np.ndarray, dict[tuple, float | np.ndarray]]:
    """How much of the denoiser's change, and of each classical estimate's change, to keep for a volume.

    The tables (``preprocessing.blend`` of a denoise checkpoint, from :func:`calibrate_denoise`) give the
    shares that minimised the head error on healthy validation volumes, as a function of the noise read in
    the background (:func:`brainae.volumetric.background_noise`: the same for any voxel size; one table for
    magnitude images, whose noise is Rician, one for noise around zero) when the volume has one, else of the
    in-head estimate (:func:`brainae.tasks.estimate_noise_sd`). Without a table: ``(1, {})`` (the model's
    output). Older tables (one non-local means result, strength 1, share in [0, 1]; or none) still work.

    Returns:
        ``(alpha, betas)``: the output is ``x + alpha (f(x) - x) + sum_c betas[c] (c(x) - x)`` over the
        classical estimates ``c`` of :data:`COMPONENTS` (:func:`mix_components`). ``alpha`` is kept in
        [0, 1]; the betas may be negative (a difference of two strengths keeps detail). With tables per
        intensity class (``class_edges``), each share is an array with one value per class.
    """
    if not blend:
        return 1.0, {}
    if blend.get("components"):
        tables = blend.get("background") or {}
        if background_sd is not None and tables:
            table = tables.get("magnitude" if magnitude else "zero_mean") or next(iter(tables.values()))
            at = background_sd
        else:
            table, at = blend["estimate"], noise_estimate
        classes = len(blend.get("class_edges") or ()) + 1
        flat = np.array([np.interp(at, table["at"], col) for col in zip(*table["shares"])])
        shares = flat.reshape(classes, -1)  # one row of shares per intensity class
        alpha = np.clip(shares[:, 0], 0.0, 1.0)
        betas = {tuple(sp): shares[:, k + 1] for k, sp in enumerate(blend["components"])}
        if classes == 1:
            return float(alpha[0]), {sp: float(b[0]) for sp, b in betas.items()}
        return alpha, betas
    if background_sd is not None and blend.get("background_sd"):
        at, xs, a_key, b_key = background_sd, blend["background_sd"], "alpha_background", "nlm_background"
    else:
        at, xs, a_key, b_key = noise_estimate, blend["noise_estimate"], "alpha", "nlm"
    alpha = float(np.clip(np.interp(at, xs, blend[a_key]), 0.0, 1.0))
    beta = float(np.clip(np.interp(at, xs, blend[b_key]), 0.0, 1.0)) if blend.get(b_key) else 0.0
    return alpha, ({("nlm", 2, 3, 1.0): beta} if beta else {})


def _increasing(values: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to ``values`` in least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, c2), (m1, c1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    return np.concatenate([np.full(int(c), m) for m, c in blocks])


def _table(pairs: list[tuple[float, ...]], k: int = 4) -> tuple[list[float], ...]:
    """Running means of (x, v1, v2, ...) tuples sorted by x, in bins of ``k``; each v made non-decreasing
    (the closest non-decreasing sequence, :func:`_increasing`)."""
    rows = np.array(sorted(pairs), dtype=np.float64)
    means = np.array([rows[i : i + k].mean(axis=0) for i in range(0, len(rows), k)])
    cols = [means[:, 0]] + [_increasing(means[:, j]) for j in range(1, rows.shape[1])]
    return tuple([float(v) for v in c] for c in cols)


def _best_shares(gram: np.ndarray, rhs: np.ndarray) -> tuple[float, float]:
    """The ``(a, b)`` in [0, 1]^2 that minimises ``[a, b] G [a, b] - 2 [a, b] . rhs`` among the joint optimum
    and the two one-term optima (each clipped), or ``(0, 0)``."""
    best, best_q = (0.0, 0.0), 0.0
    candidates = []
    if abs(np.linalg.det(gram)) > 1e-12 * max(float(gram[0, 0] * gram[1, 1]), 1e-30):
        candidates.append(tuple(np.linalg.solve(gram, rhs)))
    if gram[0, 0] > 0:
        candidates.append((rhs[0] / gram[0, 0], 0.0))
    if gram[1, 1] > 0:
        candidates.append((0.0, rhs[1] / gram[1, 1]))
    for a, b in candidates:
        v = np.clip(np.array([a, b], dtype=np.float64), 0.0, 1.0)
        q = float(v @ gram @ v - 2.0 * v @ rhs)
        if q < best_q:
            best, best_q = (float(v[0]), float(v[1])), q
    return best


def sure_shares(
    model,
    x: np.ndarray,
    est: float,
    sigma: float,
    gain: float = 1.0,
    *,
    device: str | object = "cpu",
    size: int = 48,
    crops: int = 4,
    keep: int = 8,
    floor: float = 0.1,
    seed: int = 0,
) -> tuple[float, float]:
    """The shares ``(alpha, beta)`` of the model's and of non-local means' changes that minimise Stein's
    unbiased risk estimate, for a volume without a calibrated table (see :func:`sure_tune`).

    For ``g = x + alpha (f - x) + beta (n - x)`` (``f`` the model with noise channel ``est x gain``, ``n``
    :func:`brainae.nlmeans.nl_means` with sd ``sigma``), SURE per voxel is
    ``[alpha, beta] G [alpha, beta] - sigma^2 + 2 sigma^2 (1 - alpha (1 - D_f) - beta (1 - D_n))``, with ``G``
    the mean products of ``f - x`` and ``n - x`` and ``D`` each filter's mean divergence (Monte Carlo, one
    perturbed pass each, the same probes and boxes as :func:`sure_tune`); it is minimised over [0, 1]^2.
    """
    from brainae.nlmeans import nl_means

    if not sigma > 1e-6:
        return 0.0, 0.0
    boxes, probes = _sure_probes(x, size, crops, floor, seed)
    eps = 0.01 * sigma
    gram = np.zeros((2, 2))
    div = np.zeros(2)
    count = 0
    for box, probe in zip(boxes, probes):
        piece = x[box]
        channel = np.full_like(piece, est * gain)
        moved = piece + eps * probe
        f = run_blocks(model, np.stack([piece, channel]), device=device)[0]
        f2 = run_blocks(model, np.stack([moved, channel]), device=device)[0]
        n, n2 = nl_means(piece, sigma), nl_means(moved, sigma)
        inner = tuple(slice(min(keep, k // 4), k - min(keep, k // 4)) for k in piece.shape)
        use = piece[inner] > floor
        df = (f - piece)[inner][use].astype(np.float64)
        dn = (n - piece)[inner][use].astype(np.float64)
        gram += np.array([[df @ df, df @ dn], [df @ dn, dn @ dn]])
        div += [
            float(np.sum((probe * (f2 - f))[inner][use], dtype=np.float64)) / eps,
            float(np.sum((probe * (n2 - n))[inner][use], dtype=np.float64)) / eps,
        ]
        count += int(use.sum())
    if count == 0:
        return 0.0, 0.0
    return _best_shares(gram / count, sigma**2 * (1.0 - div / count))


CALIBRATION_LEVELS = (0.0, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.10, 0.12)
"""Noise levels (sd as a fraction of the intensity reference) of :func:`calibrate_denoise`."""
COMPONENTS: tuple[tuple, ...] = (
    ("nlm", 2, 3, 0.5),
    ("nlm", 2, 3, 1.0),
    ("nlm", 2, 3, 2.0),
    ("nlm", 2, 3, 4.0),
    ("nlm", 1, 3, 1.0),
    ("nlm", 1, 3, 2.0),
    ("rms", 2, 3, 1.0),
    ("rms", 2, 3, 2.0),
    ("rician", 2, 3, 1.0),
    ("rician", 2, 3, 2.0),
    ("nlm", 2, 1, 1.0),
    ("nlm", 2, 1, 2.0),
    ("blur", 0.7),
    ("blur", 1.2),
)
"""The classical estimates a denoiser's tables mix with the model's output (:func:`calibrate_denoise`), all
computed with the scan's noise sd ``sigma``: ``("nlm", radius, patch, h)`` non-local means
(:func:`brainae.nlmeans.nl_means`, strength ``h x sigma``); ``("rms", ...)`` the root of the same weighted mean
of the squared intensities; ``("rician", ...)`` that mean less ``2 sigma^2`` under the root (the Rician-bias
correction of non-local means for magnitude images); ``("blur", s)`` a Gaussian blur of sd ``s`` voxels. The
estimates of one ``(radius, patch)`` share one computation of the patch distances."""
CLASS_BY = ("nlm", 2, 3, 2.0)
CLASS_EDGES = (0.3, 0.55, 0.8)
"""The tables hold one set of shares per intensity class: the :data:`CLASS_BY` estimate (smooth) cut at these
values of the normalised intensity (about CSF / grey matter / white matter / brighter on a T1 scan with its 99.5th
percentile at 1)."""


def mix_components(x: np.ndarray, sigma: float, specs) -> list[np.ndarray]:
    """The estimates of :data:`COMPONENTS` named by ``specs`` (in that order) for an intensity-normalised volume;
    non-local means runs inside the head's box (:func:`brainae.nlmeans.nl_means_head`), one pass per
    ``(radius, patch)``."""
    from scipy import ndimage

    from brainae.nlmeans import nl_means_head

    specs = [tuple(sp) for sp in specs]
    out: dict[tuple, np.ndarray] = {}
    for group in sorted({sp[1:3] for sp in specs if sp[0] != "blur"}):
        members = [sp for sp in specs if sp[0] != "blur" and sp[1:3] == group]
        strengths = sorted({sp[3] for sp in members})
        squared = sorted({sp[3] for sp in members if sp[0] != "nlm"})
        results = nl_means_head(
            x, sigma, radius=group[0], patch=group[1], h_factor=strengths, squares=squared or False
        )
        for h, r in zip(strengths, results):
            out[("nlm", *group, h)] = r
        for h, r in zip(squared, results[len(strengths) :]):
            out[("rms", *group, h)] = np.sqrt(np.maximum(r, 0.0))
            out[("rician", *group, h)] = np.sqrt(np.maximum(r - 2.0 * sigma * sigma, 0.0))
    for sp in specs:
        if sp[0] == "blur":
            out[sp] = ndimage.gaussian_filter(x, sp[1]).astype(np.float32)
    return [out[sp] for sp in specs]


def intensity_classes(estimate: np.ndarray, edges) -> np.ndarray:
    """The class (0 .. len(edges)) of each voxel of ``estimate`` (uint8)."""
    return np.digitize(estimate, np.asarray(edges, dtype=np.float32)).astype(np.uint8)


def _class_shares(changes: np.ndarray, target: np.ndarray, classes: np.ndarray, count: int) -> np.ndarray:
    """Least-squares shares of the columns of ``changes`` (voxels x estimates) that best fit ``target``, one row
    per class (``count`` x estimates); a class with fewer voxels than 100 per estimate gets the all-voxel fit."""
    changes, target = changes.astype(np.float64), target.astype(np.float64)
    overall = np.linalg.lstsq(changes, target, rcond=None)[0]
    rows = []
    for k in range(count):
        sel = classes == k
        enough = sel.sum() >= 100 * changes.shape[1]
        rows.append(np.linalg.lstsq(changes[sel], target[sel], rcond=None)[0] if enough else overall)
    return np.array(rows)


def _binned(rows: list[tuple[float, ...]], k: int = 4) -> dict:
    """Running means of ``(at, share_0, share_1, ...)`` rows sorted by ``at``, in bins of ``k``."""
    ordered = np.array(sorted(rows), dtype=np.float64)
    means = np.array([ordered[i : i + k].mean(axis=0) for i in range(0, len(ordered), k)])
    return {"at": [float(v) for v in means[:, 0]], "shares": [[float(v) for v in r] for r in means[:, 1:]]}


def calibrate_denoise(
    vm: VolumetricModel, volumes: list, *, device: str | object = "cpu", seed: int = 0
) -> dict:
    """The blend tables of a denoiser: for each noise level and intensity class (:data:`CLASS_EDGES`), the
    shares of the model's change and of the changes of the classical estimates of :data:`COMPONENTS` to keep,
    and the noise sd those estimates get on a scan without air around it.

    Each healthy validation volume gets Gaussian and Rician noise at each of :data:`CALIBRATION_LEVELS` of its
    intensity reference. The model gets the in-head noise estimate as its second channel, as in training; the
    classical estimates (:func:`mix_components`) get the noise sd read in the volume's background
    (:func:`noise_sd_estimate`). For each case and intensity class, the least-squares shares of ``f - x`` and
    of each ``e - x`` that best fit ``c - x`` over the head (``c`` clean, ``x`` noisy, ``f`` the model's
    output, ``e`` an estimate) are paired with the volume's noise estimates: the in-head one
    (:func:`brainae.tasks.estimate_noise_sd`) and the one read in the background
    (:func:`brainae.volumetric.background_noise`, one table for magnitude backgrounds and one for noise around
    zero), giving the tables (running means over the sorted estimates, bins of 4 cases); another maps the
    in-head estimate to the background one, the noise sd for a scan without air around it; ``own_noise`` is
    the median noise read in the air of the clean volumes, with their voxel volume (:func:`own_noise_keep`).
    Several strengths of non-local means, some with negative shares, keep more detail than any one of them.
    A clean validation scan gets shares near 0: a scan that is already clean is kept as it is, instead of
    made worse.
    """
    import torch

    from brainae.tasks import estimate_noise_sd

    rng = np.random.default_rng(seed)
    specs = [tuple(sp) for sp in COMPONENTS]
    by = specs.index(CLASS_BY)
    rows: list[tuple[float, ...]] = []
    by_background: dict[str, list[tuple[float, ...]]] = {"magnitude": [], "zero_mean": []}
    sigma_pairs: list[tuple[float, float]] = []
    own: list[tuple[float, float]] = []  # (noise read in the air, voxel mm^3) of each clean volume
    for vol in volumes:
        norm = fit_intensity(vol.data)
        clean = norm.forward(vol.data)
        head = clean > 0.05
        for level in CALIBRATION_LEVELS:
            for rician in (False, True):
                if level == 0.0 and rician:
                    continue
                n1 = rng.normal(0.0, level, clean.shape).astype(np.float32)
                noisy = clean + n1
                if rician:
                    noisy = np.sqrt(noisy**2 + rng.normal(0.0, level, clean.shape).astype(np.float32) ** 2)
                est = float(estimate_noise_sd(torch.from_numpy(noisy)[None, None])[0])
                found = background_noise(noisy, vol.zooms)
                bg = None if found is None else found[0]
                y = run_blocks(vm.model, np.stack([noisy, np.full_like(noisy, est)]), device=device)[0]
                estimates = mix_components(noisy, noise_sd_estimate(None, est, bg), specs)
                changes = np.stack([y - noisy] + [e - noisy for e in estimates], axis=-1)[head]
                target = (clean - noisy)[head]
                classes = intensity_classes(estimates[by][head], CLASS_EDGES)
                shares = _class_shares(changes, target, classes, len(CLASS_EDGES) + 1).ravel()
                rows.append((est, *shares))
                if found is not None:
                    by_background["magnitude" if found[1] else "zero_mean"].append((bg, *shares))
                    sigma_pairs.append((est, bg))
                    if level == 0.0:
                        own.append((bg, float(np.prod(vol.zooms))))
    table: dict = {
        "components": [list(sp) for sp in specs],
        "class_by": list(CLASS_BY),
        "class_edges": list(CLASS_EDGES),
        "estimate": _binned(rows),
        "cases": len(rows),
    }
    if len(sigma_pairs) == len(rows):
        table["background"] = {kind: _binned(r) for kind, r in by_background.items() if r}
        table["sigma_estimate"], table["sigma"] = _table(sigma_pairs)
    if own:
        table["own_noise"] = {
            "sd": round(float(np.median([sd for sd, _ in own])), 5),
            "voxel_mm3": round(float(np.median([v for _, v in own])), 3),
        }
    return table


# --------------------------------------------------------------------------------------------- inpaint


def inpaint_volume(
    volume, mask: np.ndarray, vm: VolumetricModel, *, device: str | object = "cpu", margin_mm: float = 40.0
) -> np.ndarray:
    """RAS+ volume with the masked voxels filled; every other voxel is bit-identical to the input."""
    data = volume.data
    mask = fill_mask(mask, data.shape)
    out = data.copy()
    if not mask.any():
        return out
    known = np.where(mask, data.min(), data)
    norm = fit_intensity(known)
    idx = np.argwhere(mask)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    pad = [int(math.ceil(margin_mm / z)) for z in volume.zooms]
    box = tuple(slice(max(0, a - p), min(n, b + p)) for a, b, p, n in zip(lo, hi, pad, data.shape))
    # checkpoints from before the fill was recorded used the smooth fill
    filled = fill_holes(norm.forward(known[box]), mask[box], vm.preprocessing.fill or "smooth")
    x = np.stack([filled, mask[box].astype(np.float32)])
    y = run_blocks(vm.model, x, device=device)[0]
    weight = correction_weights(vm.preprocessing.blend, mask[box], volume.zooms)
    y = norm.inverse(filled + weight * (y - filled))
    region = out[box]
    region[mask[box]] = np.maximum(y[mask[box]], norm.lo)
    return out


def correction_weights(blend: dict | None, mask: np.ndarray, zooms) -> np.ndarray | float:
    """How much of an inpainting model's correction of the fill to keep, per voxel of each hole (1 without a
    table).

    The table (``preprocessing.blend`` of an inpainting checkpoint, from :func:`calibrate_inpaint`) gives the
    least-squares weight of the correction on healthy validation volumes as a function of the hole's volume
    in ml; each connected component of ``mask`` gets the weight of its own volume (the table's end values
    beyond its range).
    """
    if not blend or "hole_ml" not in blend:
        return 1.0
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return 1.0
    ml = np.bincount(labels.ravel())[1:] * float(np.prod(zooms)) / 1000.0
    per = np.clip(np.interp(ml, blend["hole_ml"], blend["alpha"]), 0.0, 1.0)
    return np.concatenate([[1.0], per]).astype(np.float32)[labels]


CUBES_MM = (10.0, 20.0, 30.0, 40.0)
IRREGULAR_ML = (1.0, 3.0, 10.0, 30.0, 60.0)
"""The holes of :func:`calibrate_inpaint` (cube sides in mm, irregular masks in ml)."""


def calibrate_inpaint(
    vm: VolumetricModel, volumes: list, *, device: str | object = "cpu", seed: int = 0
) -> dict | None:
    """The correction table of an inpainting model: for each hole volume, the share of its correction to keep.

    On each healthy validation volume (a dataclass with ``data``, ``zooms`` and ``brain``, such as
    :class:`brainae.fit.TrainingVolume`; with and without its skull), holes fully inside the brain: cubes of
    10, 20, 30 and 40 mm and irregular lesion-like masks of 1, 3, 10, 30 and 60 ml (:mod:`brainae.lesions`).
    For each, the least-squares weight ``alpha = <f - b, c - b> / <f - b, f - b>`` inside the hole (``c``
    clean, ``b`` the fill the model starts from, ``f`` the model's output), clipped to [0, 1], paired with
    the hole's volume; the table holds the mean weight in bins of 8 cases sorted by volume. With it the model
    keeps its correction where it helped on healthy validation data, and falls back towards the classical fill
    where it did not. Holes that fit nowhere inside a brain are skipped (None when none fits).
    """
    import dataclasses as dc

    from brainae.lesions import irregular_mask, random_cube_mask

    raw = dc.replace(vm, preprocessing=dc.replace(vm.preprocessing, blend=None))
    rng = np.random.default_rng(seed)
    pairs: list[tuple[float, float]] = []
    for vol in volumes:
        for stripped in (False, True):
            data = np.where(vol.brain, vol.data, vol.data.min()).astype(np.float32) if stripped else vol.data
            for kind, size in [("cube", s) for s in CUBES_MM] + [("irregular", ml) for ml in IRREGULAR_ML]:
                try:
                    if kind == "cube":
                        hole = random_cube_mask(vol.brain, vol.zooms, rng, side_mm=size)
                    else:
                        hole = irregular_mask(vol.brain.shape, vol.zooms, rng, size, brain_mask=vol.brain)
                except ValueError:  # a brain too small for this hole
                    continue
                blank = np.where(hole, data.min(), data).astype(np.float32)
                norm = fit_intensity(blank)
                fill = norm.inverse(fill_holes(norm.forward(blank), hole, vm.preprocessing.fill or "smooth"))
                out = inpaint_volume(dc.replace(vol, data=blank), hole, raw, device=device)
                d = (out - fill)[hole].astype(np.float64)
                t = (data - fill)[hole].astype(np.float64)
                denom = float((d * d).sum())
                alpha = float(np.clip((d * t).sum() / denom, 0.0, 1.0)) if denom > 0 else 0.0
                pairs.append((float(hole.sum()) * float(np.prod(vol.zooms)) / 1000.0, alpha))
    if not pairs:
        return None
    pairs.sort()
    k = 8
    ml = [float(np.mean([p[0] for p in pairs[i : i + k]])) for i in range(0, len(pairs), k)]
    alpha = [float(np.mean([p[1] for p in pairs[i : i + k]])) for i in range(0, len(pairs), k)]
    return {"hole_ml": ml, "alpha": alpha, "cases": len(pairs)}


def fill_holes(img: np.ndarray, mask: np.ndarray, fill: str = "biharmonic") -> np.ndarray:
    """``img`` with its ``mask`` voxels filled as an inpainting model expects (a :data:`brainae.tasks.FILLS` name).

    The biharmonic fill is solved to convergence (relative residual 1e-5; on 40-60 ml holes of a 1 mm scan
    in z-score units, 1e-5 is within 0.002 of a float64 solve where 1e-3 was up to 0.3 off) in the mask's
    bounding box grown by 8 voxels; the smooth fill uses the whole image, as it did when the models that use
    it were trained.
    """
    import torch

    from brainae.tasks import biharmonic_fill, smooth_fill

    sub: tuple[slice, ...] = tuple(slice(0, n) for n in img.shape)
    if fill == "biharmonic":
        idx = np.argwhere(mask)
        lo, hi = np.maximum(idx.min(axis=0) - 8, 0), np.minimum(idx.max(axis=0) + 9, img.shape)
        sub = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    x = torch.from_numpy(np.ascontiguousarray(img[sub], dtype=np.float32))[None, None]
    holes = torch.from_numpy(mask[sub].astype(np.float32))[None, None]
    with torch.inference_mode():
        if fill == "biharmonic":
            filled = biharmonic_fill(x, holes, iterations=20000, tol=1e-5)
        else:
            filled = smooth_fill(x, holes)
    out = np.array(img, dtype=np.float32, copy=True)
    out[sub] = filled[0, 0].numpy()
    return out


# --------------------------------------------------------------------------------------------- anomaly


@dataclass
class AnomalyMaps:
    """Anomaly maps of one volume (RAS+, on the input's grid) and its scores.

    Attributes:
        residual: ``|x - f(x)|`` (median-filtered, model intensity units: the brain's median is 1), 0 outside
            the brain.
        calibrated: ``-log10`` of the fraction of healthy validation brain voxels with a residual at least as
            high (capped at 6); 0 outside the brain. None without calibration.
        lesion: bool mask ``calibrated >= -log10(fpr)``; None without calibration.
        brain: the brain mask used.
        score: mean of the top 0.1 % residuals of the brain (working grid); z: against the validation
            volumes (None without calibration).
        stripped_input: whether the input was already skull-stripped.
        threshold: the residual threshold of the lesion mask (None without calibration).
    """

    residual: np.ndarray
    calibrated: np.ndarray | None
    lesion: np.ndarray | None
    brain: np.ndarray
    score: float
    z: float | None
    stripped_input: bool
    threshold: float | None = None


def check_can_strip(volume, brain: np.ndarray | None, mask_method: str) -> None:
    """Refuse an anomaly map of a scan with its skull when only the rough threshold mask could strip it."""
    if brain is None and mask_method == "auto" and not looks_skull_stripped(volume.data, volume.zooms):
        from brainae.brainmask import deepbet_available

        if not deepbet_available():
            raise BrainaeError(
                f"{getattr(volume, 'path', 'scan')}: has its skull and deepbet is not installed; anomaly maps need "
                "a real brain mask: pip install 'brainae[brainmask]', give a brain mask (--brain-mask), or pass "
                "--mask-method threshold to accept the rough threshold mask (it keeps non-brain tissue, which "
                "shows up as anomalies)"
            )


def _working_residual(
    volume, vm: VolumetricModel, *, brain: np.ndarray | None, device, mask_method: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(residual on the working grid, brain on the working grid, brain on the input grid, was stripped)."""
    from scipy import ndimage

    prep = vm.preprocessing
    data, zooms = volume.data, volume.zooms
    check_can_strip(volume, brain, mask_method)
    stripped, brain_in, was_stripped = strip(data, zooms, method=mask_method, brain=brain)
    grid = prep.grid_mm
    img = to_grid(stripped, zooms, grid)
    bw = to_grid(brain_in, zooms, grid, order=0) if grid else brain_in
    img = np.where(bw, img, stripped.min()).astype(np.float32)
    norm = fit_intensity(img, reference=prep.reference, brain=bw)
    x = norm.forward(img)
    idx = np.argwhere(bw)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    box = tuple(slice(max(0, a - 4), min(n, b + 4)) for a, b, n in zip(lo, hi, x.shape))
    y = run_blocks(vm.model, x[box][None], device=device)[0]
    res = np.zeros_like(x)
    res[box] = np.abs(x[box] - y)
    res = ndimage.median_filter(res, size=MEDIAN_SIZE) * bw
    return res.astype(np.float32), bw, brain_in, was_stripped


def healthy_tail(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(levels, thresholds): for tail probabilities ``10^-k`` (k from 0 to :data:`MAX_LEVEL` in steps of
    0.05, limited by the number of values) the healthy value reached by that fraction of ``values``."""
    allv = np.sort(np.asarray(values, dtype=np.float64).ravel())
    kmax = min(MAX_LEVEL, math.log10(allv.size) - 1.0)
    levels = np.round(np.arange(0.0, kmax + 1e-9, 0.05), 4)
    return levels, np.maximum.accumulate(np.quantile(allv, 1.0 - 10.0 ** (-levels)))


def tail_level(levels, thresholds, values: np.ndarray) -> np.ndarray:
    """``-log10`` healthy tail probability of each value under a :func:`healthy_tail` table."""
    levels = np.asarray(levels, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    return np.interp(values, thresholds, levels, left=0.0, right=float(levels[-1])).astype(np.float32)


def _levels(normative: Normative, residual: np.ndarray) -> np.ndarray:
    """``-log10`` tail probability of each residual under the stored healthy distribution."""
    return tail_level(normative.levels, normative.thresholds, residual)


def anomaly_volume(
    volume,
    vm: VolumetricModel,
    *,
    brain: np.ndarray | None = None,
    device: str | object = "cpu",
    mask_method: str = "auto",
    fpr: float = DEFAULT_FPR,
) -> AnomalyMaps:
    """Anomaly maps and scores of one RAS+ volume (see module doc and :class:`AnomalyMaps`)."""
    if not 0 < fpr < 1:
        raise BrainaeError(f"false-positive rate {fpr}: must be in (0, 1)")
    res_w, brain_w, brain_in, was_stripped = _working_residual(
        volume, vm, brain=brain, device=device, mask_method=mask_method
    )
    score = volume_score(res_w[brain_w], TOP_FRACTION)
    residual = np.where(brain_in, from_grid(res_w, volume.data.shape), 0.0).astype(np.float32)
    cal = vm.normative if vm.normative is not None and vm.normative.calibrated else None
    if cal is None:
        return AnomalyMaps(residual, None, None, brain_in, score, None, was_stripped)
    level = -math.log10(fpr)
    calibrated = np.where(brain_in, _levels(cal, residual), 0.0).astype(np.float32)
    threshold = float(np.interp(level, cal.levels, cal.thresholds))
    z = cal.z(score)
    return AnomalyMaps(residual, calibrated, calibrated >= level, brain_in, score, z, was_stripped, threshold)


def calibrate(vm: VolumetricModel, volumes: list, brains: list, *, device: str | object = "cpu") -> dict:
    """Healthy-data calibration of an anomaly model from healthy validation volumes.

    Pools the brain residuals (working grid) of ``volumes`` (RAS+ :class:`~brainae.io.Volume`-likes with
    their brain masks ``brains``) and stores, for tail probabilities ``10^-k`` (k from 0 to
    :data:`MAX_LEVEL` in steps of 0.05, limited by the number of voxels), the residual reached by that
    fraction of healthy voxels; plus each volume's score and their mean / sd (ddof 1).

    Returns:
        The JSON-able ``normative`` dict stored in the checkpoint.
    """
    pooled, scores = [], {}
    for vol, b in zip(volumes, brains):
        res, bw, _, _ = _working_residual(vol, vm, brain=b, device=device, mask_method="auto")
        values = res[bw]
        pooled.append(values)
        scores[getattr(vol, "id", str(len(scores)))] = volume_score(values, TOP_FRACTION)
    n = int(sum(v.size for v in pooled))
    levels, thresholds = healthy_tail(np.concatenate(pooled))
    values = np.array(list(scores.values()))
    finite = np.isfinite(values)
    if not finite.all():
        raise BrainaeError("calibration produced non-finite residuals; the model or the volumes are broken")
    return {
        "kind": "voxel-residual",
        "n": len(values),
        "voxels": int(n),
        "levels": levels.tolist(),
        "thresholds": thresholds.tolist(),
        "scores": scores,
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else None,
        "definition": {
            "residual": f"|x - f(x)| on a {vm.preprocessing.grid_mm} mm grid, {MEDIAN_SIZE}^3 median filter",
            "score": f"mean of the top {TOP_FRACTION:.1%} brain residuals",
            "calibrated": "-log10 fraction of healthy brain voxels with a residual at least as high",
        },
    }


def warn_if_threshold_mask(stripped_input: bool) -> None:
    """Warn that a threshold brain mask (no deepbet) is a rough skull strip for anomaly maps."""
    import warnings

    from brainae.brainmask import deepbet_available

    if not stripped_input and not deepbet_available():
        warnings.warn(
            "skull-stripped with the threshold fallback (deepbet not installed): it keeps some non-brain "
            "tissue, which can show up as anomalies; pip install 'brainae[brainmask]' or give a stripped scan",
            BrainaeWarning,
            stacklevel=2,
        )


def calibrate_fitted(
    fitted, *, device: str | object = "cpu", seed: int = 0, log: Callable[[str], None] | None = None
):
    """The step after :func:`brainae.fit.fit_folder`: calibrate the trained model on its validation volumes.

    A denoiser gets its blend table (:func:`calibrate_denoise`, stored in the preprocessing), an inpainter its
    correction table (:func:`calibrate_inpaint`, stored the same way), an anomaly model
    its healthy-data statistics (:func:`calibrate`); other tasks need none.

    Returns:
        ``(preprocessing, normative)``: the card's preprocessing (with the table of a denoiser or inpainter) and the
        normative statistics (None but for anomaly models), for :func:`brainae.fit.save_fitted`.
    """
    import dataclasses

    say = log or (lambda _msg: None)
    task, preprocessing, val = fitted.task, fitted.preprocessing, fitted.val
    vm = VolumetricModel(fitted.result.model, task, preprocessing, None, fitted.training, fitted.source)
    normative = None
    if task.name == "denoise":
        preprocessing = dataclasses.replace(
            preprocessing, blend=calibrate_denoise(vm, val, device=device, seed=seed)
        )
        say(f"blend table from {preprocessing.blend['cases']} noisy validation cases")
    if task.name == "inpaint":
        table = calibrate_inpaint(vm, val, device=device, seed=seed)
        preprocessing = dataclasses.replace(preprocessing, blend=table)
        say(f"correction table from {table['cases']} validation holes" if table else "no correction table")
    if task.name in ("anomaly", "plain-ae"):
        normative = calibrate(vm, val, [v.brain for v in val], device=device)
        say(f"calibrated on {normative['n']} validation volumes ({normative['voxels']} brain voxels)")
    return preprocessing, normative
