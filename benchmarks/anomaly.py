"""Synthetic-lesion anomaly benchmark on held-out IXI volumes (issue 9): brainae's default anomaly model, the
thesis model, an optional plain autoencoder and the intensity z-score baseline, side by side. Prints JSON.

Data: the ``test`` volumes of ``src/brainae/pretrained/ixi-split.json`` (2 mm, RAS+), skull-stripped: voxels
outside the deepbet brain mask (``brainae.brainmask.brain_mask(..., method="deepbet")``, cached under
``--mask-cache``) set to 0. The ``val`` volumes (never used for scoring) calibrate healthy-data thresholds.

Lesions (:func:`brainae.lesions.synthetic_lesion`, seeded per volume and configuration): one lesion per
(volume, radius, contrast), for radii ``--radii`` (default 5 / 10 / 15 mm: the volume of a ball of that radius)
and signed contrasts ``--contrasts`` (default +1, -1, +0.5, -0.5 x the brain's median intensity:
hyper- and hypo-intense), irregular shapes (a random ellipsoid perturbed by smooth noise), soft edges
(Gaussian, 1.5 mm), fully inside the brain. Ground truth: lesion weight >= 0.5. Besides, for each radius, the
iso-intense kinds of ``--iso`` (what plain-T1 tumours look like): ``moved`` (:func:`brainae.lesions.moved_tissue_lesion`:
the brain's own tissue moved from elsewhere) and ``mass`` (:func:`brainae.lesions.mass_lesion`: a ball of moved
tissue that pushes its surroundings outwards).

Methods (``METHODS``: each a small function of the stripped volume returning one or more maps; ``--methods``):

- ``dae``: the coarse-noise denoising autoencoder (``model="anomaly"``), brainae's default before the
  normative model; its calibrated map.
- ``brainae`` / ``brainae_residual``: ``brainae.anomaly((data, affine), model=--model or None,
  brain_mask=(mask, affine))``: ``calibrated`` map (the headline) and ``residual`` map; volume score ``score``;
  own binary mask ``mask`` (the healthy-data threshold the model ships) and own ``z``. ``pending`` while the
  Python API does not exist.
- ``thesis``: the shipped thesis Residual U-Net, :func:`brainae.slice_anomaly.anomaly` (2-D residual ``|x - recon|``
  on the input's grid, slices chosen with the same brain mask), times the brain mask; its volume score.
- ``plain_ae``: ``--plain-ae CKPT`` through ``brainae.anomaly(model=CKPT)`` when the Python API exists, else
  through :func:`brainae.slice_anomaly.anomaly` (2-D checkpoints).
- ``zscore`` (baseline): :func:`brainae.baselines.intensity_zscore` of the same scan (``|I - median| / (1.4826
  MAD)`` over its brain voxels); volume score: mean of its top 0.1 % brain voxels.

Metrics (:mod:`brainae.scoring`), all inside the brain mask:

- voxel **AUROC** and **AUPRC** (average precision) with all lesioned volumes of a configuration pooled (and all
  configurations pooled for ``overall``);
- **best Dice** (best threshold per lesioned volume, averaged) — an upper bound, as in the literature;
- **Dice at the healthy threshold**: ``val_thr`` = the ``1 - --fpr`` quantile (default 99 %) of the method's map
  over the brain voxels of the healthy ``val`` volumes (every method); ``own`` = the method's own mask
  (brainae's ``res.mask``) where it has one;
- **healthy test volumes** (the clean held-out volumes): fraction of brain voxels flagged at ``val_thr`` /
  own mask, and volume z-scores (``own``: the method's z; ``val``: ``(score - mean) / sd`` of the val scores);
- **volume-level AUROC** of the score: every lesioned volume vs the same volumes clean;
- **seconds** per call (loading excluded).

Usage:
    python benchmarks/anomaly.py                                     # 6 test volumes x 12 lesions
    python benchmarks/anomaly.py --volumes 1 --radii 10 --contrasts 0.5,-0.5 --methods thesis,zscore
    python benchmarks/anomaly.py --plain-ae runs/plain-ae/best.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from _common import (
    MASK_CACHE,
    Pending,
    _arr,
    api_call,
    brainae_api,
    cached_brain_mask,
    emit,
    seed_for,
    split_files,
)

TOP_FRACTION = 0.001


# resolved at import, before ``brainae.anomaly`` (a submodule of the same name) is imported
API_ANOMALY = brainae_api("anomaly")


@dataclasses.dataclass
class MapOut:
    """One method's answer for one volume."""

    map: np.ndarray  # voxel scores, higher = more anomalous
    score: float  # volume score
    mask: np.ndarray | None = None  # own binary lesion mask at its healthy threshold
    z: float | None = None  # own volume z-score


