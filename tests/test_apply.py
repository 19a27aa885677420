"""Whole-volume inference (brainae.apply) and its commands (denoise, reconstruct, inpaint) on tiny volumes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from brainae.apply import (
    brain_fractions,
    denoise,
    inpaint,
    reconstruct,
    reconstruct_volume,
    resolve_device,
)
from brainae.errors import BrainaeError
from brainae.io import load_volume, save_nifti
from brainae.volume import Preprocessing

PREP = Preprocessing(size=32)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE[:3, 3] = [-24.0, -32.0, -30.0]


def head(shape=(24, 32, 32), seed: int = 0) -> np.ndarray:
    """A smooth ellipsoidal 'head' (int16-valued) with a brighter core and mild noise."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grids))
    vol = np.where(r < 0.85, 300.0, 0.0) + np.where(r < 0.6, 400.0 * (1 - r), 0.0)
    vol = vol + rng.normal(0, 5, shape) * (r < 0.85)
    return np.clip(np.rint(vol), 0, None).astype(np.int16)


class Blur(nn.Module):
    """A deterministic 'autoencoder': average pooling then bilinear upsampling (output in [0, 1])."""

    def __init__(self, factor: int = 4) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.avg_pool2d(x, self.factor)
        return nn.functional.interpolate(y, scale_factor=self.factor, mode="bilinear", align_corners=False)


@pytest.fixture
def vol_path(tmp_path: Path) -> Path:
    return save_nifti(tmp_path / "head.nii.gz", head(), AFFINE)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------ library


def test_reconstruct_identity_returns_input_closely_and_never_writes_input(vol_path: Path) -> None:
    vol = load_volume(vol_path)
    before = vol.data.copy()
    res = reconstruct(vol, nn.Identity(), PREP, selection=None)
    assert np.array_equal(vol.data, before)
    assert res.data.shape == vol.data.shape and res.data.dtype == np.float32
    assert res.n_processed == vol.data.shape[0] and res.n_passed == 0
    # identity model: only resampling 32 -> 32 pixels (in-plane 32 x 32 at 2 mm) and back; nearly exact
    err = np.abs(res.data - vol.data)[res.inside]
    assert err.max() < 1e-2 * vol.data.max()


def test_residual_stitching_returns_the_input_through_a_resampling_grid(vol_path: Path) -> None:
    """At another grid than the input's (here 48 px for 32), an identity model gives the input back exactly
    with residual stitching, while the bare resampling round trip blurs it."""
    vol = load_volume(vol_path)
    prep = Preprocessing.from_dict({**PREP.to_dict(), "size": 48})
    exact = reconstruct_volume(vol, nn.Identity(), prep, calibrate=False)
    blurred = reconstruct_volume(vol, nn.Identity(), prep, calibrate=False, residual=False)
    inside = exact.inside
    assert np.abs(exact.data - vol.data)[inside].max() < 1e-3 * vol.data.max()
    assert np.abs(blurred.data - vol.data)[inside].mean() > 10 * np.abs(exact.data - vol.data)[inside].mean()


def test_slices_below_threshold_pass_through_unchanged(vol_path: Path) -> None:
    vol = load_volume(vol_path)
    mask = vol.data > 0
    res = reconstruct(vol, Blur(), PREP, selection=0.3, brain_mask=mask)
    frac = brain_fractions(mask, "sagittal")
    assert np.array_equal(res.processed, frac > 0.3)
    assert np.allclose(res.measure, frac)
    assert 0 < res.n_passed < len(frac)
    passed = ~res.processed
    assert np.array_equal(res.data[passed], vol.data[passed])
    assert not np.array_equal(res.data[res.processed], vol.data[res.processed])


def test_outside_field_of_view_keeps_input(vol_path: Path) -> None:
    vol = load_volume(vol_path)
    prep = Preprocessing(size=32, fov_mm=40.0)  # slices are 64 mm wide: the border is outside
    res = reconstruct(vol, Blur(), prep, selection=None)
    assert (~res.inside).any() and res.inside.any()
    assert np.array_equal(res.data[~res.inside], vol.data[~res.inside])


