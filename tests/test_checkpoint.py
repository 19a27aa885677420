"""Tests of brainae.checkpoint and of the ``brainae import-keras`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

import brainae
from brainae.card import Normative, Source, Training
from brainae.checkpoint import (
    import_keras_checkpoint,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    update_checkpoint,
)
from brainae.cli import app
from brainae.errors import BrainaeError
from brainae.models import build_model
from brainae.volume import THESIS_PREPROCESSING, Preprocessing, VolumetricPreprocessing
from conftest import SEED_WEIGHTS

SEED = SEED_WEIGHTS
SKIP_H5 = SEED / "skip_con_cae_MSE_AUG_NoKReg_LRPlat.h5"


def _trained_like(name: str, **kwargs: object) -> torch.nn.Module:
    """A model with non-trivial BN statistics, so that a round trip that lost them would show."""
    torch.manual_seed(1)
    model = build_model(name, **kwargs)
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 1, 32, 32))
    return model.eval()


@pytest.mark.parametrize("name", ["shallow-res-original", "myronenko", "res-unet"])
def test_round_trip_gives_identical_outputs(tmp_path: Path, name: str) -> None:
    model = _trained_like(name, latent_channels=16)
    path = tmp_path / "sub" / "m.safetensors"
    save_checkpoint(
        path,
        model,
        arch=name,
        arch_kwargs=model.brainae_arch_kwargs,
        preprocessing={"size": 32},
        training={"loss": "mse", "epochs": 2},
        normative={"mean": np.float32(0.5), "values": np.arange(3)},
        source={"kind": "test"},
    )
    assert [p.name for p in path.parent.iterdir()] == ["m.safetensors"]  # no temp file left behind
    loaded, ckpt = load_checkpoint(path)
    assert not loaded.training
    assert ckpt.arch == name and ckpt.arch_kwargs == model.brainae_arch_kwargs
    assert ckpt.preprocessing == Preprocessing(size=32)
    assert ckpt.training.to_dict() == {"loss": "mse", "epochs": 2} and ckpt.training.get("loss") == "mse"
    assert ckpt.normative.mean == 0.5 and ckpt.normative.details == {"values": [0, 1, 2]}
    assert ckpt.source == Source(details={"kind": "test"})
    assert ckpt.version == brainae.__version__ and ckpt.format == 1
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert torch.equal(brainae.load_model(path)(x), loaded(x))


def test_metadata_is_json_under_brainae_key(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, build_model("skip-cae"))  # arch and kwargs default to the model's own description
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["brainae"])
    assert set(meta) == {
        "format",
        "version",
        "arch",
        "arch_kwargs",
        "preprocessing",
        "training",
        "normative",
        "source",
    }
    assert meta["arch"] == "skip-cae" and meta["normative"] is None


def test_update_checkpoint_keeps_weights(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    model = _trained_like("skip-cae")
    save_checkpoint(path, model, training={"epochs": 1})
    update_checkpoint(path, normative={"score_mean": 1.0})
    ckpt = read_checkpoint(path)
    assert ckpt.normative.details == {"score_mean": 1.0} and ckpt.training.to_dict() == {"epochs": 1}
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(brainae.load_model(path)(x), model(x))


SHIPPED = sorted((Path(brainae.__file__).parent / "pretrained").glob("*.safetensors")) + sorted(
    (Path(__file__).resolve().parents[1] / "benchmarks" / "models").glob("*.safetensors")
)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_checkpoints_read_into_typed_cards_unchanged(path: Path) -> None:
    with safe_open(str(path), framework="pt") as f:
        stored = json.loads(f.metadata()["brainae"])
    ckpt = read_checkpoint(path)
    assert isinstance(ckpt.preprocessing, VolumetricPreprocessing if ckpt.volumetric else Preprocessing)
    card = read_checkpoint(path, weights=False)  # the card alone
    assert card.state_dict == {} and card.metadata() == ckpt.metadata() and len(ckpt.state_dict) > 10
    assert isinstance(ckpt.source, Source) and ckpt.source.license
    meta = ckpt.metadata()
    for key in ("source", "training", "normative"):  # every stored part round-trips, key for key
        assert meta[key] == stored[key], key
    stored_prep = stored["preprocessing"]
    assert {k: meta["preprocessing"][k] for k in stored_prep} == stored_prep
    if ckpt.normative is not None:
        assert ckpt.normative.n == stored["normative"]["n"] and ckpt.normative.std > 0
    if ckpt.volumetric:
        assert isinstance(ckpt.training, Training) and ckpt.training.nested
        assert ckpt.training.recipe["task"] == ckpt.preprocessing.task
        assert ckpt.normative is None or ckpt.normative.calibrated


def test_damaged_card_parts_are_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, build_model("skip-cae", latent_channels=8))
    ckpt = read_checkpoint(path)
    bad = tmp_path / "bad.safetensors"
    for part, value, message in (
        ("normative", {"mean": "x"}, "normative mean 'x' is not a number"),
        ("normative", {"std": -1.0}, "normative std -1.0 is not a finite valid value"),
        ("normative", [1, 2], "damaged normative statistics"),
        ("preprocessing", {"size": 30}, "must be a multiple of 8"),
        ("preprocessing", {"kind": "volumetric"}, "damaged preprocessing"),
    ):
        meta = dict(ckpt.metadata(), **{part: value})
        save_file(ckpt.state_dict, str(bad), metadata={"brainae": json.dumps(meta)})
        with pytest.raises(BrainaeError, match=f"bad.safetensors: .*{message}"):
            read_checkpoint(bad)


def test_card_parts_round_trip() -> None:
    train = {"arch": "res-unet", "loss": "mse", "dataset": "/d", "best_epoch": 3, "best_val_loss": 0.1}
    t = Training.from_dict(train)
    assert t.recipe == {"arch": "res-unet", "loss": "mse"} and t.get("best_epoch") == 3
    assert t.to_dict() == train
    fit = {"recipe": {"task": "denoise"}, "train_ids": ["a"]}
    assert Training.from_dict(fit).nested and Training.from_dict(fit).to_dict() == fit
    src = {"type": "keras-h5", "file": "a.h5", "license": "MIT", "keras_version": "2.4.0"}
    assert Source.from_dict(src).to_dict() == src and Source.from_dict(src).details == {
        "keras_version": "2.4.0"
    }
    norm = Normative(n=3, mean=1.0, std=0.0)
    assert norm.z(2.0) is None and Normative(n=3, mean=1.0, std=2.0).z(3.0) == pytest.approx(1.0)


def test_wrapped_model_is_unwrapped(tmp_path: Path) -> None:
    model = build_model("skip-cae", latent_channels=8)
    save_checkpoint(tmp_path / "m.safetensors", torch.nn.DataParallel(model))
    assert read_checkpoint(tmp_path / "m.safetensors").arch_kwargs["latent_channels"] == 8


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, build_model("skip-cae", latent_channels=16))
    ckpt = read_checkpoint(path)
    meta = dict(ckpt.metadata(), arch_kwargs={"in_channels": 1, "latent_channels": 128})
    bad = tmp_path / "bad.safetensors"
    save_file(ckpt.state_dict, str(bad), metadata={"brainae": json.dumps(meta)})
    with pytest.raises(
        BrainaeError, match="bad.safetensors: weights do not fit architecture 'skip-cae'.*shape"
    ):
        brainae.load_model(bad)
    meta = dict(ckpt.metadata(), arch="res-unet")
    save_file(ckpt.state_dict, str(bad), metadata={"brainae": json.dumps(meta)})
    with pytest.raises(BrainaeError, match="do not fit architecture 'res-unet'"):
        load_checkpoint(bad)
    with pytest.raises(BrainaeError, match="do not fit"):
        save_checkpoint(tmp_path / "x.safetensors", build_model("skip-cae"), arch="res-unet")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(BrainaeError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "none.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(BrainaeError, match="junk.safetensors: not a safetensors file"):
        brainae.load_model(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(BrainaeError, match="plain.safetensors: .*not a brainae checkpoint"):
        brainae.load_model(plain)
    newer = tmp_path / "newer.safetensors"
    save_file(
        {"w": torch.zeros(2)}, str(newer), metadata={"brainae": json.dumps({"format": 99, "arch": "x"})}
    )
    with pytest.raises(BrainaeError, match="upgrade brainae"):
        read_checkpoint(newer)


def _invoke(args: list[str]):  # noqa: ANN202 - typer's vendored click Result
    # While import-keras is the only command, typer runs it without its name; later it is a subcommand.
    if not isinstance(typer.main.get_command(app), typer.core.TyperGroup):
        args = args[1:]
    return CliRunner().invoke(app, args)


@pytest.mark.data("seed-weights")
def test_cli_import_keras(tmp_path: Path) -> None:
    out = tmp_path / "skip.safetensors"
    result = _invoke(["import-keras", str(SKIP_H5), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "skip-cae" in result.output and "191,041" in result.output and str(out) in result.output
    ckpt = read_checkpoint(out)
    assert ckpt.arch == "skip-cae"
    assert ckpt.source.file == SKIP_H5.name and ckpt.source.kind == "keras-h5"
    assert ckpt.source.license == "MIT" and ckpt.source.credit == "Adrián Arnaiz-Rodríguez, 2020"
    assert ckpt.preprocessing == THESIS_PREPROCESSING
    assert ckpt.preprocessing.to_dict() == {
        "profile": "sagittal",
        "size": 128,
        "fov_mm": 240.0,
        "scaling": "slice-minmax",
        "percentiles": [0.5, 99.5],
        "skull_strip": False,
    }
    # the Python API writes the same card as the command, and loading the .h5 gives it too
    api = import_keras_checkpoint(SKIP_H5, tmp_path / "api.safetensors")
    assert api["source"] == ckpt.source
    assert read_checkpoint(tmp_path / "api.safetensors").metadata() == {
        **ckpt.metadata(),
        "version": ckpt.version,
    }
    _, on_the_fly = load_checkpoint(SKIP_H5)
    assert on_the_fly.source == ckpt.source and on_the_fly.preprocessing == ckpt.preprocessing
    ref = np.load(SEED / "reference" / f"{SKIP_H5.stem}.npz")
    with torch.no_grad():
        y = brainae.load_model(out)(torch.from_numpy(ref["x_clean"])[:, None])[:, 0].numpy()
    assert np.abs(y - ref["y_clean"]).max() < 1e-5

    again = _invoke(["import-keras", str(SKIP_H5), "--out", str(out)])
    assert again.exit_code == 1 and "--force" in again.output
    forced = _invoke(["import-keras", str(SKIP_H5), "--out", str(out), "--force"])
    assert forced.exit_code == 0, forced.output


def test_cli_import_keras_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    result = _invoke(["import-keras", str(bad), "--out", str(tmp_path / "o.safetensors")])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "bad.h5" in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "o.safetensors").exists()
