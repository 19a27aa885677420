"""A normative model of healthy anatomy for anomaly maps on plain T1: registration to a healthy template.

On plain (non-contrast) T1 a tumour and its oedema have close to normal tissue intensity; what gives them
away is *anatomy*: tissue of the wrong kind for its place (grey-matter-dark tissue where healthy brains
have white matter), swelling, and lost left-right symmetry. A residual autoencoder that smooths local
intensity sees none of that. This module compares a scan with a cohort of healthy brains, voxel by voxel,
after registering it to their template:

1. **Template** (:func:`build_normative`): healthy skull-stripped 2 mm volumes (the IXI ``train`` split),
   each registered (affine, then a deformable SyN warp with ANTs) to a left-right symmetric template, which
   is rebuilt from the registered volumes. Each registered volume and its mirror image are samples of the
   healthy population in template space (the template is symmetric, so a mirrored volume's registration
   is the mirror of the volume's).
2. **Normative maps**, per template voxel, of the registered, intensity-standardised volumes: the mean
   and sd of intensity; the sd of the left-right difference ``x - mirror(x)``; the mean and sd of the
   log-Jacobian of the warp (local volume change).
3. **A scan** (:func:`scan_score`, :func:`normative_anomaly`) is skull-stripped, put on the 2 mm grid, registered to the template
   the same way, its intensities standardised (:func:`standardise`: its brain's quantiles mapped to the
   healthy cohort's), and three deviations are computed in template space: intensity
   ``z = (x - mean) / sd``, asymmetry ``a = (x - mirror(x)) / sd_lr``, and volume change
   ``j = (log J - mean) / sd``. The deformable warp is kept coarse (no finest-level iterations, smooth
   update field), so that a lesion is not registered away: it stays as a region that departs from the
   template.
4. **Score** (:func:`score`): with ``e = (z + a) / 2`` (both smoothed by a Gaussian of
   :attr:`NormativeSettings.smooth` voxels inside the brain), ``s = max(-e, 0) + bright x max(e, 0) +
   swelling x max(j, 0)``: darker than healthy brains at that place and darker than the other side counts
   fully (plain-T1 oedema, necrosis and most tumour tissue are hypo-intense), brighter counts half, and local
   swelling adds. ``s`` is brought back onto the scan's own grid (inverse warp). The healthy calibration
   (:func:`calibrate_normative`, the ``val`` volumes) turns it into ``-log10`` of the healthy false-positive
   rate, as for brainae's other anomaly maps.

What it is for: plain T1. A contrast-enhanced T1 (bright enhancing rim) or a FLAIR scan is another contrast
than the template's; the autoencoder (``--model anomaly``) does better there (see the README's table), and a
FLAIR scan is usually refused as a failed registration.

The registration uses ANTsPy (``antspyx``), the field's reference implementation of SyN. Its metric
sampling is seeded (:data:`ANTS_SEED`); bit-identical repeats also need ITK on one thread, which the
``brainae`` command sets (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1`` unless the variable is set already; in
Python, set it before ANTs is first used). With more threads, repeated maps differ slightly.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from brainae.errors import BrainaeError

__all__ = [
    "DEFAULT_NORMATIVE",
    "NORMATIVE_MM",
    "NormativeModel",
    "NormativeSettings",
    "Registration",
    "build_normative",
    "calibrate_normative",
    "fit_normative",
    "is_normative_file",
    "load_normative",
    "normative_anomaly",
    "registered",
    "scan_score",
    "standardise",
]

NORMATIVE_MM = 2.0
"""The template's voxel size (mm); scans are compared on this grid."""

QUANTILES = np.array([1, 2, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 85, 90, 95, 98, 99], dtype=np.float64)
"""Percentiles of the brain's intensities matched to the healthy cohort's by :func:`standardise`."""


