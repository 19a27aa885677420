"""The thesis's future-work experiment: does the autoencoder help brain extraction on corrupted scans?

For held-out 2 mm volumes (the last ``--volumes`` of the sample), a brain mask is computed with
:func:`brainae.brainmask.brain_mask` (``--method threshold`` by default, ``deepbet`` if installed) on

- the clean volume (the reference),
- the corrupted volume (Gaussian noise, sd ``level x`` the clean maximum, everywhere; and Rician noise of the
  same sd: the magnitude of a complex signal with Gaussian noise in both channels),
- the autoencoder's reconstruction of the corrupted volume (:func:`brainae.apply.denoise`, slice selection
  on the corrupted volume's own brain mask, as a user would run it),

and the Dice agreement with the clean volume's mask is reported (mean over volumes). Prints JSON.

Usage: python benchmarks/segmentation_gain.py [--volumes 3] [--levels 0.04,0.08,0.16] [--method threshold]
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
    """(model, Preprocessing, name): a checkpoint (or thesis .h5), or the shipped thesis Residual U-Net."""
    from brainae.apply import load_applicable
    from brainae.pretrained import THESIS_RES_UNET

    model, prep, _ = load_applicable(path or THESIS_RES_UNET)
    return model, prep, Path(path or THESIS_RES_UNET).name


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / total) if total else 1.0


def corrupt(clean: np.ndarray, kind: str, sd: float, rng: np.random.Generator) -> np.ndarray:
    if kind == "gaussian":
        return (clean + rng.normal(0.0, sd, clean.shape)).astype(np.float32)
    real = clean + rng.normal(0.0, sd, clean.shape)
    imag = rng.normal(0.0, sd, clean.shape)
    return np.sqrt(real**2 + imag**2).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=3)
    parser.add_argument("--levels", default="0.04,0.08,0.16")
    parser.add_argument("--method", default="threshold", choices=("threshold", "deepbet", "auto"))
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from brainae.apply import Selection, denoise
    from brainae.brainmask import brain_mask, resolve_method
    from brainae.io import load_volume

    method = resolve_method(args.method)
    model, prep, name = load_model(args.model)
    rng = np.random.default_rng(args.seed)
    held = sorted(IXI_2MM.glob("*.nii.gz"))[-args.volumes :]
    levels = [float(x) for x in args.levels.split(",")]
    rows: dict[str, dict[str, list[float]]] = {}
    for f in held:
        vol = load_volume(f)
        ref = brain_mask(vol.data, vol.zooms, method)
        peak = float(vol.data.max())
        for kind in ("gaussian", "rician"):
            for level in levels:
                noisy = corrupt(vol.data, kind, level * peak, rng)
                nvol = type(vol)(
                    path=vol.path, data=noisy, zooms=vol.zooms, header=vol.header, affine=vol.affine
                )
                noisy_mask = brain_mask(noisy, vol.zooms, method)
                res = denoise(
                    nvol, model, prep, selection=Selection(mask_method=method), brain_mask=noisy_mask
                )
                rec_mask = brain_mask(res.data, vol.zooms, method)
                key = f"{kind}_{level:g}"
                rows.setdefault(key, {}).setdefault("dice_corrupted", []).append(dice(noisy_mask, ref))
                rows[key].setdefault("dice_reconstructed", []).append(dice(rec_mask, ref))
                rows[key].setdefault("slices_processed", []).append(res.n_processed)
    report = {
        "model": name,
        "brain_mask_method": method,
        "volumes": [f.name for f in held],
        "dice_vs_clean_mask": {
            k: {m: round(float(np.mean(v)), 4) for m, v in d.items()} for k, d in rows.items()
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
