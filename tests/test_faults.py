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
    assert "Traceback" not in result.output and "unexpected failure" not in lines[0], result.output
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


@pytest.mark.data("seed-weights")
def test_import_keras_force_does_not_overwrite_other_files(tmp_path):
    h5 = SEED_WEIGHTS / "skip_con_cae_MSE_AUG_NoKReg_LRPlat.h5"  # the shared data is required, as elsewhere
    target = tmp_path / "notes.safetensors"
    target.write_text("not a checkpoint")
    one_error_line(cli("import-keras", h5, "--out", target, "--force"), "not a brainae checkpoint")
    assert target.read_text() == "not a checkpoint"


@pytest.mark.data("seed-weights")
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


# ------------------------------------------------------------------ issue 27: never lose data, round two


def _bad_affine_file(path: Path, affine: np.ndarray) -> Path:
    """A gzipped NIfTI whose sform holds ``affine`` (nibabel refuses to write such a file itself)."""
    import gzip

    import nibabel as nib

    data = synthetic_head()
    img = nib.Nifti1Image(data, np.eye(4))
    hdr = img.header
    hdr["qform_code"], hdr["sform_code"] = 0, 1
    hdr["pixdim"][1:4] = 0.0 if not np.isfinite(affine).all() else hdr["pixdim"][1:4]
    for i, key in enumerate(("srow_x", "srow_y", "srow_z")):
        hdr[key] = affine[i]
    hdr["vox_offset"] = 352
    body = hdr.binaryblock + b"\0" * 4 + np.asarray(data, "<i2").tobytes(order="F")
    path.write_bytes(gzip.compress(body))
    return path


def _brainae_nifti(path: Path, data: np.ndarray) -> Path:
    """A NIfTI as a brainae command writes it (its header carries brainae's mark)."""
    import nibabel as nib

    from brainae.io import mark_as_brainae

    img = nib.Nifti1Image(data, np.eye(4) * [2, 2, 2.5, 1])
    mark_as_brainae(img)
    nib.save(img, str(path))
    return path


def test_masks_brain_masks_and_models_are_inputs_no_output_replaces(volume, tmp_path):
    import nibabel as nib

    vol = nib.load(str(volume))
    mask = np.zeros(vol.shape, np.uint8)
    mask[15:20, 15:20, 12:16] = 1
    m = tmp_path / "m.nii.gz"
    img = nib.Nifti1Image(mask, vol.affine)
    from brainae.io import mark_as_brainae

    mark_as_brainae(img)  # a mask that brainae wrote earlier: --force may replace brainae's files, not inputs
    nib.save(img, str(m))
    before = digest(volume, m)
    one_error_line(cli("inpaint", volume, m, m, "--force"), str(m), "input")
    one_error_line(cli("inpaint", volume, m, tmp_path / "o.nii.gz", "--view", m, "--force"), str(m))
    one_error_line(cli("anomaly", volume, "--brain-mask", m, "--lesion-mask", m, "--force"), str(m), "input")
    one_error_line(cli("anomaly", volume, "--brain-mask", m, "-o", m, "--force"), str(m), "input")
    # a hard link to an input is that input
    link = tmp_path / "link.nii.gz"
    os.link(m, link)
    one_error_line(cli("inpaint", volume, m, link, "--force"), str(link), "input")
    # a model file is an input too
    ckpt = _checkpoint(tmp_path / "m.safetensors")
    ckpt_before = digest(ckpt)
    one_error_line(cli("denoise", volume, ckpt, "--model", ckpt, "--force"), str(ckpt))
    assert digest(ckpt) == ckpt_before
    # two outputs of one command on one file: refused before anything is written
    x = tmp_path / "X.nii.gz"
    one_error_line(cli("anomaly", volume, "-o", x, "--calibrated", x), str(x), "two")
    assert not x.exists()
    assert digest(volume, m) == before


def test_fit_atlas_out_is_checked_as_every_output(cohort, tmp_path):
    mine = tmp_path / "mine.npz"
    mine.write_bytes(b"a file of mine")
    one_error_line(cli("fit", "atlas", cohort, "--out", mine, "--force"), str(mine), "not an atlas")
    assert mine.read_bytes() == b"a file of mine"
    before = digest(cohort)
    inside = cohort / "atlas.npz"
    one_error_line(cli("fit", "atlas", cohort, "--out", inside), str(inside), "input")
    one_error_line(cli("fit", "denoise", cohort, "--out", cohort / "m.safetensors"), "input")
    assert digest(cohort) == before and not inside.exists()