@dataclass
class NormativeSettings:
    """How scans are registered and scored. The registration's defaults keep a 1 mm scan well under a minute
    and lesions in place (coarse warp); the smoothing was chosen on synthetic lesions planted in the ``val``
    volumes; the weights follow what plain-T1 lesions look like (mostly darker than healthy tissue).

    Attributes:
        aff_iterations: ANTs affine iterations per level (shrink factors 4, 2, 1).
        syn_iterations: ANTs SyN iterations per level (shrink factors 4, 2, 1); a 0 at the finest level keeps
            the warp coarse, so that lesions are not registered away.
        flow_sigma: smoothing (voxels) of the SyN update field.
        total_sigma: smoothing of the total field.
        sd_floor: floor of the intensity sd (standardised units) and of the asymmetry sd.
        jac_floor: floor of the log-Jacobian sd.
        smooth: sd (voxels of the 2 mm grid) of the Gaussian applied to the deviations before scoring.
        bright: weight of brighter-than-normal deviations (plain T1 lesions are mostly darker).
        swelling: weight of the swelling (positive log-Jacobian) term.
        min_fit: below this correlation between the registered scan and the template, registration failed.
    """

    aff_iterations: tuple[int, ...] = (200, 100, 50)
    syn_iterations: tuple[int, ...] = (40, 20, 0)
    flow_sigma: float = 3.0
    total_sigma: float = 0.0
    sd_floor: float = 0.05
    jac_floor: float = 0.05
    smooth: float = 1.5
    bright: float = 0.5
    swelling: float = 0.5
    min_fit: float = 0.5


@dataclass
class NormativeModel:
    """The healthy template and normative maps, on a 2 mm RAS+ grid.

    Attributes:
        template: mean of the registered healthy brains and their mirror images (each brain's median 1;
            symmetric left-right along axis 0), what scans are registered to.
        brain: fraction of the healthy brains covering each voxel.
        mean, sd: per-voxel mean and sd of the standardised intensities.
        lr_sd: per-voxel sd of ``x - mirror(x)``.
        jac_mean, jac_sd: per-voxel mean and sd of the log-Jacobian of the warps.
        quantiles: the cohort's mean brain-intensity percentiles (:data:`QUANTILES`), standardised units.
        calibration: healthy thresholds of the score (``levels``, ``thresholds``), volume scores (``mean``,
            ``std``), see :func:`calibrate_normative`.
        settings: :class:`NormativeSettings`.
        provenance: ids and recipe.
    """

    template: np.ndarray
    brain: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    lr_sd: np.ndarray
    jac_mean: np.ndarray
    jac_sd: np.ndarray
    quantiles: np.ndarray
    calibration: dict = field(default_factory=dict)
    settings: NormativeSettings = field(default_factory=NormativeSettings)
    provenance: dict = field(default_factory=dict)

    MAPS = ("template", "brain", "mean", "sd", "lr_sd", "jac_mean", "jac_sd")

    def save(self, path: str | os.PathLike) -> None:
        """Write a compressed ``.npz`` (float16 maps, JSON settings), atomically."""
        path = Path(path)
        meta = {
            "kind": "brainae-normative",
            "settings": asdict(self.settings),
            "calibration": self.calibration,
            "provenance": self.provenance,
            "quantiles": [float(q) for q in self.quantiles],
        }
        from brainae.io import atomic_path

        with atomic_path(path) as tmp:  # a brainae temporary ending in .npz, so numpy adds no suffix
            np.savez_compressed(
                tmp,
                **{k: np.asarray(getattr(self, k), np.float16) for k in self.MAPS},
                meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            )


def load_normative(path: str | os.PathLike) -> NormativeModel:
    """Read a model written by :meth:`NormativeModel.save` (one clear error when the file is not one)."""
    path = Path(path)
    fix = "give one written by `brainae fit normative`"
    if not path.is_file():
        raise BrainaeError(f"{path}: no such normative model file; {fix}")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            maps = {k: z[k].astype(np.float32) for k in NormativeModel.MAPS}
        if not isinstance(meta, dict) or meta.get("kind") != "brainae-normative":
            raise ValueError("not a normative model")
        shapes = {m.shape for m in maps.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3 or min(next(iter(shapes))) < 8:
            raise ValueError("maps of different or too small shapes")
        if not all(np.isfinite(m).all() for m in maps.values()):
            raise ValueError("non-finite maps")
        known = {f.name for f in fields(NormativeSettings)}
        raw = meta.get("settings", {})
        s = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in known}
        settings = NormativeSettings(**s)
        quantiles = np.asarray(meta["quantiles"], dtype=np.float64)
        if quantiles.shape != QUANTILES.shape or not np.all(np.diff(quantiles) >= 0):
            raise ValueError("bad quantiles")
        calibration = meta.get("calibration", {})
        if not isinstance(calibration, dict):
            raise ValueError("bad calibration")
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise BrainaeError(f"{path}: not a normative model written by brainae ({exc}); {fix}") from None
    return NormativeModel(
        **maps,
        quantiles=quantiles,
        calibration=calibration,
        settings=settings,
        provenance=meta.get("provenance", {}),
    )


