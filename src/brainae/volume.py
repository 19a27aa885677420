"""Pure array functions between a RAS+ volume and the model's 2-D slices, and back.

The view convention. Volumes arrive in RAS+ voxel order (:mod:`brainae.io`). A *profile* holds one RAS axis
fixed; each slice is shown the radiological way the thesis saw IXI (``rot90(vol[:, :, k])`` of the native
P,S,R files): rows run superior -> inferior, and

- ``sagittal`` (fixed R axis): columns run anterior -> posterior (the face on the left);
- ``coronal`` (fixed A axis): columns run left -> right;
- ``axial`` (fixed S axis): rows run anterior -> posterior, columns left -> right.

So native IXI (256 x 256 x 150, P,S,R) and the 2 mm sample give the same sagittal picture, and a volume
stored in any other orientation is sliced in the same anatomical view.

Geometry. A slice of H x W pixels with spacing (dh, dw) mm is resampled (bilinear, like the thesis's
resize; no antialiasing) onto ``size x size`` pixels covering a square field of view of ``fov_mm`` mm centred
on the slice centre. ``fov_mm=None`` takes each slice's own larger extent (the thesis's behaviour: the whole
slice, squeezed to the square). A prepared dataset stores the cohort's field of view, so a scan with another
resolution or field of view is brought to the same millimetres per pixel as the training data.

Intensity. ``scaling`` maps each slice to [0, 1]:

- ``slice-minmax`` (default, the thesis's): min-max of each resampled slice;
- ``volume-minmax``: min-max over the whole volume;
- ``volume-percentile``: the volume's ``percentiles`` (default 0.5 / 99.5) of its non-zero voxels, clipped.

The per-slice ``lo``/``hi`` are returned so that results can be put back on the input's intensity scale.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from brainae.errors import BrainaeError

PROFILES = ("sagittal", "coronal", "axial")
PROFILE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
SCALINGS = ("slice-minmax", "volume-minmax", "volume-percentile")


MAX_SIZE = 1024
"""The largest model grid (pixels per side): far above any brain slice model, far below an absurd card."""


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to turn a volume into model input, and model output back into a volume.

    Stored in the dataset's ``settings.json`` and in every checkpoint.
    """

    profile: str = "sagittal"
    size: int = 128
    fov_mm: float | None = None
    scaling: str = "slice-minmax"
    percentiles: tuple[float, float] = field(default=(0.5, 99.5))
    skull_strip: bool = False  # the model was trained on skull-stripped volumes (prepare --skull-strip)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise BrainaeError(f"unknown profile {self.profile!r}; choose one of {', '.join(PROFILES)}")
        if self.scaling not in SCALINGS:
            raise BrainaeError(f"unknown scaling {self.scaling!r}; choose one of {', '.join(SCALINGS)}")
        if int(self.size) < 8 or int(self.size) % 8:
            raise BrainaeError(f"--size {self.size}: must be a multiple of 8 (the models downsample 3 times)")
        if int(self.size) > MAX_SIZE:
            raise BrainaeError(f"--size {self.size}: at most {MAX_SIZE} pixels (a slice of a brain scan)")
        if self.fov_mm is not None and not (math.isfinite(self.fov_mm) and self.fov_mm > 0):
            raise BrainaeError(f"fov_mm {self.fov_mm}: must be a positive number of millimetres")
        lo, hi = (float(p) for p in self.percentiles)
        if not (0 <= lo < hi <= 100):
            raise BrainaeError(f"percentiles {self.percentiles}: give two numbers 0 <= low < high <= 100")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["percentiles"] = list(self.percentiles)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        known = {
            k: d[k] for k in ("profile", "size", "fov_mm", "scaling", "percentiles", "skull_strip") if k in d
        }
        if "skull_strip" in known:
            known["skull_strip"] = bool(known["skull_strip"])
        if "percentiles" in known:
            known["percentiles"] = tuple(float(p) for p in known["percentiles"])
        if "size" in known:
            known["size"] = int(known["size"])
        return cls(**known)


THESIS_PREPROCESSING = Preprocessing(profile="sagittal", size=128, fov_mm=240.0, scaling="slice-minmax")
"""The preprocessing the thesis's models were trained with (IXI: 256 x 0.9375 mm in-plane, the whole slice;
``fov_mm`` fixes the mm per pixel for other scans). Recorded in imported Keras checkpoints."""


