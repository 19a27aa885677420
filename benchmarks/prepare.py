"""Seconds per volume of `brainae prepare`, with and without brain extraction, 2 mm and native IXI geometry.

Without extraction: ``--select nonzero-count --mask-method none``; with: the threshold fallback and deepbet
(``--select brain-mask``). Every run writes the whole dataset folder: fixed costs (importing torch, the
figures: about 7 s) are spread over the volumes, so use enough of them.

``--workers N`` (default 2) also times the threshold run of the 2 mm cohort with ``prepare --workers N``
against one process, reports the speed-up, and checks that both datasets are byte-identical.

Prints one JSON object. The native-geometry cohort (256 x 256 x 150, 0.9375 x 0.9375 x 1.2 mm, int16, P,S,R) is
made by resampling the 2 mm volumes, since native IXI files are not shipped.

    python benchmarks/prepare.py [--n 30] [--deepbet-n 4] [--workers 2] [--workers-only]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from brainae.brainmask import deepbet_available
from brainae.prepare import PrepareConfig, prepare

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ixi-t1-2mm"


def make_native(files: list[Path], folder: Path) -> None:
    for f in files:
        img = nib.load(str(f))
        data = np.asarray(img.dataobj, dtype=np.float32)
        native = ndimage.zoom(data, np.array([256, 256, 150]) / np.array(data.shape), order=1)
        aff = img.affine.copy()
        aff[:3, :3] = aff[:3, :3] @ np.diag([0.9375 / 2, 0.9375 / 2, 1.2 / 2])
        out = nib.Nifti1Image(np.clip(native, -32768, 32767).astype(np.int16), aff)
        nib.save(out, str(folder / f.name))


def timed(folder: Path, out: Path, mask_method: str, workers: int = 1) -> float:
    n = len(list(folder.glob("*.nii.gz")))
    select = "nonzero-count" if mask_method == "none" else "brain-mask"
    config = PrepareConfig.from_options(mask_method=mask_method, select=select)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(folder, out, config, force=True, workers=workers)
    return (time.perf_counter() - t) / n


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=30, help="volumes of the 2 mm sample to use")
    ap.add_argument("--native-n", type=int, default=10, help="volumes resampled to native IXI geometry")
    ap.add_argument("--deepbet-n", type=int, default=4, help="volumes for the deepbet timings (slow)")
    ap.add_argument("--workers", type=int, default=2, help="processes for the parallel run (1: skip it)")
    ap.add_argument(
        "--workers-only",
        action="store_true",
        help="time only the 2 mm threshold runs, one process and --workers",
    )
    args = ap.parse_args()
    files = sorted(SHARED.glob("*.nii.gz"))[: args.n]
    results: dict = {
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "deepbet_installed": deepbet_available(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),  # other work on the machine skews timings
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        two, nat, small = tmp / "2mm", tmp / "native", tmp / "2mm-small"
        for d in (two, nat, small):
            d.mkdir()
        for f in files:
            os.symlink(f, two / f.name)
        for f in files[: args.deepbet_n]:
            os.symlink(f, small / f.name)
        if not args.workers_only:
            make_native(files[: args.native_n], nat)
            results["2mm_no_extraction_s_per_volume"] = timed(two, tmp / "o0", "none")
            results["native_no_extraction_s_per_volume"] = timed(nat, tmp / "o0n", "none")
        results["2mm_threshold_s_per_volume"] = timed(two, tmp / "o1", "threshold")
        results["2mm_volumes"] = len(files)
        if args.workers > 1:
            par = timed(two, tmp / "o1w", "threshold", workers=args.workers)
            results[f"2mm_threshold_workers{args.workers}_s_per_volume"] = par
            results["workers_speedup"] = round(results["2mm_threshold_s_per_volume"] / par, 3)
            results["workers_identical"] = digest(tmp / "o1") == digest(tmp / "o1w")
        if args.workers_only:
            print(json.dumps(results, indent=2))
            return
        results["native_threshold_s_per_volume"] = timed(nat, tmp / "o2", "threshold")
        results["native_volumes"] = args.native_n
        if deepbet_available() and args.deepbet_n:
            results["2mm_deepbet_s_per_volume"] = timed(small, tmp / "o3", "deepbet")
            native_small = tmp / "native-small"
            native_small.mkdir()
            for f in sorted(nat.glob("*.nii.gz"))[: args.deepbet_n]:
                os.symlink(f, native_small / f.name)
            results["native_deepbet_s_per_volume"] = timed(native_small, tmp / "o4", "deepbet")
            results["deepbet_volumes"] = args.deepbet_n
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
