"""Shared fixtures and helpers: tiny synthetic head volumes written as NIfTI, tiny prepared slice datasets and
checkpoints (evaluation, report, training), and the paths of the shared real data. Test files import helpers
from here, never from each other."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainae.datasets import data_home, missing

# ANTs registration (the normative anomaly model) repeats bit for bit only on one thread, as `brainae` sets it.
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


# ------------------------------------------------------------- the real data: ../shared/data, else the cache
def _data_folder(name: str) -> Path:
    """``../shared/data/<name>`` when it is complete there, else the cache's (``brainae fetch`` fills it)."""
    return SHARED / "data" / name if not missing(name, SHARED / "data") else data_home() / name


IXI_2MM = _data_folder("ixi-t1-2mm")
SEED_WEIGHTS = _data_folder("seed-weights")
#: The one line a test without its data skips (or, with BRAINAE_REQUIRE_DATA=1, fails) with.
NO_DATA = (
    f"real data not found (neither ../shared/data beside the checkout nor the cache {data_home()}): "
    "run `brainae fetch` (with --mirror DIR_OR_URL where there is no internet), then pytest again"
)


def require_data(*names: str) -> None:
    """Skip the calling test (or fixture) when a data set is in neither place; fail instead with
    ``BRAINAE_REQUIRE_DATA=1`` (set by ``.ci/run``), so that CI cannot pass by skipping."""
    for name in names:
        if missing(name, SHARED / "data") and missing(name, data_home()):
            if os.environ.get("BRAINAE_REQUIRE_DATA") == "1":
                pytest.fail(f"{NO_DATA} (BRAINAE_REQUIRE_DATA=1)")
            pytest.skip(NO_DATA)


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "data(*names): the test needs these real data sets (ixi-t1-2mm, seed-weights)"
    )


#: Module fixtures that read the real data: a test that uses one needs that data set (one skip line for all).
DATA_FIXTURES = {"crop": "ixi-t1-2mm", "val_volume": "ixi-t1-2mm", "held_out": "ixi-t1-2mm"}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    for mark in item.iter_markers("data"):
        require_data(*mark.args)
    require_data(*(DATA_FIXTURES[f] for f in getattr(item, "fixturenames", ()) if f in DATA_FIXTURES))


# Native IXI stores voxel axes as P, S, R: axis 0 runs to posterior, 1 to superior, 2 to the right.
def psr_affine(zooms=(2.0, 2.0, 2.5)) -> np.ndarray:
    zp, zs, zr = zooms
    return np.array([[0, 0, zr, -40.0], [-zp, 0, 0, 40.0], [0, zs, 0, -40.0], [0, 0, 0, 1.0]])


def synthetic_head(shape=(40, 40, 30), empty=5, seed=0) -> np.ndarray:
    """P,S,R volume: a bright ellipsoid 'brain' in a dimmer 'scalp' shell; the first and last ``empty``
    sagittal slices (axis 2) are exactly zero."""
    rng = np.random.default_rng(seed)
    p, s, r = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    rad = np.sqrt(p**2 + s**2 + r**2)
    vol = np.where(rad < 0.75, 100.0, 0.0) + np.where((rad >= 0.75) & (rad < 0.9), 40.0, 0.0)
    vol = vol + np.where(rad < 0.9, rng.normal(0, 3, shape), 0.0) + 20.0 * (p > 0) * (rad < 0.75)
    vol = np.clip(vol, 0, None)
    vol[:, :, :empty] = 0
    vol[:, :, shape[2] - empty :] = 0
    return vol.astype(np.int16)


def write_volume(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, psr_affine() if affine is None else affine), str(path))
    return path


@pytest.fixture
def cohort(tmp_path) -> Path:
    """A folder of 8 tiny IXI-named volumes and a participants.csv beside it."""
    folder = tmp_path / "cohort"
    folder.mkdir()
    rows = ["participant_id,age,sex"]
    for i in range(8):
        name = f"IXI{100 + i:03d}-HH-{1000 + i}-T1.nii.gz"
        write_volume(folder / name, synthetic_head(seed=i))
        rows.append(f"IXI{100 + i:03d}-HH-{1000 + i},{30 + 6 * i},{'MF'[i % 2]}")
    (tmp_path / "participants.csv").write_text("\n".join(rows) + "\n")
    return folder


# ------------------------------------------------------------- prepared slice datasets and checkpoints

SLICE_PREP = {
    "profile": "sagittal",
    "size": 32,
    "fov_mm": None,
    "scaling": "slice-minmax",
    "percentiles": [0.5, 99.5],
}


