"""Denoising benchmark on held-out IXI volumes (issue 8): brainae's default model vs 3-D non-local means, the
thesis model and the noisy input, side by side in one run. Prints one JSON object (``--out`` also writes it).

Data: the ``test`` volumes of ``src/brainae/pretrained/ixi-split.json`` (held out from every model's training
and calibration), read from ``../shared/data/ixi-t1-2mm`` (2 mm, 120 x 120 x 90) in RAS+ order.

Definitions (:mod:`brainae.scoring`):

- **peak**: the clean volume's 99.5th percentile (all voxels); **head**: clean voxels above 5 % of the peak.
- **noise** of level ``f`` (``--levels``, default 2 / 4 / 8 %): sd ``f x peak``; ``gaussian`` is added,
  ``rician`` is ``|clean + n1 + i n2|`` (``--kinds``). Seeded per (volume, kind, level): every method sees the
  same noisy volume.
- **head PSNR**: ``10 log10(peak^2 / MSE over the head)`` of a method's output against the clean volume.
- **sharpness**: mean gradient magnitude over the head of the output divided by the clean volume's (1 = as
  sharp as the clean scan; below 1 = blurrier; noise raises it above 1).
- **seconds**: wall time of the method's call per volume (loading excluded; models loaded once, before).
- **clean**: each model applied to the clean volume, head PSNR vs the clean volume ("stays close on a clean
  scan"); NLM is not run on clean volumes (it needs a noise sd).

Methods (``METHODS``: one line each; ``--methods`` picks a subset):

- ``noisy``: the input itself.
- ``nlm``: :func:`brainae.baselines.nlm_denoise` with the true sigma (patch 5, distance 6, h 0.6 sigma, fast).
- ``thesis``: the shipped thesis Residual U-Net through the 2-D path exactly as ``brainae denoise --model``
  runs it (:func:`brainae.apply.denoise`, the checkpoint's slice selection).
- ``brainae``: ``brainae.denoise((data, affine), model=--model or None)``, the package's default denoiser
  (reported as ``pending`` while the Python API does not exist).

Summary: per (kind, level) the mean over volumes of each method's head PSNR and seconds; ``brainae - nlm``
per level and on average; whether brainae beats the noisy input at every level.

``--native``: a ~1 mm case: a held-out 2 mm volume upsampled by 2 along every axis (scipy ``zoom``, order 3;
180 x 240 x 240 at 1 mm, about the voxel count of a native 256 x 256 x 150 scan), Gaussian noise at
``--native-levels``; head PSNR, sharpness and seconds per method, and the clean input through each model
(sharpness of the clean-in output is the blur test: "not blurrier than the input").

Usage:
    python benchmarks/denoise.py                                   # 6 test volumes, all levels, both kinds
    python benchmarks/denoise.py --volumes 1 --levels 0.04 --kinds gaussian --methods noisy,nlm,thesis
    python benchmarks/denoise.py --native --volumes 0              # only the 1 mm timing / sharpness case
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import numpy as np

from _common import Pending, api_call, brainae_api, emit, mean, seed_for, split_files


def image_data(img) -> np.ndarray:
    return np.asarray(img.dataobj, dtype=np.float32)


@dataclasses.dataclass
class Context:
    vol: object  # brainae.io.Volume (RAS+), clean
    sigma: float
    args: argparse.Namespace


_CACHE: dict = {}


def _thesis():
    if "thesis" not in _CACHE:
        from brainae.apply import load_applicable
        from brainae.pretrained import THESIS_RES_UNET
        from brainae.slice_anomaly import selection_from

        model, prep, normative = load_applicable(THESIS_RES_UNET)
        _CACHE["thesis"] = (model, prep, selection_from(normative))
    return _CACHE["thesis"]


def run_thesis(x: np.ndarray, ctx: Context) -> np.ndarray:
    from brainae.apply import denoise

    model, prep, sel = _thesis()
    return denoise(dataclasses.replace(ctx.vol, data=x), model, prep, selection=sel).data


def run_brainae(x: np.ndarray, ctx: Context) -> np.ndarray:
    fn = _CACHE.setdefault("api_denoise", brainae_api("denoise"))
    if fn is None:
        raise Pending("brainae.denoise does not exist yet")
    out = image_data(api_call(fn, (x, ctx.vol.affine), model=ctx.args.model, device=ctx.args.device))
    if out.shape != x.shape:
        raise RuntimeError(f"brainae.denoise returned shape {out.shape} for an input of {x.shape}")
    return out


def run_nlm(x: np.ndarray, ctx: Context) -> np.ndarray:
    from brainae.baselines import nlm_denoise

    return nlm_denoise(x, ctx.sigma)


METHODS = [
    ("noisy", lambda x, ctx: x),
    ("nlm", run_nlm),
    ("thesis", run_thesis),
    ("brainae", run_brainae),
]
MODELS = ("thesis", "brainae")  # also run on clean inputs


def measure(fn, x, ctx, clean, head, zooms) -> dict:
    from brainae.scoring import gradient_sharpness, head_psnr

    t0 = time.perf_counter()
    out = fn(x, ctx)
    seconds = time.perf_counter() - t0
    value = head_psnr(clean, out)
    return {
        "psnr": round(value, 3) if np.isfinite(value) else None,
        "sharpness": round(gradient_sharpness(out, head, zooms) / gradient_sharpness(clean, head, zooms), 4),
        "seconds": round(seconds, 3),
    }


def try_measure(name, fn, x, ctx, clean, head, zooms, pending: dict) -> dict | None:
    if name in pending:
        return None
    try:
        return measure(fn, x, ctx, clean, head, zooms)
    except Pending as exc:
        pending[name] = str(exc)
        print(f"[denoise] {name}: pending ({exc})", file=sys.stderr)
        return None


def upsample_1mm(vol):
    """The volume upsampled by 2 (cubic spline) on a 1 mm grid covering the same field of view."""
    from scipy import ndimage

    data = ndimage.zoom(vol.data, 2, order=3).astype(np.float32)
    data = np.maximum(data, 0.0)
    shift = np.eye(4)
    shift[:3, :3] *= 0.5
    shift[:3, 3] = -0.25  # voxel centres of the fine grid inside the coarse voxels
    zooms = tuple(z / 2 for z in vol.zooms)
    return dataclasses.replace(vol, data=data, zooms=zooms, affine=vol.affine @ shift)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=6, help="how many test volumes (of 6)")
    parser.add_argument("--levels", default="0.02,0.04,0.08")
    parser.add_argument("--kinds", default="gaussian,rician")
    parser.add_argument("--methods", default=",".join(n for n, _ in METHODS))
    parser.add_argument("--model", default=None, help="a brainae checkpoint instead of the default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-clean", action="store_true", help="skip the clean-input runs")
    parser.add_argument("--native", action="store_true", help="also run the ~1 mm case")
    parser.add_argument("--native-levels", default="0.04")
    parser.add_argument("--native-methods", default=None, help="default: --methods")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from brainae.io import load_volume
    from brainae.scoring import add_noise, head_mask, noise_sd

    _CACHE["api_denoise"] = brainae_api("denoise")  # before brainae.anomaly (a submodule) can shadow names
    levels = [float(v) for v in args.levels.split(",") if v]
    kinds = [k for k in args.kinds.split(",") if k]
    wanted = [m for m in args.methods.split(",") if m]
    unknown = set(wanted) - {n for n, _ in METHODS}
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {[n for n, _ in METHODS]}")
    methods = [(n, f) for n, f in METHODS if n in wanted]
    files = split_files("test")[: args.volumes]
    pending: dict[str, str] = {}
    rows, clean_rows = [], []

    for f in files:
        vol = load_volume(f)
        clean = vol.data
        head = head_mask(clean)
        if not args.no_clean:
            ctx = Context(vol, 0.0, args)
            for name, fn in methods:
                if name in MODELS:
                    r = try_measure(name, fn, clean, ctx, clean, head, vol.zooms, pending)
                    if r is not None:
                        clean_rows.append({"volume": vol.id, "method": name, **r})
        for kind in kinds:
            for level in levels:
                noisy = add_noise(clean, level, kind, seed=seed_for(args.seed, vol.id, kind, level))
                ctx = Context(vol, noise_sd(clean, level), args)
                for name, fn in methods:
                    r = try_measure(name, fn, noisy, ctx, clean, head, vol.zooms, pending)
                    if r is not None:
                        row = {"volume": vol.id, "kind": kind, "level": level, "method": name, **r}
                        rows.append(row)
                        print(f"[denoise] {json.dumps(row)}", file=sys.stderr)

    summary: dict = {}
    for kind in kinds:
        for level in levels:
            key = f"{kind}_{level:g}"
            cell = {}
            for name, _ in methods:
                sel = [r for r in rows if r["kind"] == kind and r["level"] == level and r["method"] == name]
                if sel:
                    cell[name] = {
                        "psnr": mean(r["psnr"] for r in sel),
                        "sharpness": mean(r["sharpness"] for r in sel),
                        "seconds": mean(r["seconds"] for r in sel),
                        "n": len(sel),
                    }
            if cell:
                summary[key] = cell
    comparisons: dict = {}
    for a, b in (
        ("brainae", "nlm"),
        ("brainae", "noisy"),
        ("thesis", "nlm"),
        ("thesis", "noisy"),
        ("nlm", "noisy"),
    ):
        diffs = {k: round(c[a]["psnr"] - c[b]["psnr"], 3) for k, c in summary.items() if a in c and b in c}
        if diffs:
            comparisons[f"{a}-{b}"] = {"per_level": diffs, "mean": mean(diffs.values())}
    if "brainae-noisy" in comparisons:
        comparisons["brainae_above_noisy_at_every_level"] = all(
            v > 0 for v in comparisons["brainae-noisy"]["per_level"].values()
        )
    clean_summary = {
        name: {
            "psnr": mean(r["psnr"] for r in clean_rows if r["method"] == name),
            "sharpness": mean(r["sharpness"] for r in clean_rows if r["method"] == name),
            "seconds": mean(r["seconds"] for r in clean_rows if r["method"] == name),
        }
        for name in MODELS
        if any(r["method"] == name for r in clean_rows)
    }

    native = None
    if args.native:
        nat_wanted = (args.native_methods or args.methods).split(",")
        nat_methods = [(n, f) for n, f in METHODS if n in nat_wanted]
        vol = upsample_1mm(load_volume(split_files("test")[0]))
        clean = vol.data
        head = head_mask(clean)
        native = {
            "volume": vol.id,
            "shape": list(clean.shape),
            "zooms": list(vol.zooms),
            "clean": {},
            "noisy": {},
        }
        ctx = Context(vol, 0.0, args)
        for name, fn in nat_methods:
            if name in MODELS:
                r = try_measure(name, fn, clean, ctx, clean, head, vol.zooms, pending)
                if r is not None:
                    native["clean"][name] = r
                    print(f"[denoise] native clean {name} {r}", file=sys.stderr)
        for level in [float(v) for v in args.native_levels.split(",") if v]:
            noisy = add_noise(clean, level, "gaussian", seed=seed_for(args.seed, vol.id, "native", level))
            ctx = Context(vol, noise_sd(clean, level), args)
            for name, fn in nat_methods:
                r = try_measure(name, fn, noisy, ctx, clean, head, vol.zooms, pending)
                if r is not None:
                    native["noisy"].setdefault(f"gaussian_{level:g}", {})[name] = r
                    print(f"[denoise] native {level:g} {name} {r}", file=sys.stderr)

    report = {
        "benchmark": "denoise",
        "volumes": [f.name.removesuffix(".nii.gz") for f in files],
        "levels": levels,
        "kinds": kinds,
        "methods": [n for n, _ in methods],
        "model": args.model or "default",
        "threads": args.threads,
        "seed": args.seed,
        "pending": pending,
        "summary": summary,
        "comparisons": comparisons,
        "clean": clean_summary,
        "native_1mm": native,
        "per_volume": rows,
        "clean_per_volume": clean_rows,
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