@dataclass(frozen=True)
class VolumetricPreprocessing:
    """How a volumetric (``brainae fit``) model's input is made from a scan (stored in its checkpoint).

    Attributes:
        task: the task the model was trained for (see :mod:`brainae.tasks`).
        grid_mm: isotropic working grid in mm (``None``: the input's own grid).
        voxel_mm: range of voxel sizes (mm) the model was trained on.
        reference: intensity reference (``"median"`` of the brain, ``"p99.5"``).
        skull_stripped: the model sees skull-stripped inputs.
        inputs: the input channels, in words.
        blend: the denoiser's noise-level -> blend-weight table, or the inpainter's hole-volume -> correction-
            weight table (``None`` for other tasks).
        fill: how an inpainting model's holes are filled before it corrects them (a
            :data:`brainae.tasks.FILLS` name; ``None`` for other tasks, and for inpainting checkpoints written
            before brainae recorded it, which used ``"smooth"``).
    """

    task: str
    grid_mm: float | None = None
    voxel_mm: tuple[float, float] = (1.0, 2.0)
    reference: str = "median"
    skull_stripped: bool = False
    inputs: tuple[str, ...] = ("image",)
    blend: dict | None = None
    fill: str | None = None

    kind = "volumetric"

    def to_dict(self) -> dict:
        d = {
            "kind": self.kind,
            "task": self.task,
            "grid_mm": self.grid_mm,
            "voxel_mm": list(self.voxel_mm),
            "reference": self.reference,
            "skull_stripped": self.skull_stripped,
            "inputs": list(self.inputs),
        }
        if self.blend is not None:
            d["blend"] = self.blend
        if self.fill is not None:
            d["fill"] = self.fill
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VolumetricPreprocessing:
        from brainae.tasks import TASKS

        task, grid = str(d["task"]), d.get("grid_mm")
        if task not in TASKS:
            raise BrainaeError(f"unknown task {task!r} in the card (known: {', '.join(TASKS)})")
        if grid is not None and not (math.isfinite(float(grid)) and float(grid) > 0):
            raise BrainaeError(f"working grid {grid!r} mm in the card is not a positive number")
        return cls(
            task=task,
            grid_mm=None if grid is None else float(grid),
            voxel_mm=tuple(float(v) for v in d.get("voxel_mm", (1.0, 2.0))),
            reference=str(d.get("reference", "median")),
            skull_stripped=bool(d.get("skull_stripped", False)),
            inputs=tuple(str(i) for i in d.get("inputs", ("image",))),
            blend=dict(d["blend"]) if d.get("blend") is not None else None,
            fill=str(d["fill"]) if d.get("fill") is not None else None,
        )


def preprocessing_from_dict(d: dict) -> Preprocessing | VolumetricPreprocessing:
    """The typed preprocessing card stored as ``d`` (a volumetric one when ``d["kind"] == "volumetric"``)."""
    if not isinstance(d, dict):
        raise BrainaeError(f"preprocessing {d!r} is not a table")
    try:
        if d.get("kind") == "volumetric":
            return VolumetricPreprocessing.from_dict(d)
        return Preprocessing.from_dict(d)
    except (KeyError, TypeError, ValueError) as exc:
        raise BrainaeError(f"damaged preprocessing {d!r} ({exc})") from None


def in_plane_zooms(zooms: tuple[float, float, float], profile: str) -> tuple[float, float]:
    """Pixel spacing (row, column) in mm of a ``profile`` slice of a RAS+ volume with voxel sizes ``zooms``."""
    r, a, s = zooms
    return {"sagittal": (s, a), "coronal": (s, r), "axial": (a, r)}[profile]


def choose_profile(zooms: tuple[float, float, float], *, rtol: float = 0.01) -> tuple[str, str]:
    """The slicing profile for RAS+ voxel sizes: in-plane sizes equal, then smallest; ties go to sagittal.

    Returns:
        (profile, reason) — the reason is a sentence for reports.

    Example:
        >>> choose_profile((1.2, 0.9375, 0.9375))[0]   # native IXI: 1.2 mm between sagittal slices
        'sagittal'
        >>> choose_profile((0.9, 0.9, 5.0))[0]          # thick axial slices
        'axial'
    """

    def key(profile: str) -> tuple[int, float, int]:
        h, w = in_plane_zooms(zooms, profile)
        square = abs(h - w) <= rtol * max(h, w)
        return (0 if square else 1, round(max(h, w), 4), PROFILES.index(profile))

    best = min(PROFILES, key=key)
    h, w = in_plane_zooms(zooms, best)
    z = zooms[PROFILE_AXIS[best]]
    reason = f"{best}: in-plane {h:g} x {w:g} mm, {z:g} mm between slices"
    if all(abs(zz - zooms[0]) <= rtol * zooms[0] for zz in zooms):
        reason += " (isotropic voxels: sagittal by default, as the thesis)"
    return best, reason


