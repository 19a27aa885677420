"""The inpainting atlas (brainae.atlas): registration, storage, the fill, and its commands."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

import brainae
from brainae.atlas import (
    Atlas,
    AtlasSettings,
    atlas_detail,
    build_atlas,
    calibrate_share,
    inpaint_with_atlas,
    load_atlas,
    normalise,
    register_affine,
    resample_affine,
)
from brainae.cli import app
from brainae.errors import BrainaeError
from brainae.infer import DEFAULT_ATLAS, fill_holes
from brainae.io import load_volume
from brainae.volumetric import to_grid
from conftest import IXI_2MM, require_data

runner = CliRunner()
VAL_VOLUME = IXI_2MM / "IXI174-HH-1571_T1.nii.gz"  # a `val` volume: not in the atlas


def _phantom(shape=(40, 44, 36), seed: int = 0) -> np.ndarray:
    """A smooth head-like blob with some inner structure, normalised to ~1."""
    rng = np.random.default_rng(seed)
    idx = np.indices(shape).astype(np.float32)
    c = (np.array(shape) - 1) / 2.0
    r = np.sqrt(sum(((idx[i] - c[i]) / (0.38 * shape[i])) ** 2 for i in range(3)))
    x = np.clip(1.2 - r, 0, 1) * (0.7 + 0.3 * np.sin(idx[0] / 3.0) * np.cos(idx[1] / 4.0))
    from scipy import ndimage

    x = x + ndimage.gaussian_filter(rng.normal(0, 0.05, shape), 1.0) * (r < 1)
    return (x / np.percentile(x, 99.5)).astype(np.float32)


def test_register_affine_recovers_a_shift_and_a_scaling():
    fixed = _phantom()
    a_true = np.eye(3) * 1.05
    t_true = np.array([2.0, -1.5, 1.0])
    moving = resample_affine(fixed, np.linalg.inv(a_true), -np.linalg.inv(a_true) @ t_true, fixed.shape)
    # moving(A x + t) = fixed(x)
    a, t = register_affine(fixed, moving)
    inner = np.argwhere(fixed > 0.3)
    err = np.abs(inner @ a.T + t - (inner @ a_true.T + t_true)).max()
    assert err < 0.75, err


def test_atlas_save_and_load_round_trip(tmp_path):
    vols = [_phantom(seed=s) for s in range(3)]
    brains = [v > 0.4 for v in vols]
    atlas = build_atlas(vols, brains, provenance={"train": ["a", "b", "c"]}, margin=2)
    atlas.settings = AtlasSettings(share=1.3, angles=(0.0, 4.0))
    path = tmp_path / "a.npz"
    atlas.save(path)
    back = load_atlas(path)
    assert back.settings == atlas.settings and back.provenance == atlas.provenance
    assert np.array_equal(back.brains, atlas.brains)
    assert np.abs(back.volumes - np.clip(atlas.volumes, 0, 1.5)).max() <= 1.5 / 127 / 2 + 1e-6
    assert back.head_template is not None and back.head_template.shape == atlas.volumes.shape[1:]
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]  # written atomically, no temporary left


def test_load_atlas_refuses_other_files_with_one_line(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(BrainaeError, match="not an atlas written by `brainae fit atlas`"):
        load_atlas(bad)
    with pytest.raises(BrainaeError, match="no such atlas file"):
        load_atlas(tmp_path / "missing.npz")


def _rewrite_settings(path: Path, change) -> None:
    """Rewrite the JSON settings stored in an atlas file (as an older or a damaged file would hold them)."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    change(meta["settings"])
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez_compressed(path, **arrays)


def test_atlas_files_without_a_fusion_keep_the_weights_they_were_calibrated_with(tmp_path):
    vols = [_phantom(seed=s) for s in range(2)]
    atlas = build_atlas(vols, [v > 0.4 for v in vols], margin=2)
    path = tmp_path / "a.npz"
    atlas.save(path)
    assert load_atlas(path).settings.fusion == "joint"
    _rewrite_settings(path, lambda s: s.pop("fusion"))  # written before joint weights existed
    assert load_atlas(path).settings.fusion == "softmax"
    _rewrite_settings(path, lambda s: s.update(fusion="median"))
    with pytest.raises(BrainaeError, match="unknown fusion 'median'"):
        load_atlas(path)


