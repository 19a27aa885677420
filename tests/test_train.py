"""Training (stage 8): on-device batches, the thesis schedule, checkpoints, resume, grid, CLI, errors.

Tiny synthetic prepared datasets (32 x 32 slices, a few volumes) and a few short epochs on the CPU.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from brainae.errors import BrainaeError
from brainae.train import (
    CSV_COLUMNS,
    AutoencoderModule,
    fit,
    grid,
    grid_configs,
    is_finished,
    read_metrics,
    run_name,
    shard_batches,
)
from conftest import make_train_dataset as make_dataset
from conftest import tiny

SIZE = 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "prepared")


# ----------------------------------------------------------------------------------------------- batches


def test_batches_cover_every_index_once_per_epoch_and_differ_between_epochs():
    e0 = shard_batches(50, 8, seed=3, epoch=0)
    e1 = shard_batches(50, 8, seed=3, epoch=1)
    assert [len(b) for b in e0] == [8] * 6 + [2]
    assert torch.equal(torch.cat(e0).sort().values, torch.arange(50))
    assert torch.equal(torch.cat(e1).sort().values, torch.arange(50))
    assert not torch.equal(torch.cat(e0), torch.cat(e1))
    assert torch.equal(torch.cat(e0), torch.cat(shard_batches(50, 8, seed=3, epoch=0)))  # seeded


def test_ddp_shards_are_disjoint_and_equal():
    shards = [torch.cat(shard_batches(50, 4, seed=0, epoch=2, rank=r, world=3)) for r in range(3)]
    assert [len(s) for s in shards] == [16, 16, 16]
    assert len(set(torch.cat(shards).tolist())) == 48


def test_module_draws_on_the_device_in_index_batches():
    module = AutoencoderModule(tiny(max_steps_per_epoch=None), np.random.rand(20, SIZE, SIZE), None)
    batches = module.epoch_batches(0)
    assert module.num_steps("train") == len(batches) == 3
    assert all(b.device == module.device and b.dtype == torch.int64 for b in batches)
    assert sorted(torch.cat(batches).tolist()) == list(range(20))


def test_compile_option_uses_the_compiled_model():
    """--compile: forward goes through the torch.compile wrapper (whose truth value raises: gpu_check found
    ``compiled or model`` failing with "ResUNet does not support len()")."""
    module = AutoencoderModule(tiny(compile=True), np.random.rand(8, SIZE, SIZE), None)
    compiled = module.__dict__["_compiled"]
    assert compiled is not None and module._net() is compiled
    assert AutoencoderModule(tiny(), np.random.rand(8, SIZE, SIZE), None)._net() is not compiled


def test_l2_adds_the_kernel_penalty():
    from brainae.models import kernel_parameters

    images = np.random.default_rng(1).random((8, SIZE, SIZE)).astype(np.float32)
    plain = AutoencoderModule(tiny(l2=0.0), images, None)
    reg = AutoencoderModule(tiny(l2=1e-2), images, None)
    reg.model.load_state_dict(plain.model.state_dict())
    x = torch.from_numpy(images)[:, None]
    expected = 1e-2 * sum(float((w.detach() ** 2).sum()) for w in kernel_parameters(reg.model))
    assert expected > 0
    diff = float(reg.training_loss(x, x)) - float(plain.training_loss(x, x))
    assert diff == pytest.approx(expected, rel=1e-4)


def test_bn_momentum_from_the_run_length_or_settable():
    from brainae.train import auto_bn_momentum

    def momenta(module):
        return {m.momentum for m in module.model.modules() if isinstance(m, torch.nn.BatchNorm2d)}

    images = np.random.rand(8, SIZE, SIZE)
    assert momenta(AutoencoderModule(tiny(bn_momentum=0.1), images, None)) == {0.1}
    with pytest.raises(BrainaeError, match="bn_momentum"):
        tiny(bn_momentum=0.0).validate()
    # the thesis's Keras value for long runs, larger (at most torch's 0.1) for short ones
    assert auto_bn_momentum(300) == auto_bn_momentum(10_000) == 0.01
    assert auto_bn_momentum(100) == pytest.approx(0.03) and auto_bn_momentum(6) == 0.1
    module = AutoencoderModule(tiny(epochs=50, max_steps_per_epoch=None), np.random.rand(24, SIZE, SIZE))
    module.on_fit_start()  # 50 epochs x 3 steps = 150 steps
    assert momenta(module) == {module.bn_momentum} and module.bn_momentum == pytest.approx(0.02)


def test_keras_optimizer_and_plateau_settings():
    module = AutoencoderModule(tiny(), np.random.rand(8, SIZE, SIZE), None)
    opt = module.configure_optimizers()
    assert opt.defaults["alpha"] == 0.9 and opt.defaults["eps"] == 1e-7 and opt.defaults["lr"] == 1e-3
    plateau = module._plateau
    assert plateau.patience == 3 and plateau.factor == 0.2 and plateau.threshold == 2e-7
    # Keras semantics: the lr drops after 4 epochs without improvement
    for _ in range(4):
        plateau.step(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)  # epoch 1 sets best, then 3 bad epochs
    plateau.step(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-4)
    assert tiny(loss="dssim").resolved_min_delta == 5e-5
    assert tiny(loss="mse+dssim").resolved_min_delta == 5e-5


def test_recalibration_replaces_running_statistics_by_the_batch_average():
    from brainae.train import recalibrate_batch_norm

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1, bias=False), torch.nn.BatchNorm2d(1, momentum=0.01))
    torch.nn.init.ones_(model[0].weight)
    model.eval()
    weights = [p.detach().clone() for p in model.parameters()]
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 1, 8, 8, generator=g) * (i + 1) + 3 * i for i in range(3)]
    assert recalibrate_batch_norm(model, iter(batches)) == 3
    bn = model[1]
    assert float(bn.running_mean) == pytest.approx(float(np.mean([b.mean() for b in batches])), rel=1e-5)
    assert float(bn.running_var) == pytest.approx(float(np.mean([b.var() for b in batches])), rel=1e-5)
    assert bn.momentum == 0.01 and not model.training  # restored
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert recalibrate_batch_norm(torch.nn.Conv2d(1, 1, 1), iter(batches)) == 0  # no batch norm: nothing


# ---------------------------------------------------------------------------------------------- training


def test_training_lowers_val_loss_and_checkpoints_describe_themselves(dataset, tmp_path):
    from brainae.checkpoint import load_checkpoint, load_model

    out = tmp_path / "run"
    best = fit(dataset, out, tiny(epochs=4, augment=False, max_steps_per_epoch=None), progress=False)
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert list(pd.read_csv(out / "metrics.csv").columns) == list(CSV_COLUMNS)
    assert min(r["val_loss"] for r in rows[1:]) < rows[0]["val_loss"]
    assert best == out / "best.safetensors" and is_finished(out)
    for name in ("last.safetensors", "last.ckpt", "config.json", "curves.png", "done"):
        assert (out / name).is_file(), name
    model, ckpt = load_checkpoint(best)
    assert ckpt.arch == "skip-cae" and ckpt.arch_kwargs["latent_channels"] == 8
    assert ckpt.preprocessing.size == SIZE
    assert (
        ckpt.training.get("loss") == "mse"
        and ckpt.training.get("best_epoch") == min(rows, key=lambda r: r["val_loss"])["epoch"]
    )
    assert ckpt.training.get("best_val_loss") == pytest.approx(min(r["val_loss"] for r in rows))
    assert ckpt.training.get("dataset") == str(dataset.resolve()) and ckpt.training.get("version")
    # normative statistics are the step after training, not part of it
    from brainae.slice_anomaly import store_normative_statistics

    assert ckpt.normative is None
    stats = store_normative_statistics(out, dataset, "cpu")
    assert stats["n"] == 2 and load_checkpoint(best)[1].normative.n == 2
    assert load_checkpoint(out / "last.safetensors")[1].normative.n == 2
    x = torch.from_numpy(np.load(dataset / "slices.npy")[-4:])[:, None]
    with torch.no_grad():
        assert load_model(best)(x).shape == x.shape
    # a finished run is not overwritten by accident
    with pytest.raises(BrainaeError, match="finished run.*--resume.*--force"):
        fit(dataset, out, tiny(), progress=False)


def test_resume_continues_at_the_next_epoch_with_the_same_state(dataset, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    fit(dataset, straight, tiny(epochs=4), progress=False)
    fit(dataset, split, tiny(epochs=2), progress=False)
    saved = torch.load(split / "last.ckpt", map_location="cpu", weights_only=False)
    sq_saved = [s["square_avg"].clone() for s in saved["optimizer_states"][0]["state"].values()]

    seen = {}

    class Spy(AutoencoderModule):
        def on_train_epoch_start(self):
            if "epoch" not in seen:
                opt = self.trainer.optimizers[0]
                seen["epoch"] = self.current_epoch
                seen["square_avg"] = [opt.state[p]["square_avg"].clone() for p in self.model.parameters()]
                seen["plateau"] = self._plateau.state_dict()
            super().on_train_epoch_start()

    import brainae.train.fitting as fitting

    original = fitting.AutoencoderModule
    fitting.AutoencoderModule = Spy
    try:
        fit(dataset, split, tiny(epochs=4), progress=False, resume=True)
    finally:
        fitting.AutoencoderModule = original
    assert seen["epoch"] == 2  # 0-based: the third epoch
    assert len(seen["square_avg"]) == len(sq_saved)
    assert all(torch.equal(a, b) for a, b in zip(seen["square_avg"], sq_saved, strict=True))
    assert seen["plateau"]["best"] == saved["brainae_plateau"]["best"]
    rows_split, rows_straight = read_metrics(split), read_metrics(straight)
    assert [r["epoch"] for r in rows_split] == [1, 2, 3, 4]
    # derived randomness: the resumed run is the uninterrupted run
    for a, b in zip(rows_split, rows_straight, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)


def test_errors(dataset, tmp_path):
    with pytest.raises(BrainaeError, match="unknown architecture 'unet'.*res-unet"):
        fit(dataset, tmp_path / "a", tiny(arch="unet"), progress=False)
    with pytest.raises(BrainaeError, match="unknown loss 'huber'.*mse"):
        fit(dataset, tmp_path / "b", tiny(loss="huber"), progress=False)
    with pytest.raises(BrainaeError, match="nothing to resume"):
        fit(dataset, tmp_path / "c", tiny(), progress=False, resume=True)
    no_val = make_dataset(tmp_path / "noval", n_train=16, n_val=0)
    with pytest.raises(BrainaeError, match="'val' split has no slices.*prepare"):
        fit(no_val, tmp_path / "d", tiny(), progress=False)


# -------------------------------------------------------------------------------------------- grid + CLI


def test_grid_names_and_skips_finished_runs(dataset, tmp_path):
    configs = grid_configs(
        archs=["skip-cae"],
        losses=["mse"],
        l2=[True, False],
        augment=[False],
        base=tiny(epochs=1, max_steps_per_epoch=1),
    )
    assert [name for name, _ in configs] == ["skip-cae_mse_l2_noaug", "skip-cae_mse_nol2_noaug"]
    assert configs[0][1].l2 == 1e-5 and configs[1][1].l2 == 0
    assert len(grid_configs()) == 40 and run_name("res-unet", "mse", True, True) == "res-unet_mse_l2_aug"
    first = grid(dataset, tmp_path / "grid", configs, progress=False)
    assert [r.status for r in first] == ["trained", "trained"]
    again = grid(dataset, tmp_path / "grid", configs, progress=False)
    assert [r.status for r in again] == ["skipped", "skipped"]
    assert len(pd.read_csv(tmp_path / "grid" / "summary.csv")) == 2


def test_cli_train_and_errors(dataset, tmp_path):
    from typer.testing import CliRunner

    from brainae.cli import app

    runner = CliRunner()
    out = tmp_path / "cli-run"
    args = [
        "train",
        str(dataset),
        "--arch",
        "skip-cae",
        "--loss",
        "mse",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--latent-channels",
        "8",
        "--max-steps-per-epoch",
        "2",
        "--accelerator",
        "cpu",
        "--no-augment",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert is_finished(out) and "best" in result.output
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "--force" in result.output
    result = runner.invoke(app, [*args[:2], "--arch", "nope", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "unknown architecture 'nope'" in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------- streamed data


def test_slice_reader_reads_rows_in_the_order_asked(dataset):
    from brainae.train.data import SliceReader

    full = np.load(dataset / "slices.npy")
    rows = np.array([5, 3, 4, 40, 0, 63])
    got = SliceReader(dataset / "slices.npy").read(rows)
    assert got.dtype == np.float32 and np.array_equal(got, full[rows])


def test_auto_data_mode_streams_above_the_memory_limit():
    from brainae.train import choose_data_mode

    cpu = torch.device("cpu")
    assert choose_data_mode("auto", 100, cpu, memory_limit=400)[0] == "memory"
    mode, reason = choose_data_mode("auto", 1600, cpu, memory_limit=400)
    assert mode == "stream" and "exceed the memory limit" in reason
    assert choose_data_mode("memory", 1600, cpu, memory_limit=400)[0] == "memory"


def test_streamed_training_equals_in_memory_training(dataset, tmp_path):
    events = []
    fit(dataset, tmp_path / "mem", tiny(epochs=2, data="memory"), progress=False)
    nbytes = (48 + 16) * SIZE * SIZE * 4
    config = tiny(epochs=2, data="auto", memory_limit=nbytes // 4)  # the data are 4x the limit
    fit(dataset, tmp_path / "stream", config, events.append)
    assert events[0].kind == "start" and events[0].info["data_mode"] == "stream"
    assert "exceed the memory limit" in events[0].info["data_reason"]
    mem, stream = read_metrics(tmp_path / "mem"), read_metrics(tmp_path / "stream")
    for a, b in zip(mem, stream, strict=True):
        for key in ("train_loss", "val_loss", "val_mse", "val_dssim", "val_psnr"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key
    # progress events count epochs from 1, as metrics.csv does
    epochs = [e.epoch for e in events if e.kind == "epoch"]
    assert epochs == [r["epoch"] for r in stream] == [1, 2]
    steps = [(e.epoch, e.step) for e in events if e.kind == "step"]
    assert steps == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    assert all(e.epochs == 2 for e in events)


def test_cli_counts_epochs_from_one_everywhere_and_reports_progress(dataset, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import brainae.cli._training as display
    from brainae.cli import app

    monkeypatch.setattr(display, "LOG_EVERY_S", 0.0)  # a progress line after every step (not a terminal)
    out = tmp_path / "run"
    args = ["train", str(dataset), "--arch", "skip-cae", "--latent-channels", "8", "--epochs", "2"]
    args += ["--batch-size", "8", "--max-steps-per-epoch", "3", "--accelerator", "cpu", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = result.output
    rows = read_metrics(out)
    logged = [int(m[1]) for m in re.finditer(r"^epoch (\d+)/2  train_loss", text, re.M)]
    assert logged == [r["epoch"] for r in rows] == [1, 2]
    assert re.findall(r"^epoch (\d)/2: step (\d)/3", text, re.M) == [
        ("1", "1"),
        ("1", "2"),
        ("2", "1"),
        ("2", "2"),
    ]
    best = min(rows, key=lambda r: r["val_loss"])
    assert f"best        epoch {best['epoch']} of 2:" in text
    assert "schedule    epochs 1-2" in text and "batch-norm momentum 0.1, statistics re-estimated" in text
    assert "note        6 steps in all: a short run" in text
    assert "data        held in memory" in text
    # the normative statistics step ran after training
    from brainae.checkpoint import load_checkpoint

    assert load_checkpoint(out / "best.safetensors")[1].normative.n == 2
    # --resume with a new total continues at epoch 3 and says so
    result = CliRunner().invoke(app, ["train", str(dataset), "--out", str(out), "--resume", "--epochs", "3"])
    assert result.exit_code == 0, result.output
    assert "schedule    epochs 3-3" in result.output and re.search(
        r"^epoch 3/3  train_loss", result.output, re.M
    )
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2, 3]


@pytest.mark.parametrize("command", ["train", "grid"])
def test_train_and_grid_help_show_defaults_and_no_stray_text(command):
    from typer.testing import CliRunner

    from brainae.cli import app

    text = CliRunner(env={"COLUMNS": "200"}).invoke(app, [command, "--help"]).output
    for option in ("--bn-momentum", "--channels-last", "--compile", "--data", "--memory-limit", "--strategy"):
        assert option in text, option
    for default in ("[default: 100]", "[default: 32]", "[default: auto]", "[default: 1]"):
        assert default in text, default
    assert re.search(r"\*\s+--out\s+-o\s[^\n]*(\n[^\n]*)?\[required\]", text)  # --out is marked required
    assert not re.search(r"\w \.|\w ;| \. | ; ", text), re.findall(r".{20}\w [.;].{5}", text)


def test_init_starts_from_a_checkpoint_and_refuses_another_architecture(dataset, tmp_path):
    from typer.testing import CliRunner

    from brainae.checkpoint import load_model
    from brainae.cli import app
    from brainae.train import load_config

    base = ["--epochs", "1", "--batch-size", "8", "--max-steps-per-epoch", "2", "--accelerator", "cpu"]
    base += ["--latent-channels", "8", "--no-progress"]
    first = tmp_path / "first"
    assert (
        CliRunner()
        .invoke(app, ["train", str(dataset), "--arch", "skip-cae", *base, "--out", str(first)])
        .exit_code
        == 0
    )
    start = load_model(first / "best.safetensors")
    # the module of a fine-tuning run starts exactly from the checkpoint's weights
    config = tiny(arch="skip-cae", latent_channels=8, init=str(first / "best.safetensors"))
    module = AutoencoderModule(config, np.random.rand(8, 32, 32).astype(np.float32), None)
    for (k, a), b in zip(start.state_dict().items(), module.model.state_dict().values()):
        assert torch.equal(a, b), k
    # and the fine-tuning run trains and records where it started
    tuned = tmp_path / "tuned"
    args = ["train", str(dataset), "--arch", "skip-cae", *base, "--lr", "1e-4"]
    result = CliRunner().invoke(app, [*args, "--init", str(first / "best.safetensors"), "--out", str(tuned)])
    assert result.exit_code == 0, result.output
    assert load_config(tuned).init == str(first / "best.safetensors") and load_config(tuned).lr == 1e-4
    # another architecture: one clear line, no run folder
    bad = tmp_path / "bad"
    args = ["train", str(dataset), "--arch", "res-unet", *base, "--init", str(first / "best.safetensors")]
    result = CliRunner().invoke(app, [*args, "--out", str(bad)])
    assert result.exit_code != 0 and "does not fit a res-unet run" in result.output
    assert "Traceback" not in result.output and not (bad / "best.safetensors").exists()
