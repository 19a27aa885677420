"""Exemplar atlas for inpainting: holes get the detail that healthy brains show at the same place.

A smooth fill (biharmonic interpolation of a hole's surroundings) knows nothing about what lies inside a hole.
Healthy brains do: at a given place in the brain the same structures recur (a ventricle's wall, the deep grey
nuclei, the run of the larger sulci). The :class:`Atlas` holds healthy 2 mm volumes, affinely registered to
their mean (:func:`build_atlas`). To fill a hole (:func:`atlas_detail`):

1. the atlas's mean is registered to the scan (:func:`register_affine`, affine, the hole left out);
2. for each hole (connected component of the mask), every atlas volume is sampled around the hole's place
   under small rotations and scalings, and the 1-voxel ring around the hole is matched against the scan's
   ring at every shift within :attr:`AtlasSettings.radius` voxels (sum of squared differences after the best
   constant offset; computed for all shifts at once by FFT);
3. the best-matching candidates (:attr:`AtlasSettings.keep` of them) are combined voxel by voxel with joint
   weights (:func:`_joint_average`): from how each candidate misses the nearby part of the ring, and how
   those misses go together between candidates; the *detail* of that average is what it holds beyond its own
   biharmonic fill: ``d = a - B(a)`` inside the hole (``B`` fills the hole from the average's own ring);
4. the scan's own biharmonic fill plus ``share x c x d`` is the fill; ``share`` is calibrated on healthy
   validation volumes (:func:`calibrate_share`), ``c`` (at most 1) lowers it for scans with weaker tissue
   contrast than the atlas's (:func:`contrast_ratio`).

Everything runs on a 2 mm working grid; on a finer scan the detail is interpolated back onto the scan's grid
and added to the scan's own biharmonic fill there. The atlas shipped with brainae is built from the 20
``train`` volumes of the shared IXI data (``brainae fit atlas``); it is derived from IXI data (CC BY-SA 3.0).
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from brainae.errors import BrainaeError

if TYPE_CHECKING:
    import torch

__all__ = [
    "ATLAS_MM",
    "Atlas",
    "AtlasSettings",
    "atlas_detail",
    "build_atlas",
    "calibrate_share",
    "contrast_ratio",
    "inpaint_with_atlas",
    "load_atlas",
    "register_affine",
]

ATLAS_MM = 2.0
"""The working grid (isotropic voxel size, mm) of the atlas and of the matching."""

FUSIONS = ("joint", "softmax")
"""The ways :attr:`AtlasSettings.fusion` combines the candidates."""

QUANT_TOP = 1.5
QUANT_LEVELS = 127
"""Atlas intensities (normalised: 99.5th percentile of the head = 1) are stored as integers 0..QUANT_LEVELS over
[0, QUANT_TOP] (steps of 0.012, about the noise of the volumes themselves; 7 bits compress to ~5 MB)."""


@dataclass
class AtlasSettings:
    """How :func:`atlas_detail` matches and averages (defaults: chosen on the ``val`` volumes).

    Attributes:
        ring: width (voxels) of the ring around a hole that is matched.
        radius: shifts searched in each direction (voxels of the working grid).
        angles: rotations tried about each axis (degrees; 0 = none, each other angle also negated).
        scales: isotropic scalings tried.
        per_pose: candidates kept per atlas volume and pose (the best local minima of the mismatch).
        keep: candidates combined.
        fusion: how the candidates are combined at each hole voxel. ``"joint"``: joint weights (below);
            ``"softmax"``: weights ``exp(-(e - e_min) / (softness x median(e - e_min)))`` from each candidate's
            ring mismatch ``e`` near the voxel.
        softness: of the ``"softmax"`` weights.
        joint_reg: ridge added to the joint weights' error matrix, as a fraction of its mean diagonal.
        anchor_step: joint weights are solved at every ``anchor_step``-th hole voxel along each axis and
            interpolated (Gaussian of that sd) in between.
        share: share of the average's detail added to the biharmonic fill (:func:`calibrate_share`).
        min_voxels: holes smaller than this (voxels of the working grid) keep the biharmonic fill.
        local: sd (voxels) of the Gaussian that weights the ring around each hole voxel, so that a candidate
            counts most where it matches the nearby ring (``"joint"``: at least 0.5; ``"softmax"`` with 0: one
            weight per candidate).
        min_fit: below this correlation between the registered atlas mean and the scan, the atlas is not used
            (every hole keeps the biharmonic fill).
        max_ring_rms: a hole whose best candidate's ring mismatch (RMS, normalised units) is above this keeps
            the biharmonic fill.
    """

    ring: int = 1
    radius: int = 6
    angles: tuple[float, ...] = (0.0, 6.0)
    scales: tuple[float, ...] = (0.92, 1.0, 1.08)
    per_pose: int = 6
    keep: int = 300
    fusion: str = "joint"
    softness: float = 0.25
    joint_reg: float = 0.1
    anchor_step: int = 2
    share: float = 1.0
    min_voxels: int = 8
    local: float = 2.0
    min_fit: float = 0.0
    max_ring_rms: float = float("inf")


@dataclass
class Atlas:
    """Healthy volumes registered to their mean, on a common 2 mm RAS+ grid.

    Attributes:
        volumes: ``(n, X, Y, Z)`` float32, each normalised so that the 99.5th percentile of its head is 1, and
            zero beyond a few voxels around its brain.
        brains: ``(n, X, Y, Z)`` bool brain masks.
        brain_gain: per volume, 1 / the 99.5th percentile of its brain voxels (normalises a stripped volume).
        settings: :class:`AtlasSettings`.
        provenance: where the volumes came from (ids, recipe).
        head_template: the mean of the whole registered heads (what scans with their skull are registered to).
    """

    volumes: np.ndarray
    brains: np.ndarray
    brain_gain: np.ndarray
    settings: AtlasSettings = field(default_factory=AtlasSettings)
    provenance: dict = field(default_factory=dict)
    head_template: np.ndarray | None = None

    def template(self, stripped: bool) -> np.ndarray:
        """The mean volume (of the skull-stripped volumes, each normalised over its brain, when ``stripped``)."""
        if stripped:
            return np.mean(self._stripped(), axis=0)
        return self.head_template if self.head_template is not None else self.volumes.mean(axis=0)

    def _stripped(self) -> np.ndarray:
        return self.volumes * self.brains * self.brain_gain[:, None, None, None].astype(np.float32)

    def bank(self, stripped: bool) -> np.ndarray:
        return self._stripped() if stripped else self.volumes

    def save(self, path: str | os.PathLike) -> None:
        """Write a compressed ``.npz`` (7-bit volumes, packed masks, JSON settings), atomically."""
        path = Path(path)

        def quantised(x: np.ndarray) -> np.ndarray:
            return np.round(np.clip(x, 0.0, QUANT_TOP) / QUANT_TOP * QUANT_LEVELS).astype(np.uint8)

        head = self.template(False)
        meta = {
            "settings": asdict(self.settings),
            "provenance": self.provenance,
            "shape": list(self.volumes.shape),
            "levels": QUANT_LEVELS,
            "top": QUANT_TOP,
        }
        from brainae.io import atomic_path

        with atomic_path(path) as tmp:  # a brainae temporary ending in .npz, so numpy adds no suffix
            np.savez_compressed(
                tmp,
                volumes=quantised(self.volumes),
                head_template=quantised(head),
                brains=np.packbits(self.brains.astype(bool).ravel()),
                brain_gain=self.brain_gain.astype(np.float32),
                meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            )


def is_atlas(path: str | os.PathLike) -> bool:
    """True for a ``.npz`` file with an atlas's arrays and description (what ``fit atlas --force`` may replace)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if not {"meta", "volumes", "brains", "brain_gain"} <= set(z.files):
                return False
            meta = json.loads(z["meta"].tobytes().decode())
    except Exception:  # not a zip, not numpy, damaged: not an atlas of ours
        return False
    return isinstance(meta, dict) and "shape" in meta and "settings" in meta


