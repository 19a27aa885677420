"""Fault injection (issue 10, "never lose data"): kills, a full disk, unwritable folders, careless --force.

Every command's inputs are hashed before and after; a failure must give one ``error:`` line naming the path,
exit code 1, no traceback and no partial output, and a killed training run must resume to the same result.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from brainae.errors import BrainaeError
from brainae.io import MARKER
from conftest import SEED_WEIGHTS, synthetic_head, tiny, write_volume
from conftest import make_train_dataset as make_dataset

SRC = Path(__file__).resolve().parents[1] / "src"


def digest(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (files or folders), with its mtime: what must never change."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest() + f":{f.stat().st_mtime_ns}"
    return out


def cli(*args: str):
    from brainae.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(result, *names: str) -> str:
    """The command failed with exit 1 and one ``error:`` line (no traceback) that names every ``names``."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def run_cli_process(args: list[str], *, fsize: int | None = None, timeout: float = 120):
    """Run ``brainae ARGS`` in a fresh process, optionally under a file-size limit (a full disk: EFBIG)."""
    code = (
        "import resource, signal, sys\n"
        f"limit = {fsize!r}\n"
        "if limit is not None:\n"
        "    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer\n"
        "    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n"
        f"sys.argv = ['brainae'] + {[str(a) for a in args]!r}\n"
        "from brainae.cli import main\n"
        "main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "300"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.fixture
def prepared(cohort, tmp_path) -> Path:
    from brainae.prepare import PrepareConfig, prepare

    out = tmp_path / "ds"
    prepare(
        cohort,
        out,
        PrepareConfig.from_options(
            size=32, mask_method="threshold", demographics=str(tmp_path / "participants.csv")
        ),
    )
    return out


# ------------------------------------------------------------------------------ --force and -o never destroy


def test_force_never_replaces_inputs_or_foreign_folders(cohort, prepared, tmp_path):
    before = digest(cohort, prepared, tmp_path / "participants.csv")
    # evaluate --out DATASET --force: the dataset is the input
    one_error_line(
        cli("evaluate", "--data", prepared, "--out", prepared, "--force", "--baselines", "identity"),
        str(prepared),
        "input",
    )
    # prepare PARENT/vols --out PARENT --force: the output contains the input volumes
    one_error_line(cli("prepare", cohort, "--out", cohort.parent, "--force"), "contains the input")
    # report DS -o DS/index.csv (with and without --force): inside an input
    for extra in ([], ["--force"]):
        one_error_line(cli("report", prepared, "-o", prepared / "index.csv", *extra), "index.csv", "input")
    # a folder that brainae did not write: refused, and the message does not invite --force
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    for extra in ([], ["--force"]):
        line = one_error_line(cli("prepare", cohort, "--out", foreign, "--size", "32", *extra), str(foreign))
        assert "not a folder written by brainae" in line and "add --force" not in line
    # a brainae dataset holding a file that brainae did not write: --force names it and refuses
    (prepared / "notes.txt").write_text("mine")
    line = one_error_line(cli("prepare", cohort, "--out", prepared, "--size", "48", "--force"), "notes.txt")
    assert (prepared / "notes.txt").read_text() == "mine"
    (prepared / "notes.txt").unlink()
    assert digest(cohort, prepared, tmp_path / "participants.csv") == before
    assert (foreign / "thesis.tex").read_text() == "precious" and sorted(os.listdir(foreign)) == [
        "thesis.tex"
    ]
    # an evaluation folder is not a dataset: --force does not replace one kind with another
    ev = tmp_path / "ev"
    assert (
        cli(
            "evaluate", "--data", prepared, "--out", ev, "--baselines", "identity", "--conditions", "clean"
        ).exit_code
        == 0
    )
    one_error_line(cli("prepare", cohort, "--out", ev, "--size", "32", "--force"), "evaluation")
    # report -o: an existing file needs --force, and --force replaces only a brainae report
    page = tmp_path / "page.html"
    page.write_text("<html>someone's page</html>")
    one_error_line(cli("report", prepared, "-o", page), "--force")
    one_error_line(cli("report", prepared, "-o", page, "--force"), "not a report that brainae wrote")
    assert page.read_text() == "<html>someone's page</html>"
    ok = tmp_path / "report.html"
    assert cli("report", prepared, "-o", ok).exit_code == 0
    assert cli("report", prepared, "-o", ok, "--force").exit_code == 0
    # what brainae wrote itself is replaced with --force
    assert (
        cli(
            "prepare", cohort, "--out", prepared, "--size", "48", "--mask-method", "threshold", "--force"
        ).exit_code
        == 0
    )
    assert np.load(prepared / "slices.npy", mmap_mode="r").shape[1] == 48
    assert json.loads((prepared / MARKER).read_text())["kind"] == "dataset"
    assert digest(cohort, tmp_path / "participants.csv") == {
        k: v for k, v in before.items() if not k.startswith(str(prepared))
    }


def test_import_keras_force_does_not_overwrite_other_files(tmp_path):
    h5 = SEED_WEIGHTS / "skip_con_cae_MSE_AUG_NoKReg_LRPlat.h5"  # the shared data is required, as elsewhere
    target = tmp_path / "notes.safetensors"
    target.write_text("not a checkpoint")
    one_error_line(cli("import-keras", h5, "--out", target, "--force"), "not a brainae checkpoint")
    assert target.read_text() == "not a checkpoint"


def test_nan_kernels_in_h5_are_refused(tmp_path):
    import h5py  # a dependency of brainae (Keras import)

    src = SEED_WEIGHTS / "skip_con_cae_MSE_AUG_NoKReg_LRPlat.h5"
    bad = tmp_path / "nan.h5"
    bad.write_bytes(src.read_bytes())
    with h5py.File(bad, "r+") as f:
        kernels = []
        f["model_weights"].visititems(
            lambda n, o: kernels.append(n) if "kernel" in n and hasattr(o, "shape") else None
        )
        ds = f["model_weights"][kernels[0]]
        arr = ds[()]
        arr.flat[0] = np.nan
        ds[...] = arr
    one_error_line(cli("import-keras", bad, "--out", tmp_path / "x.safetensors"), "NaN")
    assert not (tmp_path / "x.safetensors").exists()


# --------------------------------------------------------------------------------- kill and resume training

TRAIN_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import tiny
from brainae.train import fit
fit(Path({ds!r}), Path({out!r}), tiny(epochs=3, max_steps_per_epoch=4), progress=False)
"""


def _metrics_epochs(run: Path) -> list[int]:
    from brainae.train import read_metrics

    return [r["epoch"] for r in read_metrics(run)]


def _ckpt_epochs(run: Path) -> list[int]:
    if not (run / "last.ckpt").is_file():
        return []
    state = torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)
    return [int(r["epoch"]) for r in state["callbacks"]["RunWriter"]["rows"]]


def _start_training(ds: Path, out: Path) -> subprocess.Popen:
    code = TRAIN_SCRIPT.format(tests=str(Path(__file__).parent), ds=str(ds), out=str(out))
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(
                f"training ended before the kill point: {proc.stderr.read().decode()[-2000:]}"
            )
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("kill point not reached")
        time.sleep(0.005)


def test_training_killed_at_any_moment_resumes_to_the_uninterrupted_run(tmp_path):
    from brainae.train import fit, read_metrics

    ds = make_dataset(tmp_path / "ds", n_train=32, n_val=16)
    before = digest(ds)
    straight = tmp_path / "straight"
    fit(ds, straight, tiny(epochs=3, max_steps_per_epoch=4), progress=False)
    reference = read_metrics(straight)
    assert [r["epoch"] for r in reference] == [1, 2, 3]

    kill_points = {
        # right after the first epoch's metrics row appears
        "sigkill-after-first-row": (signal.SIGKILL, lambda run: _metrics_epochs(run) == [1]),
        # during the first epoch (the run folder exists, no epoch completed)
        "sigkill-during-first-epoch": (signal.SIGKILL, lambda run: (run / "config.json").is_file()),
        # SIGTERM during the second epoch / its validation
        "sigterm-after-first-row": (signal.SIGTERM, lambda run: _metrics_epochs(run) == [1]),
    }
    for name, (sig, when) in kill_points.items():
        run = tmp_path / name
        proc = _start_training(ds, run)
        _wait_for(lambda run=run, when=when: when(run), proc)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        err = proc.stderr.read().decode()
        if sig == signal.SIGTERM:
            assert proc.returncode != 0, err  # never a silent success
        # metrics.csv never lists an epoch whose checkpoint is missing
        assert set(_metrics_epochs(run)) <= set(_ckpt_epochs(run)), name
        # a plain re-run refuses to throw completed epochs away; --resume continues
        if _ckpt_epochs(run):
            with pytest.raises(BrainaeError, match="--resume"):
                fit(ds, run, tiny(epochs=3, max_steps_per_epoch=4), progress=False)
        fit(ds, run, tiny(epochs=3, max_steps_per_epoch=4), progress=False, resume=True)
        rows = read_metrics(run)
        assert [r["epoch"] for r in rows] == [1, 2, 3], name
        for a, b in zip(rows, reference, strict=True):
            for key in ("train_loss", "val_loss", "val_mse"):
                assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(b[key])), (name, key, a[key], b[key])
        assert (run / "done").is_file()
        assert not [p for p in run.iterdir() if ".tmp-" in p.name], name
    assert digest(ds) == before


def test_last_checkpoint_after_every_epoch(tmp_path):
    """last.ckpt exists after epoch 1 of a 3-epoch run (Lightning's save_top_k=0 alone never wrote it)."""
    from brainae.train import fit

    ds = make_dataset(tmp_path / "ds", n_train=16, n_val=8)
    seen = []
    import brainae.train.fitting as train_mod

    class Spy(train_mod.EpochCommit):
        def on_validation_end(self, trainer, pl_module):
            super().on_validation_end(trainer, pl_module)
            seen.append((_ckpt_epochs(self.writer.out), _metrics_epochs(self.writer.out)))

    original = train_mod.EpochCommit
    train_mod.EpochCommit = Spy
    try:
        fit(ds, tmp_path / "run", tiny(epochs=3, max_steps_per_epoch=2), progress=False)
    finally:
        train_mod.EpochCommit = original
    assert seen == [([1], [1]), ([1, 2], [1, 2]), ([1, 2, 3], [1, 2, 3])]


# ----------------------------------------------------------------------------------- full disk, read-only


def test_full_disk_gives_one_line_and_no_partial_output(cohort, tmp_path):
    before = digest(cohort)
    out = tmp_path / "ds"
    res = run_cli_process(
        [
            "prepare",
            cohort,
            "--out",
            out,
            "--size",
            "32",
            "--mask-method",
            "none",
            "--select",
            "nonzero-mean",
        ],
        fsize=4096,
    )
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr and "File too large" in res.stderr, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(out) in errors[0], res.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # inspect: the figure does not fit -> nothing written (not half a folder)
    ins = tmp_path / "inspect"
    res = run_cli_process(["inspect", cohort, "--out", ins], fsize=2048)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert len([ln for ln in res.stderr.splitlines() if ln.startswith("error:")]) == 1, res.stderr
    assert not ins.exists()
    assert digest(cohort) == before


def test_full_disk_during_training_then_rerun(tmp_path):
    ds = make_dataset(tmp_path / "ds", n_train=16, n_val=8)
    run = tmp_path / "run"
    args = [
        "train",
        ds,
        "--arch",
        "skip-cae",
        "--latent-channels",
        "8",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--max-steps-per-epoch",
        "2",
        "--accelerator",
        "cpu",
        "--no-progress",
        "--out",
        run,
    ]
    res = run_cli_process(args, fsize=20_000)  # config.json fits, a checkpoint does not
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "too large" in errors[0], res.stderr[-3000:]
    assert not (run / "metrics.csv").exists()  # never claims an epoch without its checkpoint
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]
    # no epoch completed: a plain re-run starts again (nothing to lose), with space this time
    from brainae.train import fit

    with pytest.warns(UserWarning, match="starting again"):
        fit(ds, run, tiny(epochs=2, max_steps_per_epoch=2), progress=False)
    assert (run / "done").is_file()


def test_unwritable_output_gives_one_line(cohort, tmp_path, monkeypatch):
    before = digest(cohort)
    out = tmp_path / "inspect"
    real_replace = os.replace

    def refuse(src, dst, *a, **k):
        if str(dst).startswith(str(tmp_path)):
            raise PermissionError(13, "Permission denied", str(dst))
        return real_replace(src, dst, *a, **k)

    real_link = os.link

    def refuse_link(src, dst, *a, **k):  # an output that is new is put in place by a hard link (no clobber)
        if str(dst).startswith(str(tmp_path)):
            raise PermissionError(13, "Permission denied", str(dst))
        return real_link(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", refuse)
    monkeypatch.setattr(os, "link", refuse_link)
    one_error_line(cli("inspect", cohort, "--out", out), str(out), "Permission denied")
    assert not out.exists()
    monkeypatch.setattr(os, "replace", real_replace)
    monkeypatch.setattr(os, "link", real_link)
    if os.geteuid() != 0:  # root ignores permission bits; the monkeypatched case above covers it
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            one_error_line(cli("inspect", cohort, "--out", ro / "x"), str(ro))
        finally:
            ro.chmod(0o755)
    # a missing parent folder of a single output file is created; an output inside a file is one line
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_error_line(cli("inspect", cohort, "--out", blocker / "sub"), str(blocker))
    assert digest(cohort) == before


def test_stale_temporaries_of_a_killed_run_are_removed(cohort, tmp_path):
    from brainae.prepare import PrepareConfig, prepare

    out = tmp_path / "ds"
    dead = 2**22 + 12345  # above the default pid_max of most systems: no such process
    stale = [tmp_path / f".ds.brainae-tmp-{dead}-abc123_x", tmp_path / f".ds.brainae-old-{dead}-abc123_y"]
    for s in stale:
        s.mkdir()
        (s / "slices.npy").write_bytes(b"half")
    keep = tmp_path / f".ds.brainae-tmp-{os.getpid()}-live1234"  # a writer that is still running: left alone
    keep.mkdir()
    # entries that merely look alike are the user's: only brainae's whole, anchored pattern is swept
    mine = [
        tmp_path / f".ds.tmp-{dead}-abc123",
        tmp_path / f".ds.old-{dead}",
        tmp_path / f".ds.brainae-tmp-{dead}-abc123_x.backup folder",
        tmp_path / f".ds2.brainae-tmp-{dead}-abc123_x",
    ]
    for m in mine:
        m.mkdir()
        (m / "notes.txt").write_text("mine")
    prepare(cohort, out, PrepareConfig.from_options(size=32, mask_method="none", select="nonzero-mean"))
    assert not any(s.exists() for s in stale)
    assert keep.exists()
    assert all((m / "notes.txt").read_text() == "mine" for m in mine)


# --------------------------------------------------------------------------------------- names as markup


def test_file_names_are_printed_literally(tmp_path):
    odd = tmp_path / "sq["
    odd.mkdir()
    (odd / "x].nii.gz").write_bytes(b"not a nifti")
    write_volume(odd / "sub-01 [bold]run1.nii.gz", synthetic_head(seed=1)[:, :, 0])  # 2-D: a bad file
    res = cli("inspect", odd, "--out", tmp_path / "ins")
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())  # rich wraps long lines at the terminal width
    assert "x].nii.gz" in flat and "sub-01 [bold]run1.nii.gz" in flat, flat
    res = cli("prepare", odd, "--out", tmp_path / "o")
    flat = " ".join(res.output.split())
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "sq[" in flat and "sub-01 [bold]run1.nii.gz" in flat, flat  # error and warning keep the names


def test_install_hint_keeps_its_brackets(capsys):
    import warnings

    from brainae.cli._app import _show_warning

    _show_warning("pip install 'brainae[brainmask]' for deepbet", UserWarning, "f", 1)
    assert "pip install 'brainae[brainmask]'" in capsys.readouterr().err
    with warnings.catch_warnings():
        pass


# ---------------------------------------------------------------------------------- non-finite, crafted


@pytest.fixture
def volume(tmp_path) -> Path:
    return write_volume(tmp_path / "sub-01_T1w.nii.gz", synthetic_head(seed=3))


def _checkpoint(path: Path, *, nan: bool = False, **meta) -> Path:
    from brainae.checkpoint import save_checkpoint
    from brainae.models import build_model
    from brainae.volume import Preprocessing

    torch.manual_seed(0)
    model = build_model("skip-cae", latent_channels=8)
    if nan:
        with torch.no_grad():
            next(model.parameters()).view(-1)[:5] = float("nan")
    return save_checkpoint(path, model, preprocessing=Preprocessing(size=32).to_dict(), **meta)


def test_nan_weights_crafted_sizes_and_bad_statistics_are_refused(volume, tmp_path):
    from brainae.checkpoint import METADATA_KEY, read_checkpoint, update_checkpoint

    before = digest(volume)
    bad = _checkpoint(tmp_path / "nan.safetensors", nan=True)
    out = tmp_path / "den.nii.gz"
    one_error_line(cli("denoise", volume, out, "--model", bad), "nan.safetensors", "NaN")
    assert not out.exists()

    # latent_channels: 1000000 -> refused before anything is allocated
    from safetensors import safe_open
    from safetensors.torch import save_file

    good = _checkpoint(tmp_path / "good.safetensors")
    with safe_open(str(good), framework="pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta["arch_kwargs"] = {**meta.get("arch_kwargs", {}), "latent_channels": 1_000_000}
    crafted = tmp_path / "crafted.safetensors"
    save_file(state, str(crafted), metadata={METADATA_KEY: json.dumps(meta)})
    t0 = time.perf_counter()
    one_error_line(cli("denoise", volume, out, "--model", crafted), "crafted.safetensors", "latent_channels")
    assert time.perf_counter() - t0 < 20

    # garbage normative statistics
    for stats in ({"mean": "abc", "std": 1.0}, {"mean": 0.1, "std": float("nan")}):
        with pytest.raises(BrainaeError, match="good.safetensors: normative"):  # never written ...
            update_checkpoint(good, normative=stats)
        meta["arch_kwargs"]["latent_channels"] = 8
        save_file(state, str(crafted), metadata={METADATA_KEY: json.dumps({**meta, "normative": stats})})
        # ... and refused when crafted
        one_error_line(
            cli("anomaly", volume, "--model", crafted, "--json"), "crafted.safetensors", "normative"
        )
    assert read_checkpoint(good).arch == "skip-cae"
    assert not out.exists()
    assert digest(volume) == before


def test_anomaly_json_is_valid_json_with_null_for_non_finite():
    from brainae.cli.apply import _finite_or_none

    with pytest.warns(UserWarning, match="reported as null"):
        value = _finite_or_none(float("nan"), "x.nii.gz: the anomaly score")
    assert value is None
    assert json.loads(json.dumps({"score": value}, allow_nan=False)) == {"score": None}
    assert _finite_or_none(0.5, "x") == 0.5


def test_folder_of_inputs_with_one_bad_file_writes_nothing(volume, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_volume(folder / "a.nii.gz", synthetic_head(seed=4))
    write_volume(folder / "b.nii.gz", synthetic_head(seed=5))
    (folder / "c.nii.gz").write_bytes(b"\x1f\x8b broken")
    ckpt = _checkpoint(tmp_path / "m.safetensors")
    before = digest(folder)
    out = tmp_path / "den"
    one_error_line(cli("denoise", folder, out, "--model", ckpt), "c.nii.gz")
    assert not out.exists()
    assert digest(folder) == before


# -------------------------------------------------------------------------------------------- demographics


def test_bad_ages_and_conflicting_duplicates_are_reported(tmp_path):
    from brainae.cohort import read_participants

    table = tmp_path / "participants.csv"
    table.write_text(
        "participant_id,age,sex\nsub-01,abc,M\nsub-02,-5,F\nsub-03,1e9,M\nsub-04,40,F\n"
        "sub-05,30,M\nsub-05,31,M\nsub-06,30,M\nsub-06,60,F\n"
    )
    with pytest.warns(UserWarning) as record:
        t = read_participants(table)
    text = " | ".join(str(w.message) for w in record)
    for sid in ("sub-01", "sub-02", "sub-03", "sub-06"):
        assert sid in text, text
    assert "sub-05" not in text  # ages a year apart: the same person
    ages = dict(zip(t["key"], t["age"], strict=True))
    assert np.isnan(ages["sub-01"]) and np.isnan(ages["sub-03"]) and ages["sub-04"] == 40
    assert t.loc[t["key"] == "sub-06", "sex"].isna().all()


def test_without_demographics_subjects_are_still_split(cohort, tmp_path):
    res = cli(
        "prepare",
        cohort,
        "--out",
        tmp_path / "nz",
        "--select",
        "nonzero-mean",
        "--mask-method",
        "none",
        "--size",
        "32",
        "--val",
        "0.25",
        "--test",
        "0.25",
    )
    assert res.exit_code == 0, res.output
    assert "not stratified" in res.output
    import pandas as pd

    vols = pd.read_csv(tmp_path / "nz" / "volumes.csv")
    counts = vols["split"].value_counts().to_dict()
    assert counts.get("val", 0) >= 1 and counts.get("test", 0) >= 1 and counts.get("train", 0) >= 1
    assert vols.groupby("subject_id")["split"].nunique().max() == 1


# --------------------------------------------------------------------------------------- report after grid


def test_report_over_a_grid_folder(prepared, tmp_path):
    runs = tmp_path / "runs"
    (runs / "a").mkdir(parents=True)
    (runs / "a" / "metrics.csv").write_text(
        "epoch,train_loss,val_loss,val_mse,val_dssim,val_psnr,lr,seconds,img_s\n1,0.1,0.2,0.2,0.3,10,0.001,1,10\n"
    )
    (runs / "summary.csv").write_text("name,arch,loss,l2,augment,status\na,skip-cae,mse,0.0,False,trained\n")
    ev = tmp_path / "eval"
    assert (
        cli(
            "evaluate", "--data", prepared, "--out", ev, "--baselines", "identity", "--conditions", "clean"
        ).exit_code
        == 0
    )
    res = cli("report", prepared, runs / "a", runs / "summary.csv", ev, "-o", tmp_path / "report.html")
    assert res.exit_code == 0, res.output
    html = (tmp_path / "report.html").read_text()
    assert "not an evaluation" in html and "identity" in html
