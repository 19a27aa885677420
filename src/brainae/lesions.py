"""Seeded masks and synthetic lesions for benchmarks (pure numpy / scipy).

- :func:`cube_mask`: an axis-aligned cube of ``side_mm`` millimetres at a given voxel centre.
- :func:`irregular_blob`: a connected, lesion-like blob of a given volume (a random ellipsoid whose radius is
  modulated by smooth random noise, thresholded to the target voxel count; largest component).
- :func:`place_inside`: a random position where a shape lies *fully* inside a brain mask (exact: binary
  erosion of the brain by the shape); :func:`random_cube_mask` and :func:`irregular_mask` use it.
- :func:`synthetic_lesion`: an irregular, soft-edged lesion of equivalent radius ``radius_mm`` added inside
  the brain with a signed contrast (a fraction of the brain's median intensity: positive = hyper-intense,
  negative = hypo-intense). Ground truth: the voxels where the soft weight is at least 0.5.
- :func:`moved_tissue_lesion` and :func:`mass_lesion`: iso-intense lesions, as plain-T1 tumours are: the
  brain's own tissue moved to a place where it does not belong, and a mass that pushes its surroundings
  outwards.

Example:
    >>> rng = np.random.default_rng(0)
    >>> brain = np.zeros((40, 40, 40), bool); brain[5:35, 5:35, 5:35] = True
    >>> m = irregular_mask(brain.shape, (2.0, 2.0, 2.0), rng, 2.0, brain_mask=brain)
    >>> bool(brain[m].all()), 200 <= int(m.sum()) <= 300       # 2 ml = 250 voxels of 8 mm^3
    (True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Lesion",
    "cube_mask",
    "irregular_blob",
    "irregular_mask",
    "mass_lesion",
    "moved_tissue_lesion",
    "place_inside",
    "random_cube_mask",
    "synthetic_lesion",
]


def _cube_sides(zooms, side_mm: float) -> tuple[int, ...]:
    return tuple(max(1, int(round(side_mm / float(z)))) for z in zooms)


def cube_mask(shape, zooms, centre, side_mm: float = 20.0) -> np.ndarray:
    """Boolean cube of ``side_mm`` (rounded to whole voxels per axis) centred at voxel ``centre``.

    For an even voxel count the extra voxel lies on the low side. Clipped at the volume's edges.

    Example:
        >>> int(cube_mask((20, 20, 20), (2.0, 2.0, 2.0), (10, 10, 10), side_mm=8).sum())   # 4^3
        64
    """
    sides = _cube_sides(zooms, side_mm)
    out = np.zeros(tuple(shape), dtype=bool)
    sl = tuple(
        slice(max(0, int(c) - n // 2), max(0, int(c) - n // 2 + n))
        for c, n in zip(centre, sides, strict=True)
    )
    out[sl] = True
    return out


def place_inside(shape_mask: np.ndarray, brain_mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Put the boolean ``shape_mask`` (a small box) at a random position fully inside ``brain_mask``.

    Raises:
        ValueError: the shape fits nowhere inside the brain.
    """
    from scipy.signal import fftconvolve

    shape_mask = np.asarray(shape_mask, dtype=bool)
    brain = np.asarray(brain_mask, dtype=bool)
    if shape_mask.ndim != brain.ndim or any(
        a > b for a, b in zip(shape_mask.shape, brain.shape, strict=True)
    ):
        raise ValueError(f"a shape of extent {shape_mask.shape} does not fit in a volume of {brain.shape}")
    # correlation of the outside of the brain with the shape ('valid': index = the shape's start corner);
    # zero means the shape placed there touches no voxel outside the brain
    flipped = shape_mask[::-1, ::-1, ::-1].astype(np.float32)
    outside = fftconvolve((~brain).astype(np.float32), flipped, mode="valid")
    candidates = np.argwhere(outside < 0.5)
    if len(candidates) == 0:
        raise ValueError(f"a shape of {int(shape_mask.sum())} voxels fits nowhere inside the brain mask")
    for _ in range(20):
        start = candidates[rng.integers(len(candidates))]
        out = np.zeros(brain.shape, dtype=bool)
        sl = tuple(slice(int(s), int(s) + n) for s, n in zip(start, shape_mask.shape, strict=True))
        out[sl] = shape_mask
        if brain[out].all():
            return out
    raise ValueError("could not place the shape fully inside the brain mask")  # pragma: no cover