def load_atlas(path: str | os.PathLike) -> Atlas:
    """Read an atlas written by :meth:`Atlas.save` (one clear error when the file is not one, or is damaged).

    Every part is checked before use: the arrays that must be there, their shapes against the recorded
    ``shape`` (``n`` volumes of one 3-D grid), the quantisation (``levels``, ``top``), and each setting's type and
    range, so that a damaged or hand-edited file gives one line instead of failing deep in the matching.
    """
    path = Path(path)
    if not path.is_file():
        raise BrainaeError(f"{path}: no such atlas file; give one written by `brainae fit atlas`")
    try:
        with np.load(path, allow_pickle=False) as z:
            return _atlas_from(z, path)
    except BrainaeError:
        raise
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        EOFError,
        OverflowError,
        MemoryError,
        zipfile.BadZipFile,
    ) as exc:
        text = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise BrainaeError(f"{path}: not an atlas written by `brainae fit atlas` ({text})") from None


def _atlas_from(z, path: Path) -> Atlas:
    def damaged(why: str) -> BrainaeError:
        return BrainaeError(
            f"{path}: a damaged atlas ({why}); rebuild it with `brainae fit atlas`, or use the shipped one "
            "(--model atlas)"
        )

    missing = [k for k in ("meta", "volumes", "brains", "brain_gain") if k not in z.files]
    if missing:
        raise BrainaeError(
            f"{path}: not an atlas written by `brainae fit atlas` (no {', '.join(missing)}); give one it wrote"
        )
    raw = z["meta"]
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise damaged("its description is not JSON text")
    try:
        meta = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, ValueError):
        raise damaged("its description is not JSON text") from None
    if not isinstance(meta, dict):
        raise damaged("its description is not a JSON object")
    shape = meta.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)
        or math.prod(shape[1:]) < 8
        or math.prod(shape) > 2**31
    ):
        raise damaged(f"shape {shape!r}: expected [volumes, X, Y, Z] of positive integers")
    shape = tuple(shape)
    levels, top = meta.get("levels", QUANT_LEVELS), meta.get("top", QUANT_TOP)
    for name, value in (("levels", levels), ("top", top)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value <= 0
        ):
            raise damaged(f"{name} {value!r}: expected a positive number")
    step = float(top) / float(levels)
    stored = z["volumes"]
    if tuple(stored.shape) != shape or stored.dtype.kind not in "uif":
        raise damaged(f"volumes of shape {tuple(stored.shape)} ({stored.dtype}), expected {shape}")
    volumes = stored.astype(np.float32) * step
    head = None
    if "head_template" in z.files:
        h = z["head_template"]
        if tuple(h.shape) != shape[1:] or h.dtype.kind not in "uif":
            raise damaged(f"head template of shape {tuple(h.shape)}, expected {shape[1:]}")
        head = h.astype(np.float32) * step
    packed = z["brains"]
    count = int(np.prod(shape))
    if packed.dtype != np.uint8 or packed.ndim != 1 or packed.size * 8 < count:
        raise damaged(f"brain masks of {packed.size} bytes, expected {(count + 7) // 8}")
    brains = np.unpackbits(packed)[:count].reshape(shape).astype(bool)
    gain = z["brain_gain"]
    if tuple(gain.shape) != shape[:1] or gain.dtype.kind not in "uif" or not np.isfinite(gain).all():
        raise damaged(f"brain gains of shape {tuple(gain.shape)}, expected ({shape[0]},) finite numbers")
    if not (np.isfinite(volumes).all() and (head is None or np.isfinite(head).all())):
        raise damaged("NaN/Inf intensities")
    provenance = meta.get("provenance", {})
    if not isinstance(provenance, dict):
        raise damaged("its provenance is not a JSON object")
    settings = _atlas_settings(meta.get("settings", {}), damaged)
    return Atlas(volumes, brains, gain.astype(np.float32), settings, provenance, head)


