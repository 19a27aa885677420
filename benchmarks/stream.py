"""Training from a dataset larger than the memory it may use: streamed from slices.npy vs held in memory.

Writes a synthetic prepared dataset (smooth phantom slices, ``--slices`` of ``--size`` x ``--size``), then
trains the same short run twice, each in its own process: with ``--data memory`` (the split copied into the
process) and with ``--data auto --memory-limit`` a quarter of the data's size, which makes brainae choose to
stream the batches from ``slices.npy`` (augmentation on the device in both). Per run: the training
throughput (median img/s over the epochs after the first, from metrics.csv), how the data were held and why,
and the process's peak resident memory above what it held before opening the data.

Prints ONE JSON object; ``ratio`` = streamed / in-memory img/s (the bar: >= 0.8), ``data_over_limit`` the
dataset's size over the memory limit (the bar: >= 4).

    python benchmarks/stream.py                          # CPU: 4,096 slices of 64 x 64, skip-cae, 3 epochs
    python benchmarks/stream.py --slices 20000 --size 128 --arch res-unet --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = """
import json, resource, sys
from brainae.train import TrainConfig, fit, read_metrics
args = json.loads(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
events = []
config = TrainConfig(**args["config"])
fit(args["dataset"], args["out"], config, lambda ev: events.append(ev) if ev.kind == "start" else None)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rows = read_metrics(args["out"])
print(json.dumps({"info": events[0].info, "img_s": [r["img_s"] for r in rows],
                  "peak_rss_above_start_mb": (peak - before) / 1024}))
"""


def write_dataset(root: Path, n: int, size: int, seed: int = 0) -> int:
    """A prepared dataset of ``n`` phantom slices (80 % train, 20 % val, 8 slices per volume); its bytes."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    slices = np.lib.format.open_memmap(
        root / "slices.npy", mode="w+", dtype=np.float32, shape=(n, size, size)
    )
    for i in range(n):
        a, b = rng.uniform(0.25, 0.4, 2)
        outer = (xx / a) ** 2 + (yy / b) ** 2 < 1
        inner = (xx / (0.5 * a)) ** 2 + (yy / (0.5 * b)) ** 2 < 1
        slices[i] = np.clip(0.8 * outer - 0.4 * inner + 0.05 * rng.random((size, size)), 0, 1)
    slices.flush()
    del slices
    n_train = int(0.8 * n) // 8 * 8
    split = np.where(np.arange(n) < n_train, "train", "val")
    volume = [f"{s}{i // 8}" for i, s in enumerate(split)]
    pd.DataFrame({"volume_id": volume, "slice": np.arange(n) % 8, "split": split}).to_csv(
        root / "index.csv", index=False
    )
    vols = list(dict.fromkeys(volume))
    pd.DataFrame({"volume_id": vols, "split": [v.rstrip("0123456789") for v in vols]}).to_csv(
        root / "volumes.csv", index=False
    )
    prep = {"profile": "sagittal", "size": size, "fov_mm": None, "scaling": "slice-minmax"}
    (root / "settings.json").write_text(json.dumps({"version": "benchmark", "preprocessing": prep}))
    return n * size * size * 4


def run(dataset: Path, out: Path, config: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    arg = json.dumps({"dataset": str(dataset), "out": str(out), "config": config})
    res = subprocess.run([sys.executable, "-c", CHILD, arg], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=4096)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--arch", default="skip-cae")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12, help="steps per epoch")
    parser.add_argument("--accelerator", default="cpu")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nbytes = write_dataset(tmp / "data", args.slices, args.size)
        limit = nbytes // 4
        base = {
            "arch": args.arch,
            "epochs": args.epochs,
            "batch_size": args.batch,
            "max_steps_per_epoch": args.steps,
            "accelerator": args.accelerator,
            "patience": 100,
        }
        memory = run(tmp / "data", tmp / "memory", {**base, "data": "memory"})
        stream = run(tmp / "data", tmp / "stream", {**base, "data": "auto", "memory_limit": limit})

    def summary(r: dict) -> dict:
        timed = r["img_s"][1:] or r["img_s"]
        return {
            "data_mode": r["info"]["data_mode"],
            "why": r["info"]["data_reason"],
            "img_s_median": round(float(np.median(timed)), 2),
            "img_s_per_epoch": [round(v, 2) for v in r["img_s"]],
            "peak_rss_above_start_mb": round(r["peak_rss_above_start_mb"], 1),
        }

    mem, st = summary(memory), summary(stream)
    print(
        json.dumps(
            {
                "dataset_mb": round(nbytes / 2**20, 1),
                "memory_limit_mb": round(limit / 2**20, 1),
                "data_over_limit": round(nbytes / limit, 2),
                "arch": args.arch,
                "size": args.size,
                "batch": args.batch,
                "steps_per_epoch": args.steps,
                "epochs": args.epochs,
                "cpu_count": os.cpu_count(),
                "memory": mem,
                "stream": st,
                "ratio": round(st["img_s_median"] / mem["img_s_median"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
