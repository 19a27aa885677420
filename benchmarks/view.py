"""Size and writing time of ``brainae view`` pages for a 2 mm and a ~1 mm scan (issue 11). JSON.

Volume: the first held-out ``test`` volume of ``src/brainae/pretrained/ixi-split.json`` (2 mm, 120 x 120 x 90)
and the same volume resampled (order 1) onto a 256 x 256 x 150 grid (the size of a native ~1 mm T1 scan), each
with Rician noise (``brainae.scoring.add_noise``; ``--noise``, default 2 % and 4 %), so that the pages carry
realistic noise (noise compresses badly: it is what makes a page large).

Pages (``brainae.view.write_view``, default settings):

- ``beside``: the noisy scan and brainae's default denoiser's output beside it (what ``denoise --view``
  writes);
- ``overlay``: the noisy scan with two maps, the absolute residual ``|noisy - denoised|`` inside the head and
  a second map of the same density (what ``anomaly --view`` writes: residual and calibrated maps).

Measured here (2 CPU cores, other jobs running): 2 mm pages 3.6-3.8 MB written in 0.5-1.1 s; 256 x 256 x 150
pages, scan + denoised 20.6 MB (2 % noise) / 22.0 MB (4 %) in 3.3-4.2 s, scan + two maps 18.1 / 18.8 MB in
5.3-5.5 s.

Usage:
    python benchmarks/view.py --grids 2mm,1mm --noise 0.02,0.04 --out /tmp/bench/view.json
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, split_files  # noqa: E402

NATIVE_SHAPE = (256, 256, 150)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--grids", default="2mm,1mm")
    parser.add_argument(
        "--noise", default="0.02,0.04", help="Rician noise levels (fractions), comma-separated"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch
    from scipy import ndimage

    torch.set_num_threads(args.threads)
    from brainae.infer import denoise_volume, load_volumetric
    from brainae.io import load_volume
    from brainae.scoring import add_noise
    from brainae.view import Layer, write_view

    vol = load_volume(split_files("test")[0])
    model = load_volumetric(None, task="denoise", device="cpu")
    rows = []
    cases = [(g, float(n)) for g in args.grids.split(",") for n in args.noise.split(",")]
    for grid, noise in cases:
        data, affine = vol.data, vol.affine
        if grid == "1mm":
            factors = [n / s for n, s in zip(NATIVE_SHAPE, data.shape)]
            data = np.maximum(ndimage.zoom(data, factors, order=1), 0.0).astype(np.float32)
            scale = np.eye(4)
            scale[:3, :3] = np.diag([1 / f for f in factors])
            scale[:3, 3] = [(1 / f - 1) / 2 for f in factors]
            affine = affine @ scale
        noisy = add_noise(data, noise, kind="rician", seed=0)
        den = denoise_volume(dataclasses.replace(vol, data=noisy, affine=affine), model, device="cpu")
        head = ndimage.binary_fill_holes(data > 0.1 * np.percentile(data, 99.5))
        residual = ndimage.median_filter(np.abs(noisy - den), 3) * head
        scan = Layer("noisy", noisy, affine)
        pages = {
            "beside": ([Layer("denoised", den, affine)], "beside"),
            "overlay": (
                [Layer("residual", residual, affine), Layer("second", residual * 3, affine)],
                "overlay",
            ),
        }
        with tempfile.TemporaryDirectory() as tmp:
            for name, (others, mode) in pages.items():
                t0 = time.perf_counter()
                summary = write_view(Path(tmp) / f"{name}.html", scan, others, mode=mode)
                rows.append(
                    {
                        "grid": grid,
                        "noise": noise,
                        "shape": list(noisy.shape),
                        "page": name,
                        "volumes": len(summary.volumes),
                        "mb": round(summary.bytes / 1e6, 1),
                        "seconds": round(time.perf_counter() - t0, 2),
                        "notes": summary.notes,
                    }
                )
                print(f"[view] {rows[-1]}", file=sys.stderr)
    emit({"benchmark": "view", "volume": vol.id, "pages": rows}, args.out)


if __name__ == "__main__":
    main()