def random_cube_mask(
    brain_mask: np.ndarray, zooms, rng: np.random.Generator, side_mm: float = 20.0
) -> np.ndarray:
    """A ``side_mm`` cube at a random position fully inside ``brain_mask``.

    Example:
        >>> brain = np.zeros((30, 30, 30), bool); brain[5:25, 5:25, 5:25] = True
        >>> m = random_cube_mask(brain, (2.0, 2.0, 2.0), np.random.default_rng(0))
        >>> int(m.sum()), bool(brain[m].all())
        (1000, True)
    """
    return place_inside(np.ones(_cube_sides(zooms, side_mm), dtype=bool), brain_mask, rng)


def irregular_blob(
    zooms, rng: np.random.Generator, volume_ml: float, *, roughness: float = 0.35
) -> np.ndarray:
    """A connected lesion-like blob of about ``volume_ml`` millilitres in its own small (odd-sized) box.

    A random ellipsoid (axis ratios 0.6-1.4) whose level set is perturbed by Gaussian-smoothed noise (relative
    amplitude ``roughness``, smoothing a third of the radius), thresholded to the target voxel count, largest
    connected component kept, holes filled.

    Example:
        >>> b = irregular_blob((1.0, 1.0, 1.0), np.random.default_rng(0), 1.0)
        >>> 900 <= int(b.sum()) <= 1100
        True
    """
    from scipy import ndimage

    step = np.asarray(zooms, dtype=float)
    target = max(1, int(round(volume_ml * 1000.0 / float(np.prod(step)))))
    radius = (3.0 * volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    half = np.ceil(2.0 * radius / step).astype(int) + 1
    grids = np.meshgrid(*[(np.arange(-h, h + 1) * s) for h, s in zip(half, step, strict=True)], indexing="ij")
    axes = rng.uniform(0.6, 1.4, 3)
    axes = axes / np.prod(axes) ** (1.0 / 3.0)  # same volume as the sphere
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    coords = np.stack([g.ravel() for g in grids])
    local = rot @ coords
    dist = np.sqrt(sum((local[i] / (axes[i] * radius)) ** 2 for i in range(3))).reshape(grids[0].shape)
    noise = ndimage.gaussian_filter(rng.normal(size=dist.shape), sigma=max(radius / 3.0, 1.0) / step)
    noise = noise / max(float(noise.std()), 1e-12)
    field = dist + roughness * noise
    thr = np.partition(field.ravel(), min(target, field.size) - 1)[min(target, field.size) - 1]
    blob = field <= thr
    labels, n = ndimage.label(blob)
    if n > 1:
        sizes = ndimage.sum(blob, labels, index=np.arange(1, n + 1))
        blob = labels == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(blob)


def irregular_mask(
    shape, zooms, rng: np.random.Generator, volume_ml: float, *, brain_mask: np.ndarray | None = None
) -> np.ndarray:
    """An :func:`irregular_blob` of ``volume_ml`` placed fully inside ``brain_mask`` (default: the volume).

    Example:
        >>> brain = np.ones((30, 30, 30), bool)
        >>> m = irregular_mask(brain.shape, (2.0, 2.0, 2.0), np.random.default_rng(1), 1.0)
        >>> m.shape, 100 <= int(m.sum()) <= 150
        ((30, 30, 30), True)
    """
    brain = np.ones(tuple(shape), dtype=bool) if brain_mask is None else np.asarray(brain_mask, dtype=bool)
    if brain.shape != tuple(shape):
        raise ValueError(f"brain mask shape {brain.shape} differs from {tuple(shape)}")
    return place_inside(irregular_blob(zooms, rng, volume_ml), brain, rng)


@dataclass
class Lesion:
    """A synthetic lesion: the lesioned volume, the ground truth and the soft weight (all volume-shaped)."""

    data: np.ndarray
    truth: np.ndarray
    weight: np.ndarray
    radius_mm: float
    contrast: float


def synthetic_lesion(
    volume: np.ndarray,
    brain_mask: np.ndarray,
    rng: np.random.Generator,
    radius_mm: float,
    contrast: float,
    *,
    zooms=(2.0, 2.0, 2.0),
    edge_mm: float = 1.5,
) -> Lesion:
    """Add an irregular, soft-edged lesion inside the brain.

    The shape is an :func:`irregular_blob` with the volume of a ball of ``radius_mm`` placed fully inside the
    brain mask eroded by ``edge_mm`` (so its soft edge stays in the brain); its weight ``w`` is the blob
    smoothed by a Gaussian of ``edge_mm`` (rescaled to a maximum of 1, zero outside the brain). The lesioned
    volume is ``volume + contrast x median_brain x w``, clipped below at ``min(volume.min(), 0)`` (a
    hypo-intense lesion cannot go below the background). The texture under the lesion is kept.

    Args:
        volume: the (skull-stripped or whole-head) volume.
        brain_mask: boolean brain mask.
        rng: random generator (position, shape).
        radius_mm: equivalent radius (the lesion has the volume of a ball of that radius).
        contrast: signed fraction of the brain's median intensity (e.g. +0.5 hyper, -0.5 hypo).
        zooms: voxel sizes in mm.
        edge_mm: width of the soft edge (Gaussian sigma in mm).

    Returns:
        :class:`Lesion` (ground truth: ``w >= 0.5``, inside the brain).

    Example:
        >>> v = np.full((40, 40, 40), 100.0, np.float32)
        >>> brain = np.zeros(v.shape, bool); brain[4:36, 4:36, 4:36] = True
        >>> les = synthetic_lesion(v, brain, np.random.default_rng(0), 8.0, 0.5)
        >>> round(float(les.data[les.truth].mean()), 0) > 130, bool(brain[les.truth].all())
        (True, True)
    """
    from scipy import ndimage

    data = np.asarray(volume, dtype=np.float32)
    brain = np.asarray(brain_mask, dtype=bool)
    step = np.asarray(zooms, dtype=float)
    inner = ndimage.distance_transform_edt(brain, sampling=step) > edge_mm
    volume_ml = 4.0 / 3.0 * np.pi * radius_mm**3 / 1000.0
    shape = place_inside(irregular_blob(step, rng, volume_ml), inner if inner.any() else brain, rng)
    w = ndimage.gaussian_filter(shape.astype(np.float32), sigma=edge_mm / step)
    w = np.where(brain, w / max(float(w.max()), 1e-6), 0.0).astype(np.float32)
    ref = float(np.median(data[brain]))
    floor = min(float(data.min()), 0.0)
    out = np.maximum(data + np.float32(contrast * ref) * w, np.float32(floor)).astype(np.float32)
    return Lesion(
        data=out, truth=(w >= 0.5) & brain, weight=w, radius_mm=float(radius_mm), contrast=float(contrast)
    )


def moved_tissue_lesion(
    volume: np.ndarray,
    brain_mask: np.ndarray,
    rng: np.random.Generator,
    radius_mm: float,
    *,
    zooms=(2.0, 2.0, 2.0),
    edge_mm: float = 1.0,
    min_shift_mm: float = 20.0,
) -> Lesion:
    """An iso-intense lesion: healthy tissue of the same brain, moved from elsewhere.

    An :func:`irregular_blob` (volume of a ball of ``radius_mm``) is placed inside the brain; its content is
    replaced, with a soft edge (Gaussian of ``edge_mm``), by the tissue found at a random shift of at least
    ``min_shift_mm`` (a shift whose source also lies inside the brain). The intensities are the brain's own,
    so an intensity threshold cannot see the lesion; tissue of the wrong kind for its place can.

    Example:
        >>> v = np.zeros((40, 40, 40), np.float32); v[:, :, 20:] = 100.0   # two 'tissues'
        >>> brain = np.zeros(v.shape, bool); brain[3:37, 3:37, 3:37] = True
        >>> les = moved_tissue_lesion(v, brain, np.random.default_rng(1), 5.0, zooms=(1.0, 1.0, 1.0))
        >>> bool(brain[les.truth].all()), les.contrast
        (True, 0.0)
    """
    from scipy import ndimage

    data = np.asarray(volume, dtype=np.float32)
    brain = np.asarray(brain_mask, dtype=bool)
    step = np.asarray(zooms, dtype=float)
    inner = ndimage.distance_transform_edt(brain, sampling=step) > edge_mm
    shape = place_inside(irregular_blob(step, rng, 4.0 / 3.0 * np.pi * radius_mm**3 / 1000.0), inner, rng)
    shift = _source_shift(shape, brain, rng, step, max(min_shift_mm, 2.0 * radius_mm))
    moved = np.roll(data, tuple(-shift), axis=(0, 1, 2))  # moved[x] = data[x + shift]
    w = ndimage.gaussian_filter(shape.astype(np.float32), sigma=edge_mm / step)
    w = np.where(brain, w / max(float(w.max()), 1e-6), 0.0).astype(np.float32)
    out = (data * (1.0 - w) + moved * w).astype(np.float32)
    return Lesion(data=out, truth=(w >= 0.5) & brain, weight=w, radius_mm=float(radius_mm), contrast=0.0)


def mass_lesion(
    volume: np.ndarray,
    brain_mask: np.ndarray,
    rng: np.random.Generator,
    radius_mm: float,
    *,
    zooms=(2.0, 2.0, 2.0),
) -> Lesion:
    """An iso-intense mass that displaces its surroundings.

    A ball of ``radius_mm`` at a random place inside the brain pushes the tissue around it outwards, as a
    growing mass does: a point at distance ``d`` from the centre shows the tissue that lay at distance
    ``(d^3 - r^3)^(1/3)`` (the volume outside the ball is conserved and the push fades as ``r^3 / 3d^2``);
    the ball itself is filled with tissue moved from elsewhere in the brain (:func:`moved_tissue_lesion`'s
    content), so its intensity is the brain's own. Ground truth: the ball.

    Example:
        >>> v = np.zeros((40, 40, 40), np.float32); v[:, :, 20:] = 100.0
        >>> brain = np.zeros(v.shape, bool); brain[3:37, 3:37, 3:37] = True
        >>> les = mass_lesion(v, brain, np.random.default_rng(0), 5.0, zooms=(1.0, 1.0, 1.0))
        >>> bool(brain[les.truth].all()), int(les.truth.sum()) > 400
        (True, True)
    """
    from scipy import ndimage

    data = np.asarray(volume, dtype=np.float32)
    brain = np.asarray(brain_mask, dtype=bool)
    step = np.asarray(zooms, dtype=float)
    depth = ndimage.distance_transform_edt(brain, sampling=step)
    candidates = np.argwhere(depth > radius_mm + 2.0)
    if len(candidates) == 0:
        raise ValueError(f"no place inside the brain for a mass of radius {radius_mm} mm")
    centre = candidates[rng.integers(len(candidates))]
    grids = np.meshgrid(*[np.arange(n) for n in data.shape], indexing="ij")
    offset = [(g - c) * s for g, c, s in zip(grids, centre, step)]
    d = np.sqrt(sum(o**2 for o in offset))
    ball = d <= radius_mm
    src_d = np.cbrt(np.maximum(d**3 - radius_mm**3, 0.0))
    ratio = np.where(d > 0, src_d / np.maximum(d, 1e-9), 0.0)
    coords = [c + o * ratio / s for c, o, s in zip(centre, offset, step)]
    pushed = ndimage.map_coordinates(data, coords, order=1, mode="nearest").astype(np.float32)
    shift = _source_shift(ball & brain, brain, rng, step, 2.0 * radius_mm + 10.0)
    content = np.roll(data, tuple(-shift), axis=(0, 1, 2))
    out = np.where(ball, content, pushed)
    out = np.where(brain, out, data).astype(np.float32)
    truth = ball & brain
    return Lesion(data=out, truth=truth, weight=truth.astype(np.float32), radius_mm=float(radius_mm), contrast=0.0)


def _source_shift(region, brain, rng, step, min_mm: float) -> np.ndarray:
    """A random integer shift (voxels) of at least ``min_mm`` such that ``region`` moved by it lies inside
    ``brain`` (the place tissue is taken from)."""
    for _ in range(500):
        shift_mm = rng.uniform(-1.0, 1.0, 3) * 3.0 * min_mm
        if np.linalg.norm(shift_mm) < min_mm:
            continue
        shift = np.round(shift_mm / step).astype(int)
        if any(abs(v) >= n for v, n in zip(shift, region.shape)):
            continue
        src = np.roll(region, tuple(shift), axis=(0, 1, 2))
        if src.sum() == region.sum() and brain[src].all():
            return shift
    raise ValueError("no place inside the brain to take tissue from")