def to_view(data: np.ndarray, profile: str) -> np.ndarray:
    """RAS+ volume -> stack of slices (n, rows, cols) in the documented view (a numpy view, no copy)."""
    if profile == "sagittal":
        return data[:, ::-1, ::-1].transpose(0, 2, 1)
    if profile == "coronal":
        return data[:, :, ::-1].transpose(1, 2, 0)
    if profile == "axial":
        return data[:, ::-1, :].transpose(2, 1, 0)
    raise BrainaeError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")


def from_view(stack: np.ndarray, profile: str) -> np.ndarray:
    """Inverse of :func:`to_view`: (n, rows, cols) -> RAS+ volume (a numpy view, no copy)."""
    if profile == "sagittal":
        return stack.transpose(0, 2, 1)[:, ::-1, ::-1]
    if profile == "coronal":
        return stack.transpose(2, 0, 1)[:, :, ::-1]
    if profile == "axial":
        return stack.transpose(2, 1, 0)[:, ::-1, :]
    raise BrainaeError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")


def _fov(shape: tuple[int, int], spacing: tuple[float, float], fov_mm: float | None) -> float:
    return float(fov_mm) if fov_mm is not None else max(shape[0] * spacing[0], shape[1] * spacing[1])


def _grid(n_out: tuple[int, int], scale: tuple[float, float]):
    """Normalised sampling grid (align_corners=False) of an output raster centred on the input's centre.

    ``scale[i]`` = (output pixel size / input extent) along axis i, both in mm.
    """
    import torch

    ys = (torch.arange(n_out[0], dtype=torch.float64) + 0.5 - n_out[0] / 2) * 2 * scale[0]
    xs = (torch.arange(n_out[1], dtype=torch.float64) + 0.5 - n_out[1] / 2) * 2 * scale[1]
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1).float()[None]


def _contiguous(a: np.ndarray) -> np.ndarray:
    """``a`` as a C-contiguous float32 array that torch can take: numpy keeps the negative strides of size-1
    axes of a flipped view (it calls them contiguous), torch refuses them."""
    arr = np.ascontiguousarray(a, dtype=np.float32)
    return arr.copy() if any(st < 0 for st in arr.strides) else arr


def resample_slices(
    stack: np.ndarray, spacing: tuple[float, float], size: int, fov_mm: float | None = None
) -> np.ndarray:
    """Bilinear resampling of (n, H, W) slices onto (n, size, size) covering ``fov_mm`` mm (see module doc).

    With ``fov_mm=None`` and a square slice this equals a plain bilinear resize (half-pixel centres, no
    antialiasing), as ``tf.image.resize`` / ``torch.nn.functional.interpolate(align_corners=False)``.
    Outside the slice the value is 0.
    """
    import torch
    import torch.nn.functional as F

    n, h, w = stack.shape
    fov = _fov((h, w), spacing, fov_mm)
    pix = fov / size
    grid = _grid((size, size), (pix / (h * spacing[0]), pix / (w * spacing[1])))
    x = torch.from_numpy(_contiguous(stack))[:, None]
    # 'border' clamps at the edges like a plain resize; beyond the slice's extent the value is 0.
    out = F.grid_sample(
        x, grid.expand(n, -1, -1, -1), mode="bilinear", padding_mode="border", align_corners=False
    )
    g = grid[0]
    outside = (g[..., 0].abs() > 1.0 + 1e-6) | (g[..., 1].abs() > 1.0 + 1e-6)
    out[:, 0, outside] = 0.0
    return out[:, 0].numpy()


