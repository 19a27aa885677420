"""Synthetic-lesion anomaly benchmark: residual maps and volume scores vs an intensity z-score baseline.

Held-out volumes (the last ``--volumes`` of the 2 mm IXI sample) get synthetic lesions: soft-edged balls
(Gaussian-smoothed, radius ``--radii`` mm) placed at random inside the brain (the threshold brain mask eroded
by the radius), either hyper-intense (``+ 0.6 x`` the brain's 99th percentile) or hypo-intense (``x 0.3``).
Ground truth: voxels where the smoothed ball is above 0.5. Each lesioned volume and each clean volume is
scored by:

- ``autoencoder``: :func:`brainae.anomaly.anomaly` (residual map ``|x - recon|`` and the volume score: mean
  of the top 0.1 % residual pixels of the selected slices) with the imported thesis Residual U-Net or
  ``--model CKPT``;
- ``intensity_z`` (baseline): ``|I / median_brain(I) - mu| / sigma`` per voxel, with ``mu, sigma`` the mean
  and sd of brain-normalised brain intensities of the other sample volumes (the "training cohort"; no
  registration, so a global, not voxel-wise, distribution); its volume score is the same top-fraction mean
  over the brain voxels of the same slices.

Voxel level (inside the brain mask of the processed slices, all lesioned volumes pooled): AUROC, AUPRC
(average precision); best Dice over 100 thresholds (quantiles of the map), per volume then averaged.
Volume level: AUROC of the score, lesioned vs clean volumes. Prints JSON.

Usage: python benchmarks/anomaly.py [--volumes 4] [--radii 4,8] [--model CKPT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
IXI_2MM = DATA / "ixi-t1-2mm"


def load_model(path: str | None):
    """(model, Preprocessing, normative or None, name): a checkpoint, or the shipped thesis Residual U-Net."""
    from brainae.apply import load_applicable
    from brainae.pretrained import THESIS_RES_UNET

    model, prep, normative = load_applicable(path or THESIS_RES_UNET)
    return model, prep, normative, Path(path or THESIS_RES_UNET).name


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties averaged)."""
    from scipy.stats import rankdata

    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (step-wise, ties broken by order)."""
    order = np.argsort(-scores, kind="stable")
    hits = labels[order].astype(np.float64)
    if hits.sum() == 0:
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def best_dice(scores: np.ndarray, labels: np.ndarray, n: int = 100) -> float:
    labels = labels.astype(bool)
    best = 0.0
    for t in np.unique(np.quantile(scores, np.linspace(0.9, 0.9999, n))):
        pred = scores >= t
        inter = np.logical_and(pred, labels).sum()
        best = max(best, 2.0 * inter / (pred.sum() + labels.sum()))
    return float(best)


def plant(data: np.ndarray, brain: np.ndarray, zooms, radius_mm: float, kind: str, rng: np.random.Generator):
    """A soft ball lesion inside ``brain``; returns (lesioned data, ground-truth mask)."""
    from scipy import ndimage

    step = np.asarray(zooms, dtype=float)
    inner = ndimage.distance_transform_edt(brain, sampling=step) > radius_mm + 2.0
    candidates = np.argwhere(inner if inner.any() else brain)
    centre = candidates[rng.integers(len(candidates))]
    grids = np.meshgrid(*[np.arange(n) for n in data.shape], indexing="ij")
    dist = np.sqrt(sum(((g - c) * z) ** 2 for g, c, z in zip(grids, centre, step, strict=True)))
    ball = ndimage.gaussian_filter((dist <= radius_mm).astype(np.float32), sigma=1.0)
    ball = ball / max(float(ball.max()), 1e-6)
    if kind == "hyper":
        out = data + 0.6 * float(np.percentile(data[brain], 99)) * ball
    else:
        out = data * (1.0 - 0.7 * ball)
    return out.astype(np.float32), ball > 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=4)
    parser.add_argument("--radii", default="4,8")
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from brainae.anomaly import DEFAULT_TOP_FRACTION, anomaly, volume_score
    from brainae.brainmask import brain_mask
    from brainae.io import load_volume

    model, prep, normative, name = load_model(args.model)
    rng = np.random.default_rng(args.seed)
    files = sorted(IXI_2MM.glob("*.nii.gz"))
    held, cohort = files[-args.volumes :], files[: -args.volumes]

    # baseline's cohort distribution of brain-normalised brain intensities
    values = []
    for f in cohort:
        v = load_volume(f)
        b = brain_mask(v.data, v.zooms, "threshold")
        values.append(v.data[b] / np.median(v.data[b]))
    cohort_vals = np.concatenate(values)
    mu, sigma = float(cohort_vals.mean()), float(cohort_vals.std())

    radii = [float(r) for r in args.radii.split(",")]
    voxel = {"autoencoder": ([], []), "intensity_z": ([], [])}
    dices: dict[str, list[float]] = {"autoencoder": [], "intensity_z": []}
    vol_scores: dict[str, list[float]] = {"autoencoder": [], "intensity_z": []}
    vol_labels: list[int] = []
    by_case: dict[str, dict[str, list[float]]] = {}

    for f in held:
        vol = load_volume(f)
        brain = brain_mask(vol.data, vol.zooms, "threshold")
        cases = [("clean", None, None)] + [(kind, r, None) for kind in ("hyper", "hypo") for r in radii]
        for kind, radius, _ in cases:
            if kind == "clean":
                data, truth = vol.data, np.zeros(vol.data.shape, bool)
            else:
                data, truth = plant(vol.data, brain, vol.zooms, radius, kind, rng)
            v = type(vol)(path=vol.path, data=data, zooms=vol.zooms, header=vol.header, affine=vol.affine)
            res = anomaly(v, model, prep, normative=normative, brain_mask=brain)
            region = brain & res.result.inside
            z_map = np.abs(data / np.median(data[brain]) - mu) / sigma
            maps = {"autoencoder": res.map, "intensity_z": z_map}
            scores = {
                "autoencoder": res.score,
                "intensity_z": volume_score(z_map[region], DEFAULT_TOP_FRACTION),
            }
            for method in maps:
                vol_scores[method].append(scores[method])
            vol_labels.append(0 if kind == "clean" else 1)
            if kind == "clean":
                continue
            key = f"{kind}_r{radius:g}mm"
            for method, m in maps.items():
                s, t = m[region], truth[region]
                voxel[method][0].append(s)
                voxel[method][1].append(t)
                d = best_dice(s, t)
                dices[method].append(d)
                by_case.setdefault(key, {}).setdefault(f"{method}_best_dice", []).append(d)
                by_case[key].setdefault(f"{method}_auroc", []).append(auroc(s, t))

    labels = np.array(vol_labels)
    report = {
        "model": name,
        "volumes": [f.name for f in held],
        "lesions_per_volume": 2 * len(radii),
        "score_definition": {"top_fraction": DEFAULT_TOP_FRACTION},
        "baseline_cohort": {"volumes": len(cohort), "mu": round(mu, 4), "sigma": round(sigma, 4)},
        "voxel_level": {},
        "volume_level_auroc": {},
        "by_lesion": {k: {m: round(float(np.mean(v)), 4) for m, v in d.items()} for k, d in by_case.items()},
    }
    for method, (s_list, t_list) in voxel.items():
        s, t = np.concatenate(s_list), np.concatenate(t_list)
        report["voxel_level"][method] = {
            "auroc": round(auroc(s, t), 4),
            "auprc": round(average_precision(s, t), 4),
            "lesion_voxel_fraction": round(float(t.mean()), 5),
            "best_dice_mean": round(float(np.mean(dices[method])), 4),
        }
        report["volume_level_auroc"][method] = round(auroc(np.array(vol_scores[method]), labels), 4)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