def _atlas_settings(stored: object, damaged) -> AtlasSettings:
    """:class:`AtlasSettings` from an atlas's stored settings, each checked against its field's type."""
    if not isinstance(stored, dict):
        raise damaged("its settings are not a JSON object")
    defaults = AtlasSettings()
    values: dict = {}
    for f in fields(AtlasSettings):
        if f.name not in stored:
            continue
        value, default = stored[f.name], getattr(defaults, f.name)
        if isinstance(default, tuple):
            ok = isinstance(value, list) and bool(value) and all(_number(v) for v in value)
            value = tuple(float(v) for v in value) if ok else value
        elif isinstance(default, str):
            ok = isinstance(value, str)
        elif isinstance(default, int):
            ok = (
                isinstance(value, int)
                and not isinstance(value, bool)
                and value >= (0 if f.name != "keep" else 1)
            )
        else:
            ok = _number(value) and (math.isfinite(value) or f.name == "max_ring_rms") and value >= 0
            value = float(value) if ok else value
        if not ok:
            raise damaged(f"setting {f.name} = {stored[f.name]!r}, expected a value like {default!r}")
        values[f.name] = value
    values.setdefault("fusion", "softmax")  # atlases written before joint weights were calibrated with these
    if values["fusion"] not in FUSIONS:
        raise damaged(f"unknown fusion {values['fusion']!r} (known: {', '.join(FUSIONS)})")
    if values.get("anchor_step", 1) < 1 or values.get("per_pose", 1) < 1:
        raise damaged("anchor_step and per_pose must be at least 1")
    return AtlasSettings(**values)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


# ------------------------------------------------------------------------------------------- registration