def _image(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A smooth 'head': an ellipse of random brightness with a gentle texture, in [0, 1]."""
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    a, b = rng.uniform(0.6, 0.85, 2)
    inside = (yy / a) ** 2 + (xx / b) ** 2 < 1
    texture = 0.15 * np.sin(rng.uniform(2, 5) * xx + rng.uniform(0, 3)) * np.cos(rng.uniform(2, 5) * yy)
    return np.clip(inside * (rng.uniform(0.45, 0.65) + texture), 0, 1).astype(np.float32)


def make_dataset(
    path: Path,
    *,
    volumes: dict[str, int] | None = None,
    size: int = 32,
    seed: int = 0,
    grey: bool = False,
    prep: dict | None = None,
) -> Path:
    """Write a tiny prepared dataset (docs/dataset-format.md). ``volumes``: split -> number of volumes."""
    volumes = volumes or {"train": 2, "val": 1, "test": 3}
    rng = np.random.default_rng(seed)
    images, index, vols = [], [], []
    k = 0
    for split, n_vol in volumes.items():
        for _ in range(n_vol):
            vid = f"IXI{k:03d}-HH-0000-T1"
            k += 1
            n_sl = 4
            for s in range(n_sl):
                img = np.full((size, size), 0.5, np.float32) if grey else _image(rng, size)
                images.append(img)
                index.append(
                    {
                        "volume_id": vid,
                        "slice": 40 + s,
                        "split": split,
                        "brain_frac": 0.3,
                        "nonzero_frac": 0.5,
                        "nonzero_mean": 0.4,
                        "scale_lo": 0.0,
                        "scale_hi": 900.0,
                    }
                )
            vols.append({"volume_id": vid, "subject_id": vid[:6], "split": split, "n_kept": n_sl})
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "slices.npy", np.stack(images) if images else np.zeros((0, size, size), np.float32))
    pd.DataFrame(
        index,
        columns=[
            "volume_id",
            "slice",
            "split",
            "brain_frac",
            "nonzero_frac",
            "nonzero_mean",
            "scale_lo",
            "scale_hi",
        ],
    ).to_csv(path / "index.csv", index=False)
    pd.DataFrame(vols).to_csv(path / "volumes.csv", index=False)
    settings = {"version": "test", "preprocessing": prep or {**SLICE_PREP, "size": size}, "seed": 0}
    (path / "settings.json").write_text(json.dumps(settings))
    return path


def make_checkpoint(
    path: Path,
    *,
    arch: str = "skip-cae",
    seed: int = 0,
    prep: dict | None = None,
    model=None,
) -> Path:
    import torch

    from brainae.checkpoint import save_checkpoint
    from brainae.models import build_model

    torch.manual_seed(seed)
    model = model if model is not None else build_model(arch, latent_channels=8)
    return save_checkpoint(
        path, model, preprocessing=prep or SLICE_PREP, training={"loss": "mse", "l2": False}
    )


def _phantom(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth blob image in [0, 1] (an ellipse with a darker inner ellipse)."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    a, b = rng.uniform(0.25, 0.4, 2)
    cx, cy = rng.uniform(-0.05, 0.05, 2)
    outer = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 < 1
    inner = ((xx - cx) / (0.5 * a)) ** 2 + ((yy - cy) / (0.5 * b)) ** 2 < 1
    img = 0.8 * outer - 0.4 * inner + 0.05 * rng.random((size, size))
    return np.clip(img, 0, 1).astype(np.float32)


def make_train_dataset(
    root: Path, *, n_train: int = 48, n_val: int = 16, per_volume: int = 8, size: int = 32
) -> Path:
    """Write a prepared dataset folder (docs/dataset-format.md) with synthetic slices."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    n = n_train + n_val
    slices = np.stack([_phantom(rng, size) for _ in range(n)]) if n else np.zeros((0, size, size), np.float32)
    np.save(root / "slices.npy", slices)
    splits = ["train"] * n_train + ["val"] * n_val
    vol = [f"{s}{i // per_volume}" for i, s in enumerate(splits)]
    pd.DataFrame(
        {
            "volume_id": vol,
            "slice": np.arange(n) % per_volume,
            "split": splits,
            "brain_frac": 0.5,
            "nonzero_frac": 0.6,
            "nonzero_mean": 0.4,
            "scale_lo": 0.0,
            "scale_hi": 1.0,
        }
    ).to_csv(root / "index.csv", index=False)
    vols = sorted(set(vol), key=vol.index)
    pd.DataFrame({"volume_id": vols, "split": [v.rstrip("0123456789") for v in vols]}).to_csv(
        root / "volumes.csv", index=False
    )
    settings = {
        "version": "test",
        "preprocessing": {
            "profile": "sagittal",
            "size": size,
            "fov_mm": None,
            "scaling": "slice-minmax",
            "percentiles": [0.5, 99.5],
        },
        "select": {"method": "brain-mask", "min_brain_frac": 0.045},
    }
    (root / "settings.json").write_text(json.dumps(settings))
    return root


def tiny(**kw):
    """A TrainConfig for a few short CPU steps of a small skip-cae (keyword arguments override)."""
    from brainae.train import TrainConfig

    base = dict(
        arch="skip-cae",
        loss="mse",
        augment=True,
        epochs=2,
        batch_size=8,
        latent_channels=8,
        max_steps_per_epoch=3,
        accelerator="cpu",
        seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)


def make_bids(root: Path, *, sessions: dict[str, list[str | None]] | None = None) -> Path:
    """A tiny BIDS dataset of synthetic heads: by default sub-01, sub-02 (sessions 1 and 2) and sub-03, with a
    dataset_description.json and a participants.tsv."""
    sessions = sessions or {"01": [None], "02": ["1", "2"], "03": [None]}
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    rows = ["participant_id\tage\tsex"]
    k = 0
    for sub, sess in sessions.items():
        rows.append(f"sub-{sub}\t{30 + 7 * len(rows)}\t{'MF'[len(rows) % 2]}")
        for ses in sess:
            folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
            folder.mkdir(parents=True, exist_ok=True)
            name = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + "_T1w.nii.gz"
            write_volume(folder / name, synthetic_head(seed=k))
            k += 1
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root
