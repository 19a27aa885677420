"""Seconds per volume of brainae's three default models on a 2 mm and a ~1 mm volume (issue 8/9 timing). JSON.

Volumes: the first held-out ``test`` volume of ``src/brainae/pretrained/ixi-split.json`` (2 mm, 120 x 120 x 90)
and the same volume resampled (scipy ``zoom``, order 1) onto a 256 x 256 x 150 grid (the size of a native
~1 mm T1 scan; the field of view is kept, so the voxel size is ~0.94 x 0.94 x 1.2 mm). The upsampled anatomy
is 2 mm content: this is a timing run only, no quality is scored.

Calls (the public API, default models loaded once before timing, ``--repeats`` calls each, the median
reported):

- ``denoise``: ``brainae.denoise((noisy, affine))`` on the volume with 4 % Gaussian noise;
  ``denoise_stripped``: the same, skull-stripped (no air: on the ~1 mm grid the per-scan SURE path);
- ``inpaint``: ``brainae.inpaint((blanked, affine), (mask, affine))`` (the default: the inpainting atlas,
  loaded once) with one 20 mm cube inside the brain (``inpaint_cube``) and with one ~10 ml irregular mask
  (``inpaint_irregular``);
- ``anomaly``: ``brainae.anomaly((stripped, affine), brain_mask=(brain, affine))`` on the skull-stripped
  volume (brain mask given: the time excludes brain extraction).

Each call runs once untimed first (warm-up), then ``--repeats`` timed calls.

Usage:
    python benchmarks/timing.py --threads 2 --out /tmp/bench/timing.json
    python benchmarks/timing.py --device cuda --volume IXI.nii.gz --mask-method threshold   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MASK_CACHE, cached_brain_mask, seed_for, split_files  # noqa: E402

NATIVE_SHAPE = (256, 256, 150)


def resample(vol, brain, shape):
    """Volume (order 1) and brain mask (nearest) on a ``shape`` grid covering the same field of view."""
    import dataclasses

    from scipy import ndimage

    factors = [n / s for n, s in zip(shape, vol.data.shape)]
    data = np.maximum(ndimage.zoom(vol.data, factors, order=1), 0.0).astype(np.float32)
    mask = ndimage.zoom(brain.astype(np.uint8), factors, order=0) > 0
    zooms = tuple(z / f for z, f in zip(vol.zooms, factors))
    scale = np.eye(4)
    scale[:3, :3] = np.diag([1 / f for f in factors])
    scale[:3, 3] = [(1 / f - 1) / 2 for f in factors]  # fine voxel centres inside the coarse field of view
    return dataclasses.replace(vol, data=data, zooms=zooms, affine=vol.affine @ scale), mask


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(float(np.median(times)), 3), [round(t, 3) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--grids", default="2mm,1mm")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    parser.add_argument(
        "--volume", default=None, help="a 2 mm NIfTI instead of the first held-out test volume"
    )
    parser.add_argument("--mask-method", default="deepbet", choices=("deepbet", "threshold"))
    parser.add_argument("--mask-cache", default=str(MASK_CACHE))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import brainae
    from brainae.infer import load_volumetric
    from brainae.io import load_volume
    from brainae.lesions import irregular_mask, random_cube_mask
    from brainae.scoring import add_noise

    models = {t: load_volumetric(None, task=t, device=args.device) for t in ("denoise", "anomaly")}
    from brainae.atlas import load_atlas
    from brainae.infer import DEFAULT_ATLAS

    models["inpaint"] = load_atlas(DEFAULT_ATLAS)  # the default inpainter
    vol2 = load_volume(args.volume or split_files("test")[0])
    brain2 = cached_brain_mask(vol2, Path(args.mask_cache), method=args.mask_method)
    dev = {"device": args.device}
    results: dict = {}
    for grid in [g for g in args.grids.split(",") if g]:
        vol, brain = (vol2, brain2) if grid == "2mm" else resample(vol2, brain2, NATIVE_SHAPE)
        aff = vol.affine
        rng = np.random.default_rng(seed_for("timing", grid))
        noisy = add_noise(vol.data, 0.04, "gaussian", seed=seed_for("timing", grid, "noise"))
        cube = random_cube_mask(brain, vol.zooms, rng, side_mm=20.0)
        irr = irregular_mask(brain.shape, vol.zooms, rng, 10.0, brain_mask=brain)
        stripped = np.where(brain, vol.data, 0.0).astype(np.float32)
        b8 = brain.astype(np.uint8)
        blanked_cube = np.where(cube, 0.0, vol.data).astype(np.float32)
        blanked_irr = np.where(irr, 0.0, vol.data).astype(np.float32)
        calls = {
            "denoise": partial(brainae.denoise, (noisy, aff), model=models["denoise"], **dev),
            "denoise_stripped": partial(
                brainae.denoise, (np.where(brain, noisy, 0.0).astype(np.float32), aff), model=models["denoise"], **dev
            ),
            "inpaint_cube": partial(
                brainae.inpaint,
                (blanked_cube, aff),
                (cube.astype(np.uint8), aff),
                model=models["inpaint"],
                **dev,
            ),
            "inpaint_irregular": partial(
                brainae.inpaint,
                (blanked_irr, aff),
                (irr.astype(np.uint8), aff),
                model=models["inpaint"],
                **dev,
            ),
            "anomaly": partial(
                brainae.anomaly, (stripped, aff), model=models["anomaly"], brain_mask=(b8, aff), **dev
            ),
        }
        row = {
            "shape": list(vol.data.shape),
            "zooms": [round(float(z), 3) for z in vol.zooms],
            "cube_voxels": int(cube.sum()),
            "irregular_voxels": int(irr.sum()),
        }
        for name, fn in calls.items():
            fn()  # warm-up (CUDA context, kernels, allocator): not timed
            med, all_t = timed(fn, args.repeats)
            row[name] = {"seconds_median": med, "seconds": all_t}
            print(f"[timing] {grid} {name}: {med} s {all_t}", file=sys.stderr)
        results[grid] = row
    report = {
        "benchmark": "timing",
        "volume": vol2.id,
        "threads": args.threads,
        "device": args.device,
        "repeats": args.repeats,
        "models": {t: (m.path.name if hasattr(m, "path") else DEFAULT_ATLAS.name) for t, m in models.items()},
        "results": results,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