def _grid_coords(shape, factor: int, device) -> torch.Tensor:
    """Voxel coordinates (fine-grid units) of the centres of a ``factor``-pooled grid: (N, 3)."""
    import torch

    axes = [torch.arange(n, dtype=torch.float32, device=device) * factor + (factor - 1) / 2.0 for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def _sample(vol: torch.Tensor, coords: torch.Tensor, factor: int = 1) -> torch.Tensor:
    """Trilinear samples of ``vol`` (C, X, Y, Z; a ``factor``-pooled grid) at fine-grid voxel ``coords``
    (..., 3); zero outside. Returns (C, ...)."""
    import torch

    shape = torch.tensor(vol.shape[1:], dtype=torch.float32, device=vol.device)
    c = (coords - (factor - 1) / 2.0) / factor
    g = 2.0 * c / (shape - 1) - 1.0
    flat = g.reshape(1, 1, 1, -1, 3).flip(-1)  # grid_sample wants (x, y, z) = (last, middle, first) axis
    out = torch.nn.functional.grid_sample(
        vol[None], flat, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return out.reshape(vol.shape[0], *coords.shape[:-1])


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argwhere(x > 0.1)
    if len(idx) < 10:
        raise BrainaeError("registration: the volume has almost no foreground")
    return idx.mean(axis=0), idx.std(axis=0)


REGISTRATION_STEPS = (80, 30)
"""Adam steps of :func:`register_affine` on the volumes pooled 4x, then 2x."""


def register_affine(
    fixed: np.ndarray, moving: np.ndarray, *, weight: np.ndarray | None = None, iterations=None
) -> tuple[np.ndarray, np.ndarray]:
    """The affine map from ``fixed`` voxel coordinates to ``moving`` voxel coordinates (same voxel size).

    Both volumes are normalised images (foreground around 1). Started from matching centres and spreads of
    their foregrounds, the 12 parameters minimise the (``weight``-ed) mean squared difference of ``fixed`` and
    the resampled ``moving``, by Adam on both volumes pooled 4x, then 2x.

    Returns:
        ``(A, t)``: ``moving_coord = A @ fixed_coord + t``.
    """
    import torch

    cf, sf = _moments(fixed)
    cm, sm = _moments(moving)
    scale0 = float(np.exp(np.mean(np.log(sm / sf))))
    a = torch.tensor(np.eye(3) * scale0, dtype=torch.float32, requires_grad=True)
    t = torch.tensor(cm - scale0 * cf, dtype=torch.float32, requires_grad=True)
    w_np = np.ones(fixed.shape, np.float32) if weight is None else weight.astype(np.float32)
    f_t = torch.from_numpy(np.ascontiguousarray(fixed, dtype=np.float32))[None, None]
    m_t = torch.from_numpy(np.ascontiguousarray(moving, dtype=np.float32))[None, None]
    w_t = torch.from_numpy(w_np)[None, None]
    for factor, steps in zip((4, 2), iterations or REGISTRATION_STEPS):
        pool = torch.nn.functional.avg_pool3d
        fw = pool(f_t * w_t, factor, ceil_mode=True)
        ww = pool(w_t, factor, ceil_mode=True)
        fp = (fw / ww.clamp_min(1e-6))[0, 0]
        wp = ww[0, 0].reshape(-1)
        mp = pool(m_t, factor, ceil_mode=True)[0]
        coords = _grid_coords(fp.shape, factor, "cpu")
        target = fp.reshape(-1)
        opt = torch.optim.Adam([{"params": [a], "lr": 2e-3 * factor}, {"params": [t], "lr": 0.25 * factor}])
        for _ in range(steps):
            opt.zero_grad()
            warped = _sample(mp, coords @ a.T + t, factor)[0]
            loss = (wp * (warped - target) ** 2).sum() / wp.sum()
            loss.backward()
            opt.step()
    return a.detach().numpy().astype(np.float64), t.detach().numpy().astype(np.float64)


def resample_affine(moving: np.ndarray, a: np.ndarray, t: np.ndarray, shape, *, order: int = 1) -> np.ndarray:
    """``moving`` sampled at ``A @ x + t`` for every voxel ``x`` of a grid of ``shape`` (zero outside)."""
    from scipy import ndimage

    return ndimage.affine_transform(
        np.asarray(moving, dtype=np.float32), a, offset=t, output_shape=tuple(shape), order=order, cval=0.0
    )


# ------------------------------------------------------------------------------------------- building


def build_atlas(
    volumes: list[np.ndarray],
    brains: list[np.ndarray],
    *,
    rounds: int = 2,
    provenance: dict | None = None,
    margin: int = 10,
    keep: int = 8,
) -> Atlas:
    """Register healthy 2 mm RAS+ volumes to their mean and keep them on one grid (cropped around the brains).

    Args:
        volumes: normalised volumes (99.5th percentile of the head = 1; :func:`normalise`).
        brains: their brain masks.
        rounds: registration rounds (the first to the first volume, then to the mean of the last round).
        margin: voxels kept around the union of the registered brains.
        keep: each volume is kept within this many voxels of its brain (zero beyond; holes inside the brain
            reach little further: ring, search radius and context add up to 11 voxels at most).
    """
    if len(volumes) < 2:
        raise BrainaeError("an atlas needs at least 2 volumes")
    ref = volumes[0]
    shape = ref.shape
    for _ in range(rounds):
        warped, masks = [], []
        for v, b in zip(volumes, brains):
            a, t = register_affine(ref, v)
            warped.append(resample_affine(v, a, t, shape))
            masks.append(resample_affine(b.astype(np.float32), a, t, shape) > 0.5)
        ref = np.mean(warped, axis=0)
    union = np.any(masks, axis=0)
    idx = np.argwhere(union)
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + margin + 1, shape)
    box = tuple(slice(int(x), int(y)) for x, y in zip(lo, hi))
    brs = np.stack([m[box] for m in masks])
    near = [_dilate(m, keep) for m in brs]  # what a hole inside the brain can reach; zeros compress
    vols = np.stack([np.where(k, w[box], 0.0) for w, k in zip(warped, near)]).astype(np.float32)
    gain = np.array([1.0 / np.percentile(v[m], 99.5) for v, m in zip(vols, brs)], np.float32)
    head = np.mean([w[box] for w in warped], axis=0).astype(np.float32)
    return Atlas(vols, brs, gain, AtlasSettings(), dict(provenance or {}), head)


def normalise(data: np.ndarray, brain: np.ndarray | None = None) -> np.ndarray:
    """``data`` scaled so that the 99.5th percentile of its non-background voxels (of ``brain`` when given) is 1."""
    from brainae.volumetric import background_value

    x = np.asarray(data, dtype=np.float32) - background_value(data)
    return x / _peak(x, brain)


def _peak(x: np.ndarray, brain: np.ndarray | None = None) -> float:
    """The 99.5th percentile of the non-background voxels of background-subtracted ``x`` (of ``brain``)."""
    ref = x[brain] if brain is not None else x[x > 0.1 * np.percentile(x, 99.5)]
    peak = float(np.percentile(ref, 99.5)) if ref.size else 0.0
    if not math.isfinite(peak) or peak <= 0:
        raise BrainaeError(
            "the volume is constant (or its brain is at background level), or the mask covers all of it: "
            "nothing to fill from; give a T1 scan of a head and a mask of only the region to fill"
        )
    return peak


# ------------------------------------------------------------------------------------------- matching


def _rotations(angles) -> list[np.ndarray]:
    out = [np.eye(3)]
    for ang in angles:
        if ang == 0:
            continue
        for sign in (1.0, -1.0):
            th = math.radians(sign * ang)
            for ax in range(3):
                i, j = [q for q in range(3) if q != ax]
                r = np.eye(3)
                r[i, i] = r[j, j] = math.cos(th)
                r[i, j], r[j, i] = -math.sin(th), math.sin(th)
                out.append(r)
    return out


def poses(settings: AtlasSettings) -> list[np.ndarray]:
    """The local linear maps tried around each hole (rotations x scalings)."""
    return [r / s for s in settings.scales for r in _rotations(settings.angles)]


def _corr(sig_f, kernel: torch.Tensor, full, valid) -> torch.Tensor:
    """Valid cross-correlation of signals (given by their rfftn ``sig_f``) with ``kernel`` (all shifts)."""
    import torch

    k = torch.zeros(full, dtype=torch.float32)
    k[tuple(slice(0, n) for n in kernel.shape)] = kernel
    out = torch.fft.irfftn(sig_f * torch.conj(torch.fft.rfftn(k)), s=full, dim=(-3, -2, -1))
    return out[..., : valid[0], : valid[1], : valid[2]]


def _hole_detail(
    target, mask, lo, hi, bank_t, a, t, settings: AtlasSettings, ring_rms: list | None = None
) -> np.ndarray | None:
    """The averaged candidates' detail inside one hole (box ``lo:hi`` of ``target``), or None."""
    import torch

    from brainae.infer import fill_holes

    w, r, pad = settings.ring, settings.radius, 4
    size = hi - lo
    sl = tuple(slice(int(x), int(y)) for x, y in zip(lo, hi))
    m = mask[sl]
    ring = _dilate(m, w) & ~m
    tb = target[sl].astype(np.float64)
    n = float(ring.sum())
    if n < 4:
        return None
    st, stt = float(tb[ring].sum()), float((tb[ring] ** 2).sum())
    inner = size + 2 * r
    outer = inner + 2 * pad
    centre = (lo + hi - 1) / 2.0
    axes = [torch.arange(k, dtype=torch.float32) - (k - 1) / 2.0 for k in outer]
    local = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # outer crop, relative to the centre
    pose_list = poses(settings)
    a_t = torch.tensor(a, dtype=torch.float32)
    t_t = torch.tensor(a @ centre + t, dtype=torch.float32)
    coords = torch.stack([local @ (a_t @ torch.tensor(p, dtype=torch.float32)).T + t_t for p in pose_list])
    crops = _sample(bank_t, coords)  # (n_atlas, n_pose, *outer)
    n_atlas, n_pose = crops.shape[:2]
    crops = crops.reshape(n_atlas * n_pose, *outer.tolist())
    s = crops[:, pad:-pad, pad:-pad, pad:-pad]
    full = tuple(int(k) for k in inner)
    valid = tuple(int(k) for k in 2 * r + 1 + np.zeros(3, int))
    ring_t = torch.from_numpy(ring.astype(np.float32))
    sf, sf2 = torch.fft.rfftn(s, dim=(-3, -2, -1)), torch.fft.rfftn(s * s, dim=(-3, -2, -1))
    sa = _corr(sf, ring_t, full, valid).double()
    sq = _corr(sf2, ring_t, full, valid).double()
    sc = _corr(sf, torch.from_numpy((ring * tb).astype(np.float32)), full, valid).double()
    ssd = stt - 2 * sc + sq - (st - sa) ** 2 / n  # squared ring mismatch after the best constant offset
    flat = ssd.reshape(len(ssd), -1)
    is_min = ssd == -torch.nn.functional.max_pool3d(-ssd[:, None], 3, 1, 1)[:, 0]
    score = torch.where(is_min.reshape(len(ssd), -1), flat, torch.full_like(flat, float("inf")))
    per = min(settings.per_pose, score.shape[1])
    best, where = torch.topk(score, per, dim=1, largest=False)
    best, where = (
        best.reshape(-1),
        torch.stack([torch.arange(len(ssd)).repeat_interleave(per), where.reshape(-1)], 1),
    )
    keep = min(settings.keep, int(torch.isfinite(best).sum()))
    if keep < 1:
        return None
    order = torch.argsort(best)[:keep]
    e = best[order] / n
    rms = math.sqrt(max(float(e[0]), 0.0))
    if ring_rms is not None:
        ring_rms.append(rms)
    if rms > settings.max_ring_rms:
        return None
    spread = float(torch.median(e - e[0]))
    patches = []
    for entry, pos in where[order].tolist():
        d = np.unravel_index(pos, valid)
        patch = crops[
            entry,
            d[0] : d[0] + size[0] + 2 * pad,
            d[1] : d[1] + size[1] + 2 * pad,
            d[2] : d[2] + size[2] + 2 * pad,
        ]
        patches.append(patch + (st - float(sa.reshape(len(ssd), -1)[entry, pos])) / n)
    cand = torch.stack(patches).numpy()
    if settings.fusion == "joint":
        avg_np = _joint_average(cand, ring, tb, m, pad, settings)
    else:
        avg_np = _softmax_average(cand, ring, tb, pad, e, spread, settings)
    mm = np.zeros(avg_np.shape, bool)
    mm[pad:-pad, pad:-pad, pad:-pad] = m
    smooth = fill_holes(np.where(mm, 0.0, avg_np).astype(np.float32), mm, "biharmonic")
    return np.where(m, (avg_np - smooth)[pad:-pad, pad:-pad, pad:-pad], 0.0).astype(np.float32)


def _softmax_average(cand, ring, tb, pad, e, spread, settings: AtlasSettings) -> np.ndarray:
    """Candidates (``(k, *box)``, the hole's box grown by ``pad``) averaged with weights that fall off
    exponentially with each one's ring mismatch (near each voxel when ``settings.local`` > 0, else ``e``)."""
    if settings.local <= 0:
        wts = np.exp(-(e.numpy() - float(e[0])) / (settings.softness * spread + 1e-12))
        return np.tensordot(wts / wts.sum(), cand, axes=1).astype(np.float32)
    from scipy import ndimage

    inner_c = cand[:, pad:-pad, pad:-pad, pad:-pad]
    res2 = np.where(ring, (tb[None] - inner_c) ** 2, 0.0)
    big = [settings.local] * 3
    norm = ndimage.gaussian_filter(ring.astype(np.float64), big)
    err = np.stack([ndimage.gaussian_filter(r2, big) for r2 in res2]) / np.maximum(norm, 1e-9)
    err = np.pad(err, [(0, 0)] + [(pad, pad)] * 3, mode="edge")
    rel = err - err.min(axis=0, keepdims=True)
    wv = np.exp(-rel / (settings.softness * np.median(rel, axis=0, keepdims=True) + 1e-12))
    wv /= wv.sum(axis=0, keepdims=True)
    return (wv * cand).sum(axis=0).astype(np.float32)


def _joint_average(cand, ring, tb, m, pad, settings: AtlasSettings) -> np.ndarray:
    """Candidates (``(k, *box)``, the hole's box grown by ``pad``) combined with joint weights.

    Candidates drawn from the same atlas volume under nearby poses make the same mistakes, and a plain
    weighted average counts those mistakes many times. Joint weights (as in joint label fusion for
    multi-atlas segmentation) account for it: at an anchor voxel ``p`` with ring residuals ``r_i`` of candidate
    ``i`` (scan minus candidate), weighted by a Gaussian of sd ``settings.local`` around ``p``, the weights
    ``w = M^-1 1 / (1' M^-1 1)`` minimise the expected squared error for ``M_ij = (sum g |r_i| |r_j|)^2`` plus
    a ridge of ``settings.joint_reg`` x its mean diagonal. Anchors are every ``anchor_step``-th hole voxel;
    the weights in between (and in the 3 voxels around the hole that its biharmonic fill reads) are
    Gaussian-interpolated from them. Weights may be negative; they sum to 1 at every voxel. Where every
    candidate matches the ring exactly, they are equal.
    """
    k = len(cand)
    ring_pos = np.argwhere(ring).astype(np.float64)
    absres = np.abs(tb[ring][None, :] - cand[:, pad:-pad, pad:-pad, pad:-pad][:, ring]).astype(np.float64)
    hole = np.argwhere(m)
    step = max(int(settings.anchor_step), 1)
    anchors = hole[np.all(hole % step == 0, axis=1)]
    if len(anchors) == 0:
        anchors = hole[[int(np.argmin(((hole - hole.mean(axis=0)) ** 2).sum(axis=1)))]]
    anchors = anchors.astype(np.float64)
    sig2 = 2.0 * max(settings.local, 0.5) ** 2
    eye = np.eye(k)
    w = np.empty((len(anchors), k))
    for start in range(0, len(anchors), 32):  # 32 anchors at a time: k x k matrices add up
        mats = []
        for p in anchors[start : start + 32]:
            d2 = ((ring_pos - p) ** 2).sum(axis=1)
            near = d2 <= d2.min() + 4.5 * sig2  # relative weights below exp(-4.5) are left out
            g = np.exp(-(d2[near] - d2.min()) / sig2)
            a = absres[:, near] * np.sqrt(g / g.sum())
            mats.append((a @ a.T) ** 2)
        mt = np.stack(mats)
        ridge = settings.joint_reg * np.diagonal(mt, axis1=1, axis2=2).mean(axis=1) + 1e-30
        mt += ridge[:, None, None] * eye
        sol = np.linalg.solve(mt, np.ones((len(mats), k, 1)))[..., 0]
        w[start : start + len(mats)] = sol / sol.sum(axis=1, keepdims=True)
    # weights at the voxels the detail needs: the hole and the 3 voxels around it (its biharmonic fill's ring)
    hole_box = np.zeros(cand.shape[1:], bool)
    hole_box[pad:-pad, pad:-pad, pad:-pad] = m
    box = _dilate(hole_box, 3)
    need = np.argwhere(box).astype(np.float64) - pad
    idx = np.flatnonzero(box.ravel())
    flat = cand.reshape(k, -1)
    out = flat.mean(axis=0)
    a2 = (anchors**2).sum(axis=1)[None, :]
    for start in range(0, len(need), 2048):  # voxels x anchors at a time (large holes have thousands of each)
        part = need[start : start + 2048]
        d2 = (part**2).sum(axis=1)[:, None] + a2 - 2.0 * part @ anchors.T
        h = np.exp(-(d2 - d2.min(axis=1, keepdims=True)) / (2.0 * step**2))
        wx = (h @ w) / h.sum(axis=1, keepdims=True)  # (voxels, k)
        sel = idx[start : start + 2048]
        out[sel] = np.einsum("vk,kv->v", wx, flat[:, sel])
    return out.reshape(cand.shape[1:]).astype(np.float32)


def _dilate(m: np.ndarray, iterations: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(m, iterations=iterations)


def atlas_detail(
    target: np.ndarray, mask: np.ndarray, atlas: Atlas, *, stripped: bool, diagnostics: dict | None = None
) -> np.ndarray:
    """The atlas's detail for every hole of ``mask`` on a normalised 2 mm RAS+ ``target`` (holes pre-filled).

    ``target`` is normalised like the atlas (:func:`normalise`: over the head, or over the brain for a
    skull-stripped scan). Returns an array of ``target``'s shape, zero outside the mask: add
    ``settings.share`` times it to the biharmonic fill. ``diagnostics``, when given, receives the registration
    correlation (``fit``, :func:`registration_fit`), the scan's contrast next to the atlas's (``contrast``,
    :func:`contrast_ratio`: the detail is scaled by it) and each hole's best ring mismatch (``ring_rms``).
    """
    import torch
    from scipy import ndimage

    settings = atlas.settings
    bank = atlas.bank(stripped)
    weight = (~_dilate(mask, 2)).astype(np.float32)
    template = bank.mean(axis=0) if stripped else atlas.template(False)  # the stripped bank is made once
    a, t = register_affine(target, template, weight=weight)
    fit = registration_fit(target, template, a, t, weight)
    diag = diagnostics if diagnostics is not None else {}
    diag.update(fit=fit, ring_rms=[])
    if fit < settings.min_fit:
        return np.zeros(target.shape, np.float32)
    contrast = contrast_ratio(target, bank, atlas.brains, a, t, weight > 0)
    diag["contrast"] = contrast
    bank_t = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32))
    out = np.zeros(target.shape, np.float32)
    # holes within 4 voxels of each other are matched together (one search for a cluster of small lesions)
    labels, count = ndimage.label(_dilate(mask, 2), structure=np.ones((3, 3, 3), bool))
    labels = np.where(mask, labels, 0)
    boxes = ndimage.find_objects(labels)
    w = settings.ring
    for k, box in enumerate(boxes, start=1):
        if box is None:
            continue
        comp = labels == k
        if comp.sum() < settings.min_voxels:
            continue
        lo = np.array([max(b.start - w, 0) for b in box])
        hi = np.array([min(b.stop + w, n) for b, n in zip(box, target.shape)])
        det = _hole_detail(target, comp, lo, hi, bank_t, a, t, settings, diag["ring_rms"])
        if det is not None:
            sl = tuple(slice(int(x), int(y)) for x, y in zip(lo, hi))
            out[sl] += det
    return out * np.float32(contrast)


