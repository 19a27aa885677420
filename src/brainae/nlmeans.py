"""Fast 3-D non-local means in PyTorch: the self-similarity half of brainae's denoiser.

Non-local means replaces each voxel by a weighted mean of the voxels around it (within ``radius`` voxels along
each axis), each weighted by how alike the patches (``patch`` voxels a side, 3 by default) around the two
voxels are: ``w = exp(-max(d^2 - 2 sigma^2, 0) / h^2)``, with ``d^2`` the mean squared difference of the two
patches, ``h = h_factor x sigma`` (Buades et al. 2005; the ``- 2 sigma^2`` is the expected ``d^2`` of two
identical patches under noise of sd ``sigma``, as in Coupé et al. 2008's blockwise filter). The voxel itself
has weight 1. Several strengths ``h_factor`` can be computed in one pass: they share the patch distances.

Why brainae needs it: the 3-D U-Net denoiser, trained on 20 volumes, is on its own about as good as averaging
similar patches of the same scan, and the two make different errors; :func:`brainae.infer.denoise_volume`
keeps a share of the model's change and of the changes of non-local means at several strengths and search
radii, calibrated per noise level (benchmarks/RESULTS.md).

Speed: each pair of opposite offsets is computed once and credited to both voxels, the patch distance is a
separable box sum, the volume is padded by replication so that every voxel, edge ones included, has its full
search window, and it is filtered in slabs of about a million voxels (the arrays stay in the CPU's cache).
On 2 CPU cores, radius 2: about 0.4 s for a 120 x 120 x 90 volume, 3 s for 256 x 256 x 150 (one strength).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

__all__ = ["nl_means", "nl_means_batch", "nl_means_head"]


def _box_sum(d, dim: int, size: int):
    """Sums of ``size`` consecutive entries along ``dim`` (the axis shrinks by ``size - 1``)."""
    n = d.shape[dim] - size + 1
    out = d.narrow(dim, 0, n) + d.narrow(dim, 1, n) if size > 1 else d.narrow(dim, 0, n).clone()
    for j in range(2, size):
        out += d.narrow(dim, j, n)
    return out


def nl_means_batch(
    batch,
    sigma,
    *,
    radius: int = 2,
    patch: int = 3,
    h_factor: float | Sequence[float] = 1.0,
    min_sigma: float = 1e-3,
    slab_voxels: int = 1_000_000,
    squares: bool | Sequence[float] = False,
):
    """Non-local means of each 3-D image of a tensor (``... x D x H x W``), one noise sd per image.

    Args:
        batch: float tensor; the last three dimensions are the image, the leading ones index images.
        sigma: the noise sd, a number or a tensor of the leading shape (one per image), in intensity units.
        radius: search radius in voxels (the window is ``2 radius + 1`` voxels per side).
        patch: patch side in voxels (odd).
        h_factor: filtering strength ``h = h_factor x sigma``; a sequence of factors gives one result per
            factor, computed from the same patch distances (each extra factor costs about a third of the first).
        min_sigma: ``sigma`` is raised to at least this (a noise-free image is then left almost unchanged).
        slab_voxels: about how many voxels are filtered at a time (slabs along the first image axis; the
            result does not depend on it).
        squares: also return, for each factor (True) or for the listed factors, the mean of the squared
            intensities with the same weights (its root is the local RMS: for Rician noise of sd ``sigma``,
            ``sqrt(mean(x^2) - 2 sigma^2)`` estimates the noise-free magnitude without the plain mean's bias).

    Returns:
        A float32 tensor of the input's shape; for a sequence of factors (or with ``squares``), with a leading
        axis of one result per factor, then one mean of squares per factor that ``squares`` names.
    """
    import torch
    import torch.nn.functional as F

    x = batch.float()
    lead = x.shape[:-3]
    x = x.reshape(-1, *x.shape[-3:])
    sig = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
    sig = sig.expand(x.shape[0]).clamp(min=min_sigma).view(-1, 1, 1, 1)
    if patch < 1 or patch % 2 == 0:
        raise ValueError(f"patch must be an odd number of voxels, got {patch}")
    factors = [float(h_factor)] if np.ndim(h_factor) == 0 else [float(h) for h in h_factor]
    q = radius + patch // 2
    padded = F.pad(x[:, None], (q,) * 6, mode="replicate")[:, 0].contiguous()
    if squares is True:
        squares = factors
    squared = [factors.index(float(h)) for h in squares] if squares else []
    count = len(factors) + len(squared)
    out = torch.empty((count, *x.shape), dtype=torch.float32, device=x.device)
    # slabs along the first image axis: the same result (each voxel needs only the q planes on either side),
    # with arrays small enough to stay in the CPU's cache: 2-3x faster on a 1 mm volume
    step = max(1, slab_voxels // (x.shape[-1] * x.shape[-2] * x.shape[0]))
    for z in range(0, x.shape[1], step):
        piece = padded[:, z : min(z + step, x.shape[1]) + 2 * q]
        for k, result in enumerate(_nl_means_padded(piece, sig, radius, patch, factors, squared)):
            out[k, :, z : z + result.shape[1]] = result
    out = out.reshape(count, *lead, *x.shape[-3:])
    return out[0] if np.ndim(h_factor) == 0 and not squares else out


def _nl_means_padded(
    padded, sig, radius: int, patch: int, factors: list[float], squared: Sequence[int] = ()
) -> list:
    """Non-local means of the images of ``padded`` (N x D x H x W, padded by ``radius + patch // 2`` on
    every side), without the padding: one N x D' x H' x W' tensor per strength factor, then one weighted mean
    of the squared intensities for each factor index in ``squared``."""
    import torch

    half = patch // 2
    voxels = float(patch**3)
    q = radius + half
    nums = [padded.clone() for _ in factors]
    dens = [torch.ones_like(padded) for _ in factors]
    power = padded * padded if squared else None
    sums = {k: power.clone() for k in squared}
    invs = [-1.0 / (voxels * (h * sig) ** 2) for h in factors]  # d^2 below is a sum over a patch's voxels
    sub = voxels * 2.0 * sig**2
    size = padded.shape[1:]
    for off in itertools.product(range(-radius, radius + 1), repeat=3):
        if not off > (0, 0, 0):  # one of each pair of opposite offsets (and not the voxel itself)
            continue
        sa = (slice(None),) + tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(off, size))
        sb = (slice(None),) + tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(off, size))
        d = torch.sub(padded[sa], padded[sb])
        d.mul_(d)
        u = _box_sum(_box_sum(_box_sum(d, 1, patch), 2, patch), 3, patch)
        u.sub_(sub).clamp_(min=0)
        ia = (slice(None),) + tuple(slice(a.start + half, a.stop - half) for a in sa[1:])
        ib = (slice(None),) + tuple(slice(b.start + half, b.stop - half) for b in sb[1:])
        for k, (num, den, inv) in enumerate(zip(nums, dens, invs)):
            # exp(-80) ~ 2e-35 is still a normal float: weights below it would be denormals, which make
            # the accumulation 10x slower on x86 CPUs and change nothing next to the voxel's own weight 1
            w = u.mul_(inv) if k == len(factors) - 1 else torch.mul(u, inv)
            w = w.clamp_(min=-80.0).exp_()
            num[ia].addcmul_(w, padded[ib])
            den[ia].add_(w)
            num[ib].addcmul_(w, padded[ia])
            den[ib].add_(w)
            if k in sums:
                sums[k][ia].addcmul_(w, power[ib])
                sums[k][ib].addcmul_(w, power[ia])
    inner = (slice(None),) + (slice(q, -q),) * 3
    means = [num[inner] / den[inner] for num, den in zip(nums, dens)]
    return means + [sums[k][inner] / dens[k][inner] for k in squared]


def nl_means(
    volume: np.ndarray,
    sigma: float,
    *,
    radius: int = 2,
    patch: int = 3,
    h_factor: float | Sequence[float] = 1.0,
    squares: bool | Sequence[float] = False,
) -> np.ndarray:
    """Non-local means of one 3-D array (see the module doc); float32, same shape (a sequence of ``h_factor``
    values, or ``squares``: results stacked along a new first axis, as :func:`nl_means_batch` orders them).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> clean = np.zeros((24, 24, 24), np.float32); clean[:, :12] = 1.0
        >>> noisy = clean + rng.normal(0, 0.1, clean.shape).astype(np.float32)
        >>> bool(np.abs(nl_means(noisy, 0.1) - clean).mean() < np.abs(noisy - clean).mean() / 2)
        True
    """
    import torch

    data = np.asarray(volume, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"nl_means needs a 3-D array, got shape {data.shape}")
    x = torch.from_numpy(np.ascontiguousarray(data))
    return nl_means_batch(
        x, float(sigma), radius=radius, patch=patch, h_factor=h_factor, squares=squares
    ).numpy()


def nl_means_head(
    volume: np.ndarray, sigma: float, *, floor: float = 0.1, margin: int = 4, **kw
) -> np.ndarray:
    """:func:`nl_means` inside the box around the voxels whose 5 x 5 x 5 mean is above ``floor`` (the head of
    an intensity-normalised scan, plus ``margin`` voxels); outside the box each result is the input as it is
    (its square for a mean of squares). On a 1 mm scan with a wide field of view this skips a third or more of
    the voxels."""
    from scipy import ndimage

    data = np.asarray(volume, dtype=np.float32)
    # the box of the 5-voxel local means above floor: single noisy voxels in the air do not widen it
    where = np.argwhere(ndimage.uniform_filter(data, 5) > floor)
    if not len(where):
        return nl_means(data, sigma, **kw)
    lo = np.maximum(where.min(axis=0) - margin, 0)
    hi = np.minimum(where.max(axis=0) + 1 + margin, data.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    inside = nl_means(data[box], sigma, **kw)
    out = np.broadcast_to(data, inside.shape[:-3] + data.shape).copy()
    squares = kw.get("squares")
    if squares:
        factors = kw.get("h_factor", 1.0)
        count = np.size(factors) if squares is True else len(squares)
        out[inside.shape[0] - count :] = data * data
    out[(Ellipsis, *box)] = inside
    return out