@dataclasses.dataclass
class Context:
    vol: object  # brainae.io.Volume (RAS+) holding the stripped (possibly lesioned) input
    brain: np.ndarray
    args: argparse.Namespace


_CACHE: dict = {}


def _api_maps(x: np.ndarray, ctx: Context, model, prefix: str) -> dict[str, MapOut]:
    if API_ANOMALY is None:
        raise Pending("brainae.anomaly (the Python API) does not exist yet")
    aff = ctx.vol.affine
    res = api_call(
        API_ANOMALY,
        (x, aff),
        model=model,
        device=ctx.args.device,
        brain_mask=(ctx.brain.astype(np.uint8), aff),
    )
    mask = None if res.mask is None else _arr(res.mask) > 0
    z = None if res.z is None else float(res.z)
    out = {
        prefix: MapOut(_arr(res.calibrated) * ctx.brain, float(res.score), mask, z),
        f"{prefix}_residual": MapOut(_arr(res.residual) * ctx.brain, float(res.score), mask, z),
    }
    return out


def _thesis_like(x: np.ndarray, ctx: Context, path, key: str) -> MapOut:
    from brainae.apply import load_applicable
    from brainae.slice_anomaly import anomaly

    if key not in _CACHE:
        _CACHE[key] = load_applicable(path)
    model, prep, normative = _CACHE[key]
    res = anomaly(
        dataclasses.replace(ctx.vol, data=x), model, prep, normative=normative, brain_mask=ctx.brain
    )
    return MapOut(res.map * ctx.brain, float(res.score), None, res.z)


def run_brainae(x, ctx):
    return _api_maps(x, ctx, ctx.args.model, "brainae")


def run_dae(x, ctx):
    """The coarse-noise denoising autoencoder (brainae's default anomaly model before the normative model)."""
    return {"dae": _api_maps(x, ctx, "anomaly", "dae")["dae"]}


def run_thesis(x, ctx):
    from brainae.pretrained import THESIS_RES_UNET

    return {"thesis": _thesis_like(x, ctx, THESIS_RES_UNET, "thesis")}


def run_plain_ae(x, ctx):
    if not ctx.args.plain_ae:
        raise Pending("no --plain-ae checkpoint given")
    if API_ANOMALY is not None:
        return {"plain_ae": _api_maps(x, ctx, ctx.args.plain_ae, "plain_ae")["plain_ae_residual"]}
    return {"plain_ae": _thesis_like(x, ctx, ctx.args.plain_ae, "plain_ae")}


def run_zscore(x, ctx):
    from brainae.baselines import intensity_zscore
    from brainae.slice_anomaly import volume_score

    z = intensity_zscore(x, ctx.brain)
    return {"zscore": MapOut(z, volume_score(z[ctx.brain], TOP_FRACTION))}


METHODS = [
    ("brainae", run_brainae),  # also yields brainae_residual
    ("dae", run_dae),
    ("thesis", run_thesis),
    ("plain_ae", run_plain_ae),
    ("zscore", run_zscore),
]


def run_all(methods, x, ctx, pending: dict, seconds: dict) -> dict[str, MapOut]:
    outs: dict[str, MapOut] = {}
    for name, fn in methods:
        if name in pending:
            continue
        t0 = time.perf_counter()
        try:
            got = fn(x, ctx)
        except Pending as exc:
            pending[name] = str(exc)
            print(f"[anomaly] {name}: pending ({exc})", file=sys.stderr)
            continue
        seconds.setdefault(name, []).append(time.perf_counter() - t0)
        outs.update(got)
    return outs