def _spread(x: np.ndarray) -> float:
    q25, q75 = np.percentile(x, [25, 75])
    return float(q75 - q25)


def contrast_ratio(target, bank: np.ndarray, brains: np.ndarray, a, t, known: np.ndarray) -> float:
    """How strong the scan's tissue contrast is next to the atlas's: the interquartile range of the scan's
    intensities inside the registered atlas brain (known voxels with tissue), over the median of the atlas
    volumes' own (``bank``: :meth:`Atlas.bank` of the matching kind, ``brains`` their masks), clipped to
    [0.25, 1].

    A healthy IXI T1 scan reads about 1 (1.0-1.1 skull-stripped); a scan whose brightest voxels are not
    tissue (a contrast-enhanced T1, where vessels set the 99.5th percentile) reads lower, and gets
    proportionally less of the atlas's detail (0.44 on the BraTS T1c case). Never above 1: the share was
    calibrated on scans like the atlas's own.
    """
    brain = resample_affine(brains.mean(axis=0), a, t, target.shape) > 0.5
    sel = brain & known & (target > 0.05)
    if sel.sum() < 1000:
        return 1.0
    ref = float(np.median([_spread(v[m]) for v, m in zip(bank, brains)]))
    return float(np.clip(_spread(target[sel]) / max(ref, 1e-6), 0.25, 1.0))


