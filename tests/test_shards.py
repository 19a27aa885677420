"""``--shard K/N`` and reruns (issue 28): two shards run at once give exactly the outputs of one run (byte for
byte), and a shard killed mid-run continues on rerun without redoing the scans it had finished."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brainae.errors import BrainaeError
from brainae.shards import parse_shard, take_shard
from conftest import make_bids

SRC = Path(__file__).resolve().parents[1] / "src"
SIX = {f"{i:02d}": [None] for i in range(1, 5)} | {"05": ["a", "b"]}  # 6 scans


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from brainae.cli import main; main()", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC)}


def _anomaly(bids: Path, out: Path, *extra: str) -> list[str]:
    return _cmd(
        "anomaly",
        str(bids),
        "--model",
        "anomaly",
        "--bids-out",
        str(out),
        "--mask-method",
        "threshold",
        "--device",
        "cpu",
        *extra,
    )


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_shards_split_every_input_once():
    items = list(range(11))
    shards = [take_shard(items, (k, 3)) for k in (1, 2, 3)]
    assert sorted(sum(shards, [])) == items and shards[0] == [0, 3, 6, 9]
    assert take_shard(items, None) == items and parse_shard("2/5") == (2, 5)
    for bad in ("0/2", "3/2", "2", "a/b", "1/2/3"):
        with pytest.raises(BrainaeError, match="1 <= K <= N"):
            parse_shard(bad)


def test_two_shards_at_once_equal_one_run(tmp_path):
    bids = make_bids(tmp_path / "bids", sessions=SIX)
    shards = tmp_path / "sharded"
    procs = [
        subprocess.Popen(
            _anomaly(bids, shards, "--shard", f"{k}/2"),
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for k in (1, 2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "shard 1/2 of" in outs[0] and "3 scans, 3 written, 0 skipped" in outs[0]
    assert "shard 2/2 of" in outs[1] and "3 scans, 3 written, 0 skipped" in outs[1]
    one = subprocess.run(
        _anomaly(bids, tmp_path / "one"), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert one.returncode == 0, one.stdout + one.stderr
    union, single = _tree(shards), _tree(tmp_path / "one")
    assert len(single) == 1 + 6 * 6  # dataset_description + 3 maps and 3 sidecars per scan
    assert union == single  # same names, same bytes


def test_a_killed_shard_continues_without_redoing_finished_scans(tmp_path):
    bids = make_bids(tmp_path / "bids", sessions=SIX)
    out = tmp_path / "deriv"
    proc = subprocess.Popen(
        _anomaly(bids, out, "--shard", "1/1"),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while (
        not list(out.rglob("*_desc-anomaly_T1w.json")) and proc.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(out.rglob("*_desc-anomaly_T1w.json"))
    assert 1 <= len(done) < 6, "the run was not killed mid-way"
    finished = {
        p: (p.stat().st_ino, p.stat().st_mtime_ns)
        for d in done
        for p in d.parent.glob(d.name.split("_desc")[0] + "_*")
    }
    assert len(finished) == 6 * len(done)  # a finished scan has its 3 maps and 3 sidecars
    rerun = subprocess.run(
        _anomaly(bids, out, "--shard", "1/1"), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"6 scans, {6 - len(done)} written, {len(done)} skipped (already complete)" in rerun.stdout
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished} == finished  # not redone
    assert len(list(out.rglob("*_desc-anomaly_T1w.json"))) == 6
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # the killed run's temporaries are gone
