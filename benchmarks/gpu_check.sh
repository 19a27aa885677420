#!/usr/bin/env bash
# One-shot GPU check of training (run from the repository root on a lent H100/H200; under 5 minutes).
#
# Status: not yet run to completion. One attempt on an H200 (2026-11-26, wrapped with the demo, `python` being
# /opt/torch/.venv/bin/python3 and nibabel carried as a wheel) ran past its 520 s limit and returned no output,
# so which step was slow is unknown: run the steps one by one, each with its own limit, next time.
#
# Expects an environment where `python` has torch (CUDA) plus brainae's dependencies (lightning,
# torchmetrics, safetensors, ...); brainae itself is taken from ./src. Writes everything to $OUT:
#   env.txt                      nvidia-smi + versions
#   NAME.out / NAME.err          stdout / stderr of each step
#   throughput_fp32_b32.json     all five archs, batch 32, fp32 (brainae vs plain-PyTorch reference)
#   throughput_bf16_b256.json    res-unet, batch 256, bf16-mixed, channels-last
#   throughput_bf16_b256_compile.json   same with torch.compile (skipped if compile fails / times out)
#   train/                       a real `brainae train --accelerator gpu` run, 2 epochs, synthetic dataset
#   status.txt                   exit code and seconds of each step
set -u
OUT="${OUT:-$PWD/.bench/gpu}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
STATUS="$OUT/status.txt"
: > "$STATUS"

step() {  # step NAME TIMEOUT_S COMMAND... ; stdout -> $OUT/NAME.json (or .log), stderr -> $OUT/NAME.err
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$STATUS"
    local last
    last=$(tail -n 1 "$OUT/$name.out" 2>/dev/null)
    if [[ "$last" == "{"* ]]; then echo "$last" > "$OUT/$name.json"; fi
}

{
    nvidia-smi 2>&1 | head -n 15
    python -c "import torch, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'lightning', lightning.__version__, torch.cuda.get_device_name(0))"
} > "$OUT/env.txt" 2>&1

# 1. five archs, batch 32, fp32 (thesis settings)
step throughput_fp32_b32 100 python benchmarks/train_throughput.py --accelerator gpu --batch 32 \
    --precision 32 --steps 60 --warmup 15

# 2. res-unet, batch 256, bf16-mixed, channels-last
step throughput_bf16_b256 60 python benchmarks/train_throughput.py --accelerator gpu --archs res-unet \
    --batch 256 --precision bf16-mixed --channels-last --steps 40 --warmup 10

# 3. the same compiled (first compile takes a while; bounded)
step throughput_bf16_b256_compile 150 python benchmarks/train_throughput.py --accelerator gpu \
    --archs res-unet --batch 256 --precision bf16-mixed --channels-last --compile --steps 40 --warmup 10

# 4. a real training run through the CLI: synthetic prepared dataset (2,048 train / 256 val slices), 2 epochs
DATA="$OUT/.synthetic-dataset"
python - "$DATA" <<'EOF'
import json, sys
from pathlib import Path
import numpy as np
import pandas as pd

root = Path(sys.argv[1]); root.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
n_train, n_val, per_volume, size = 2048, 256, 64, 128
yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
imgs = []
for _ in range(n_train + n_val):
    a, b = rng.uniform(0.25, 0.4, 2)
    outer = (xx / a) ** 2 + (yy / b) ** 2 < 1
    inner = (xx / (0.5 * a)) ** 2 + (yy / (0.5 * b)) ** 2 < 1
    imgs.append(np.clip(0.8 * outer - 0.4 * inner + 0.05 * rng.random((size, size)), 0, 1))
np.save(root / "slices.npy", np.stack(imgs).astype(np.float32))
splits = ["train"] * n_train + ["val"] * n_val
vol = [f"{s}{i // per_volume}" for i, s in enumerate(splits)]
pd.DataFrame({"volume_id": vol, "slice": np.arange(len(vol)) % per_volume, "split": splits,
              "brain_frac": 0.5, "nonzero_frac": 0.6, "nonzero_mean": 0.4, "scale_lo": 0.0,
              "scale_hi": 1.0}).to_csv(root / "index.csv", index=False)
vols = list(dict.fromkeys(vol))
pd.DataFrame({"volume_id": vols, "split": [v.rstrip("0123456789") for v in vols]}).to_csv(
    root / "volumes.csv", index=False)
(root / "settings.json").write_text(json.dumps({"version": "synthetic", "preprocessing": {
    "profile": "sagittal", "size": size, "fov_mm": None, "scaling": "slice-minmax",
    "percentiles": [0.5, 99.5]}, "select": {"min_brain_frac": 0.045}}))
EOF
step train 120 python -c 'import sys; from brainae.cli import main; sys.argv[0] = "brainae"; main()' \
    train "$DATA" --arch res-unet --loss mse --augment --epochs 2 --batch-size 32 --accelerator gpu \
    --precision 32 --out "$OUT/train/run" --force --no-progress
rm -rf "$DATA" "$OUT/train/run/last.ckpt"
cat "$STATUS"
