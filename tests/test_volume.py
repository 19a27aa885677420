from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brainae.errors import BrainaeError
from brainae.volume import (
    PROFILES,
    Preprocessing,
    choose_profile,
    from_view,
    resample_slices,
    slices_to_volume,
    to_view,
    volume_to_slices,
)
from conftest import IXI_2MM


@pytest.mark.parametrize(
    "zooms, expected",
    [
        ((1.2, 0.9375, 0.9375), "sagittal"),  # native IXI, RAS order
        ((0.9, 0.9, 5.0), "axial"),
        ((0.9, 4.0, 0.9), "coronal"),
        ((1.0, 1.0, 1.0), "sagittal"),  # isotropic: default
        ((1.0, 0.9, 1.1), "axial"),  # none square: the smallest in-plane maximum (1.0 mm)
    ],
)
def test_profile_choice_on_anisotropic_voxels(zooms, expected):
    assert choose_profile(zooms)[0] == expected


def test_views_invert_and_follow_the_convention():
    vol = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    for p in PROFILES:
        assert np.array_equal(from_view(to_view(vol, p), p), vol)
    sag = to_view(vol, "sagittal")
    assert sag.shape == (5, 7, 6)
    assert sag[2, 0, 0] == vol[2, 5, 6]  # top-left: most superior, most anterior


def test_same_view_whatever_the_stored_orientation(tmp_path):
    """The same head stored P,S,R and L,A,S (transposed + flipped, matching affine) gives identical slices."""
    import nibabel as nib

    from brainae.io import load_volume
    from conftest import psr_affine, synthetic_head

    data = synthetic_head()
    aff = psr_affine()
    nib.save(nib.Nifti1Image(data, aff), str(tmp_path / "psr.nii.gz"))
    ornt = nib.orientations.axcodes2ornt(("L", "A", "S"))
    cur = nib.orientations.io_orientation(aff)
    tr = nib.orientations.ornt_transform(cur, ornt)
    data2 = nib.orientations.apply_orientation(data, tr)
    aff2 = aff @ nib.orientations.inv_ornt_aff(tr, data.shape)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data2), aff2), str(tmp_path / "las.nii.gz"))
    a, b = load_volume(tmp_path / "psr.nii.gz"), load_volume(tmp_path / "las.nii.gz")
    assert b.header.axcodes == ("L", "A", "S")
    assert np.array_equal(to_view(a.data, "sagittal"), to_view(b.data, "sagittal"))


def test_resample_equals_bilinear_resize_when_fov_is_the_slice():
    x = np.random.default_rng(1).random((3, 20, 20)).astype(np.float32)
    ours = resample_slices(x, (1.0, 1.0), 32)
    ref = F.interpolate(torch.from_numpy(x)[:, None], size=(32, 32), mode="bilinear", align_corners=False)
    assert np.abs(ours - ref[:, 0].numpy()).max() < 1e-5


def test_fov_pads_with_zeros_and_keeps_mm_per_pixel():
    x = np.ones((1, 10, 10), np.float32)  # 10 x 10 mm
    out = resample_slices(x, (1.0, 1.0), 20, fov_mm=20.0)  # 1 mm pixels over 20 mm: image in the middle half
    assert out[0, 10, 10] == pytest.approx(1.0) and out[0, 0, 0] == 0.0
    assert out[0].sum() == pytest.approx(100.0, rel=0.05)


def test_round_trip_is_identity_at_native_size():
    rng = np.random.default_rng(2)
    vol = rng.random((6, 16, 16)).astype(np.float32) * 300
    prep = Preprocessing(size=16, scaling="volume-minmax")
    stack = volume_to_slices(vol, (1.0, 1.0, 1.0), prep)
    assert stack.images.min() >= 0 and stack.images.max() <= 1
    back, inside = slices_to_volume(stack.images, stack, prep, vol.shape)
    assert inside.all() and np.abs(back - vol).max() < 1e-3


@pytest.mark.data("ixi-t1-2mm")
def test_native_ixi_and_2mm_give_the_same_view():
    """A 2 mm IXI volume and the same head resampled to native IXI geometry give the same model input."""
    from scipy import ndimage

    from brainae.io import load_volume

    vol2 = load_volume(IXI_2MM / "IXI211-HH-1568_T1.nii.gz")
    # native IXI: 256 x 256 x 150 (P, S, R) at 0.9375 x 0.9375 x 1.2 mm -> RAS (150, 256, 256)
    factors = np.array([150, 256, 256]) / np.array(vol2.data.shape)
    native = ndimage.zoom(vol2.data, factors, order=1)
    zooms_native = (1.2, 0.9375, 0.9375)
    prep = Preprocessing(size=64, fov_mm=240.0, scaling="slice-minmax")
    a = volume_to_slices(vol2.data, vol2.zooms, prep).images
    b = volume_to_slices(native, zooms_native, prep).images
    assert choose_profile(zooms_native)[0] == "sagittal"
    # mid-sagittal slice: RAS x index 45 of 90 at 2 mm <-> 75 of 150 at 1.2 mm
    corr = np.corrcoef(a[45].ravel(), b[75].ravel())[0, 1]
    assert corr > 0.95


def test_bad_preprocessing_settings():
    with pytest.raises(BrainaeError, match="multiple of 8"):
        Preprocessing(size=100)
    with pytest.raises(BrainaeError, match="unknown scaling"):
        Preprocessing(scaling="zscore")