def registration_fit(target, template, a, t, weight) -> float:
    """Correlation of ``target`` and the registered ``template`` over the weighted voxels where either shows
    tissue (a check that the registration found the head)."""
    warped = resample_affine(template, a, t, target.shape)
    sel = (weight > 0) & ((target > 0.05) | (warped > 0.05))
    if sel.sum() < 100:
        return 0.0
    return float(np.corrcoef(target[sel], warped[sel])[0, 1])


def inpaint_with_atlas(volume, mask: np.ndarray, atlas: Atlas) -> np.ndarray:
    """A RAS+ ``volume`` with its ``mask`` voxels filled: biharmonic fill plus ``share`` x the atlas's detail.

    The detail is found on a 2 mm working grid (the scan resampled when its voxels are not 2 mm) and
    interpolated back; skull-stripped scans (:func:`brainae.volumetric.looks_skull_stripped`) are matched
    against the skull-stripped atlas. Every voxel outside ``mask`` is returned bit-identical.
    """
    from brainae.infer import fill_holes
    from brainae.volume import fill_mask
    from brainae.volumetric import background_value, from_grid, looks_skull_stripped, to_grid

    data = np.asarray(volume.data, dtype=np.float32)
    mask = fill_mask(mask, data.shape)
    out = data.copy()
    if not mask.any():
        return out
    if mask.all():
        raise BrainaeError(
            "the mask covers every voxel: nothing is left to fill from; mask only the region to fill"
        )
    lo = background_value(np.where(mask, data.min(), data))
    known = np.where(mask, lo, data).astype(np.float32)
    smooth = fill_holes(known, mask, "biharmonic")
    stripped = looks_skull_stripped(smooth, volume.zooms)
    x = smooth - lo
    peak = _peak(x)  # as :func:`normalise` scales the atlas's own volumes
    on_grid = all(abs(z - ATLAS_MM) < 1e-3 for z in volume.zooms)
    work = x / peak if on_grid else to_grid(x / peak, volume.zooms, ATLAS_MM)
    work_mask = mask if on_grid else to_grid(mask.astype(np.float32), volume.zooms, ATLAS_MM) > 0.3
    detail = atlas_detail(work.astype(np.float32), work_mask, atlas, stripped=stripped)
    if not on_grid:
        detail = from_grid(detail, data.shape)
    out[mask] = smooth[mask] + atlas.settings.share * peak * detail[mask]
    return out