def test_workers_report_a_bad_volume_in_one_line(volume, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        write_volume(folder / f"v{i}.nii.gz", synthetic_head(seed=i))
    (folder / "zz.nii.gz").write_bytes(b"\x1f\x8b not a volume")
    mask = write_volume(tmp_path / "mask.nii.gz", (synthetic_head() > 90).astype(np.uint8))
    before = digest(folder, mask)
    ckpt = _checkpoint(tmp_path / "m.safetensors")
    for out, args in (
        (tmp_path / "d", ("denoise", folder, tmp_path / "d", "--model", ckpt)),
        (tmp_path / "i", ("inpaint", folder, mask, tmp_path / "i", "--model", "biharmonic")),
        (tmp_path / "a", ("anomaly", folder, "-o", tmp_path / "a", "--model", "anomaly", "--brain-mask", mask)),
    ):
        res = run_cli_process([*map(str, args), "--workers", "2", "--device", "cpu"], timeout=300)
        assert res.returncode == 1, res.stderr
        assert "Traceback" not in res.stderr and "BrokenProcessPool" not in res.stderr, res.stderr
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and "zz.nii.gz" in lines[0], res.stderr
        assert not out.exists()
    assert digest(folder, mask) == before


def test_brainae_errors_cross_process_boundaries_intact():
    import pickle

    from brainae.io import VolumeError
    from brainae.workers import portable_error

    err = pickle.loads(pickle.dumps(VolumeError("nan", "a.nii: 3 NaN voxels; fix it")))
    assert type(err) is VolumeError and err.kind == "nan" and str(err) == "a.nii: 3 NaN voxels; fix it"
    assert str(pickle.loads(pickle.dumps(BrainaeError("x.nii: bad")))) == "x.nii: bad"

    class Odd(Exception):
        def __init__(self, a, b):
            super().__init__(f"{a}{b}")

    assert isinstance(portable_error(Odd(1, 2)), RuntimeError)


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_sigkill_of_a_folder_run_leaves_no_worker_and_no_temporary(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(8):
        write_volume(folder / f"v{i}.nii.gz", synthetic_head(shape=(48, 48, 40), seed=i))
    out = tmp_path / "out"
    args = ["denoise", str(folder), str(out), "--workers", "2", "--device", "cpu"]
    code = f"import sys; sys.argv = ['brainae'] + {args!r}\nfrom brainae.cli import main\nmain()\n"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    workers: set[int] = set()
    deadline = time.monotonic() + 120
    staged = []
    while time.monotonic() < deadline and proc.poll() is None:
        workers |= _children(proc.pid)
        staged = [p for p in out.glob(".*")] if out.is_dir() else []
        if len(workers) >= 2 and staged:
            break
        time.sleep(0.05)
    assert proc.poll() is None and len(workers) >= 2 and staged, "the run ended before it could be killed"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "workers outlived their killed parent"
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == []  # nothing published
    # the next run removes what the killed one left and writes every output
    res = run_cli_process(args, timeout=300)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in folder.iterdir())


def test_damaged_atlas_gives_one_line(volume, tmp_path):
    from brainae.atlas import Atlas, AtlasSettings

    rng = np.random.default_rng(0)
    vols = rng.uniform(0, 1, (2, 10, 10, 10)).astype(np.float32)
    Atlas(vols, vols > 0.5, np.ones(2, np.float32), AtlasSettings(), {"source": "test"}, vols[0]).save(
        tmp_path / "good.npz"
    )
    assert cli("info", tmp_path / "good.npz").exit_code == 0
    good = dict(np.load(tmp_path / "good.npz"))
    meta = json.loads(good["meta"].tobytes().decode())

    def variant(name: str, **arrays) -> Path:
        path = tmp_path / f"{name}.npz"
        np.savez(path, **{**good, **arrays})
        return path

    def with_meta(name: str, value) -> Path:
        return variant(name, meta=np.frombuffer(json.dumps(value).encode(), np.uint8))

    cases = [
        with_meta("meta-list", [1, 2]),
        with_meta("zero-levels", {**meta, "levels": 0}),
        with_meta("text-setting", {**meta, "settings": {**meta["settings"], "radius": "6"}}),
        with_meta("nan-top", {**meta, "top": float("nan")}),
        variant("flat-volumes", volumes=good["volumes"].ravel()),
        variant("flat-head", head_template=good["head_template"].ravel()),
        variant("text-meta", meta=np.array(["abc"])),
    ]
    (tmp_path / "text.npz").write_text("not a zip")
    cases.append(tmp_path / "text.npz")
    mask = write_volume(tmp_path / "mask.nii.gz", (synthetic_head() > 90).astype(np.uint8))
    before = digest(volume, mask, *cases)
    for case in cases:
        one_error_line(cli("info", case), case.name)
        one_error_line(cli("inpaint", volume, mask, tmp_path / "o.nii.gz", "--model", case), case.name)
    assert not (tmp_path / "o.nii.gz").exists()
    assert digest(volume, mask, *cases) == before


@pytest.mark.parametrize("kind", ["zero", "nan"])
def test_a_zero_or_nan_affine_gives_one_line_everywhere(kind, tmp_path):
    affine = np.zeros((4, 4)) if kind == "zero" else np.full((4, 4), np.nan)
    folder = tmp_path / "in"
    folder.mkdir()
    bad = _bad_affine_file(folder / "bad.nii.gz", affine)
    mask = write_volume(tmp_path / "mask.nii.gz", (synthetic_head() > 90).astype(np.uint8))
    before = digest(folder, mask)
    for args in (
        ("denoise", bad, tmp_path / "o.nii.gz"),
        ("inpaint", bad, mask, tmp_path / "o.nii.gz", "--model", "biharmonic"),
        ("inpaint", write_volume(tmp_path / "ok.nii.gz", synthetic_head()), bad, tmp_path / "o.nii.gz"),
        ("anomaly", bad),
        ("view", bad, "-o", tmp_path / "v.html"),
    ):
        one_error_line(cli(*args), "bad.nii.gz", "affine")
    res = cli("inspect", folder, "--out", tmp_path / "inspect")  # a folder survey reports the file
    assert res.exit_code == 0 and "Traceback" not in res.output
    assert "affine" in res.output
    assert not (tmp_path / "o.nii.gz").exists() and not (tmp_path / "v.html").exists()
    assert digest(folder, mask) == before


def test_error_lines_name_the_file_and_the_fix(volume, tmp_path):
    for name, data in (
        ("const", np.full((40, 40, 30), 7, np.int16)),
        ("zero", np.zeros((40, 40, 30), np.int16)),
    ):
        scan = write_volume(tmp_path / f"{name}.nii.gz", data)
        one_error_line(cli("anomaly", scan), scan.name)
        one_error_line(cli("denoise", scan, tmp_path / "d.nii.gz"), scan.name, "give")
    full = write_volume(tmp_path / "full.nii.gz", np.ones((40, 40, 30), np.uint8))
    one_error_line(cli("inpaint", volume, full, tmp_path / "i.nii.gz"), "full.nii.gz", "mask")
    one_error_line(cli("denoise", volume, tmp_path / "d.nii.gz", "--model", "atlas"), "atlas", "inpaint")
    for name, data in (
        ("no-brain", np.zeros((40, 40, 30), np.uint8)),
        ("all-brain", np.ones((40, 40, 30), np.uint8)),
    ):
        brain = write_volume(tmp_path / f"{name}.nii.gz", data)
        one_error_line(cli("anomaly", volume, "--brain-mask", brain), brain.name, "brain mask")
    assert not list(tmp_path.glob("[di].nii.gz"))


def test_info_checks_what_it_shows(tmp_path):
    import resource

    from safetensors import safe_open
    from safetensors.torch import save_file

    from brainae.checkpoint import METADATA_KEY
    from brainae.infer import DEFAULT_MODELS

    with safe_open(str(DEFAULT_MODELS["denoise"]), framework="pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118

    def crafted(name: str, meta_: dict, state_: dict) -> Path:
        path = tmp_path / f"{name}.safetensors"
        save_file(state_, str(path), metadata={METADATA_KEY: json.dumps(meta_)})
        return path

    key = next(k for k, t in state.items() if t.is_floating_point())
    nan = crafted("nan", meta, {**state, key: torch.full_like(state[key], float("nan"))})
    one_error_line(cli("info", nan), "nan.safetensors", "NaN")
    banana = crafted("banana", {**meta, "preprocessing": {**meta["preprocessing"], "task": "banana"}}, state)
    one_error_line(cli("info", banana), "banana.safetensors", "banana")
    huge = crafted(
        "huge", {**meta, "arch_kwargs": {**meta["arch_kwargs"], "widths": [8192, 16384, 32768]}}, state
    )
    # info must not build the model the card describes (here hundreds of GB): under a 3 GB address-space
    # limit, building it would fail with a traceback
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
        f"sys.argv = ['brainae', 'info', {str(huge)!r}]\n"
        "from brainae.cli import main\nmain()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert [ln for ln in res.stderr.splitlines() if ln.startswith("error:")][0].count("huge.safetensors") == 1
    assert resource  # imported for the child's limit


def test_fit_refuses_bad_settings_and_overlapping_splits(cohort, tmp_path):
    out = tmp_path / "m.safetensors"
    for lr in ("nan", "-1", "0", "inf"):
        one_error_line(cli("fit", "denoise", cohort, "--out", out, "--lr", lr), "--lr")
    ids = sorted(p.name.replace(".nii.gz", "") for p in cohort.glob("*.nii.gz"))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ids[:5], "val": [ids[0], *ids[5:]]}))
    one_error_line(cli("fit", "denoise", cohort, "--out", out, "--split", split), "split.json", ids[0])
    split.write_text(json.dumps({"train": "abc", "val": ids[5:]}))
    one_error_line(cli("fit", "denoise", cohort, "--out", out, "--split", split), "split.json")
    assert not out.exists()