def test_joint_weights_follow_the_candidate_that_matches_the_ring():
    """Ten candidates that miss the scan's ring by independent noise and one that matches it: the joint
    average follows the matching one inside the hole; candidates that all agree are returned unchanged."""
    from brainae.atlas import _dilate, _joint_average

    rng = np.random.default_rng(0)
    pad, shape = 4, (14, 14, 14)
    scan = rng.normal(size=shape)
    m = np.zeros(shape, bool)
    m[4:10, 4:10, 4:10] = True
    ring = _dilate(m, 1) & ~m
    truth = np.pad(scan, pad, mode="reflect")
    cand = np.stack([truth + rng.normal(0, 1.0, truth.shape) for _ in range(10)] + [truth]).astype(np.float32)
    avg = _joint_average(cand, ring, scan, m, pad, AtlasSettings())
    inner = avg[pad:-pad, pad:-pad, pad:-pad]
    plain = cand.mean(axis=0)[pad:-pad, pad:-pad, pad:-pad]
    assert np.mean((inner[m] - scan[m]) ** 2) < 0.1 * np.mean((plain[m] - scan[m]) ** 2)
    same = np.repeat(cand[:1], 5, axis=0)
    assert np.allclose(_joint_average(same, ring, scan, m, pad, AtlasSettings()), cand[0], atol=1e-4)
    exact = np.repeat(truth[None].astype(np.float32), 3, axis=0)  # every ring residual exactly 0
    scan32 = scan.astype(np.float32)
    assert np.allclose(_joint_average(exact, ring, scan32, m, pad, AtlasSettings()), exact[0], atol=1e-5)


def test_calibrate_share_picks_the_share_that_helps_most():
    rng = np.random.default_rng(0)
    details = [rng.normal(size=200) for _ in range(10)]
    errors = [1.4 * d + 0.3 * rng.normal(size=200) for d in details]
    assert abs(calibrate_share(details, errors) - 1.4) < 0.1
    assert calibrate_share(details, [-e for e in errors]) == 0.0  # a detail that only hurts is not used


def test_shipped_atlas_loads_offline_and_holds_its_recipe():
    atlas = load_atlas(DEFAULT_ATLAS)
    assert atlas.volumes.shape[0] == 20 and atlas.volumes.shape[1:] == atlas.brains.shape[1:]
    split = json.loads((Path(brainae.__file__).parent / "pretrained" / "ixi-split.json").read_text())
    assert atlas.provenance["train"] == split["train"]  # only train volumes are in the atlas
    assert not set(atlas.provenance["train"]) & set(split["test"] + split["val"])
    assert 0.5 < atlas.settings.share <= 2.0


def _cube(shape, corner, side) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(c, c + side) for c in corner)] = True
    return m


@pytest.fixture(scope="module")
def val_volume():
    require_data("ixi-t1-2mm")
    return load_volume(VAL_VOLUME)


def _psnr(clean, test, mask, peak):
    return 10 * np.log10(peak**2 / np.mean((clean[mask] - test[mask]) ** 2))


@pytest.mark.parametrize("fusion", ["joint", "softmax"])
def test_atlas_fill_beats_biharmonic_on_a_held_out_scan_and_keeps_other_voxels(val_volume, fusion):
    """On a val volume (not in the atlas), 20 mm cubes inside the brain: the atlas fill's mean PSNR inside the
    holes is above the biharmonic fill's, and every voxel outside the holes is bit-identical."""
    vol = val_volume
    data = vol.data
    peak = float(np.percentile(data, 99.5))
    atlas = load_atlas(DEFAULT_ATLAS)
    atlas.settings = dataclasses.replace(atlas.settings, fusion=fusion)
    gains = []
    for corner in [(30, 40, 40), (45, 55, 30), (60, 45, 45)]:
        mask = _cube(data.shape, corner, 10)
        blank = np.where(mask, 0, data).astype(np.float32)
        out = inpaint_with_atlas(dataclasses.replace(vol, data=blank), mask, atlas)
        assert np.array_equal(out[~mask], blank[~mask])
        smooth = fill_holes(blank, mask)
        gains.append(_psnr(data, out, mask, peak) - _psnr(data, smooth, mask, peak))
    assert np.mean(gains) > 0.5, gains


def test_atlas_fill_on_a_finer_grid_beats_biharmonic(val_volume):
    """The same scan resampled to 1.25 mm: the detail is found on the 2 mm grid and added on the scan's own."""
    vol = val_volume
    fine = to_grid(vol.data, vol.zooms, 1.25)
    affine = np.diag([1.25, 1.25, 1.25, 1.0])
    mask = _cube(fine.shape, (56, 72, 56), 16)
    blank = np.where(mask, 0, fine).astype(np.float32)
    img = brainae.inpaint((blank, affine), (mask.astype(np.uint8), affine))
    out = np.asarray(img.dataobj, dtype=np.float32)
    assert out.shape == fine.shape and np.array_equal(out[~mask], blank[~mask])
    peak = float(np.percentile(fine, 99.5))
    assert _psnr(fine, out, mask, peak) > _psnr(fine, fill_holes(blank, mask), mask, peak)


