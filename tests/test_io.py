from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from brainae.errors import BrainaeError
from brainae.io import atomic_dir, list_niftis, load_volume, save_like, subject_id, volume_id
from conftest import psr_affine, synthetic_head, write_volume


def test_load_reorients_psr_to_ras(tmp_path):
    data = synthetic_head()
    vol = load_volume(write_volume(tmp_path / "a.nii.gz", data))
    assert vol.header.axcodes == ("P", "S", "R")
    assert vol.data.shape == (30, 40, 40)  # R, A, S
    assert vol.zooms == (2.5, 2.0, 2.0)
    assert vol.header.ras_zooms == (2.5, 2.0, 2.0)
    # RAS x = R axis (file axis 2), RAS y = anterior = reversed file axis 0, RAS z = file axis 1
    assert np.array_equal(vol.data, data.transpose(2, 0, 1)[:, ::-1, :].astype(np.float32))


def test_save_like_round_trip_keeps_grid(tmp_path):
    data = synthetic_head()
    src = write_volume(tmp_path / "in.nii.gz", data)
    before = src.read_bytes()
    vol = load_volume(src)
    out = save_like(tmp_path / "out.nii.gz", vol.data * 2, vol)
    img = nib.load(str(out))
    assert img.shape == data.shape
    assert np.allclose(img.affine, psr_affine())
    assert np.allclose(np.asarray(img.dataobj), data * 2)
    same = nib.load(str(save_like(tmp_path / "same.nii.gz", vol.data, vol, dtype="same")))
    assert same.get_data_dtype() == np.int16 and np.array_equal(np.asarray(same.dataobj), data)
    assert src.read_bytes() == before  # input untouched


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), str(p)), "4-D"),
        (lambda p: nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), str(p)), "2-D"),
        (
            lambda p: nib.save(nib.Nifti1Image(np.full((4, 4, 4), np.nan, np.float32), np.eye(4)), str(p)),
            "NaN",
        ),
        (lambda p: p.write_bytes(b"not a nifti at all"), "cannot be read"),
    ],
)
def test_bad_volumes_give_one_clear_line(tmp_path, make, message):
    p = tmp_path / "bad.nii"
    make(p)
    with pytest.raises(BrainaeError, match=message) as info:
        load_volume(p)
    assert str(p) in str(info.value) and "\n" not in str(info.value)


def test_truncated_gzip(tmp_path):
    p = write_volume(tmp_path / "t.nii.gz", synthetic_head())
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(BrainaeError, match="t.nii.gz"):
        load_volume(p)


def test_list_niftis_errors(tmp_path):
    with pytest.raises(BrainaeError, match="no such folder"):
        list_niftis(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(BrainaeError, match="no .nii"):
        list_niftis(tmp_path)


def test_ids():
    assert volume_id("/x/IXI002-Guys-0828-T1.nii.gz") == "IXI002-Guys-0828-T1"
    assert subject_id("IXI2-Guys-0828-T1.nii.gz") == "IXI002-Guys-0828"
    assert subject_id("IXI443-HH-2215_T1.nii.gz") == "IXI443-HH-2215"
    assert subject_id("sub-01_ses-1_T1w.nii") == "sub-01"


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "ds"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert not target.exists() and list(tmp_path.iterdir()) == []