def test_evaluate_refuses_a_volumetric_checkpoint(prepared, tmp_path):
    from brainae.infer import DEFAULT_MODELS

    res = cli(
        "evaluate",
        DEFAULT_MODELS["anomaly"],
        "--data",
        prepared,
        "--out",
        tmp_path / "ev",
        "--baselines",
        "none",
    )
    one_error_line(res, "brainae-anomaly.safetensors", "slice autoencoder")
    assert not (tmp_path / "ev").exists()


def test_a_second_run_never_silently_replaces_the_first(volume, tmp_path, monkeypatch):
    import brainae.apply

    ckpt = _checkpoint(tmp_path / "m.safetensors")
    first = tmp_path / "first.nii.gz"
    assert cli("denoise", volume, first, "--model", ckpt).exit_code == 0
    out = tmp_path / "out.nii.gz"
    real = brainae.apply.reconstruct

    def meanwhile(*a, **k):  # another run writes the same output while this one works
        out.write_bytes(first.read_bytes())
        return real(*a, **k)

    monkeypatch.setattr(brainae.apply, "reconstruct", meanwhile)
    one_error_line(cli("denoise", volume, out, "--model", ckpt), str(out), "another run")
    assert out.read_bytes() == first.read_bytes()
    assert [p.name for p in tmp_path.glob(".*")] == []
    # the same for every atomically written file (views, reports, checkpoints, atlases)
    from brainae.io import atomic_path

    page = tmp_path / "page.html"
    with pytest.raises(BrainaeError, match="another run"):
        with atomic_path(page) as tmp:
            tmp.write_text("second")
            page.write_text("first")
    assert page.read_text() == "first"
    from brainae.io import atomic_dir

    folder = tmp_path / "ds"
    with pytest.raises(BrainaeError, match="another run"):
        with atomic_dir(folder) as tmp:
            (tmp / "a").write_text("second")
            folder.mkdir()
            (folder / "a").write_text("first")
    assert [p.read_text() for p in folder.iterdir()] == ["first"]
    assert [p.name for p in tmp_path.glob(".*")] == []