def r4(v) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=6, help="how many test volumes (of 6)")
    parser.add_argument(
        "--val-volumes", type=int, default=4, help="val volumes for healthy calibration (of 4)"
    )
    parser.add_argument("--radii", default="5,10,15", help="lesion radii in mm")
    parser.add_argument("--contrasts", default="1,-1,0.5,-0.5", help="x the brain median; + hyper")
    parser.add_argument(
        "--iso",
        default="moved,mass",
        help="iso-intense lesion kinds at each radius: moved (tissue moved from elsewhere), mass (displaces)",
    )
    parser.add_argument("--methods", default=",".join(n for n, _ in METHODS))
    parser.add_argument("--model", default=None, help="a brainae anomaly checkpoint instead of the default")
    parser.add_argument("--plain-ae", default=None, help="a plain autoencoder checkpoint to compare")
    parser.add_argument("--fpr", type=float, default=0.01, help="healthy false-positive rate for val_thr")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mask-cache", default=str(MASK_CACHE))
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from brainae.io import load_volume
    from brainae.lesions import mass_lesion, moved_tissue_lesion, synthetic_lesion
    from brainae.scoring import auroc, average_precision, best_dice, dice, fpr_at, threshold_at_fpr

    wanted = [m for m in args.methods.split(",") if m]
    unknown = set(wanted) - {n for n, _ in METHODS}
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {[n for n, _ in METHODS]}")
    methods = [(n, f) for n, f in METHODS if n in wanted]
    if not args.plain_ae:
        methods = [(n, f) for n, f in methods if n != "plain_ae"]
    radii = [float(v) for v in args.radii.split(",") if v]
    contrasts = [float(v) for v in args.contrasts.split(",") if v]
    iso = [k for k in args.iso.split(",") if k]
    cache = Path(args.mask_cache)
    pending: dict[str, str] = {}
    seconds: dict[str, list[float]] = {}

    def stripped(path):
        vol = load_volume(path)
        brain = cached_brain_mask(vol, cache)
        data = np.where(brain, vol.data, 0.0).astype(np.float32)
        return dataclasses.replace(vol, data=data), brain

    # healthy calibration on val volumes: voxel threshold at --fpr, volume-score mean / sd
    val_values: dict[str, list[np.ndarray]] = {}
    val_scores: dict[str, list[float]] = {}
    for f in split_files("val")[: args.val_volumes]:
        vol, brain = stripped(f)
        outs = run_all(methods, vol.data, Context(vol, brain, args), pending, {})
        for name, o in outs.items():
            val_values.setdefault(name, []).append(o.map[brain])
            val_scores.setdefault(name, []).append(o.score)
        print(f"[anomaly] val {vol.id}: {sorted(outs)}", file=sys.stderr)
    calib = {}
    for name, vals in val_values.items():
        s = np.array(val_scores[name])
        calib[name] = {
            "val_thr": float(threshold_at_fpr(np.concatenate(vals), args.fpr)),
            "score_mean": float(s.mean()),
            "score_sd": float(s.std(ddof=1)) if len(s) > 1 else None,
        }

    def val_z(name, score):
        c = calib.get(name)
        if not c or not c["score_sd"]:
            return None
        return (score - c["score_mean"]) / c["score_sd"]

    per_lesion, healthy = [], []
    pooled: dict[tuple[str, str], tuple[list, list]] = {}
    vol_scores: dict[str, list[tuple[float, int]]] = {}
    files = split_files("test")[: args.volumes]
    for f in files:
        vol, brain = stripped(f)
        rng_base = seed_for(args.seed, vol.id)
        cases = [("clean", None, None)] + [(f"r{r:g}_c{c:+g}", r, c) for r in radii for c in contrasts]
        cases += [(f"r{r:g}_{k}", r, k) for r in radii for k in iso]
        for key, radius, contrast in cases:
            if radius is None:
                data, truth = vol.data, np.zeros(brain.shape, bool)
            else:
                rng = np.random.default_rng(seed_for(rng_base, key))
                if contrast == "moved":
                    les = moved_tissue_lesion(vol.data, brain, rng, radius, zooms=vol.zooms)
                elif contrast == "mass":
                    les = mass_lesion(vol.data, brain, rng, radius, zooms=vol.zooms)
                else:
                    les = synthetic_lesion(vol.data, brain, rng, radius, contrast, zooms=vol.zooms)
                data, truth = les.data, les.truth
            ctx = Context(dataclasses.replace(vol, data=data), brain, args)
            outs = run_all(methods, data, ctx, pending, seconds)
            for name, o in outs.items():
                vol_scores.setdefault(name, []).append((o.score, 0 if radius is None else 1))
                s = o.map[brain]
                thr = calib.get(name, {}).get("val_thr")
                if radius is None:
                    healthy.append(
                        {
                            "volume": vol.id,
                            "method": name,
                            "flagged_val_thr": r4(fpr_at(s, None, thr)) if thr is not None else None,
                            "flagged_own": r4(float(o.mask[brain].mean())) if o.mask is not None else None,
                            "z_own": r4(o.z),
                            "z_val": r4(val_z(name, o.score)),
                            "score": r4(o.score),
                        }
                    )
                    continue
                t = truth[brain]
                pooled.setdefault((key, name), ([], []))
                pooled[(key, name)][0].append(s.astype(np.float32))
                pooled[(key, name)][1].append(t)
                per_lesion.append(
                    {
                        "volume": vol.id,
                        "lesion": key,
                        "lesion_voxels": int(t.sum()),
                        "method": name,
                        "auroc": r4(auroc(s, t)),
                        "auprc": r4(average_precision(s, t)),
                        "best_dice": r4(best_dice(s, t)),
                        "dice_val_thr": r4(dice(s >= thr, t)) if thr is not None else None,
                        "dice_own": r4(dice(o.mask[brain], t)) if o.mask is not None else None,
                        "score": r4(o.score),
                    }
                )
            print(f"[anomaly] {vol.id} {key}: {sorted(outs)}", file=sys.stderr)

    order = ["brainae", "brainae_residual", "dae", "thesis", "plain_ae", "zscore"]
    names = sorted(
        {r["method"] for r in per_lesion}, key=lambda n: order.index(n) if n in order else len(order)
    )

    def mean_of(rows, field):
        vals = [r[field] for r in rows if r[field] is not None]
        return r4(float(np.mean(vals))) if vals else None

    by_lesion: dict = {}
    for (key, name), (s_list, t_list) in pooled.items():
        s, t = np.concatenate(s_list), np.concatenate(t_list)
        rows = [r for r in per_lesion if r["lesion"] == key and r["method"] == name]
        by_lesion.setdefault(key, {})[name] = {
            "auroc": r4(auroc(s, t)),
            "auprc": r4(average_precision(s, t)),
            "best_dice": mean_of(rows, "best_dice"),
            "dice_val_thr": mean_of(rows, "dice_val_thr"),
            "dice_own": mean_of(rows, "dice_own"),
        }
    overall: dict = {}
    for name in names:
        keys = [k for (k, n) in pooled if n == name]
        s = np.concatenate([a for k in keys for a in pooled[(k, name)][0]])
        t = np.concatenate([a for k in keys for a in pooled[(k, name)][1]])
        rows = [r for r in per_lesion if r["method"] == name]
        hrows = [r for r in healthy if r["method"] == name]
        vs = vol_scores.get(name, [])
        overall[name] = {
            "voxel_auroc": r4(auroc(s, t)),
            "voxel_auprc": r4(average_precision(s, t)),
            "best_dice": mean_of(rows, "best_dice"),
            "dice_val_thr": mean_of(rows, "dice_val_thr"),
            "dice_own": mean_of(rows, "dice_own"),
            "volume_auroc": r4(auroc(np.array([v for v, _ in vs]), np.array([y for _, y in vs]))),
            "healthy_flagged_val_thr": mean_of(hrows, "flagged_val_thr"),
            "healthy_flagged_own": mean_of(hrows, "flagged_own"),
            "healthy_z_own": [r["z_own"] for r in hrows],
            "healthy_z_val": [r["z_val"] for r in hrows],
            "seconds_per_volume": r4(float(np.mean(seconds[name.split("_residual")[0]])))
            if name.split("_residual")[0] in seconds
            else None,
        }
        by_size = {}
        for r_mm in radii:
            sel = [r for r in rows if r["lesion"].startswith(f"r{r_mm:g}_")]
            by_size[f"r{r_mm:g}"] = {"best_dice": mean_of(sel, "best_dice"), "auprc": mean_of(sel, "auprc")}
        by_contrast = {}
        for c in contrasts:
            sel = [r for r in rows if r["lesion"].endswith(f"_c{c:+g}")]
            by_contrast[f"c{c:+g}"] = {"best_dice": mean_of(sel, "best_dice"), "auprc": mean_of(sel, "auprc")}
        for k in iso:
            sel = [r for r in rows if r["lesion"].endswith(f"_{k}")]
            by_contrast[k] = {"best_dice": mean_of(sel, "best_dice"), "auprc": mean_of(sel, "auprc")}
        overall[name]["by_radius_mean_per_volume"] = by_size
        overall[name]["by_contrast_mean_per_volume"] = by_contrast

    report = {
        "benchmark": "anomaly",
        "volumes": [f.name.removesuffix(".nii.gz") for f in files],
        "val_volumes": [f.name.removesuffix(".nii.gz") for f in split_files("val")[: args.val_volumes]],
        "radii_mm": radii,
        "contrasts": contrasts,
        "iso_kinds": iso,
        "fpr": args.fpr,
        "model": args.model or "default",
        "plain_ae": args.plain_ae,
        "threads": args.threads,
        "seed": args.seed,
        "pending": pending,
        "calibration": {k: {kk: r4(vv) for kk, vv in v.items()} for k, v in calib.items()},
        "overall": overall,
        "by_lesion": by_lesion,
        "healthy_test": healthy,
        "per_lesion": per_lesion,
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
