"""Tests of brainae.models.keras_import against the thesis's saved Keras models and reference outputs."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from brainae.errors import BrainaeError
from brainae.models import THESIS_PARAMETERS, count_parameters
from brainae.models.keras_import import import_keras
from conftest import SEED_WEIGHTS as SEED

EXPECTED_ARCH = {
    "res_skip_cae_DSSIM_AUG_NoKReg_LRPlat.h5": "res-unet",
    "res_skip_cae_MSE_AUG_NoKReg_LRPlat.h5": "res-unet",
    "skip_con_cae_MSE_AUG_NoKReg_LRPlat.h5": "skip-cae",
    "small_res_cae_MSE_full_pre_AUG_NoKReg_LRPlat.h5": "shallow-res-preact",
}


H5_FILES = sorted(EXPECTED_ARCH)  # the 4 thesis models (brainae fetch seed-weights)
needs_seed = pytest.mark.data("seed-weights")


@needs_seed
def test_all_seed_files_are_known() -> None:
    assert {f.name for f in SEED.glob("*.h5")} == set(EXPECTED_ARCH)


@needs_seed
@pytest.mark.parametrize("name", H5_FILES, ids=lambda n: n.removesuffix(".h5"))
def test_import_reproduces_keras_reference_outputs(name: str) -> None:
    h5 = SEED / name
    model, info = import_keras(h5)
    assert info["arch"] == EXPECTED_ARCH[h5.name]
    assert info["arch_kwargs"] == {"in_channels": 1, "latent_channels": 128}
    assert info["parameters"] == count_parameters(model) == THESIS_PARAMETERS[info["arch"]]
    assert not model.training
    ref = np.load(SEED / "reference" / f"{h5.stem}.npz")
    with torch.no_grad():
        for kind in ("clean", "noise"):
            x = torch.from_numpy(ref[f"x_{kind}"].astype(np.float32))[:, None]
            y = model(x)[:, 0].numpy()
            assert np.abs(y - ref[f"y_{kind}"]).max() < 1e-5  # 6.1e-7 measured on CPU (module doc, README)


@needs_seed
def test_explicit_matching_arch_is_accepted() -> None:
    _, info = import_keras(SEED / "skip_con_cae_MSE_AUG_NoKReg_LRPlat.h5", arch="skip-cae")
    assert info["arch"] == "skip-cae"


@needs_seed
@pytest.mark.parametrize(
    ("file", "arch", "match"),
    [
        ("res_skip_cae_MSE_AUG_NoKReg_LRPlat.h5", "skip-cae", "no layer named 'Conv3'.*--arch res-unet"),
        ("res_skip_cae_MSE_AUG_NoKReg_LRPlat.h5", "shallow-res-preact", "UP2_C1.*shape"),
        ("small_res_cae_MSE_full_pre_AUG_NoKReg_LRPlat.h5", "res-unet", "UP2_C1.*shape"),
        ("skip_con_cae_MSE_AUG_NoKReg_LRPlat.h5", "myronenko", "do not fit architecture 'myronenko'"),
        ("skip_con_cae_MSE_AUG_NoKReg_LRPlat.h5", "shallow-res-original", "not fit"),
        ("skip_con_cae_MSE_AUG_NoKReg_LRPlat.h5", "nonsense", "valid names"),
    ],
)
def test_wrong_arch_is_a_clear_error(file: str, arch: str, match: str) -> None:
    with pytest.raises(BrainaeError, match=match) as exc:
        import_keras(SEED / file, arch=arch)
    assert "\n" not in str(exc.value)
    assert arch == "nonsense" or file in str(exc.value)


def test_non_model_h5_is_a_clear_error(tmp_path: Path) -> None:
    plain = tmp_path / "data.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(BrainaeError, match="data.h5: no Keras 'model_config'"):
        import_keras(plain)

    other = tmp_path / "dense.h5"
    with h5py.File(other, "w") as f:
        f.attrs["model_config"] = (
            '{"class_name": "Functional", "config": {"layers": '
            '[{"class_name": "Dense", "config": {"name": "d"}, "inbound_nodes": []}]}}'
        )
    with pytest.raises(BrainaeError, match="dense.h5: not one of the thesis's Keras autoencoders"):
        import_keras(other)


def test_missing_and_non_hdf5_files(tmp_path: Path) -> None:
    with pytest.raises(BrainaeError, match="no such file"):
        import_keras(tmp_path / "nope.h5")
    text = tmp_path / "model.h5"
    text.write_text("not hdf5")
    with pytest.raises(BrainaeError, match="model.h5: not an HDF5 file"):
        import_keras(text)
