#!/usr/bin/env bash
# One-shot GPU check (run from the repository root on a lent H100/H200). Every step has its own time limit and
# the limits add up to 250 s, so the whole script ends in under 4.5 minutes whatever happens; each step's JSON is
# printed as soon as the step ends.
#
# Status: ran on a lent H200 on 2026-11-26 in 162 s (results in benchmarks/RESULTS.md, "GPU check script");
# the apply timing then hit its 25 s limit, now 45 s. It also runs end to end on the CPU
# (GPU_CHECK_ACCELERATOR=cpu, see below) to check that every step works.
#
# Environment: `python` with torch (CUDA); brainae's other dependencies either installed or carried as wheels in
# ./.whl (installed first into /tmp/site, see the device tool's README); brainae itself is taken from ./src.
# GPU_CHECK_VOLUME: a 2 mm T1 NIfTI for the apply timing (default: the first held-out IXI volume in
# ../shared/data/ixi-t1-2mm; the step is skipped when there is none). GPU_CHECK_ACCELERATOR=cpu runs the same
# steps on the CPU with few steps (a smoke test of the script, not a measurement; GPU_CHECK_LIMIT_SCALE=N
# multiplies every limit).
# Writes everything to $OUT (default .bench/gpu):
#   env.txt                      nvidia-smi + versions
#   NAME.out / NAME.err          stdout / stderr of each step; NAME.json its JSON line
#   throughput_fp32_b32          all five archs, batch 32, fp32 (brainae vs a plain-PyTorch loop, same process)
#   throughput_bf16_b256         res-unet, batch 256, bf16-mixed, channels-last
#   throughput_bf16_b256_compile same with torch.compile
#   train                        a real `brainae train` run, 2 epochs, synthetic 2,304-slice dataset
#   apply_timing                 seconds per volume of denoise / inpaint / anomaly (benchmarks/timing.py)
#   status.txt                   exit code and seconds of each step
set -u
OUT="${OUT:-$PWD/.bench/gpu}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
ACC="${GPU_CHECK_ACCELERATOR:-gpu}"
LIMIT_SCALE="${GPU_CHECK_LIMIT_SCALE:-1}"  # the CPU smoke test on a loaded machine needs longer limits
if [[ "$ACC" == gpu ]]; then  # steps / warm-up steps / big batch / synthetic train slices / repeats / grids
    DEVICE=cuda BLK=10 S32=40 W32=10 S256=30 W256=10 B256=256 NTRAIN=2048 REPEATS=3 GRIDS=2mm,1mm
else
    DEVICE=cpu BLK=1 S32=1 W32=1 S256=1 W256=1 B256=8 NTRAIN=256 REPEATS=1 GRIDS=2mm
fi
if [[ -d .whl ]] && ls .whl/*.whl > /dev/null 2>&1; then
    timeout 30 python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
STATUS="$OUT/status.txt"
: > "$STATUS"

step() {  # step NAME TIMEOUT_S COMMAND... ; stdout -> $OUT/NAME.json (or .log), stderr -> $OUT/NAME.err
    local name=$1 limit=$(($2 * LIMIT_SCALE))
    shift 2
    local t0=$SECONDS
    timeout -k 5 "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$STATUS"
    # the JSON object a step printed (the last line that opens one, through the end of the output)
    python - "$OUT/$name.out" "$OUT/$name.json" <<'PY' || true
import json, sys
text = open(sys.argv[1]).read()
for start in [i for i, c in enumerate(text) if c == "{" and (i == 0 or text[i - 1] == "\n")]:
    try:
        obj = json.loads(text[start:])
    except ValueError:
        continue
    json.dump(obj, open(sys.argv[2], "w"))
    print(json.dumps(obj))
    break
PY
}

{
    nvidia-smi 2>&1 | head -n 15
    python -c "import torch, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'lightning', lightning.__version__, torch.cuda.get_device_name(0))"
} > "$OUT/env.txt" 2>&1

# 1. five archs, batch 32, fp32 (thesis settings)
step throughput_fp32_b32 40 python benchmarks/train_throughput.py --accelerator "$ACC" --batch 32 \
    --precision 32 --steps $S32 --warmup $W32 --block $BLK

# 2. res-unet, batch 256, bf16-mixed, channels-last
step throughput_bf16_b256 30 python benchmarks/train_throughput.py --accelerator "$ACC" --archs res-unet \
    --batch $B256 --precision bf16-mixed --channels-last --steps $S256 --warmup $W256 --block $BLK

# 3. the same compiled (first compile takes a while; bounded)
step throughput_bf16_b256_compile 60 python benchmarks/train_throughput.py --accelerator "$ACC" \
    --archs res-unet --batch $B256 --precision bf16-mixed --channels-last --compile \
    --steps $S256 --warmup $W256 --block $BLK

# 4. a real training run through the CLI: synthetic prepared dataset (2,048 train / 256 val slices), 2 epochs
DATA="$OUT/.synthetic-dataset"
python - "$DATA" "$NTRAIN" <<'EOF'
import json, sys
from pathlib import Path
import numpy as np
import pandas as pd

root = Path(sys.argv[1]); root.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
n_train, n_val, per_volume, size = int(sys.argv[2]), 256, 64, 128
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
step train 45 python -c 'import sys; from brainae.cli import main; sys.argv[0] = "brainae"; main()' \
    train "$DATA" --arch res-unet --loss mse --augment --epochs 2 --batch-size 32 --accelerator "$ACC" \
    --precision 32 --out "$OUT/train/run" --force --no-progress
rm -rf "$DATA" "$OUT/train/run/last.ckpt"

# 5. apply: seconds per volume of the three default models (2 mm and a 256 x 256 x 150 resample)
VOLUME="${GPU_CHECK_VOLUME:-$(ls ../shared/data/ixi-t1-2mm/IXI212-*.nii.gz 2>/dev/null | head -n 1)}"
if [[ -n "$VOLUME" ]]; then
    step apply_timing 45 python benchmarks/timing.py --device "$DEVICE" --volume "$VOLUME" \
        --mask-method threshold --mask-cache "$OUT/.masks" --repeats $REPEATS --grids $GRIDS
else
    echo "apply_timing skipped: no volume (set GPU_CHECK_VOLUME)" | tee -a "$STATUS"
fi
echo "total seconds=$SECONDS" | tee -a "$STATUS"
