"""Real tumours: anomaly maps on the plain-T1 case in ``../shared/data/lesion-dev-t1`` and the BraTS case in
``../shared/data/lesion-dev`` (issues 9 and 25). JSON.

Cases (``--cases``, default both):

- ``t1``: ``lesion-dev-t1/t1.nii.gz``, a brain metastasis on plain (non-contrast) T1, skull-stripped, 1 mm,
  240 x 240 x 155; truth ``lesion_auto > 0`` (an automatic tumour + oedema segmentation); brain: the non-zero
  voxels. The headline case of the normative model.
- ``t1c``: ``T1c_subtrMeanDivStd.nii.gz`` of BraTS 2013 pat0001 (contrast-enhanced T1, 1 mm, z-scored inside the
  brain), skull-stripped: every voxel outside ``brainmask.nii.gz`` set to the volume's mode value outside the
  mask. ``--flair`` adds its FLAIR. Ground truth: ``OTMultiClass > 0`` (all tumour sub-regions). Everything is
  read in RAS+ order.

Methods (``METHODS``; ``--methods`` picks a subset):

- ``dae``: the coarse-noise denoising autoencoder (``model="anomaly"``), the default before the normative
  model: its residual map.
- ``brainae`` / ``brainae_residual``: ``brainae.anomaly((data, affine), model=--model or None)`` — its
  ``calibrated`` and ``residual`` maps; with ``--pass-mask`` the case's brain mask is given as ``brain_mask``,
  otherwise brainae finds the brain itself (the timing then includes its skull stripping). Its own binary
  ``mask`` is scored too (Dice, flagged fraction). ``pending`` while the Python API does not exist.
- ``thesis``: the shipped thesis Residual U-Net, :func:`brainae.slice_anomaly.anomaly` (2-D residual
  ``|x - recon|``), slices selected with the case's brain mask.
- ``plain_ae``: ``--plain-ae CKPT`` (through the Python API when it exists, else the 2-D path).
- ``zscore``: :func:`brainae.baselines.intensity_zscore` of the same scan (``|I - median| / (1.4826 MAD)``
  over its brain voxels).

Metrics inside the brain mask (:mod:`brainae.scoring`): voxel AUROC, AUPRC (average precision), best-threshold
Dice (and its threshold), Dice of the method's own mask where it has one, seconds per call.

Usage:
    python benchmarks/lesion_case.py [--cases t1,t1c] [--flair] [--methods brainae,dae,thesis,zscore] [--model M]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

from _common import CASE, CASE_T1, Pending, _arr, api_call, brainae_api, emit

API_ANOMALY = brainae_api("anomaly")  # before the brainae.anomaly submodule is imported


@dataclasses.dataclass
class Context:
    vol: object  # brainae.io.Volume (RAS+), stripped
    brain: np.ndarray
    args: argparse.Namespace


_CACHE: dict = {}


def _api(x, ctx, model, prefix):
    if API_ANOMALY is None:
        raise Pending("brainae.anomaly (the Python API) does not exist yet")
    aff = ctx.vol.affine
    mask_arg = (ctx.brain.astype(np.uint8), aff) if ctx.args.pass_mask else None
    res = api_call(API_ANOMALY, (x, aff), model=model, device=ctx.args.device, brain_mask=mask_arg)
    own = None if res.mask is None else _arr(res.mask) > 0
    return {
        prefix: (_arr(res.calibrated), own, res.z),
        f"{prefix}_residual": (_arr(res.residual), own, res.z),
    }


def _two_d(x, ctx, path, key):
    from brainae.apply import load_applicable
    from brainae.slice_anomaly import anomaly

    if key not in _CACHE:
        _CACHE[key] = load_applicable(path)
    model, prep, normative = _CACHE[key]
    res = anomaly(
        dataclasses.replace(ctx.vol, data=x), model, prep, normative=normative, brain_mask=ctx.brain
    )
    return res.map, None, res.z


def run_brainae(x, ctx):
    return _api(x, ctx, ctx.args.model, "brainae")


def run_dae(x, ctx):
    """The coarse-noise denoising autoencoder (the default before the normative model)."""
    out = _api(x, ctx, "anomaly", "dae")
    return {"dae": out["dae_residual"]}


def run_thesis(x, ctx):
    from brainae.pretrained import THESIS_RES_UNET

    return {"thesis": _two_d(x, ctx, THESIS_RES_UNET, "thesis")}


def run_plain_ae(x, ctx):
    if not ctx.args.plain_ae:
        raise Pending("no --plain-ae checkpoint given")
    if API_ANOMALY is not None:
        return {"plain_ae": _api(x, ctx, ctx.args.plain_ae, "plain_ae")["plain_ae_residual"]}
    return {"plain_ae": _two_d(x, ctx, ctx.args.plain_ae, "plain_ae")}


def run_zscore(x, ctx):
    from brainae.baselines import intensity_zscore

    return {"zscore": (intensity_zscore(x, ctx.brain), None, None)}


METHODS = [
    ("brainae", run_brainae),
    ("dae", run_dae),
    ("thesis", run_thesis),
    ("plain_ae", run_plain_ae),
    ("zscore", run_zscore),
]


def r4(v):
    return None if v is None or not np.isfinite(v) else round(float(v), 4)


def _cases(args, load_volume):
    """(label, stripped RAS+ volume, brain mask, truth) of each case asked for."""
    if "t1" in args.cases:
        vol = load_volume(CASE_T1 / "t1.nii.gz")
        truth = load_volume(CASE_T1 / "lesion_auto.nii.gz").data > 0
        yield "T1", vol, vol.data > 0, truth
    if "t1c" in args.cases:
        brain = load_volume(CASE / "brainmask.nii.gz").data > 0
        truth = load_volume(CASE / "OTMultiClass.nii.gz").data > 0
        modalities = [("T1c", "T1c_subtrMeanDivStd.nii.gz")]
        if args.flair:
            modalities.append(("FLAIR", "Flair_subtrMeanDivStd.nii.gz"))
        for label, fname in modalities:
            vol = load_volume(CASE / fname)
            values, counts = np.unique(vol.data[~brain], return_counts=True)
            background = float(values[np.argmax(counts)])
            data = np.where(brain, vol.data, background).astype(np.float32)
            yield label, dataclasses.replace(vol, data=data), brain, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(n for n, _ in METHODS))
    parser.add_argument("--model", default=None, help="a brainae anomaly checkpoint instead of the default")
    parser.add_argument("--plain-ae", default=None)
    parser.add_argument("--pass-mask", action="store_true", help="give brainae the case's brain mask")
    parser.add_argument("--flair", action="store_true", help="also score the FLAIR volume")
    parser.add_argument("--cases", default="t1,t1c", help="t1 (plain T1, lesion-dev-t1), t1c (BraTS T1c)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from brainae.io import load_volume
    from brainae.scoring import auroc, average_precision, best_dice_threshold, dice

    wanted = [m for m in args.methods.split(",") if m]
    methods = [(n, f) for n, f in METHODS if n in wanted and (n != "plain_ae" or args.plain_ae)]
    pending: dict[str, str] = {}
    results: dict = {}
    for label, data, brain, truth in _cases(args, load_volume):
        ctx = Context(data, brain, args)
        t = truth[brain]
        row: dict = {"lesion_fraction_of_brain": r4(float(t.mean())), "brain_voxels": int(brain.sum())}
        for name, fn in methods:
            if name in pending:
                continue
            t0 = time.perf_counter()
            try:
                outs = fn(data.data, ctx)
            except Pending as exc:
                pending[name] = str(exc)
                print(f"[lesion_case] {name}: pending ({exc})", file=sys.stderr)
                continue
            seconds = time.perf_counter() - t0
            for key, (m, own, z) in outs.items():
                s = m[brain]
                d, thr = best_dice_threshold(s, t)
                row[key] = {
                    "auroc": r4(auroc(s, t)),
                    "auprc": r4(average_precision(s, t)),
                    "auprc_over_prevalence": r4(average_precision(s, t) / max(float(t.mean()), 1e-9)),
                    "best_dice": r4(d),
                    "best_threshold": r4(thr),
                    "dice_own": r4(dice(own[brain], t)) if own is not None else None,
                    "flagged_own": r4(float(own[brain].mean())) if own is not None else None,
                    "z": r4(z) if z is not None else None,
                    "seconds": round(seconds, 2),
                }
                print(f"[lesion_case] {label} {key}: {row[key]}", file=sys.stderr)
        results[label] = row

    report = {
        "benchmark": "lesion_case",
        "cases": {
            "T1": "lesion-dev-t1: a brain metastasis on plain T1, 1 mm, 240 x 240 x 155; truth lesion_auto > 0",
            "T1c/FLAIR": "BraTS 2013 pat0001 (lesion-dev), 1 mm, 240 x 240 x 155; truth OTMultiClass > 0",
        },
        "pass_mask": args.pass_mask,
        "model": args.model or "default",
        "threads": args.threads,
        "pending": pending,
        "results": results,
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