# ----------------------------------------------------------------------------------------- registration


@dataclass
class Registration:
    """A scan registered to the template.

    Attributes:
        warped: the scan resampled into template space.
        brain: the scan's brain mask resampled into template space (fraction).
        log_jac: log-Jacobian determinant of the deformable part, template space.
        fit: correlation of ``warped`` with the template inside the template's brain.
        inverse: ANTs transform files bringing template-space maps onto the scan's 2 mm grid.
        scan_image: the ANTs image of the scan (the grid maps are brought back to).
    """

    warped: np.ndarray
    brain: np.ndarray
    log_jac: np.ndarray
    fit: float
    inverse: list
    scan_image: object


def _ants():
    try:
        import ants
    except ImportError:  # pragma: no cover - antspyx is a dependency
        raise BrainaeError(
            "the normative anomaly model needs ANTsPy: pip install antspyx (or reinstall brainae)"
        ) from None
    return ants


ANTS_SEED = 1
"""The random seed of ANTs' metric sampling (set for each call, then put back): runs repeat."""


def _ants_call(fn, *args, **kwargs):
    """An ANTs call, seeded, whose failure becomes one clear line (ANTs raises RuntimeError with C++ detail)."""
    config = _ants().config
    before = config._random_seed
    config._random_seed = ANTS_SEED
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise BrainaeError(
            f"registration to the healthy template failed ({first}); is this a T1-weighted brain scan with a "
            "correct header (voxel sizes, orientation)?"
        ) from None
    finally:
        config._random_seed = before


def _image(arr: np.ndarray):
    return _ants().from_numpy(np.ascontiguousarray(arr, dtype=np.float32), spacing=(NORMATIVE_MM,) * 3)


@contextlib.contextmanager
def registered(
    template: np.ndarray, scan: np.ndarray, brain: np.ndarray, settings: NormativeSettings
) -> Iterator[Registration]:
    """Register a skull-stripped 2 mm ``scan`` (its ``brain`` mask) to ``template``: affine, then SyN.

    Mattes mutual information drives both stages (robust to a scan's contrast differing from the
    template's). ANTs writes the transforms into a temporary folder that lives as long as the context.
    """
    ants = _ants()
    fixed, moving = _image(template), _image(scan)
    with tempfile.TemporaryDirectory(prefix="brainae-reg-") as tmp:
        reg = _ants_call(
            ants.registration,
            fixed,
            moving,
            type_of_transform="SyN",
            aff_iterations=tuple(settings.aff_iterations),
            aff_shrink_factors=(4, 2, 1)[-len(settings.aff_iterations) :],
            aff_smoothing_sigmas=(2, 1, 0)[-len(settings.aff_iterations) :],
            reg_iterations=tuple(settings.syn_iterations),
            flow_sigma=settings.flow_sigma,
            total_sigma=settings.total_sigma,
            outprefix=str(Path(tmp) / "reg"),
        )
        fwd = reg["fwdtransforms"]
        warped = reg["warpedmovout"].numpy()
        wbrain = _ants_call(ants.apply_transforms, fixed, _image(brain.astype(np.float32)), fwd).numpy()
        jac = _ants_call(ants.create_jacobian_determinant_image, fixed, fwd[0], do_log=True).numpy()
        inside = template > 0.1 * float(template.max())
        fit = float(np.corrcoef(warped[inside], template[inside])[0, 1]) if inside.sum() > 10 else math.nan
        yield Registration(warped, wbrain, np.nan_to_num(jac), fit, list(reg["invtransforms"]), moving)


def to_scan(reg: Registration, template_map: np.ndarray) -> np.ndarray:
    """A template-space map brought onto the scan's 2 mm grid (inverse affine, then inverse warp)."""
    ants = _ants()
    out = _ants_call(
        ants.apply_transforms,
        reg.scan_image,
        _image(template_map),
        reg.inverse,
        whichtoinvert=[True, False],
        interpolator="linear",
    )
    return out.numpy().astype(np.float32)


# ----------------------------------------------------------------------------------- intensities and maps


