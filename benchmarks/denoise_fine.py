"""Denoising at ~1 mm when the scan carries noise of its own (issue 8): what the per-scan SURE strength and the
2 mm blend tables do, scored against the noisy "original" (as the benchmarks do) and against the noise-free
truth. JSON.

Data: a 2 mm IXI ``val`` volume (never a test volume) upsampled x2 (``denoise.upsample_1mm``: cubic, 1 mm) = the
truth ``s``; the "original" scan ``c`` = ``s`` with Rician noise of sd ``--intrinsic`` x the 99.5th percentile (0
= the original is the truth); the input = ``c`` + Gaussian noise at each ``--levels`` (``--kind rician``: the
magnitude of ``c`` plus complex Gaussian noise). ``--stripped``: everything
outside the volume's brain mask (deepbet, cached as in the other benchmarks, or ``NAME.nii.gz`` from the
``--masks`` folder; upsampled nearest) set to 0 after the noise (a skull-stripped scan: brainae then chooses its
strength by SURE); otherwise the head with its air (brainae uses its blend tables). Scores: PSNR over the head
(voxels of ``s`` above 5 % of the peak) or the brain (``--stripped``), peak = the 99.5th percentile of ``s``
there. Methods: ``noisy`` and ``brainae.denoise`` with each ``strength`` (``auto``: what the user gets;
``tables``; ``sure``); with ``--nlm``, also scikit-image 3-D non-local means given the sd of the *added* noise
(``brainae.baselines.nlm_denoise``, the setting of ``benchmarks/denoise.py``; ~90 s per call at 1 mm).

    python benchmarks/denoise_fine.py --intrinsic 0.03 --stripped
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from _common import cached_brain_mask, emit, split_files
from denoise import upsample_1mm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intrinsic", type=float, default=0.03)
    parser.add_argument("--levels", default="0.02,0.04,0.08")
    parser.add_argument("--kind", choices=("gaussian", "rician"), default="gaussian")
    parser.add_argument("--stripped", action="store_true")
    parser.add_argument("--nlm", action="store_true", help="also run scikit-image non-local means")
    parser.add_argument("--masks", default=None, help="folder of NAME.nii.gz brain masks [deepbet, cached]")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import nibabel as nib
    import torch
    from scipy import ndimage

    import brainae
    from brainae.baselines import nlm_denoise
    from brainae.io import load_volume
    from brainae.scoring import add_noise, head_mask

    torch.set_num_threads(args.threads)
    path = split_files("val")[0]
    vol = upsample_1mm(load_volume(path))
    s = vol.data
    if args.stripped:
        if args.masks:
            mask = nib.as_closest_canonical(nib.load(f"{args.masks}/{path.name}")).get_fdata() > 0
        else:
            mask = cached_brain_mask(load_volume(path))
        region = ndimage.zoom(mask.astype(np.uint8), 2, order=0).astype(bool)
    else:
        region = head_mask(s)
    peak = float(np.percentile(s[region], 99.5))
    c = (
        add_noise(s, args.intrinsic * peak / float(np.percentile(s, 99.5)), "rician", seed=7)
        if args.intrinsic
        else s
    )
    c = np.asarray(c, np.float32)
    if args.stripped:
        s, c = np.where(region, s, 0).astype(np.float32), np.where(region, c, 0).astype(np.float32)

    def psnr(out: np.ndarray, ref: np.ndarray) -> float | None:
        mse = float(np.mean((out[region] - ref[region]) ** 2))
        return round(10 * np.log10(peak**2 / mse), 3) if mse > 0 else None  # None: identical

    rows = {}
    for level in [float(v) for v in args.levels.split(",") if v]:
        rng = np.random.default_rng(3)
        y = c + rng.normal(0.0, level * peak, c.shape).astype(np.float32)
        if args.kind == "rician":
            y = np.sqrt(y**2 + rng.normal(0.0, level * peak, c.shape).astype(np.float32) ** 2)
        if args.stripped:
            y = np.where(region, y, 0).astype(np.float32)
        outs = {"noisy": y}
        for strength in ("auto", "tables", "sure"):
            img = brainae.denoise((y, vol.affine), strength=strength)
            outs[f"brainae_{strength}"] = np.asarray(img.dataobj, np.float32)
        if args.nlm:
            outs["nlm"] = nlm_denoise(y, level * peak)
            if args.stripped:
                outs["nlm"] = np.where(region, outs["nlm"], 0).astype(np.float32)
        rows[f"{args.kind}_{level}"] = {
            m: {"vs_original": psnr(o, c), "vs_truth": psnr(o, s)} for m, o in outs.items()
        }
        print(json.dumps({f"{args.kind}_{level}": rows[f"{args.kind}_{level}"]}), flush=True)
    emit(
        {
            "benchmark": "denoise_fine",
            "volume": path.name,
            "intrinsic": args.intrinsic,
            "stripped": args.stripped,
            "original_vs_truth": psnr(c, s) if args.intrinsic else None,
            "results": rows,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