def _mean_gain(details, errors, share: float) -> float:
    """Mean over holes of the fill's PSNR gain (dB) over biharmonic with ``share`` of the detail."""
    return float(
        np.mean(
            [
                10
                * math.log10(
                    max(float(np.mean(e**2)), 1e-12) / max(float(np.mean((e - share * d) ** 2)), 1e-12)
                )
                for d, e in zip(details, errors)
            ]
        )
    )


def calibrate_share(details: list[np.ndarray], errors: list[np.ndarray]) -> float:
    """The share of the detail (``d``; ``e = c - b`` is the biharmonic fill's true error in each hole) that
    maximises the mean PSNR gain over the holes (each hole counts once, as in the benchmarks), searched on
    [0, 2] in steps of 0.025 (0 when no share helps)."""
    grid = np.linspace(0.0, 2.0, 81)
    gains = [_mean_gain(details, errors, float(s)) for s in grid]
    return float(grid[int(np.argmax(gains))])


CALIBRATION_CUBES_MM = (10.0, 20.0, 30.0)
CALIBRATION_IRREGULAR_ML = (1.0, 3.0, 10.0, 30.0)
"""The holes of :func:`calibrate_atlas` (per validation volume, with and without its skull)."""


def _on_atlas_grid(vol):
    """(data, brain) of a :class:`brainae.fit.TrainingVolume` on the 2 mm grid."""
    from brainae.volumetric import to_grid

    if all(abs(z - ATLAS_MM) < 1e-3 for z in vol.zooms):
        return vol.data, vol.brain
    return to_grid(vol.data, vol.zooms, ATLAS_MM), to_grid(vol.brain, vol.zooms, ATLAS_MM, order=0)


