"""The jobs brainae's volumetric models are trained for: one table row per task.

Each :class:`Task` says how a batch of clean 3-D training patches becomes (model input, target, loss weight)
and how the model is applied (grid, intensity reference, skull stripping). Corruptions follow the
sample-then-apply pattern of :mod:`brainae.corrupt`: ``sample_*`` draws every random number from a seeded
generator, ``apply_*`` is a deterministic function of the batch and those parameters.

- ``denoise``: Gaussian or Rician noise, sd uniform in [0, 12 %] of the volume's intensity reference (10 %
  of patches get none, so a clean scan is left alone); the model also gets a noise-level estimate made from
  the input itself (:func:`estimate_noise_sd`, a constant second channel: blind for the user); target the
  clean patch, each patch's error weighted by ``1 / (sd^2 + 1e-4)`` (noise levels count alike in dB); runs on the input's own grid
  (60 % of the patches at the data's own voxel size, the others upsampled to voxel sizes between 1 and
  2 mm), noise level not needed (blind).
- ``inpaint``: 1-3 holes per patch (cubes, rotated ellipsoids and irregular lesion-like blobs, 4-40 mm),
  filled by biharmonic interpolation of their surroundings (:func:`biharmonic_fill`, the classical tool's
  answer), the hole mask as a second input channel;
  the model adds a correction to that fill; half of the patches skull-stripped (the BraTS "local synthesis"
  setting); loss inside the holes only; runs on the input's own grid.
- ``anomaly``: the coarse-noise denoising autoencoder (Kascenas et al., MIDL 2022): Gaussian noise drawn on a
  grid 8 times coarser than the voxels (16 mm at 2 mm), upsampled trilinearly and added inside the brain of a
  skull-stripped patch; the model learns to restore healthy-looking tissue, so a lesion (a coarse, unexpected
  intensity change) is "healed" and shows up in the residual ``|x - f(x)|``. Runs on a 2 mm grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from brainae.errors import BrainaeError

__all__ = [
    "TASKS",
    "Task",
    "apply_coarse_noise",
    "apply_holes",
    "apply_noise3d",
    "biharmonic_fill",
    "get_task",
    "sample_coarse_noise",
    "sample_holes",
    "sample_noise3d",
]


# ----------------------------------------------------------------------------------------- voxel noise


@dataclass(frozen=True)
class Noise3dParams:
    """Per patch: noise sd (n,), whether it is Rician (n,), and the unit normals (n, 2, D, H, W)."""

    sd: Tensor
    rician: Tensor
    normal: Tensor


def sample_noise3d(
    batch: Tensor,
    generator: torch.Generator,
    *,
    max_sd: float = 0.12,
    p_zero: float = 0.1,
    p_rician: float = 0.5,
) -> Noise3dParams:
    """Noise levels uniform in [0, ``max_sd``] (0 with probability ``p_zero``), Gaussian or Rician."""
    n = batch.shape[0]
    dev = batch.device
    u = torch.rand(n, generator=generator, device=dev)
    sd = torch.rand(n, generator=generator, device=dev) * max_sd
    sd = torch.where(u < p_zero, torch.zeros_like(sd), sd)
    rician = torch.rand(n, generator=generator, device=dev) < p_rician
    normal = torch.randn((n, 2, *batch.shape[2:]), generator=generator, device=dev)
    return Noise3dParams(sd, rician, normal)


def apply_noise3d(batch: Tensor, params: Noise3dParams) -> Tensor:
    """Gaussian ``x + sd z1`` or Rician ``sqrt((x + sd z1)^2 + (sd z2)^2)`` per patch (N x 1 x D x H x W)."""
    sd = params.sd.view(-1, 1, 1, 1, 1).to(batch.dtype)
    real = batch + sd * params.normal[:, :1]
    mag = torch.sqrt(real * real + (sd * params.normal[:, 1:]) ** 2)
    return torch.where(params.rician.view(-1, 1, 1, 1, 1), mag, real)


def estimate_noise_sd(batch: Tensor, *, floor: float = 0.1) -> Tensor:
    """A robust noise-level estimate per image (n,) of N x 1 x D x H x W intensity-normalised volumes.

    The difference between each voxel and the mean of its 6 face neighbours is, for white noise of sd s,
    zero-mean with sd ``s * sqrt(7 / 6)``; the lower quartile of its absolute value over the foreground
    (voxels above ``floor``; the quartile of ``|N(0, 1)|`` is 0.3186) estimates s from the smoothest
    quarter of the voxels, where anatomy adds least (a clean 2 mm IXI scan still reads about 0.03), which the denoiser learns to discount: it gets this estimate as an input channel,
    computed the same way at training and at apply time, so it needs no noise level from the user.
    """
    kernel = torch.zeros((1, 1, 3, 3, 3), device=batch.device, dtype=batch.dtype)
    kernel[0, 0, 1, 1, 1] = 1.0
    for d in ((0, 1, 1), (2, 1, 1), (1, 0, 1), (1, 2, 1), (1, 1, 0), (1, 1, 2)):
        kernel[(0, 0, *d)] = -1.0 / 6.0
    lap = F.conv3d(F.pad(batch, (1, 1, 1, 1, 1, 1), mode="replicate"), kernel)
    out = []
    for i in range(batch.shape[0]):
        fg = batch[i] > floor
        values = lap[i][fg].abs() if bool(fg.any()) else lap[i].abs().reshape(-1)
        if values.numel() > 1_000_000:  # torch.quantile's size limit; a regular subsample is enough
            values = values[:: values.numel() // 500_000 + 1]
        out.append(torch.quantile(values.float(), 0.25) / (0.3186 * math.sqrt(7.0 / 6.0)))
    return torch.stack(out)


def with_noise_channel(noisy: Tensor) -> Tensor:
    """``noisy`` (N x 1 x ...) with its :func:`estimate_noise_sd` as a constant second channel."""
    est = estimate_noise_sd(noisy).view(-1, 1, 1, 1, 1).expand_as(noisy)
    return torch.cat([noisy, est], dim=1)


# ----------------------------------------------------------------------------------------------- holes


def _coords(shape: tuple[int, int, int], device) -> Tensor:
    axes = [torch.arange(n, device=device, dtype=torch.float32) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)  # 3 x D x H x W


def _random_rotation(generator: torch.Generator, device) -> Tensor:
    q = torch.randn(4, generator=generator, device=device)
    q = q / q.norm()
    w, x, y, z = q.tolist()
    return torch.tensor(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ],
        device=device,
    )


def _pick_centre(brain: Tensor, generator: torch.Generator) -> Tensor:
    """A random voxel of ``brain`` (D x H x W bool), or of the whole patch when it has no brain."""
    idx = torch.nonzero(brain.reshape(-1), as_tuple=False)[:, 0]
    if idx.numel() == 0:
        flat = int(torch.randint(brain.numel(), (1,), generator=generator, device=brain.device))
    else:
        flat = int(idx[torch.randint(idx.numel(), (1,), generator=generator, device=brain.device)])
    d, h, w = brain.shape
    return torch.tensor(
        [flat // (h * w), (flat // w) % h, flat % w], device=brain.device, dtype=torch.float32
    )


def sample_holes(
    brain: Tensor,
    voxel_mm: Tensor,
    generator: torch.Generator,
    *,
    size_mm: tuple[float, float] = (4.0, 40.0),
    max_holes: int = 3,
) -> Tensor:
    """Hole masks (N x 1 x D x H x W float, 1 = hole) centred on random brain voxels.

    Each patch gets 1 to ``max_holes`` holes, each a cube, a rotated ellipsoid or an irregular blob (a
    smoothed random field thresholded inside a ball), of extent uniform in ``size_mm`` at the patch's voxel
    size ``voxel_mm`` (n,).
    """
    n = brain.shape[0]
    shape = tuple(brain.shape[2:])
    dev = brain.device
    grid = _coords(shape, dev)
    masks = torch.zeros((n, 1, *shape), device=dev)
    for i in range(n):
        k = 1 + int(torch.randint(max_holes, (1,), generator=generator, device=dev))
        for _ in range(k):
            centre = _pick_centre(brain[i, 0], generator).view(3, 1, 1, 1)
            extent = size_mm[0] + float(torch.rand(1, generator=generator, device=dev)) * (
                size_mm[1] - size_mm[0]
            )
            r = extent / 2 / float(voxel_mm[i])
            kind = int(torch.randint(3, (1,), generator=generator, device=dev))
            rel = grid - centre
            if kind == 0:  # cube
                hole = (rel.abs() <= r).all(dim=0)
            elif kind == 1:  # rotated ellipsoid with semi-axes r * U(0.4, 1)
                axes = r * (0.4 + 0.6 * torch.rand(3, generator=generator, device=dev))
                rot = _random_rotation(generator, dev)
                local = torch.einsum("ij,jdhw->idhw", rot, rel)
                hole = ((local / axes.view(3, 1, 1, 1)) ** 2).sum(dim=0) <= 1.0
            else:  # irregular: coarse random field, thresholded inside a ball
                coarse = torch.randn((1, 1, 4, 4, 4), generator=generator, device=dev)
                field = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0, 0]
                dist = rel.pow(2).sum(dim=0).sqrt() / max(r, 1.0)
                hole = (field + 1.5 * (1 - dist)) > 0.9
            masks[i, 0] = torch.maximum(masks[i, 0], hole.float())
    return masks


def smooth_fill(batch: Tensor, holes: Tensor, *, levels: int = 4, iterations: int = 16) -> Tensor:
    """Fill the holes of N x 1 x D x H x W images smoothly from their surroundings (known voxels kept).

    Coarse to fine: at each scale (``2**levels`` down to 1) a voxel takes the mean of the known voxels of its
    cell, or the coarser estimate where its cell has none; then ``iterations`` Jacobi steps of the Laplace
    equation inside the holes. A fast stand-in for harmonic / biharmonic inpainting that the inpainting
    model refines (its output is this fill plus a learned correction).
    """
    known = 1.0 - holes
    est = None
    for k in range(levels, -1, -1):
        f = 2**k
        if f > min(batch.shape[2:]):
            continue
        if f > 1:
            num = F.avg_pool3d(batch * known, f, f, ceil_mode=True)
            den = F.avg_pool3d(known, f, f, ceil_mode=True)
        else:
            num, den = batch * known, known
        cur = num / den.clamp(min=1e-6)
        if est is not None:
            up = F.interpolate(est, size=cur.shape[2:], mode="trilinear", align_corners=False)
            cur = torch.where(den > 1e-6, cur, up)
        est = cur
    assert est is not None
    for _ in range(iterations):
        avg = F.avg_pool3d(F.pad(est, (1, 1, 1, 1, 1, 1), mode="replicate"), 3, 1)
        est = batch * known + avg * holes
    return est


def _laplacian(x: Tensor) -> Tensor:
    """7-point Laplacian of N x 1 x D x H x W images with zero-flux borders (a symmetric operator)."""
    p = F.pad(x, (1, 1, 1, 1, 1, 1), mode="replicate")
    return (
        p[:, :, 2:, 1:-1, 1:-1]
        + p[:, :, :-2, 1:-1, 1:-1]
        + p[:, :, 1:-1, 2:, 1:-1]
        + p[:, :, 1:-1, :-2, 1:-1]
        + p[:, :, 1:-1, 1:-1, 2:]
        + p[:, :, 1:-1, 1:-1, :-2]
        - 6.0 * x
    )


def _hole_boxes(holes: Tensor, margin: int) -> tuple[list[tuple[int, int, int]], tuple[int, int, int]] | None:
    """Per image, the corner of a box holding its holes and ``margin`` voxels around them, all of one size
    (the largest needed, clipped to the image); None when that size is the whole image."""
    shape = holes.shape[2:]
    spans = []
    for item in holes[:, 0].bool():
        lo, hi = [], []
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            hit = torch.nonzero(item.any(dim=other)).flatten()
            a, b = (int(hit[0]), int(hit[-1]) + 1) if hit.numel() else (0, 1)
            lo.append(max(0, a - margin))
            hi.append(min(shape[axis], b + margin))
        spans.append((lo, hi))
    size = tuple(max(hi[k] - lo[k] for lo, hi in spans) for k in range(3))
    if all(s >= n for s, n in zip(size, shape)):
        return None
    corners = [
        tuple(min(lo[k], shape[k] - size[k]) for k in range(3))  # grow towards the far side, inside the image
        for lo, _ in spans
    ]
    return corners, size


def biharmonic_fill(
    batch: Tensor, holes: Tensor, *, iterations: int = 150, tol: float | None = None
) -> Tensor:
    """Fill the holes of N x 1 x D x H x W images with the smoothest surface through their surroundings.

    Minimises the squared Laplacian ``||L x||^2`` over the hole voxels (known voxels fixed): the discrete
    biharmonic equation that scikit-image's ``inpaint_biharmonic`` solves, here by at most ``iterations``
    steps of conjugate gradients started from :func:`smooth_fill`, batched and on the images' device (so that
    it is cheap enough to run on every training batch). With ``tol``, it stops once every image's residual
    norm is below ``tol`` times its first (checked every 25 steps). Known voxels are returned unchanged.

    Only the voxels within a few voxels of a hole enter the equation, so each image is solved in a box
    around its holes (one box size for the batch): the converged solution is the one of the whole image (a
    run stopped early differs, as its starting point is the smooth fill of the box).
    """
    holes = holes.to(batch.dtype)
    boxes = _hole_boxes(holes, margin=4)
    if boxes is not None:
        corners, size = boxes
        cut = [tuple(slice(c, c + n) for c, n in zip(corner, size)) for corner in corners]
        sub = biharmonic_fill(
            torch.stack([batch[i][(slice(None), *c)] for i, c in enumerate(cut)]),
            torch.stack([holes[i][(slice(None), *c)] for i, c in enumerate(cut)]),
            iterations=iterations,
            tol=tol,
        )
        out = batch.clone()
        for i, c in enumerate(cut):
            out[i][(slice(None), *c)] = sub[i]
        return out
    x = smooth_fill(batch, holes)

    def op(v: Tensor) -> Tensor:
        return _laplacian(_laplacian(v)) * holes

    def dot(a: Tensor, b: Tensor) -> Tensor:
        return (a * b).sum(dim=(1, 2, 3, 4), keepdim=True)

    r = -op(x)
    p = r
    rs = dot(r, r)
    rs0 = rs.clamp(min=1e-30)
    for k in range(iterations):
        if tol is not None and k % 25 == 0 and bool((rs / rs0 < tol * tol).all()):
            break
        ap = op(p)
        alpha = rs / dot(p, ap).clamp(min=1e-30)
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = dot(r, r)
        p = r + (rs_new / rs.clamp(min=1e-30)) * p
        rs = rs_new
    return batch * (1 - holes) + x * holes


FILLS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"smooth": smooth_fill, "biharmonic": biharmonic_fill}
"""How a hole is filled before the inpainting model corrects it (``VolumetricPreprocessing.fill``)."""


def apply_holes(batch: Tensor, holes: Tensor, fill: str = "biharmonic") -> Tensor:
    """The model input for inpainting: the image with its holes filled (``fill``: a :data:`FILLS` name), and
    the hole mask (N x 2 x ...)."""
    return torch.cat([FILLS[fill](batch, holes), holes], dim=1)


# ---------------------------------------------------------------------------------------- coarse noise


def sample_coarse_noise(
    batch: Tensor, generator: torch.Generator, *, sd: tuple[float, float] = (0.1, 0.3), cells: int = 8
) -> Tensor:
    """Coarse noise fields (N x 1 x D x H x W): normals on a grid ``cells`` times coarser, upsampled.

    The sd of each patch is uniform in ``sd`` (intensity units: the brain's median is 1).
    """
    n = batch.shape[0]
    shape = tuple(batch.shape[2:])
    small = tuple(max(2, math.ceil(s / cells)) for s in shape)
    z = torch.randn((n, 1, *small), generator=generator, device=batch.device)
    level = sd[0] + torch.rand(n, generator=generator, device=batch.device) * (sd[1] - sd[0])
    field = F.interpolate(z, size=shape, mode="trilinear", align_corners=True)
    return field * level.view(-1, 1, 1, 1, 1)


def apply_coarse_noise(batch: Tensor, field: Tensor, brain: Tensor) -> Tensor:
    """``x + field`` inside the brain; the background stays as it is."""
    return batch + field * brain.to(batch.dtype)


# ---------------------------------------------------------------------------------------------- tasks

Batch = tuple[Tensor, Tensor, Tensor]


def _denoise_batch(clean: Tensor, brain: Tensor, voxel_mm: Tensor, g: torch.Generator) -> Batch:
    params = sample_noise3d(clean, g)
    # each patch's squared error weighted by 1 / (sd^2 + 0.01^2): every noise level counts alike in dB, so
    # the loss is not dominated by the noisiest patches (which would teach the model to over-smooth)
    weight = 1.0 / (params.sd**2 + 1e-4)
    weight = (weight / weight.mean()).view(-1, 1, 1, 1, 1).expand_as(clean)
    return with_noise_channel(apply_noise3d(clean, params)), clean, weight


def _inpaint_batch(clean: Tensor, brain: Tensor, voxel_mm: Tensor, g: torch.Generator) -> Batch:
    holes = sample_holes(brain, voxel_mm, g)
    # loss inside the holes only: every other voxel is put back from the input at apply time
    return apply_holes(clean, holes), clean, holes


def _anomaly_batch(clean: Tensor, brain: Tensor, voxel_mm: Tensor, g: torch.Generator) -> Batch:
    field = sample_coarse_noise(clean, g)
    return apply_coarse_noise(clean, field, brain), clean, torch.ones_like(clean)


def _plain_batch(clean: Tensor, brain: Tensor, voxel_mm: Tensor, g: torch.Generator) -> Batch:
    return clean, clean, torch.ones_like(clean)


@dataclass(frozen=True)
class Task:
    """How a volumetric model is trained and applied for one job.

    Attributes:
        name: task name (``brainae fit TASK``).
        summary: one line for ``--help`` and model cards.
        make_batch: ``(clean, brain, voxel_mm, generator) -> (input, target, weight)``; clean and brain are
            N x 1 x D x H x W patches (intensity-normalised; brain bool), voxel_mm (n,) the patch voxel size.
        in_channels: model input channels.
        widths: UNet3d channels per level.
        residual: UNet3d adds its input to its output.
        skips: UNet3d skip connections.
        grid_mm: working grid (None: the input's own grid).
        voxel_mm: range of training voxel sizes in mm (patches of 2 mm data are upsampled to reach them).
        native_fraction: fraction of patches taken at the data's own voxel size, without interpolation
            (interpolation smooths: a model that sees only resampled patches learns to smooth real ones).
        reference: intensity reference (:func:`brainae.volumetric.fit_intensity`).
        stripped: fraction of training patches that are skull-stripped (1: the model expects stripped input).
        flips: axes along which patches are randomly flipped (RAS+ voxel axes: 0 = left-right).
        fill: how holes are filled before the model sees them (a :data:`FILLS` name; inpainting only).
    """

    name: str
    summary: str
    make_batch: Callable[[Tensor, Tensor, Tensor, torch.Generator], Batch]
    in_channels: int = 1
    widths: tuple[int, ...] = (16, 32, 64)
    residual: bool = True
    skips: bool = True
    grid_mm: float | None = None
    voxel_mm: tuple[float, float] = (1.0, 2.0)
    native_fraction: float = 0.6
    reference: str = "p99.5"
    stripped: float = 0.0
    flips: tuple[int, ...] = (0, 1, 2)
    fill: str | None = None

    def arch_kwargs(self) -> dict:
        return {
            "in_channels": self.in_channels,
            "out_channels": 1,
            "widths": list(self.widths),
            "residual": self.residual,
            "skips": self.skips,
        }


_ANOMALY_GRID: dict[str, Any] = {
    "grid_mm": 2.0,
    "voxel_mm": (2.0, 2.0),
    "native_fraction": 1.0,
    "reference": "median",
    "stripped": 1.0,
    "flips": (0,),
}
"""The anomaly models' data (``anomaly`` and its ``plain-ae`` comparison): skull-stripped 2 mm volumes on the
median grid, left-right flips only."""

TASKS: dict[str, Task] = {
    "denoise": Task(
        "denoise",
        "remove Gaussian / Rician noise of any level (blind), on the input's own grid",
        _denoise_batch,
        in_channels=2,
        widths=(16, 32, 64),
    ),
    "inpaint": Task(
        "inpaint",
        "fill masked voxels with healthy-looking tissue (holes of 4-40 mm, with or without skull)",
        _inpaint_batch,
        in_channels=2,
        widths=(12, 24, 48, 96),
        stripped=0.5,
        flips=(0,),
        fill="biharmonic",
    ),
    "anomaly": Task(
        "anomaly",
        "coarse-noise denoising autoencoder whose residual |x - f(x)| maps anomalies (skull-stripped, 2 mm)",
        _anomaly_batch,
        widths=(12, 24, 48, 96),
        **_ANOMALY_GRID,
    ),
    "plain-ae": Task(
        "plain-ae",
        "plain 3-D autoencoder without skip connections (for comparison in anomaly benchmarks)",
        _plain_batch,
        widths=(12, 24, 48, 96),
        residual=False,
        skips=False,
        **_ANOMALY_GRID,
    ),
}
"""Task name -> :class:`Task`."""


def get_task(name: str) -> Task:
    """The :class:`Task` called ``name`` (clear error listing the valid names)."""
    try:
        return TASKS[name]
    except KeyError:
        raise BrainaeError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}") from None
