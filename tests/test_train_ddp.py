"""Multi-process training (Lightning DDP, 2 CPU processes over gloo) on tiny data.

Checks what DDP promises (see the README's "Many processes and nodes"): each rank trains on a disjoint shard
of every epoch, only rank 0 writes, 2 ranks of batch B give the run of one process of batch 2B, and
``--resume`` continues a DDP run. The processes are started the way users start them: a script that calls
``fit(..., devices=2, strategy="ddp")``, which Lightning runs again for rank 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from brainae.train import fit, read_metrics
from test_train import make_dataset, tiny

SRC = Path(__file__).resolve().parents[1] / "src"
TESTS = Path(__file__).resolve().parent

DDP_TOLERANCE = 1e-4
"""Relative tolerance between the DDP run and the single-process run (losses, metrics, weights): the same
arithmetic, with gradients and metric sums reduced over gloo in another order. The models' batch norm is
replaced by the identity in both runs: torch has no CPU SyncBatchNorm, so CPU ranks normalise by their own
half batch (on GPUs brainae synchronises batch norm across ranks)."""

SCRIPT = """
import builtins, json, os, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import torch
import brainae.models.blocks as blocks
import brainae.train.fitting as fitting
from test_train import tiny

blocks.batch_norm = lambda channels: torch.nn.Identity()  # see DDP_TOLERANCE

run, log_dir, epochs, resume = Path({run!r}), Path({log!r}), {epochs}, {resume}
rank = int(os.environ.get("LOCAL_RANK", "0"))  # Lightning starts rank 1 with LOCAL_RANK=1


class Spy(fitting.AutoencoderModule):
    def epoch_batches(self, epoch):  # records the indices this rank trains on, outside the run folder
        batches = super().epoch_batches(epoch)
        with open(log_dir / f"shards-rank{{rank}}.jsonl", "a") as fh:
            row = {{"epoch": epoch, "rank": self.global_rank, "world": self.trainer.world_size}}
            fh.write(json.dumps({{**row, "idx": torch.cat(batches).tolist()}}) + "\\n")
        return batches


fitting.AutoencoderModule = Spy
if rank != 0:  # any write into the run folder by rank 1 is recorded
    real_open, real_replace = builtins.open, os.replace

    def note(path):
        if str(run) in str(Path(path).absolute()):
            with real_open(log_dir / "rank1-writes.txt", "a") as fh:
                fh.write(str(path) + "\\n")

    def guarded_open(file, mode="r", *a, **k):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            note(file)
        return real_open(file, mode, *a, **k)

    def guarded_replace(src, dst, *a, **k):
        note(dst)
        return real_replace(src, dst, *a, **k)

    builtins.open, os.replace = guarded_open, guarded_replace
config = tiny(epochs=epochs, augment=False, batch_size=8, accelerator="cpu", devices=2, strategy="ddp")
fitting.fit(Path({ds!r}), run, config, resume=resume)
"""


def _ddp(ds: Path, run: Path, log: Path, epochs: int, resume: bool) -> None:
    script = log / f"ddp_{epochs}_{resume}.py"
    script.write_text(
        SCRIPT.format(tests=str(TESTS), run=str(run), log=str(log), epochs=epochs, resume=resume, ds=str(ds))
    )
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{TESTS}", "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    res = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=240, cwd=log
    )
    assert res.returncode == 0, res.stderr[-3000:]


def _shards(log: Path) -> dict[tuple[int, int], list[int]]:
    shards = {}
    for path in sorted(log.glob("shards-rank*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            assert row["world"] == 2
            shards[(row["epoch"], row["rank"])] = row["idx"]
    return shards


def test_two_process_ddp_matches_one_process_and_resumes(tmp_path, monkeypatch):
    import brainae.models.blocks as blocks

    monkeypatch.setattr(blocks, "batch_norm", lambda channels: torch.nn.Identity())
    t0 = time.monotonic()
    ds = make_dataset(tmp_path / "ds", n_train=48, n_val=16)
    log = tmp_path / "log"
    log.mkdir()
    run = tmp_path / "ddp"
    _ddp(ds, run, log, epochs=1, resume=False)
    assert [r["epoch"] for r in read_metrics(run)] == [1]
    _ddp(ds, run, log, epochs=2, resume=True)  # --resume under DDP: continues with epoch 2
    ddp_seconds = time.monotonic() - t0

    # each rank saw a disjoint shard of every epoch (3 steps of 8 of the 48 training slices)
    shards = _shards(log)
    assert sorted(shards) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for epoch in (0, 1):
        a, b = shards[(epoch, 0)], shards[(epoch, 1)]
        assert len(a) == len(b) == 24 and not set(a) & set(b)
    assert shards[(0, 0)] != shards[(1, 0)]  # a new permutation each epoch
    # only rank 0 wrote into the run folder
    assert not (log / "rank1-writes.txt").exists(), (log / "rank1-writes.txt").read_text()

    # the same run in one process with the global batch (2 x 8)
    single = tmp_path / "single"
    fit(ds, single, tiny(epochs=2, augment=False, batch_size=16, accelerator="cpu"), progress=False)
    rows_ddp, rows_one = read_metrics(run), read_metrics(single)
    assert [r["epoch"] for r in rows_ddp] == [r["epoch"] for r in rows_one] == [1, 2]
    for a, b in zip(rows_ddp, rows_one, strict=True):
        for key in ("train_loss", "val_loss", "val_mse", "val_dssim", "val_psnr"):
            assert a[key] == pytest.approx(b[key], rel=DDP_TOLERANCE), (key, a[key], b[key])
    from safetensors.torch import load_file

    w_ddp, w_one = load_file(run / "last.safetensors"), load_file(single / "last.safetensors")
    assert w_ddp.keys() == w_one.keys()
    for name, value in w_one.items():
        if value.is_floating_point():
            torch.testing.assert_close(w_ddp[name], value, rtol=DDP_TOLERANCE, atol=DDP_TOLERANCE * 1e-2)
    assert (run / "done").is_file()
    print(f"two DDP launches: {ddp_seconds:.1f} s")