def test_other_voxel_order_gives_same_world_space_result(tmp_path: Path) -> None:
    data = head()
    # the same image stored in another voxel order: axes reversed, first stored axis flipped (S, A, L)
    other = np.flip(data.transpose(2, 1, 0), axis=2).copy()
    perm = np.zeros((4, 4))
    perm[2, 0] = 1.0  # stored axis 0 -> RAS axis z
    perm[1, 1] = 1.0
    perm[0, 2] = -1.0  # stored axis 2 runs right -> left
    perm[0, 3] = data.shape[0] - 1
    perm[3, 3] = 1.0
    a = save_nifti(tmp_path / "a.nii.gz", data, AFFINE)
    b = save_nifti(tmp_path / "b.nii.gz", other, AFFINE @ perm)
    va, vb = load_volume(a), load_volume(b)
    assert np.array_equal(va.data, vb.data) and np.allclose(va.affine, vb.affine)
    model = Blur()
    ra = reconstruct(va, model, PREP, selection=0.05)
    rb = reconstruct(vb, model, PREP, selection=0.05)
    from brainae.io import save_like

    oa = load_volume(save_like(tmp_path / "oa.nii.gz", ra.data, va))
    ob = load_volume(save_like(tmp_path / "ob.nii.gz", rb.data, vb))
    assert nib.load(tmp_path / "ob.nii.gz").shape == other.shape
    assert np.allclose(oa.affine, ob.affine)
    assert np.array_equal(oa.data, ob.data)


def test_inpaint_changes_only_masked_voxels(vol_path: Path) -> None:
    vol = load_volume(vol_path)
    before = vol.data.copy()
    mask = np.zeros(vol.data.shape, bool)
    mask[10:14, 12:20, 12:20] = True
    res = inpaint(vol, mask, Blur(), PREP)
    assert np.array_equal(vol.data, before)
    assert np.array_equal(res.data[~mask], vol.data[~mask])  # bit-identical
    assert np.array_equal(res.inside, mask)
    assert not np.allclose(res.data[mask], vol.data[mask])
    assert res.n_processed == 4  # only the slices holding masked voxels


def test_inpaint_restores_a_blanked_region_better_than_the_blank() -> None:
    """A smooth volume with a blanked cube: the blur model fills it closer to the truth than the hole."""
    vol_data = head().astype(np.float32)
    from brainae.io import Volume

    mask = np.zeros(vol_data.shape, bool)
    mask[10:13, 14:18, 14:18] = True
    holed = np.where(mask, 0.0, vol_data).astype(np.float32)
    vol = Volume(path=Path("x.nii"), data=holed, zooms=(2.0, 2.0, 2.0), header=None, affine=AFFINE)
    res = inpaint(vol, mask, Blur(), PREP)
    err_hole = np.abs(holed - vol_data)[mask].mean()
    err_fill = np.abs(res.data - vol_data)[mask].mean()
    assert err_fill < 0.5 * err_hole


def test_inpaint_rejects_mask_of_another_shape(vol_path: Path) -> None:
    vol = load_volume(vol_path)
    with pytest.raises(BrainaeError, match="mask shape"):
        inpaint(vol, np.ones((3, 3, 3), bool), Blur(), PREP)


def test_denoise_with_a_model_that_denoises() -> None:
    """Plumbing check: denoising a noisy smooth volume with the blur model lowers the error."""
    clean = head(seed=1).astype(np.float32)
    from brainae.io import Volume

    noisy = clean + np.random.default_rng(3).normal(0, 60, clean.shape).astype(np.float32) * (clean > 0)
    vol = Volume(path=Path("x.nii"), data=noisy, zooms=(2.0, 2.0, 2.0), header=None, affine=AFFINE)
    res = denoise(vol, Blur(2), PREP, selection=None)
    inner = clean > 350
    assert np.abs(res.data - clean)[inner].mean() < 0.8 * np.abs(noisy - clean)[inner].mean()


def test_reconstruct_volume_batches_give_same_result(vol_path: Path) -> None:
    from brainae.models import build_model

    torch.manual_seed(0)
    model = build_model("skip-cae", latent_channels=8)
    vol = load_volume(vol_path)
    a = reconstruct_volume(vol, model, PREP, batch_size=64)
    b = reconstruct_volume(vol, model, PREP, batch_size=5)
    assert np.allclose(a.data, b.data, atol=1e-4)
    assert model.training  # the model's mode is restored


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(BrainaeError, match="unknown device"):
        resolve_device("tpu-9000")
    if not torch.cuda.is_available():
        with pytest.raises(BrainaeError, match="CUDA is not available"):
            resolve_device("cuda")


# ---------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    from brainae.checkpoint import save_checkpoint
    from brainae.models import build_model

    torch.manual_seed(0)
    model = build_model("skip-cae", latent_channels=8)
    return save_checkpoint(tmp_path / "model.safetensors", model, preprocessing=PREP.to_dict())


def run(*args: str):
    from brainae.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_denoise_and_reconstruct_keep_geometry(vol_path: Path, ckpt: Path, tmp_path: Path) -> None:
    for cmd in ("denoise", "reconstruct"):
        out = tmp_path / f"{cmd}.nii.gz"
        r = run(cmd, vol_path, out, "--model", ckpt, "--device", "cpu")
        assert r.exit_code == 0, r.output
        src, dst = nib.load(vol_path), nib.load(out)
        assert dst.shape == src.shape
        assert np.allclose(dst.affine, src.affine)
        assert dst.header.get_zooms() == src.header.get_zooms()
        assert dst.get_data_dtype() == np.float32
        assert int(dst.header["qform_code"]) == int(src.header["qform_code"])
        assert int(dst.header["sform_code"]) == int(src.header["sform_code"])