def calibrate_atlas(atlas: Atlas, volumes: list, *, seed: int = 0, log=None) -> dict:
    """Set ``atlas.settings`` from healthy validation volumes; returns what was measured.

    On each volume (a :class:`brainae.fit.TrainingVolume`; with and without its skull): cubes of
    :data:`CALIBRATION_CUBES_MM` and irregular lesion-like holes of :data:`CALIBRATION_IRREGULAR_ML`, fully
    inside the brain. ``share`` maximises the mean gain over biharmonic (:func:`calibrate_share`); the safety
    limits are set well outside what healthy scans show: ``min_fit`` 0.2 below the lowest registration
    correlation, ``max_ring_rms`` 3 x the 95th percentile of the best candidates' ring mismatch.
    """
    import dataclasses as dc

    from brainae.infer import fill_holes
    from brainae.lesions import irregular_mask, random_cube_mask

    rng = np.random.default_rng(seed)
    raw = dc.replace(
        atlas, settings=dc.replace(atlas.settings, share=1.0, min_fit=-1.0, max_ring_rms=math.inf)
    )
    details, errors, fits, rings = [], [], [], []
    for vol in volumes:
        data, brain = _on_atlas_grid(vol)
        for stripped in (False, True):
            x = normalise(np.where(brain, data, 0.0) if stripped else data, brain if stripped else None)
            for kind, size in [("cube", s) for s in CALIBRATION_CUBES_MM] + [
                ("irregular", s) for s in CALIBRATION_IRREGULAR_ML
            ]:
                try:
                    if kind == "cube":
                        hole = random_cube_mask(brain, (ATLAS_MM,) * 3, rng, side_mm=size)
                    else:
                        hole = irregular_mask(brain.shape, (ATLAS_MM,) * 3, rng, size, brain_mask=brain)
                except ValueError:
                    continue
                smooth = fill_holes(np.where(hole, 0.0, x).astype(np.float32), hole, "biharmonic")
                diag: dict = {}
                det = atlas_detail(smooth, hole, raw, stripped=stripped, diagnostics=diag)
                details.append(det[hole].astype(np.float64))
                errors.append((x - smooth)[hole].astype(np.float64))
                fits.append(diag["fit"])
                rings.extend(diag["ring_rms"])
        if log:
            log(f"atlas calibration: {vol.id} done ({len(details)} holes)")
    share = calibrate_share(details, errors)
    gain = _mean_gain(details, errors, share)
    atlas.settings = dc.replace(
        atlas.settings,
        share=round(share, 4),
        min_fit=round(min(fits) - 0.2, 4),
        max_ring_rms=round(3.0 * float(np.percentile(rings, 95)), 4),
    )
    return {
        "holes": len(details),
        "share": atlas.settings.share,
        "mean_gain_db_over_biharmonic": round(float(np.mean(gain)), 3),
        "registration_fit": [round(min(fits), 4), round(float(np.median(fits)), 4)],
        "ring_rms_p95": round(float(np.percentile(rings, 95)), 4),
        "min_fit": atlas.settings.min_fit,
        "max_ring_rms": atlas.settings.max_ring_rms,
    }


def fit_atlas(data_dir, *, split=None, masks=None, mask_method: str = "deepbet", seed: int = 0, log=None):
    """Build and calibrate an atlas from a folder of healthy T1 volumes: ``train`` volumes go into the atlas,
    ``val`` volumes calibrate it (:func:`calibrate_atlas`). Returns ``(atlas, calibration summary)``."""
    from brainae.fit import load_split, load_training_volumes
    from brainae.io import list_niftis, volume_id

    ids = {volume_id(f): f for f in list_niftis(Path(data_dir))}
    train, val = load_split(split, sorted(ids), seed)
    progress = (lambda m: log(f"atlas: {m}")) if log else None
    tr = load_training_volumes(
        [ids[i] for i in train], mask_method=mask_method, masks=masks, progress=progress
    )
    grids = [_on_atlas_grid(v) for v in tr]
    atlas = build_atlas(
        [normalise(d) for d, _ in grids],
        [b for _, b in grids],
        provenance={
            "train": train,
            "val": val,
            "source": str(Path(data_dir).name),
            "mask_method": mask_method,
        },
    )
    if log:
        log(f"atlas: {len(train)} volumes registered, grid {atlas.volumes.shape[1:]}")
    va = load_training_volumes([ids[i] for i in val], mask_method=mask_method, masks=masks, progress=progress)
    summary = calibrate_atlas(atlas, va, seed=seed, log=log)
    atlas.provenance["calibration"] = summary
    return atlas, summary
