"""Throughput of ``brainae evaluate``: slices/s for N models on one device, and the memory peak. Prints JSON.

A synthetic prepared dataset (``--slices`` test slices of ``--size`` pixels) and ``--models`` randomly
initialised checkpoints are written to a temporary folder; the run times ``evaluate`` (models only, then the
identity baseline, then NLM / biharmonic on their conditions) and reports:

- ``model_slices_per_s``: slices x conditions x models scored per second (models and metrics only);
- ``nlm_ms_per_slice`` / ``biharmonic_ms_per_slice``: cost of the classical baselines per slice;
- ``peak_rss_mib``: the process's peak resident memory (``resource.getrusage``), which must stay flat in the
  number of slices (outputs are streamed, never held).

Example:
    python benchmarks/evaluate.py --models 3 --slices 256 --size 128
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def _dataset(path: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    head = ((yy / 0.8) ** 2 + (xx / 0.7) ** 2 < 1).astype(np.float32)
    slices = np.clip(head[None] * (0.5 + 0.1 * rng.standard_normal((n, 1, 1))), 0, 1).astype(np.float32)
    path.mkdir(parents=True)
    np.save(path / "slices.npy", slices)
    per_vol = 16
    pd.DataFrame(
        {
            "volume_id": [f"v{i // per_vol}" for i in range(n)],
            "slice": [i % per_vol for i in range(n)],
            "split": "test",
        }
    ).to_csv(path / "index.csv", index=False)
    pd.DataFrame({"volume_id": sorted({f"v{i // per_vol}" for i in range(n)})}).to_csv(
        path / "volumes.csv", index=False
    )
    prep = {"profile": "sagittal", "size": size, "fov_mm": None, "scaling": "slice-minmax"}
    (path / "settings.json").write_text(json.dumps({"preprocessing": prep}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--arch", default="res-unet")
    parser.add_argument("--slices", type=int, default=128)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--conditions", default="clean,noise-0.04,blank-40")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--baseline-slices", type=int, default=32, help="slices for the NLM/biharmonic timing"
    )
    args = parser.parse_args()

    from brainae.checkpoint import save_checkpoint
    from brainae.evaluate import evaluate
    from brainae.models import build_model

    n_cond = len(args.conditions.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = _dataset(tmp / "data", args.slices, args.size)
        prep = {"profile": "sagittal", "size": args.size, "fov_mm": None, "scaling": "slice-minmax"}
        cks = []
        for i in range(args.models):
            torch.manual_seed(i)
            cks.append(save_checkpoint(tmp / f"m{i}.safetensors", build_model(args.arch), preprocessing=prep))
        t0 = time.perf_counter()
        evaluate(
            cks,
            data,
            tmp / "e_models",
            conditions=args.conditions,
            baselines=[],
            n_examples=0,
            batch_size=args.batch_size,
            device=args.device,
        )
        t_models = time.perf_counter() - t0
        small = _dataset(tmp / "small", args.baseline_slices, args.size)
        t0 = time.perf_counter()
        evaluate([], small, tmp / "e_nlm", conditions="noise-0.04", baselines=["nlm"], n_examples=0)
        t_nlm = time.perf_counter() - t0
        t0 = time.perf_counter()
        evaluate([], small, tmp / "e_bih", conditions="blank-40", baselines=["biharmonic"], n_examples=0)
        t_bih = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (
        1024 if sys.platform != "darwin" else 1024**2
    )
    scored = args.slices * n_cond * args.models
    print(
        json.dumps(
            {
                "arch": args.arch,
                "models": args.models,
                "slices": args.slices,
                "size": args.size,
                "conditions": n_cond,
                "device": args.device,
                "torch_threads": torch.get_num_threads(),
                "seconds_models": round(t_models, 3),
                "model_slices_per_s": round(scored / t_models, 1),
                "split_slices_per_s": round(args.slices / t_models, 2),
                "nlm_ms_per_slice": round(1000 * t_nlm / args.baseline_slices, 1),
                "biharmonic_ms_per_slice": round(1000 * t_bih / args.baseline_slices, 1),
                "peak_rss_mib": round(peak, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