def brain_percentiles(x: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The :data:`QUANTILES` percentiles of ``x`` inside ``brain``."""
    values = x[brain]
    if values.size < 100:
        raise BrainaeError("the registered brain has fewer than 100 voxels; registration failed")
    return np.percentile(values, QUANTILES)


def standardise(x: np.ndarray, own: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Map intensities so that the percentiles ``own`` land on ``reference`` (piecewise linear, extended
    linearly beyond both ends). A lesion that covers a few per cent of the brain barely moves the
    percentiles, so the map follows the healthy tissue.

    Example:
        >>> standardise(np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 2.0]), np.array([10.0, 20.0]))
        array([ 0., 10., 20., 30.], dtype=float32)
    """
    own = np.maximum.accumulate(np.asarray(own, dtype=np.float64))
    own = own + np.arange(own.size) * 1e-9 * max(1.0, float(np.abs(own).max()))
    reference = np.asarray(reference, dtype=np.float64)
    out = np.interp(x, own, reference)
    lo_slope = (reference[1] - reference[0]) / (own[1] - own[0])
    hi_slope = (reference[-1] - reference[-2]) / (own[-1] - own[-2])
    out = np.where(x < own[0], reference[0] + (x - own[0]) * lo_slope, out)
    out = np.where(x > own[-1], reference[-1] + (x - own[-1]) * hi_slope, out)
    return out.astype(np.float32)


def mirror(x: np.ndarray) -> np.ndarray:
    """Left-right mirror image in template space (axis 0 runs left to right)."""
    return np.ascontiguousarray(x[::-1])


def _smooth_in(x: np.ndarray, valid: np.ndarray, sd: float) -> np.ndarray:
    """Gaussian smoothing of ``x`` over ``valid`` voxels only (normalised convolution); 0 elsewhere."""
    from scipy import ndimage

    if sd <= 0:
        return np.where(valid, x, 0.0).astype(np.float32)
    w = valid.astype(np.float32)
    num = ndimage.gaussian_filter(np.where(valid, x, 0.0).astype(np.float32), sd)
    den = ndimage.gaussian_filter(w, sd)
    return np.where(valid, num / np.maximum(den, 1e-6), 0.0).astype(np.float32)


@dataclass
class Deviations:
    """A scan's deviations from the healthy cohort, in template space.

    Attributes:
        z: intensity z-score; a: left-right asymmetry z-score; j: log-Jacobian z-score; valid: where all
        three are defined (inside the template's and the scan's brain, and the mirror's).
    """

    z: np.ndarray
    a: np.ndarray
    j: np.ndarray
    valid: np.ndarray


def deviations(model: NormativeModel, reg: Registration) -> Deviations:
    """The intensity, asymmetry and volume-change z-scores of a registered scan (smoothed)."""
    s = model.settings
    valid = (model.brain >= 0.5) & (reg.brain >= 0.5)
    xs = standardise(reg.warped, brain_percentiles(reg.warped, valid), model.quantiles)
    both = valid & mirror(valid)
    z = (xs - model.mean) / np.maximum(model.sd, s.sd_floor)
    a = (xs - mirror(xs)) / np.maximum(model.lr_sd, s.sd_floor)
    j = (reg.log_jac - model.jac_mean) / np.maximum(model.jac_sd, s.jac_floor)
    return Deviations(
        _smooth_in(z, valid, s.smooth),
        _smooth_in(np.where(both, a, 0.0), valid, s.smooth),
        _smooth_in(j, valid, s.smooth),
        valid,
    )


def score(dev: Deviations, settings: NormativeSettings) -> np.ndarray:
    """The anomaly score in template space (0 outside ``dev.valid``; see the module doc)."""
    e = 0.5 * (dev.z + dev.a)
    s = (
        np.maximum(-e, 0.0)
        + settings.bright * np.maximum(e, 0.0)
        + settings.swelling * np.maximum(dev.j, 0.0)
    )
    return np.where(dev.valid, s, 0.0).astype(np.float32)


# ------------------------------------------------------------------------------------------- building

MIN_EXTENT_MM, MAX_EXTENT_MM = 60.0, 500.0
"""The field of view (mm, each axis) of a scan that can hold a brain."""

TEMPLATE_SHAPE = (96, 112, 96)
"""The template grid (2 mm voxels: 192 x 224 x 192 mm, room for any adult brain)."""


def prepare_scan(data: np.ndarray, zooms, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A skull-stripped scan on the 2 mm grid, background 0, brain median 1; and its brain mask there."""
    from brainae.volumetric import background_value, to_grid

    extent = [n * float(z) for n, z in zip(np.shape(data), zooms)]
    if not all(MIN_EXTENT_MM <= e <= MAX_EXTENT_MM for e in extent):
        raise BrainaeError(
            f"field of view {' x '.join(f'{e:.0f}' for e in extent)} mm: not a brain scan (a brain needs "
            f"{MIN_EXTENT_MM:.0f}-{MAX_EXTENT_MM:.0f} mm along each axis); check the voxel sizes in the header"
        )
    x = np.asarray(data, dtype=np.float32) - background_value(data)
    x2 = to_grid(np.where(brain, x, 0.0).astype(np.float32), zooms, NORMATIVE_MM)
    b2 = to_grid(np.asarray(brain, bool), zooms, NORMATIVE_MM, order=0)
    if b2.sum() < 1000:
        raise BrainaeError(
            f"the brain mask holds {int(b2.sum())} voxels of 2 mm (under 8 ml): not a brain scan"
        )
    med = float(np.median(x2[b2]))
    if not med > 0:
        raise BrainaeError("the brain's median intensity is at background level: nothing to compare")
    return np.where(b2, x2 / med, 0.0).astype(np.float32), b2


def _centred(x: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """``x`` cropped or zero-padded to :data:`TEMPLATE_SHAPE` with its brain's bounding box centred."""
    idx = np.argwhere(brain)
    centre = (idx.min(axis=0) + idx.max(axis=0)) / 2.0
    out = np.zeros(TEMPLATE_SHAPE, np.float32)
    src, dst = [], []
    for c, n, m in zip(centre, x.shape, TEMPLATE_SHAPE):
        start = int(round(c - (m - 1) / 2.0))  # source index of the output's first voxel
        lo, hi = max(start, 0), min(start + m, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = x[tuple(src)]
    return out


def _symmetric(t: np.ndarray, settings: NormativeSettings) -> np.ndarray:
    """A left-right symmetric version of ``t``: ``t`` rigidly aligned to its own symmetrised self (twice),
    then averaged with its mirror."""
    ants = _ants()
    for _ in range(2):
        s = 0.5 * (t + mirror(t))
        reg = ants.registration(
            _image(s),
            _image(t),
            type_of_transform="Rigid",
            aff_iterations=tuple(settings.aff_iterations),
            aff_shrink_factors=(4, 2, 1)[-len(settings.aff_iterations) :],
            aff_smoothing_sigmas=(2, 1, 0)[-len(settings.aff_iterations) :],
            random_seed=1,
        )
        t = reg["warpedmovout"].numpy()
        for f in reg["fwdtransforms"] + reg["invtransforms"]:
            Path(f).unlink(missing_ok=True)
    return (0.5 * (t + mirror(t))).astype(np.float32)


def _register_all(template, scans, settings, log) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    out = []
    for i, (x, b) in enumerate(scans):
        with registered(template, x, b, settings) as reg:
            out.append((reg.warped, reg.brain, reg.log_jac))
        if log:
            log(f"registered {i + 1}/{len(scans)} (fit {reg.fit:.3f})")
    return out


def build_normative(
    scans: list[tuple[np.ndarray, np.ndarray]],
    *,
    rounds: int = 2,
    settings: NormativeSettings | None = None,
    provenance: dict | None = None,
    log=None,
) -> NormativeModel:
    """Build the template and normative maps from healthy scans (each from :func:`prepare_scan`).

    The first scan, centred and symmetrised, is the first template; each round registers every scan to the
    template and replaces it by the mean of the registered scans and their mirror images. The maps come from
    the last round's registrations (each scan and its mirror image count as two samples).
    """
    if len(scans) < 3:
        raise BrainaeError(f"a normative model needs at least 3 healthy scans (got {len(scans)})")
    settings = settings or NormativeSettings()
    template = _symmetric(_centred(*scans[0]), settings)
    for r in range(rounds):
        regs = _register_all(template, scans, settings, log)
        warped = [w for w, _, _ in regs] + [mirror(w) for w, _, _ in regs]
        template = np.mean(warped, axis=0).astype(np.float32)
        if log:
            log(f"template round {r + 1}/{rounds} done")
    brains = [b for _, b, _ in regs] + [mirror(b) for _, b, _ in regs]
    cover = np.mean(brains, axis=0).astype(np.float32)
    inside = cover >= 0.5
    pct = [brain_percentiles(w, (b >= 0.5) & inside) for w, b in zip(warped, brains)]
    ref = np.mean(pct, axis=0)
    xs = np.stack([standardise(w, p, ref) for w, p in zip(warped, pct)])
    diffs = xs - xs[:, ::-1]  # mirror along axis 0 (axis 0 of each sample)
    jac = np.stack([j for _, _, j in regs] + [mirror(j) for _, _, j in regs])
    return NormativeModel(
        template=template,
        brain=cover,
        mean=xs.mean(axis=0),
        sd=xs.std(axis=0, ddof=1),
        lr_sd=np.sqrt(np.mean(diffs**2, axis=0)),
        jac_mean=jac.mean(axis=0),
        jac_sd=jac.std(axis=0, ddof=1),
        quantiles=ref,
        settings=settings,
        provenance=dict(provenance or {}),
    )


# ------------------------------------------------------------------------------------------- a scan


@dataclass
class ScanScore:
    """A scan's anomaly score on its own 2 mm grid, with what produced it.

    Attributes:
        score: the score map (0 outside ``brain``); brain: the scan's brain mask on that grid; fit: the
        registration's correlation with the template.
    """

    score: np.ndarray
    brain: np.ndarray
    fit: float


def scan_score(
    model: NormativeModel, data: np.ndarray, zooms, brain: np.ndarray
) -> ScanScore:
    """Register a skull-stripped scan (``brain`` its mask) to the template and score it (see module doc).

    Raises:
        BrainaeError: the registration failed (its correlation with the template is below
            :attr:`NormativeSettings.min_fit`): the map would be noise, so none is made.
    """
    x2, b2 = prepare_scan(data, zooms, brain)
    with registered(model.template, x2, b2, model.settings) as reg:
        if not reg.fit >= model.settings.min_fit:
            raise BrainaeError(
                f"registration to the healthy template failed (correlation {reg.fit:.2f}, at least "
                f"{model.settings.min_fit} expected): is this a T1-weighted brain scan, skull-stripped or with "
                "a correct brain mask?"
            )
        dev = deviations(model, reg)
        s = to_scan(reg, score(dev, model.settings))
    return ScanScore(
        np.where(b2, np.maximum(s, 0.0), 0.0).astype(np.float32), b2, reg.fit
    )


def volume_score(score_map: np.ndarray, brain: np.ndarray) -> float:
    """Mean of the top 0.1 % of the brain's scores (as brainae's other anomaly maps score a volume)."""
    from brainae.infer import TOP_FRACTION
    from brainae.slice_anomaly import volume_score as top_mean

    return top_mean(score_map[brain], TOP_FRACTION)


def calibrate_normative(
    model: NormativeModel, scans: list[tuple[np.ndarray, tuple, np.ndarray, str]], log=None
) -> dict:
    """Healthy thresholds from held-out healthy scans ``(data, zooms, brain, id)``: for tail probabilities
    ``10^-k`` the score reached by that fraction of their brain voxels (2 mm grid), and their volume scores.
    Stored in ``model.calibration`` and returned."""
    pooled, scores = [], {}
    for data, zooms, brain, sid in scans:
        sc = scan_score(model, data, zooms, brain)
        pooled.append(sc.score[sc.brain])
        scores[sid] = volume_score(sc.score, sc.brain)
        if log:
            log(f"calibration: {sid} (fit {sc.fit:.3f}, score {scores[sid]:.3f})")
    from brainae.infer import healthy_tail

    allv = np.concatenate(pooled)
    levels, thresholds = healthy_tail(allv)
    values = np.array(list(scores.values()))
    model.calibration = {
        "n": len(values),
        "voxels": int(allv.size),
        "levels": levels.tolist(),
        "thresholds": thresholds.tolist(),
        "scores": scores,
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else None,
    }
    return model.calibration


def levels_of(model: NormativeModel, score_map: np.ndarray) -> np.ndarray:
    """``-log10`` healthy tail probability of each score (0 where no calibration)."""
    from brainae.infer import tail_level

    cal = model.calibration
    if not cal.get("levels"):
        return np.zeros_like(score_map)
    return tail_level(cal["levels"], cal["thresholds"], score_map)


PRETRAINED = Path(__file__).resolve().parent / "pretrained"
DEFAULT_NORMATIVE = PRETRAINED / "brainae-normative.npz"
"""The shipped normative model (``brainae fit normative ... --split ixi``): the default of ``brainae anomaly``."""


def is_normative_file(path: str | os.PathLike) -> bool:
    """True for an ``.npz`` file that holds a normative model (by its metadata; nothing else is read)."""
    path = Path(path)
    if path.suffix.lower() != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            if "meta" not in z.files:
                return False
            meta = json.loads(bytes(z["meta"]).decode())
    except Exception:  # noqa: BLE001 - any unreadable file is simply not a normative model
        return False
    return isinstance(meta, dict) and meta.get("kind") == "brainae-normative"


def normative_anomaly(
    volume,
    model: NormativeModel,
    *,
    brain: np.ndarray | None = None,
    mask_method: str = "auto",
    fpr: float = 0.01,
):
    """Anomaly maps of one RAS+ :class:`brainae.io.Volume` against the normative model.

    Returns a :class:`brainae.infer.AnomalyMaps` on the input's grid: ``residual`` is the score, ``calibrated``
    its ``-log10`` healthy tail probability, ``lesion`` the voxels at or above ``-log10(fpr)``; the volume
    score is the mean of the top 0.1 % of the brain's scores, with its z-score against the calibration scans.
    """
    from brainae.infer import AnomalyMaps, check_can_strip
    from brainae.volumetric import from_grid, strip

    if not 0 < fpr < 1:
        raise BrainaeError(f"false-positive rate {fpr}: must be in (0, 1)")
    check_can_strip(volume, brain, mask_method)
    stripped, brain_in, was_stripped = strip(volume.data, volume.zooms, method=mask_method, brain=brain)
    sc = scan_score(model, stripped, volume.zooms, brain_in)
    vscore = volume_score(sc.score, sc.brain)
    shape = volume.data.shape
    residual = np.where(brain_in, from_grid(sc.score, shape), 0.0).astype(np.float32)
    cal = model.calibration
    if not cal.get("levels"):
        return AnomalyMaps(residual, None, None, brain_in, vscore, None, was_stripped)
    level = -math.log10(fpr)
    calibrated = np.where(brain_in, levels_of(model, residual), 0.0).astype(np.float32)
    threshold = float(np.interp(level, cal["levels"], cal["thresholds"]))
    std = cal.get("std")
    z = (vscore - cal["mean"]) / std if std else None
    return AnomalyMaps(
        residual, calibrated, calibrated >= level, brain_in, vscore, z, was_stripped, threshold
    )


def fit_normative(
    data_dir,
    *,
    split=None,
    masks=None,
    mask_method: str = "deepbet",
    seed: int = 0,
    rounds: int = 2,
    log=None,
):
    """Build and calibrate a normative model from a folder of healthy T1 volumes: the ``train`` volumes make
    the template and maps (:func:`build_normative`), the ``val`` volumes calibrate the score
    (:func:`calibrate_normative`). Returns ``(model, summary)``."""
    from brainae.fit import load_split, load_training_volumes
    from brainae.io import list_niftis, volume_id

    ids = {volume_id(f): f for f in list_niftis(Path(data_dir))}
    train, val = load_split(split, sorted(ids), seed)
    progress = (lambda m: log(f"normative: {m}")) if log else None
    tr = load_training_volumes(
        [ids[i] for i in train], mask_method=mask_method, masks=masks, progress=progress
    )
    scans = [prepare_scan(v.data, v.zooms, v.brain) for v in tr]
    del tr
    provenance = {
        "train": train,
        "val": val,
        "source": Path(data_dir).name,
        "mask_method": mask_method,
        "rounds": rounds,
    }
    model = build_normative(scans, rounds=rounds, provenance=provenance, log=progress)
    va = load_training_volumes([ids[i] for i in val], mask_method=mask_method, masks=masks, progress=progress)
    cal = calibrate_normative(model, [(v.data, v.zooms, v.brain, v.id) for v in va], log=progress)
    summary = {
        "volumes": len(train),
        "calibration_scans": cal["n"],
        "score_mean": cal["mean"],
        "score_std": cal["std"],
    }
    return model, summary