def unresample_slices(
    images: np.ndarray, shape: tuple[int, int], spacing: tuple[float, float], fov_mm: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`resample_slices`: (n, size, size) -> (n, H, W) on the slice's own pixel grid.

    Returns:
        (stack, inside) — ``inside`` (H, W) is True for pixels within the field of view (elsewhere the
        model saw nothing and the value is 0).
    """
    import torch
    import torch.nn.functional as F

    n, size, _ = images.shape
    h, w = shape
    fov = _fov((h, w), spacing, fov_mm)
    grid = _grid((h, w), (spacing[0] / fov, spacing[1] / fov))
    x = torch.from_numpy(_contiguous(images))[:, None]
    out = F.grid_sample(
        x, grid.expand(n, -1, -1, -1), mode="bilinear", padding_mode="border", align_corners=False
    )
    g = grid[0].numpy()
    half = 1.0 + 1e-6
    inside = (np.abs(g[..., 0]) <= half) & (np.abs(g[..., 1]) <= half)
    return out[:, 0].numpy(), inside


def scale_ranges(images: np.ndarray, volume: np.ndarray, scaling: str, percentiles=(0.5, 99.5)):
    """Per-slice intensity ranges (lo, hi) for ``scaling`` (see module doc); arrays of shape (n,)."""
    n = images.shape[0]
    if scaling == "slice-minmax":
        flat = images.reshape(n, -1)
        return flat.min(axis=1).astype(np.float64), flat.max(axis=1).astype(np.float64)
    if scaling == "volume-minmax":
        lo, hi = float(volume.min()), float(volume.max())
    elif scaling == "volume-percentile":
        fg = volume[volume > volume.min()]
        fg = fg if fg.size else volume.ravel()
        lo, hi = (float(v) for v in np.percentile(fg, percentiles))
    else:
        raise BrainaeError(f"unknown scaling {scaling!r}; choose one of {', '.join(SCALINGS)}")
    return np.full(n, lo), np.full(n, hi)


def apply_scale(images: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Map each slice's [lo, hi] to [0, 1] (clipped); a constant slice becomes all zeros."""
    lo_ = lo.reshape(-1, 1, 1)
    span = (hi - lo).reshape(-1, 1, 1)
    safe = np.where(span > 0, span, 1.0)
    out = np.where(span > 0, (images - lo_) / safe, 0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def invert_scale(images: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Inverse of :func:`apply_scale` (without the clipping)."""
    return (images * (hi - lo).reshape(-1, 1, 1) + lo.reshape(-1, 1, 1)).astype(np.float32)


@dataclass
class SliceStack:
    """Model-ready slices of one volume and what is needed to undo the preprocessing.

    Attributes:
        images: (n, size, size) float32 in [0, 1]; slice ``i`` is index ``i`` along the profile axis.
        lo, hi: (n,) the intensity range mapped to [0, 1] for each slice.
        view_shape: (H, W) of the un-resampled slices; spacing: their pixel size in mm.
    """

    images: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    view_shape: tuple[int, int]
    spacing: tuple[float, float]


def volume_to_slices(data: np.ndarray, zooms: tuple[float, float, float], prep: Preprocessing) -> SliceStack:
    """RAS+ volume -> every slice along ``prep.profile``, resampled and scaled to [0, 1].

    Example:
        >>> vol = np.random.rand(10, 12, 14).astype(np.float32)
        >>> s = volume_to_slices(vol, (2.0, 2.0, 2.0), Preprocessing(size=16))
        >>> s.images.shape, float(s.images.min()) >= 0, float(s.images.max()) <= 1
        ((10, 16, 16), True, True)
    """
    view = to_view(data, prep.profile)
    spacing = in_plane_zooms(zooms, prep.profile)
    images = resample_slices(view, spacing, prep.size, prep.fov_mm)
    lo, hi = scale_ranges(images, data, prep.scaling, prep.percentiles)
    return SliceStack(apply_scale(images, lo, hi), lo, hi, (view.shape[1], view.shape[2]), spacing)


def slices_to_volume(
    images: np.ndarray, stack: SliceStack, prep: Preprocessing, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Model outputs for every slice (n, size, size) in [0, 1] -> RAS+ volume on the input's grid and scale.

    Returns:
        (volume, inside) — ``inside`` is a RAS+ boolean volume, True where the field of view covered the voxel.
    """
    back, inside2d = unresample_slices(images, stack.view_shape, stack.spacing, prep.fov_mm)
    back = invert_scale(back, stack.lo, stack.hi)
    vol = np.ascontiguousarray(from_view(back, prep.profile))
    inside = np.broadcast_to(inside2d, back.shape)
    inside = np.ascontiguousarray(from_view(inside, prep.profile))
    if vol.shape != tuple(shape):
        raise BrainaeError(f"internal: rebuilt volume {vol.shape} differs from {tuple(shape)}")
    return vol, inside


def fill_mask(mask_ras: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """An inpainting mask as booleans (non-zero = fill); refused unless it has the volume's (RAS+) ``shape``."""
    mask = np.asarray(mask_ras) != 0
    if mask.shape != shape:
        raise BrainaeError(
            f"mask shape {mask.shape} differs from the volume's {shape} (both in RAS+ order); "
            "give a mask on the same grid as the volume"
        )
    return mask
