"""Whole-volume inference: speed on CPU and denoising quality against non-local means. Prints JSON.

Speed: seconds per volume of :func:`brainae.apply.denoise` (brain mask + slice selection + model + stitching;
loading and writing excluded) for a 2 mm IXI volume (120 x 120 x 90) and for the native IXI geometry
(256 x 256 x 150 at 0.9375 x 0.9375 x 1.2 mm, P,S,R, made by trilinear resampling of the 2 mm volume with
scipy), with the imported thesis Residual U-Net (or ``--model CKPT``), median of ``--repeats`` runs.

Quality (on ``--volumes`` 2 mm volumes, the last ones of the sample by name): Gaussian noise with sd
``level x`` the clean volume's maximum is added everywhere; the autoencoder's output and non-local means
are scored against the clean volume. Metrics on the input grid, per sagittal slice of the slices the model
processed (the same slices for every method), intensities divided by the clean volume's maximum (peak 1):
PSNR and SSIM (:mod:`brainae.metrics`, TensorFlow's SSIM), averaged over slices and volumes.
Non-local means: scikit-image ``denoise_nl_means`` per sagittal slice, ``patch_size=5, patch_distance=6,
h=0.8 sigma, sigma=sigma, fast_mode=True`` with ``sigma`` the true noise sd (an oracle: NLM's best case;
scikit-image's ``estimate_sigma`` needs PyWavelets, not installed).
"Clean in, clean out": PSNR/SSIM of reconstruct(clean) vs clean with the same definitions.

Caveat: the thesis's models were trained on IXI, very likely including these Hammersmith volumes; the
numbers measure the whole-volume pipeline, not generalisation.

Usage: python benchmarks/apply.py [--volumes 3] [--levels 0.02,0.04,0.08] [--model CKPT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
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


def native_geometry(src: Path, out: Path) -> Path:
    """Resample a 2 mm P,S,R volume to native IXI geometry (256 x 256 x 150, 0.9375 x 0.9375 x 1.2 mm)."""
    from scipy import ndimage

    from brainae.io import load_volume, save_nifti

    vol = load_volume(src)  # RAS+: (R, A, S) = (90, 120, 120) at 2 mm
    ras_shape, ras_zooms = (150, 256, 256), (1.2, 0.9375, 0.9375)
    # sample the same field of view (voxel centres: keep the extent's centre)
    coords = []
    for n_out, z_out, n_in, z_in in zip(ras_shape, ras_zooms, vol.data.shape, vol.zooms, strict=True):
        centre_in, centre_out = (n_in - 1) / 2, (n_out - 1) / 2
        coords.append((np.arange(n_out) - centre_out) * z_out / z_in + centre_in)
    grid = np.meshgrid(*coords, indexing="ij")
    ras = ndimage.map_coordinates(vol.data, grid, order=1, mode="nearest").astype(np.float32)
    # store as native IXI does: voxel axes P, S, R
    psr = np.ascontiguousarray(ras[:, ::-1, :].transpose(1, 2, 0))
    affine = np.array(
        [[0, 0, 1.2, -90.0], [-0.9375, 0, 0, 120.0], [0, 0.9375, 0, -120.0], [0, 0, 0, 1.0]], dtype=float
    )
    return save_nifti(out, np.rint(psr).astype(np.int16), affine)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def slice_metrics(est: np.ndarray, clean: np.ndarray, slices: np.ndarray, peak: float) -> dict[str, float]:
    """Mean PSNR / SSIM over the given sagittal slices (RAS axis 0), intensities / peak."""
    from brainae.metrics import psnr, ssim

    a = torch.from_numpy(np.ascontiguousarray(est[slices] / peak, dtype=np.float32))
    b = torch.from_numpy(np.ascontiguousarray(clean[slices] / peak, dtype=np.float32))
    return {"psnr": float(psnr(a, b, cap=100.0).mean()), "ssim": float(ssim(a, b).mean())}


def nl_means(noisy: np.ndarray, slices: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    out = noisy.copy()
    for k in np.flatnonzero(slices):
        out[k] = denoise_nl_means(
            noisy[k], patch_size=5, patch_distance=6, h=0.8 * sigma, sigma=sigma, fast_mode=True
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=3)
    parser.add_argument("--levels", default="0.02,0.04,0.08")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from brainae.apply import denoise, reconstruct
    from brainae.brainmask import brain_mask
    from brainae.io import load_volume

    model, prep, name = load_model(args.model)
    files = sorted(IXI_2MM.glob("*.nii.gz"))
    levels = [float(x) for x in args.levels.split(",")]
    report: dict = {
        "model": name,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "preprocessing": prep.to_dict(),
    }

    # ---- speed
    speed = {}
    with tempfile.TemporaryDirectory() as tmp:
        native = native_geometry(files[0], Path(tmp) / "native.nii.gz")
        for label, path in (("2mm_120x120x90", files[0]), ("native_256x256x150", native)):
            vol = load_volume(path)
            denoise(vol, model, prep)  # warm-up
            mask_s = timed(lambda v=vol: brain_mask(v.data, v.zooms, "threshold"), args.repeats)
            res = denoise(vol, model, prep)
            speed[label] = {
                "ras_shape": list(vol.data.shape),
                "slices_processed": res.n_processed,
                "slices_total": len(res.processed),
                "seconds_denoise": round(timed(lambda v=vol: denoise(v, model, prep), args.repeats), 3),
                "seconds_brain_mask": round(mask_s, 3),
                "seconds_all_slices": round(
                    timed(lambda v=vol: denoise(v, model, prep, selection=None), args.repeats), 3
                ),
            }
    report["speed_seconds_per_volume"] = speed

    # ---- quality
    rng = np.random.default_rng(args.seed)
    held = files[-args.volumes :]
    rows: dict[str, dict[str, list[float]]] = {}

    def add(key: str, metrics: dict[str, float]) -> None:
        for m, v in metrics.items():
            rows.setdefault(key, {}).setdefault(m, []).append(v)

    for f in held:
        vol = load_volume(f)
        clean = vol.data
        peak = float(clean.max())
        rec = reconstruct(vol, model, prep)
        add("clean_reconstruct", slice_metrics(rec.data, clean, rec.processed, peak))
        for level in levels:
            noisy = (clean + rng.normal(0.0, level * peak, clean.shape)).astype(np.float32)
            nvol = type(vol)(path=vol.path, data=noisy, zooms=vol.zooms, header=vol.header, affine=vol.affine)
            res = denoise(nvol, model, prep, brain_mask=brain_mask(clean, vol.zooms, "threshold"))
            sl = res.processed
            add(f"noise_{level:g}/noisy_input", slice_metrics(noisy, clean, sl, peak))
            add(f"noise_{level:g}/autoencoder", slice_metrics(res.data, clean, sl, peak))
            add(
                f"noise_{level:g}/nl_means", slice_metrics(nl_means(noisy, sl, level * peak), clean, sl, peak)
            )
    report["quality"] = {
        "volumes": [f.name for f in held],
        "noise": "Gaussian, sd = level x clean max, everywhere; slices selected on the clean volume's mask",
        "metrics": {k: {m: round(float(np.mean(v)), 4) for m, v in d.items()} for k, d in rows.items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
