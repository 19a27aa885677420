"""Denoising a real ~1 mm clinical scan (issue 8): brainae's default denoiser vs 3-D non-local means. JSON.

Data: ``../shared/data/lesion-dev`` (BraTS 2013 pat0001, T1c, 1 mm, skull-stripped; never shipped), cropped
to the brain mask's bounding box plus 4 voxels, shifted so that the brain's minimum is 0 and the background is
0 (a skull-stripped scan as a user has it; the file is z-scored).

Noise: Gaussian of sd ``level x peak`` (peak = the 99.5th percentile of the brain voxels), added inside the
brain only (noise, then skull stripping), seeded per level. Score: PSNR over the brain voxels against the
scan, peak as above, and seconds per call. Methods: ``noisy`` (the input), ``nlm``
(:func:`brainae.baselines.nlm_denoise` with the true sigma, as in ``benchmarks/denoise.py``), ``brainae``
(``brainae.denoise`` on the array with its 1 mm affine; ``--model`` for another checkpoint). ``clean``: the
scan itself through brainae.

Usage:
    python benchmarks/denoise_brats.py [--methods noisy,nlm,brainae] [--levels 0.02,0.04,0.08] [--out F.json]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import CASE, api_call, brainae_api, emit


def load_case():
    import nibabel as nib

    img = nib.load(CASE / "T1c_subtrMeanDivStd.nii.gz")
    data = np.asarray(img.dataobj, np.float32)
    brain = np.asarray(nib.load(CASE / "brainmask.nii.gz").dataobj) > 0
    idx = np.argwhere(brain)
    lo, hi = np.maximum(idx.min(0) - 4, 0), idx.max(0) + 5
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    data, brain = data[box], brain[box]
    data = np.where(brain, data - data[brain].min(), 0).astype(np.float32)
    affine = img.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ lo
    return data, brain, affine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="noisy,nlm,brainae")
    parser.add_argument("--levels", default="0.02,0.04,0.08")
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from brainae.baselines import nlm_denoise

    denoise = brainae_api("denoise")
    data, brain, affine = load_case()
    peak = float(np.percentile(data[brain], 99.5))
    methods = [m for m in args.methods.split(",") if m]

    def psnr(out: np.ndarray) -> float:
        return round(float(10 * np.log10(peak**2 / np.mean((out[brain] - data[brain]) ** 2))), 3)

    def run(method: str, x: np.ndarray, sigma: float):
        t0 = time.perf_counter()
        if method == "noisy":
            out = x
        elif method == "nlm":
            out = nlm_denoise(x, sigma)
        elif method == "brainae":
            out = np.asarray(api_call(denoise, (x, affine), model=args.model).dataobj, np.float32)
        else:
            raise SystemExit(f"unknown method {method!r}; choose from noisy, nlm, brainae")
        return {"psnr": psnr(np.where(brain, out, 0)), "seconds": round(time.perf_counter() - t0, 2)}

    results: dict = {}
    if "brainae" in methods:
        results["clean"] = {"brainae": run("brainae", data, 0.0)}
    for level in [float(v) for v in args.levels.split(",") if v]:
        rng = np.random.default_rng(int(round(level * 1000)))
        noisy = data + rng.normal(0.0, level * peak, data.shape).astype(np.float32)
        noisy = np.where(brain, noisy, 0).astype(np.float32)
        results[f"gaussian_{level}"] = {m: run(m, noisy, level * peak) for m in methods}
    report = {
        "benchmark": "denoise_brats",
        "case": "BraTS 2013 pat0001 T1c (1 mm, skull-stripped)",
        "shape": list(data.shape),
        "model": args.model or "default",
        "results": results,
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