def test_cli_refuses_to_overwrite_without_force(vol_path: Path, ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"keep me")
    r = run("denoise", vol_path, out, "--model", ckpt)
    assert r.exit_code == 1
    assert "already exists" in r.stderr and "--force" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert out.read_bytes() == b"keep me"
    r = run("denoise", vol_path, out, "--model", ckpt, "--force")  # --force never replaces a file of yours
    assert r.exit_code == 1 and "not written by brainae" in r.stderr
    assert out.read_bytes() == b"keep me"
    out.unlink()
    assert run("denoise", vol_path, out, "--model", ckpt).exit_code == 0
    first = np.asarray(nib.load(out).dataobj)
    r = run("denoise", vol_path, out, "--model", ckpt, "--force")  # replaces brainae's own output
    assert r.exit_code == 0, r.output
    assert nib.load(out).shape == (24, 32, 32)
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), first)
    r = run("denoise", vol_path, vol_path, "--model", ckpt, "--force")
    assert r.exit_code == 1 and "input" in r.stderr


def test_cli_bad_inputs_one_line_errors(vol_path: Path, ckpt: Path, tmp_path: Path) -> None:
    digest = md5(vol_path)
    four_d = save_nifti(tmp_path / "4d.nii.gz", np.zeros((8, 8, 8, 3), np.float32), AFFINE)
    cases = [
        (("denoise", four_d, tmp_path / "o1.nii.gz", "--model", ckpt), "4-D"),
        (("denoise", vol_path, tmp_path / "o2.nii.gz", "--model", tmp_path / "nope.safetensors"), "no such"),
        (("reconstruct", tmp_path / "missing.nii.gz", tmp_path / "o3.nii.gz", "--model", ckpt), "no such"),
        (("denoise", vol_path, tmp_path / "o4.txt", "--model", ckpt), "NIfTI"),
    ]
    small_mask = save_nifti(tmp_path / "mask.nii.gz", np.ones((8, 8, 8), np.uint8), AFFINE)
    cases.append(
        (("inpaint", vol_path, small_mask, tmp_path / "o5.nii.gz", "--model", ckpt), "does not match")
    )
    for args, text in cases:
        r = run(*args)
        assert r.exit_code == 1, (args, r.output)
        assert text in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert md5(vol_path) == digest
    assert not any(tmp_path.glob("o*.nii.gz"))


def test_cli_inpaint_keeps_unmasked_voxels(vol_path: Path, ckpt: Path, tmp_path: Path) -> None:
    mask = np.zeros((24, 32, 32), np.uint8)
    mask[10:14, 12:20, 12:20] = 1
    mask_path = save_nifti(tmp_path / "mask.nii.gz", mask, AFFINE)
    out = tmp_path / "filled.nii.gz"
    r = run("inpaint", vol_path, mask_path, out, "--model", ckpt, "--device", "cpu")
    assert r.exit_code == 0, r.output
    src = np.asarray(nib.load(vol_path).dataobj, dtype=np.float32)
    dst = np.asarray(nib.load(out).dataobj)
    assert np.array_equal(dst[mask == 0], src[mask == 0])
    assert not np.array_equal(dst[mask == 1], src[mask == 1])


def test_cli_folder_in_folder_out(tmp_path: Path, ckpt: Path) -> None:
    folder = tmp_path / "in"
    for i in range(2):
        save_nifti(folder / f"s{i}.nii.gz", head(seed=i), AFFINE)
    r = run("reconstruct", folder, tmp_path / "out", "--model", ckpt)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s0.nii.gz", "s1.nii.gz"]


def test_calibration_recovers_the_input_scale() -> None:
    from brainae.apply import calibrate_outputs

    rng = np.random.default_rng(0)
    clean = rng.random((3, 16, 16)).astype(np.float32)
    noisy = (0.8 * clean + 0.1 + rng.normal(0, 0.05, clean.shape)).astype(np.float32)
    out = calibrate_outputs(clean, noisy)
    assert np.abs(out - (0.8 * clean + 0.1)).max() < 0.03
    assert np.allclose(calibrate_outputs(clean, clean), clean, atol=1e-6)  # identity for a perfect model
    flat = np.full((1, 4, 4), 0.5, np.float32)
    assert np.array_equal(calibrate_outputs(flat, rng.random((1, 4, 4)).astype(np.float32)), flat)
