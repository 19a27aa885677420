"""Seconds of the classical baselines and brain-mask backends that docstrings quote.

- ``nlm_slice_ms`` / ``biharmonic_slice_ms``: ``brainae evaluate``'s 2-D baselines
  (:func:`brainae.baselines.nlm_denoise_slice`, :func:`brainae.baselines.biharmonic_inpaint_slice`) on 128 x 128
  slices of the 2 mm IXI sample with Gaussian noise sd 0.04 / a 30-pixel blank square, one process;
- ``threshold_mask_s`` / ``deepbet_mask_s``: :func:`brainae.brainmask.brain_mask` per 2 mm volume (deepbet only
  when installed; its first call, which loads the network, is not timed).

Prints one JSON object. Timings depend on the machine and on what else runs on it: quote them with the cores.

    python benchmarks/baseline_timing.py [--slices 20] [--volumes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from _common import DATA
from brainae.baselines import biharmonic_inpaint_slice, nlm_denoise_slice
from brainae.brainmask import brain_mask, deepbet_available
from brainae.io import load_volume
from brainae.volume import Preprocessing, volume_to_slices


def per_call(fn, items) -> float:
    t = time.perf_counter()
    for item in items:
        fn(*item)
    return (time.perf_counter() - t) / len(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--slices", type=int, default=20, help="128 x 128 slices for the 2-D baselines")
    ap.add_argument("--volumes", type=int, default=2, help="2 mm volumes for the brain masks")
    args = ap.parse_args()
    files = sorted(DATA.glob("*.nii.gz"))[: args.volumes]
    vols = [load_volume(f) for f in files]
    stack = volume_to_slices(vols[0].data, vols[0].zooms, Preprocessing(size=128, fov_mm=240.0)).images
    mid = len(stack) // 2
    clean = stack[mid - args.slices // 2 : mid - args.slices // 2 + args.slices].astype(np.float64)
    rng = np.random.default_rng(0)
    noisy = np.clip(clean + rng.normal(0, 0.04, clean.shape), 0, 1)
    hole = np.zeros((128, 128), bool)
    hole[49:79, 49:79] = True
    result = {
        "cpu_count": os.cpu_count(),
        "slices": len(clean),
        "nlm_slice_ms": round(1e3 * per_call(lambda x: nlm_denoise_slice(x), [(x,) for x in noisy]), 1),
        "biharmonic_slice_ms": round(
            1e3 * per_call(lambda x: biharmonic_inpaint_slice(x, hole), [(x,) for x in clean]), 1
        ),
        "volumes": len(vols),
        "threshold_mask_s": round(
            per_call(lambda v: brain_mask(v.data, v.zooms, "threshold"), [(v,) for v in vols]), 2
        ),
    }
    if deepbet_available():
        brain_mask(vols[0].data, vols[0].zooms, "deepbet")  # loads the network
        result["deepbet_mask_s"] = round(
            per_call(lambda v: brain_mask(v.data, v.zooms, "deepbet"), [(v,) for v in vols]), 2
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