def test_os_errors_name_the_output_not_a_temporary(volume, tmp_path, monkeypatch):
    ckpt = _checkpoint(tmp_path / "m.safetensors")
    out = tmp_path / "out.nii.gz"
    real_replace, real_link = os.replace, os.link

    def refuse(src, dst, *a, **k):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    monkeypatch.setattr(os, "link", refuse)
    line = one_error_line(cli("denoise", volume, out, "--model", ckpt), str(out), "Permission denied")
    monkeypatch.setattr(os, "replace", real_replace)
    monkeypatch.setattr(os, "link", real_link)
    assert "tmp" not in line.replace(str(tmp_path), "")
    assert not out.exists() and [p.name for p in tmp_path.glob(".*")] == []


def test_temporary_names_are_anchored():
    from brainae.io import is_temporary, temp_owner

    assert temp_owner(".a.nii.gz.brainae-tmp-12-abcd_123.nii.gz") == "a.nii.gz"
    assert temp_owner(".ds.brainae-old-7-zz00zz00") == "ds"
    for name in (
        ".a.nii.gz.tmp-12-staged.nii.gz",
        ".ds.old-7",
        "a.brainae-tmp-1-abcdabcd",
        ".a.brainae-tmp-x-abcdabcd",
    ):
        assert not is_temporary(name), name
