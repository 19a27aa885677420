"""Inpainting in the BraTS 2023 "local synthesis" setting (issue 8): a real skull-stripped 1 mm clinical scan and
irregular, tumour-shaped masks over healthy tissue, brainae's default inpainter vs biharmonic inpainting. JSON.

Data: ``../shared/data/lesion-dev`` (BraTS 2013 pat0001, T1c, 1 mm, 240 x 240 x 155, skull-stripped, z-scored
inside the brain; never shipped). Outside ``brainmask.nii.gz`` every voxel is set to the background value (the
minimum inside the volume), as a skull-stripped scan has it.

Masks: where the truth is known, i.e. over healthy tissue. The tumour's own shape (``OTMultiClass > 0``, its
largest connected component) and its sub-regions are mirrored left-right about the brain mask's centre, then
shifted by ``--shift`` voxels in each direction listed, and kept only where they fall inside the brain, away
from the tumour (at least 3 voxels from any tumour voxel); each such mask is one case. Masks of ``--min-ml`` to
``--max-ml`` millilitres are scored.

Baseline: biharmonic inpainting, solved by :func:`brainae.infer.fill_holes` (conjugate gradients on the same
energy as scikit-image's ``inpaint_biharmonic``, to a relative residual of 1e-5, within 0.001 dB of a float64
solve on this case's 40-60 ml masks, see benchmarks/RESULTS.md) because scikit-image's solver takes many
minutes per mask of this size; ``--skimage`` uses scikit-image instead.

Score: PSNR inside the mask against the scan, peak = the 99.5th percentile of the brain voxels (the inpainting
benchmark's ``stripped`` setting), and seconds per call. ``unchanged``: every voxel outside the mask equals the
blanked input.

Usage:
    python benchmarks/inpaint_brats.py [--model CKPT] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from _common import CASE, api_call, brainae_api, emit, mean


def tumour_shaped_masks(
    labels: np.ndarray, brain: np.ndarray, shifts: list[int], min_voxels: int, max_voxels: int
):
    """(name, mask) of mirrored, shifted tumour shapes over healthy brain (see module doc)."""
    from scipy import ndimage

    tumour = labels > 0
    comp, n = ndimage.label(tumour)
    largest = comp == (1 + int(np.argmax(ndimage.sum(tumour, comp, range(1, n + 1)))))
    near_tumour = ndimage.binary_dilation(tumour, iterations=3)
    centre = np.argwhere(brain)[:, 0]
    flip_about = int(
        round(centre.min() + centre.max())
    )  # x -> flip_about - x mirrors about the brain's centre
    shapes = {"whole": largest, "core": largest & (labels != 2), "enhancing": largest & (labels == 4)}
    out = []
    for name, shape in shapes.items():
        idx = np.argwhere(shape)
        if not len(idx):
            continue
        idx[:, 0] = flip_about - idx[:, 0]
        for axis, step in [(None, 0)] + [(a, s) for a in (1, 2) for s in shifts]:
            moved = idx.copy()
            if axis is not None:
                moved[:, axis] += step
            ok = np.all((moved >= 0) & (moved < np.array(brain.shape)), axis=1)
            mask = np.zeros(brain.shape, bool)
            mask[tuple(moved[ok].T)] = True
            mask &= brain & ~near_tumour
            if min_voxels <= mask.sum() <= max_voxels:
                where = "mirrored" if axis is None else f"mirrored, axis {axis} {step:+d}"
                out.append((f"{name} ({where})", mask))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="a brainae inpainting checkpoint instead of the default"
    )
    parser.add_argument(
        "--shift", default="-20,20", help="voxel shifts of the mirrored shapes (axes 1 and 2)"
    )
    parser.add_argument("--min-ml", type=float, default=2.0)
    parser.add_argument("--max-ml", type=float, default=60.0)
    parser.add_argument("--skimage", action="store_true", help="biharmonic by scikit-image (slow)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    api_inpaint = brainae_api("inpaint")
    from brainae.baselines import biharmonic_inpaint
    from brainae.infer import fill_holes
    from brainae.io import load_volume
    from brainae.scoring import masked_psnr, robust_peak

    vol = load_volume(CASE / "T1c_subtrMeanDivStd.nii.gz")
    brain = load_volume(CASE / "brainmask.nii.gz").data > 0
    labels = np.rint(load_volume(CASE / "OTMultiClass.nii.gz").data).astype(int)
    clean = np.where(brain, vol.data, vol.data.min()).astype(np.float32)
    peak = robust_peak(clean, brain)
    ml = float(np.prod(vol.zooms)) / 1000.0
    shifts = [int(s) for s in args.shift.split(",") if s]
    masks = tumour_shaped_masks(labels, brain, shifts, int(args.min_ml / ml), int(args.max_ml / ml))
    rows = []
    for name, mask in masks:
        blanked = np.where(mask, clean.min(), clean).astype(np.float32)
        for method in ("biharmonic", "brainae"):
            t0 = time.perf_counter()
            if method == "biharmonic":
                if args.skimage:
                    out = biharmonic_inpaint(blanked, mask)
                else:
                    out = fill_holes(blanked, mask, "biharmonic")
            else:
                img = api_call(
                    api_inpaint, (blanked, vol.affine), (mask.astype(np.uint8), vol.affine), model=args.model
                )
                out = np.asarray(img.dataobj, dtype=np.float32)
            row = {
                "mask": name,
                "ml": round(float(mask.sum()) * ml, 2),
                "method": method,
                "psnr": round(masked_psnr(clean, out, mask, peak=peak), 3),
                "unchanged": bool(np.array_equal(out[~mask], blanked[~mask])),
                "seconds": round(time.perf_counter() - t0, 2),
            }
            rows.append(row)
            print(f"[inpaint_brats] {row}", file=sys.stderr)
    summary = {
        m: {
            "psnr": mean([r["psnr"] for r in rows if r["method"] == m]),
            "seconds": mean([r["seconds"] for r in rows if r["method"] == m]),
            "unchanged_all": all(r["unchanged"] for r in rows if r["method"] == m),
        }
        for m in ("biharmonic", "brainae")
    }
    diffs = [b["psnr"] - a["psnr"] for a, b in zip(rows[::2], rows[1::2])]
    summary["brainae_minus_biharmonic"] = {
        "mean": mean(diffs),
        "better_in": sum(d > 0 for d in diffs),
        "of": len(diffs),
    }
    emit(
        {
            "case": "BraTS 2013 pat0001 T1c, 1 mm, skull-stripped",
            "peak": float(peak),
            "masks": len(masks),
            "summary": summary,
            "rows": rows,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