def test_api_takes_the_atlas_by_name_as_the_cli_does(val_volume):
    vol = val_volume
    mask = _cube(vol.data.shape, (45, 55, 30), 6)
    blank = np.where(mask, 0, vol.data).astype(np.float32)
    by_default = np.asarray(brainae.inpaint((blank, vol.affine), (mask.astype(np.uint8), vol.affine)).dataobj)
    by_name = brainae.inpaint((blank, vol.affine), (mask.astype(np.uint8), vol.affine), model="atlas")
    assert np.array_equal(np.asarray(by_name.dataobj), by_default)
    assert not np.array_equal(by_default[mask], fill_holes(blank, mask)[mask])  # the atlas's detail is in


def test_atlas_detail_is_zero_outside_the_holes_and_falls_back_when_registration_fails():
    atlas = load_atlas(DEFAULT_ATLAS)
    rng = np.random.default_rng(0)
    noise = rng.uniform(0, 1, (60, 70, 60)).astype(np.float32)  # not a head at all
    mask = _cube(noise.shape, (25, 30, 25), 8)
    diag: dict = {}
    det = atlas_detail(noise, mask, atlas, stripped=False, diagnostics=diag)
    assert diag["fit"] < atlas.settings.min_fit and not det.any()  # biharmonic only


def test_normalise_refuses_a_constant_volume():
    with pytest.raises(BrainaeError, match="constant"):
        normalise(np.zeros((8, 8, 8), np.float32))


@pytest.mark.data("ixi-t1-2mm")
def test_cli_inpaint_uses_the_atlas_by_default_and_info_shows_its_card(val_volume, tmp_path):
    img = nib.load(str(VAL_VOLUME))
    mask = np.zeros(img.shape, np.uint8)
    mask[50:58, 60:68, 40:48] = 1  # in the file's own (P, S, R) order
    mpath = tmp_path / "m.nii.gz"
    nib.save(nib.Nifti1Image(mask, img.affine), str(mpath))
    out = tmp_path / "o.nii.gz"
    res = runner.invoke(app, ["inpaint", str(VAL_VOLUME), str(mpath), str(out)])
    assert res.exit_code == 0, res.output
    assert "(atlas)" in res.output
    got = np.asarray(nib.load(str(out)).dataobj)
    orig = np.asarray(img.dataobj).astype(np.float32)  # the file is scaled uint8; outputs are float32
    assert np.array_equal(got[mask == 0], orig[mask == 0]) and not np.array_equal(got, orig)
    res = runner.invoke(app, ["info", "atlas"])
    assert res.exit_code == 0 and "exemplar atlas" in res.output and "CC BY-SA 3.0" in res.output
    res = runner.invoke(
        app, ["inpaint", str(VAL_VOLUME), str(mpath), str(tmp_path / "x.nii.gz"), "-m", "no.npz"]
    )
    assert res.exit_code != 0 and "no such checkpoint" in res.output


def test_fit_atlas_refuses_a_non_npz_output(tmp_path):
    res = runner.invoke(app, ["fit", "atlas", str(tmp_path), "--out", str(tmp_path / "a.safetensors")])
    assert res.exit_code != 0 and "give --out NAME.npz" in res.output


def test_atlas_class_without_head_template_uses_the_mean():
    vols = np.stack([_phantom(seed=s) for s in range(2)])
    atlas = Atlas(vols, vols > 0.4, np.ones(2, np.float32))
    assert np.allclose(atlas.template(False), vols.mean(0))


def test_holes_close_together_are_matched_as_one(monkeypatch, val_volume):
    """Two small holes 3 voxels apart get one search (one cluster); a third far away gets its own."""
    import brainae.atlas as mod

    atlas = load_atlas(DEFAULT_ATLAS)
    x = normalise(val_volume.data)
    mask = _cube(x.shape, (40, 50, 40), 4) | _cube(x.shape, (40, 50, 47), 4) | _cube(x.shape, (70, 50, 40), 4)
    calls = []
    real = mod._hole_detail
    monkeypatch.setattr(mod, "_hole_detail", lambda *a, **k: calls.append(int(a[1].sum())) or real(*a, **k))
    det = atlas_detail(fill_holes(np.where(mask, 0, x).astype(np.float32), mask), mask, atlas, stripped=False)
    assert sorted(calls) == [64, 128]
    assert not det[~mask].any()
