"""Inpainting benchmark on held-out IXI volumes (issue 8): brainae's default inpainter vs biharmonic
inpainting, the thesis model and the blanked input, side by side in one run. Prints one JSON object.

Data: the ``test`` volumes of ``src/brainae/pretrained/ixi-split.json`` (2 mm, RAS+), each in two settings:

- ``head``: the whole head as stored;
- ``stripped``: skull-stripped, ``volume x brain mask`` (the BraTS 2023 inpainting setting), the brain mask
  from ``brainae.brainmask.brain_mask(data, zooms, method="deepbet")`` (cached under ``--mask-cache``).

Masks (seeded per volume, :mod:`brainae.lesions`), all fully inside the deepbet brain mask:

- ``cube``: ``--cubes`` cubes of 20 mm (10 voxels per side at 2 mm, 8 ml);
- ``irregular``: ``--irregular`` lesion-like blobs (a random ellipsoid perturbed by smooth noise, one connected
  component) of volumes cycling through ``--irregular-ml`` (default 2, 5, 10, 20 ml).

Every method gets the *blanked* input (masked voxels set to 0) and the mask, never the original masked values.

Methods (``METHODS``, one line each; ``--methods`` picks a subset):

- ``zero``: the blanked input (fill with 0);
- ``biharmonic``: :func:`brainae.baselines.biharmonic_inpaint` (3-D, per component in its bounding box + 4);
- ``thesis``: the shipped thesis Residual U-Net through :func:`brainae.apply.inpaint` (as ``brainae inpaint
  --model``);
- ``brainae``: ``brainae.inpaint((data, affine), (mask, affine), model=--model or None)`` (``pending`` while the
  Python API does not exist).

Score: **PSNR inside the mask** against the clean volume (the stripped clean volume in the ``stripped``
setting), peak = the clean volume's 99.5th percentile over all voxels (``head``) or over the brain voxels
(``stripped``). ``unchanged``: whether every voxel outside the mask equals the blanked input exactly.
Summary: per setting and mask type the mean PSNR of each method and its mean seconds per call; ``brainae -
biharmonic`` per mask type and on average over cubes and irregular masks.

Usage:
    python benchmarks/inpaint.py                                  # 6 volumes, 3 cubes + 3 irregular each
    python benchmarks/inpaint.py --volumes 1 --cubes 1 --irregular 1 --methods zero,biharmonic,thesis
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from _common import (
    MASK_CACHE,
    Pending,
    api_call,
    brainae_api,
    cached_brain_mask,
    emit,
    mean,
    seed_for,
    split_files,
)


@dataclasses.dataclass
class Context:
    vol: object  # brainae.io.Volume (RAS+) holding the blanked input
    args: argparse.Namespace


_CACHE: dict = {}


def run_thesis(x: np.ndarray, mask: np.ndarray, ctx: Context) -> np.ndarray:
    from brainae.apply import inpaint, load_applicable
    from brainae.pretrained import THESIS_RES_UNET

    if "thesis" not in _CACHE:
        model, prep, _ = load_applicable(THESIS_RES_UNET)
        _CACHE["thesis"] = (model, prep)
    model, prep = _CACHE["thesis"]
    return inpaint(dataclasses.replace(ctx.vol, data=x), mask, model, prep).data


def run_brainae(x: np.ndarray, mask: np.ndarray, ctx: Context) -> np.ndarray:
    fn = _CACHE.get("api_inpaint")
    if fn is None:
        raise Pending("brainae.inpaint does not exist yet")
    aff = ctx.vol.affine
    out = np.asarray(
        api_call(
            fn, (x, aff), (mask.astype(np.uint8), aff), model=ctx.args.model, device=ctx.args.device
        ).dataobj,
        dtype=np.float32,
    )
    if out.shape != x.shape:
        raise RuntimeError(f"brainae.inpaint returned shape {out.shape} for an input of {x.shape}")
    return out


def run_biharmonic(x: np.ndarray, mask: np.ndarray, ctx: Context) -> np.ndarray:
    from brainae.baselines import biharmonic_inpaint

    return biharmonic_inpaint(x, mask)


METHODS = [
    ("zero", lambda x, mask, ctx: x),
    ("biharmonic", run_biharmonic),
    ("thesis", run_thesis),
    ("brainae", run_brainae),
]


def make_masks(brain, zooms, rng, args) -> list[tuple[str, str, np.ndarray]]:
    """(type, description, mask) for one volume."""
    from brainae.lesions import irregular_mask, random_cube_mask

    out = []
    for _ in range(args.cubes):
        out.append(("cube", "20mm", random_cube_mask(brain, zooms, rng, side_mm=20.0)))
    mls = [float(v) for v in args.irregular_ml.split(",")]
    for k in range(args.irregular):
        ml = mls[k % len(mls)]
        out.append(("irregular", f"{ml:g}ml", irregular_mask(brain.shape, zooms, rng, ml, brain_mask=brain)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=6, help="how many test volumes (of 6)")
    parser.add_argument("--cubes", type=int, default=3, help="20 mm cubes per volume")
    parser.add_argument("--irregular", type=int, default=3, help="irregular masks per volume")
    parser.add_argument("--irregular-ml", default="2,5,10,20")
    parser.add_argument("--settings", default="head,stripped")
    parser.add_argument("--methods", default=",".join(n for n, _ in METHODS))
    parser.add_argument("--model", default=None, help="a brainae checkpoint instead of the default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mask-cache", default=str(MASK_CACHE))
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    _CACHE["api_inpaint"] = brainae_api("inpaint")
    from brainae.io import load_volume
    from brainae.scoring import masked_psnr, robust_peak

    wanted = [m for m in args.methods.split(",") if m]
    unknown = set(wanted) - {n for n, _ in METHODS}
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {[n for n, _ in METHODS]}")
    methods = [(n, f) for n, f in METHODS if n in wanted]
    settings = [s for s in args.settings.split(",") if s]
    files = split_files("test")[: args.volumes]
    pending: dict[str, str] = {}
    rows = []

    for f in files:
        vol = load_volume(f)
        brain = cached_brain_mask(vol, Path(args.mask_cache))
        rng = np.random.default_rng(seed_for(args.seed, vol.id))
        masks = make_masks(brain, vol.zooms, rng, args)
        for setting in settings:
            clean = vol.data if setting == "head" else np.where(brain, vol.data, 0.0).astype(np.float32)
            peak = robust_peak(vol.data) if setting == "head" else robust_peak(vol.data, brain)
            for mtype, desc, mask in masks:
                blanked = np.where(mask, 0.0, clean).astype(np.float32)
                ctx = Context(dataclasses.replace(vol, data=blanked), args)
                for name, fn in methods:
                    if name in pending:
                        continue
                    t0 = time.perf_counter()
                    try:
                        out = fn(blanked, mask, ctx)
                    except Pending as exc:
                        pending[name] = str(exc)
                        print(f"[inpaint] {name}: pending ({exc})", file=sys.stderr)
                        continue
                    seconds = time.perf_counter() - t0
                    row = {
                        "volume": vol.id,
                        "setting": setting,
                        "mask": mtype,
                        "size": desc,
                        "voxels": int(mask.sum()),
                        "method": name,
                        "psnr": round(masked_psnr(clean, out, mask, peak=peak), 3),
                        "unchanged": bool(np.array_equal(out[~mask], blanked[~mask])),
                        "seconds": round(seconds, 3),
                    }
                    rows.append(row)
                    print(f"[inpaint] {json.dumps(row)}", file=sys.stderr)

    summary: dict = {}
    for setting in settings:
        for mtype in ("cube", "irregular"):
            cell = {}
            for name, _ in methods:
                sel = [
                    r for r in rows if r["setting"] == setting and r["mask"] == mtype and r["method"] == name
                ]
                if sel:
                    cell[name] = {
                        "psnr": mean(r["psnr"] for r in sel),
                        "seconds": mean(r["seconds"] for r in sel),
                        "unchanged_all": all(r["unchanged"] for r in sel),
                        "n": len(sel),
                    }
            if cell:
                summary[f"{setting}_{mtype}"] = cell
    comparisons: dict = {}
    for a, b in (
        ("brainae", "biharmonic"),
        ("thesis", "biharmonic"),
        ("biharmonic", "zero"),
        ("brainae", "thesis"),
    ):
        diffs = {k: round(c[a]["psnr"] - c[b]["psnr"], 3) for k, c in summary.items() if a in c and b in c}
        if diffs:
            comparisons[f"{a}-{b}"] = {"per_mask_type": diffs, "mean": mean(diffs.values())}

    report = {
        "benchmark": "inpaint",
        "volumes": [f.name.removesuffix(".nii.gz") for f in files],
        "settings": settings,
        "masks_per_volume": {
            "cube_20mm": args.cubes,
            "irregular": args.irregular,
            "irregular_ml": args.irregular_ml,
        },
        "methods": [n for n, _ in methods],
        "model": args.model or "default",
        "threads": args.threads,
        "seed": args.seed,
        "pending": pending,
        "summary": summary,
        "comparisons": comparisons,
        "per_mask": rows,
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
