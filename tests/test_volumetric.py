"""brainae's volumetric models: the 3-D U-Net, tasks, training, the shipped defaults and the jobs."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import brainae
from brainae.api import as_volume
from brainae.cli import app
from brainae.errors import BrainaeError
from brainae.infer import DEFAULT_MODELS, anomaly_volume, inpaint_volume, load_volumetric
from brainae.io import load_volume
from brainae.models import build_model
from brainae.tasks import (
    TASKS,
    apply_holes,
    biharmonic_fill,
    estimate_noise_sd,
    get_task,
    sample_coarse_noise,
    sample_holes,
    sample_noise3d,
    smooth_fill,
)
from brainae.volumetric import fit_intensity, from_grid, looks_skull_stripped, run_blocks, to_grid
from conftest import IXI_2MM, require_data

runner = CliRunner()
TEST_VOLUME = IXI_2MM / "IXI212-HH-1643_T1.nii.gz"  # a held-out test volume of pretrained/ixi-split.json


@pytest.fixture(scope="module")
def crop():
    """A 56 x 64 x 56 crop of a real held-out 2 mm IXI volume (RAS+), with its affine."""
    require_data("ixi-t1-2mm")
    vol = load_volume(TEST_VOLUME)
    data = np.ascontiguousarray(vol.data[32:88, 30:94, 17:73])
    return data, np.diag([2.0, 2.0, 2.0, 1.0])


def test_unet3d_blocks_equal_whole_volume():
    torch.manual_seed(0)
    model = build_model("unet3d", in_channels=1, widths=[4, 8, 8]).eval()
    x = np.random.default_rng(0).random((1, 40, 36, 44), dtype=np.float32)
    whole = run_blocks(model, x, block=64)
    blocks = run_blocks(model, x, block=24, margin=8)
    assert whole.shape == (1, 40, 36, 44)
    np.testing.assert_allclose(blocks, whole, atol=1e-5)


def test_unet3d_residual_identity_at_zero_head():
    model = build_model("unet3d", widths=[4, 8]).eval()
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    x = torch.rand(1, 1, 8, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), x)


def test_corruptions_are_seeded_and_holes_keep_known_voxels():
    batch = torch.rand(2, 1, 16, 16, 16)
    brain = torch.ones_like(batch, dtype=torch.bool)
    vox = torch.full((2,), 2.0)
    draws = []
    for _ in range(2):
        g = torch.Generator().manual_seed(3)
        draws.append(
            (sample_noise3d(batch, g).normal, sample_holes(brain, vox, g), sample_coarse_noise(batch, g))
        )
    for a, b in zip(*draws):
        assert torch.equal(a, b)
    holes = draws[0][1]
    assert 0 < holes.mean() < 1
    x = apply_holes(batch, holes)
    assert x.shape == (2, 2, 16, 16, 16)
    known = holes == 0
    assert torch.equal(x[:, :1][known], batch[known])


def test_smooth_fill_fills_a_constant_exactly():
    img = torch.full((1, 1, 12, 12, 12), 0.7)
    holes = torch.zeros_like(img)
    holes[..., 3:9, 3:9, 3:9] = 1
    filled = smooth_fill(img * (1 - holes), holes)
    torch.testing.assert_close(filled, img)


def test_biharmonic_fill_matches_scikit_image_and_keeps_known_voxels(crop):
    from brainae.baselines import biharmonic_inpaint
    from brainae.infer import fill_holes

    data, _ = crop
    img = (data / np.percentile(data, 99.5)).astype(np.float32)
    mask = np.zeros(img.shape, bool)
    mask[20:30, 24:34, 22:32] = True  # a 20 mm cube
    mask[40:44, 10:16, 40:45] = True  # a second, smaller hole
    blank = np.where(mask, 0, img).astype(np.float32)
    ref = biharmonic_inpaint(blank, mask)
    ours = fill_holes(blank, mask, "biharmonic")
    assert np.array_equal(ours[~mask], blank[~mask])
    err_ref = np.abs(ours - ref)[mask].max()
    assert err_ref < 0.01, err_ref  # the same solution, to the solver's tolerance
    # and it is the classical answer, not a trivial one: far better than the smooth fill where anatomy varies
    smooth = fill_holes(blank, mask, "smooth")
    assert np.abs(ours - img)[mask].mean() < np.abs(smooth - img)[mask].mean()
    # batched on tensors: a constant is filled exactly
    const = torch.full((2, 1, 12, 12, 12), 0.3)
    holes = torch.zeros_like(const)
    holes[..., 3:9, 3:9, 3:9] = 1
    torch.testing.assert_close(biharmonic_fill(const * (1 - holes), holes), const)


def test_biharmonic_fill_in_boxes_around_the_holes_equals_the_whole_image_solve(monkeypatch):
    import brainae.tasks as tasks

    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.avg_pool3d(torch.rand(3, 1, 32, 32, 32, generator=g), 5, 1, 2)
    holes = torch.zeros_like(img)
    holes[0, :, 4:12, 6:10, 3:9] = 1  # inside
    holes[1, :, 24:32, 20:28, 26:32] = 1  # against the far faces
    holes[2, :, 0:3, 0:3, 0:3] = 1  # a corner
    boxes = tasks._hole_boxes(holes, margin=4)
    assert boxes is not None and boxes[1] == (16, 16, 13)  # one size: the largest extent plus margins
    boxed = tasks.biharmonic_fill(img, holes, iterations=3000, tol=1e-6)
    monkeypatch.setattr(tasks, "_hole_boxes", lambda *a, **k: None)
    whole = tasks.biharmonic_fill(img, holes, iterations=3000, tol=1e-6)
    torch.testing.assert_close(boxed, whole, atol=1e-5, rtol=0)
    assert torch.equal(boxed * (1 - holes), img * (1 - holes))
    assert float((boxed - img).abs().mul(holes).max()) > 1e-3  # the holes were filled, not copied


def test_training_uses_bfloat16_autocast_on_gpus_and_on_cpus_with_bfloat16_units(monkeypatch):
    import torch

    from brainae.device import has_bf16_units

    assert has_bf16_units(torch.device("cuda"))
    assert not has_bf16_units(torch.device("mps"))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert not has_bf16_units(torch.device("cpu"))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert has_bf16_units(torch.device("cpu"))


def test_inpaint_correction_weight_follows_each_holes_volume():
    from brainae.infer import correction_weights

    mask = np.zeros((20, 20, 20), bool)
    mask[2:4, 2:4, 2:4] = True  # 8 voxels of 8 mm^3: 0.064 ml
    mask[10:15, 10:15, 10:15] = True  # 125 voxels: 1 ml
    table = {"hole_ml": [0.064, 1.0], "alpha": [0.2, 0.8]}
    w = correction_weights(table, mask, (2.0, 2.0, 2.0))
    assert w[3, 3, 3] == pytest.approx(0.2) and w[12, 12, 12] == pytest.approx(0.8)
    assert correction_weights(None, mask, (2.0, 2.0, 2.0)) == 1.0
    big = np.zeros((20, 20, 20), bool)
    big[:, :10] = True  # 2000 voxels = 16 ml, beyond the table: its last weight
    assert correction_weights(table, big, (2.0, 2.0, 2.0))[big].max() == pytest.approx(0.8)


def test_noise_estimate_follows_the_noise_level():
    rng = np.random.default_rng(0)
    flat = np.full((1, 1, 32, 32, 32), 0.5, np.float32)
    ests = []
    for sd in (0.0, 0.02, 0.05, 0.1):
        noisy = flat + rng.normal(0, sd, flat.shape).astype(np.float32)
        ests.append(float(estimate_noise_sd(torch.from_numpy(noisy))[0]))
    assert ests[0] == pytest.approx(0.0, abs=1e-6)
    assert ests == sorted(ests)
    assert ests[2] == pytest.approx(0.05, rel=0.15)


@pytest.mark.data("ixi-t1-2mm")
def test_intensity_grid_and_stripping(crop):
    data, _ = crop
    norm = fit_intensity(data)
    np.testing.assert_allclose(norm.inverse(norm.forward(data)), data, rtol=1e-5, atol=1e-3)
    small = to_grid(data, (1.0, 1.0, 1.0), 2.0)
    assert small.shape == (28, 32, 28)
    assert from_grid(small, data.shape).shape == data.shape
    head = load_volume(TEST_VOLUME)
    assert not looks_skull_stripped(head.data, head.zooms)
    brain = np.zeros(head.data.shape, bool)
    brain[35:85, 35:95, 25:65] = True
    assert looks_skull_stripped(np.where(brain, head.data, 0), head.zooms)


@pytest.mark.data("ixi-t1-2mm")
def test_unknown_task_and_wrong_task_checkpoint_are_one_line(tmp_path):
    with pytest.raises(BrainaeError, match="unknown task 'segment'"):
        get_task("segment")
    res = runner.invoke(app, ["fit", "segment", str(IXI_2MM), "--out", str(tmp_path / "x.safetensors")])
    assert res.exit_code == 1
    assert "unknown task 'segment'" in res.output and "Traceback" not in res.output
    mine = tmp_path / "notes.safetensors"
    mine.write_text("mine")
    res = runner.invoke(app, ["fit", "denoise", str(IXI_2MM), "--out", str(mine), "--force"])
    assert res.exit_code == 1 and "not a brainae checkpoint" in res.output and mine.read_text() == "mine"
    res = runner.invoke(app, ["denoise", str(TEST_VOLUME), str(tmp_path / "o.nii.gz"), "--model", "inpaint"])
    assert res.exit_code == 1
    assert "trained for 'inpaint', not 'denoise'" in res.output
    assert not (tmp_path / "o.nii.gz").exists()


def test_default_models_ship_with_the_package():
    for task, path in DEFAULT_MODELS.items():
        assert path.is_file() and path.stat().st_size < 5e6
        vm = load_volumetric(None, task=task)
        assert vm.task.name == task
        assert vm.preprocessing.kind == "volumetric" and vm.preprocessing.task == task
        assert vm.training.recipe["task"] == task
        assert not set(vm.training.get("train_ids")) & set(_split()["test"])
    assert load_volumetric(None, task="anomaly").normative.thresholds
    assert load_volumetric(None, task="denoise").preprocessing.blend["estimate"]["shares"]


def _split() -> dict:
    from brainae.fit import SPLIT_FILE

    return json.loads(SPLIT_FILE.read_text())


def test_denoise_lowers_the_error_of_a_noisy_scan(crop):
    data, affine = crop
    peak = np.percentile(data, 99.5)
    noisy = data + np.random.default_rng(1).normal(0, 0.08 * peak, data.shape).astype(np.float32)
    out = brainae.denoise((noisy, affine))
    assert out.shape == data.shape and np.allclose(out.affine, affine)
    den = out.get_fdata()
    assert np.mean((den - data) ** 2) < 0.7 * np.mean((noisy - data) ** 2)


def test_denoise_leaves_a_clean_scan_nearly_unchanged(crop):
    data, affine = crop
    den = brainae.denoise((data, affine)).get_fdata()
    peak = np.percentile(data, 99.5)
    psnr = 10 * np.log10(peak**2 / np.mean((den - data) ** 2))
    assert psnr > 38


def _without_nlm(blend: dict) -> dict:
    """The same tables with every classical estimate's share set to 0 (the model's shares kept)."""
    classes = len(blend["class_edges"]) + 1
    width = len(blend["components"]) + 1

    def zero(table):
        def row(values):
            per_class = np.array(values).reshape(classes, width)
            per_class[:, 1:] = 0.0
            return per_class.ravel().tolist()

        return {**table, "shares": [row(r) for r in table["shares"]]}

    return {
        **blend,
        "estimate": zero(blend["estimate"]),
        "background": {k: zero(t) for k, t in blend["background"].items()},
    }


@pytest.mark.data("ixi-t1-2mm")
def test_denoise_mix_with_non_local_means_beats_the_model_alone():
    """The shipped tables keep shares of non-local means and other classical estimates, per intensity class; on
    a noisy held-out scan that mix has a lower error than the model's own blend (the same checkpoint with those
    shares set to 0)."""
    import dataclasses

    from brainae.infer import denoise_volume

    vm = load_volumetric(None, task="denoise")
    blend = vm.preprocessing.blend
    assert len(blend["components"]) > 1 and set(blend["background"]) == {"magnitude", "zero_mean"}
    alone = dataclasses.replace(
        vm, preprocessing=dataclasses.replace(vm.preprocessing, blend=_without_nlm(blend))
    )
    vol = load_volume(TEST_VOLUME)
    peak = np.percentile(vol.data, 99.5)
    noisy = vol.data + np.random.default_rng(3).normal(0, 0.08 * peak, vol.data.shape).astype(np.float32)
    head = vol.data > 0.05 * peak
    noisy_vol = dataclasses.replace(vol, data=noisy)

    def mse(a):
        return float(np.mean((a[head] - vol.data[head]) ** 2))

    mixed, model_only = denoise_volume(noisy_vol, vm), denoise_volume(noisy_vol, alone)
    assert mse(mixed) < 0.85 * mse(model_only) < 0.85 * mse(noisy)


def test_mix_components_and_class_shares():
    """The classical estimates of the mix: one non-local means pass gives the plain, RMS and Rician-corrected
    forms consistently; blurs smooth; per-class least squares recovers per-class shares."""
    from brainae.infer import _class_shares, intensity_classes, mix_components
    from brainae.nlmeans import nl_means

    rng = np.random.default_rng(0)
    x = np.zeros((24, 24, 24), np.float32)
    x[4:20, 4:20, 4:20] = 0.6
    x[8:16, 8:16, 8:16] = 0.9
    x += rng.normal(0, 0.05, x.shape).astype(np.float32)
    specs = [("nlm", 2, 3, 1.0), ("rms", 2, 3, 1.0), ("rician", 2, 3, 1.0), ("nlm", 1, 3, 2.0), ("blur", 1.0)]
    plain, rms, rician, small, blur = mix_components(x, 0.05, specs)
    box = (slice(4, 20),) * 3  # inside the head box the plain estimate is non-local means itself
    np.testing.assert_allclose(plain[box], nl_means(x, 0.05)[box], atol=1e-5)
    np.testing.assert_allclose(rician**2, np.maximum(rms**2 - 2 * 0.05**2, 0), atol=1e-5)
    assert np.all(rms >= plain - 1e-5) and np.all(rician <= rms + 1e-6)
    flat = (slice(10, 14),) * 3
    assert np.std(blur[flat]) < 0.5 * np.std(x[flat]) and not np.allclose(small, plain)
    np.testing.assert_array_equal(
        intensity_classes(np.array([0.1, 0.4, 0.7, 0.95]), (0.3, 0.55, 0.8)), [0, 1, 2, 3]
    )
    d = rng.normal(size=(4000, 2))
    classes = np.repeat([0, 1], 2000)
    t = np.where(classes == 0, d @ [0.2, 0.5], d @ [0.7, -0.1])
    np.testing.assert_allclose(
        _class_shares(d, t, classes, 3), [[0.2, 0.5], [0.7, -0.1], [0.45, 0.2]], atol=0.05
    )


def test_blend_tables_helpers():
    from brainae.infer import _best_shares, _binned, _increasing, blend_weights, noise_sd_estimate

    rng = np.random.default_rng(0)
    d, e = rng.normal(size=500), rng.normal(size=500)

    def shares(t):
        gram = np.array([[d @ d, d @ e], [d @ e, e @ e]])
        return _best_shares(gram, np.array([d @ t, e @ t]))

    np.testing.assert_allclose(shares(0.3 * d + 0.5 * e), (0.3, 0.5), atol=1e-9)
    a, b = shares(-d + 0.4 * e)  # a negative share is not allowed: refit with the other alone
    assert a == 0.0 and b == pytest.approx(0.4, abs=0.1)
    v = np.array([0.1, 0.5, 0.2, 0.3, 0.9, 0.0])
    inc = _increasing(v)
    assert np.all(np.diff(inc) >= 0) and inc.mean() == pytest.approx(v.mean())
    np.testing.assert_allclose(inc, [0.1, 1 / 3, 1 / 3, 1 / 3, 0.45, 0.45])
    binned = _binned([(0.3, 1.0, 2.0), (0.1, 3.0, 4.0), (0.2, 5.0, 6.0)], k=2)
    assert binned["at"] == pytest.approx([0.15, 0.3]) and binned["shares"] == [[4.0, 5.0], [1.0, 2.0]]
    table = {
        "noise_estimate": [0.05, 0.1],
        "alpha": [0.1, 0.5],
        "nlm": [0.2, 0.6],
        "sigma_estimate": [0.05, 0.1],
        "sigma": [0.01, 0.08],
    }
    nlm = ("nlm", 2, 3, 1.0)
    assert blend_weights(table, 0.075) == (pytest.approx(0.3), {nlm: pytest.approx(0.4)})
    assert blend_weights({"noise_estimate": [0.05], "alpha": [0.7]}, 0.05) == (0.7, {})  # an older table
    assert blend_weights(None, 0.1) == (1.0, {})
    a, b = ("nlm", 2, 3, 0.5), ("blur", 1.0)
    mixed = {
        "components": [list(a), list(b)],
        "estimate": {"at": [0.05, 0.1], "shares": [[0.1, 0.2, 0.0], [0.3, 0.4, -0.2]]},
        "background": {
            "magnitude": {"at": [0.0, 0.1], "shares": [[0.0, 0.0, 0.0], [1.5, 0.2, 0.4]]},
            "zero_mean": {"at": [0.0, 0.1], "shares": [[0.0, 0.0, 0.0], [0.2, 0.6, 0.8]]},
        },
    }
    assert blend_weights(mixed, 0.075) == (
        pytest.approx(0.2),
        {a: pytest.approx(0.3), b: pytest.approx(-0.1)},
    )
    alpha, betas = blend_weights(mixed, 0.075, 0.05)  # read in the air: the magnitude table
    assert alpha == pytest.approx(0.75) and betas == {a: pytest.approx(0.1), b: pytest.approx(0.2)}
    assert blend_weights(mixed, 0.075, 0.1)[0] == 1.0  # the model's share is kept in [0, 1]
    assert blend_weights(mixed, 0.075, 0.05, magnitude=False)[1] == {
        a: pytest.approx(0.3),
        b: pytest.approx(0.4),
    }
    classed = {
        **mixed,
        "class_edges": [0.5],
        "estimate": {"at": [0.1], "shares": [[0.1, 0.2, 0.3, 2.0, 0.5, 0.6]]},
    }
    alpha, betas = blend_weights(classed, 0.1)  # one row of shares per intensity class
    np.testing.assert_allclose(alpha, [0.1, 1.0])
    np.testing.assert_allclose(betas[a], [0.2, 0.5])
    np.testing.assert_allclose(betas[b], [0.3, 0.6])
    assert noise_sd_estimate(table, 0.075, 0.02) == 0.02  # read in the air when there is some
    assert noise_sd_estimate(table, 0.075, None) == pytest.approx(0.045)
    assert noise_sd_estimate(None, 0.075, None) == 0.075


def test_own_noise_keep_leaves_fine_voxels_their_own_noise():
    from brainae.infer import own_noise_keep

    tables = {"own_noise": {"sd": 0.007, "voxel_mm3": 8.0}}
    extra = 0.007**2 * 7  # (0.007 x sqrt(8))^2 - 0.007^2 at 1 mm^3
    assert own_noise_keep(tables, 0.03, (1.0, 1.0, 1.0)) == pytest.approx(extra / 0.03**2)
    assert own_noise_keep(tables, 0.03, (2.0, 2.0, 2.0)) == 0.0  # the calibration scans' voxels
    assert own_noise_keep(tables, 0.03, (3.0, 3.0, 3.0)) == 0.0
    assert own_noise_keep(tables, 0.01, (1.0, 1.0, 1.0)) == 1.0  # no more noise than its own: keep it all
    assert own_noise_keep(tables, None, (1.0, 1.0, 1.0)) == 0.0  # no air to read it in
    assert own_noise_keep({}, 0.03, (1.0, 1.0, 1.0)) == 0.0  # older tables
    blend = load_volumetric(None, task="denoise").preprocessing.blend
    assert 0.004 < blend["own_noise"]["sd"] < 0.012 and blend["own_noise"]["voxel_mm3"] == 8.0


@pytest.mark.data("ixi-t1-2mm")
def test_fine_voxels_with_air_keep_the_noise_of_their_own():
    """A ~1 mm scan with air carries more noise per voxel than the 2 mm calibration scans; with 2 % added,
    denoise brings it closer to that original scan (noise of its own included) than the input is, and changes
    it less than the same array labelled 2 mm, where the tables remove (nearly) all the noise."""
    vol = load_volume(TEST_VOLUME)
    peak = np.percentile(vol.data, 99.5)
    rng = np.random.default_rng(5)
    original = np.abs(vol.data + rng.normal(0, 0.025 * peak, vol.data.shape)).astype(np.float32)
    noisy = (original + rng.normal(0, 0.02 * peak, vol.data.shape)).astype(np.float32)
    head = vol.data > 0.05 * peak
    fine = brainae.denoise((noisy, np.diag([1.0, 1.0, 1.0, 1.0]))).get_fdata()
    coarse = brainae.denoise((noisy, np.diag([2.0, 2.0, 2.0, 1.0]))).get_fdata()

    def mse(a, ref=original):
        return float(np.mean((a[head] - ref[head]) ** 2))

    assert mse(fine) < 0.95 * mse(noisy)  # 167 vs 180 here
    assert mse(fine) < 0.9 * mse(coarse)  # labelled 2 mm: 205, worse than the input
    assert mse(fine, noisy) < 0.5 * mse(coarse, noisy)


def test_fine_voxels_without_background_get_a_sure_tuned_strength(crop):
    """~1 mm input with no air around it (a crop inside the head, like a skull-stripped scan): the strength
    is chosen per volume (SURE), not by the in-head table calibrated on 2 mm volumes (which keeps ~nothing)."""
    from scipy import ndimage

    from brainae.infer import sure_shares, sure_tune
    from brainae.tasks import estimate_noise_sd
    from brainae.volumetric import background_noise_sd, haar_noise_sd

    data, _ = crop
    fine = ndimage.zoom(data, 2, order=1).astype(np.float32)  # smooth, like many clinical 1 mm scans
    grid = np.indices(fine.shape).astype(np.float32)
    centre = (np.array(fine.shape, np.float32) - 1) / 2
    brain = sum(((g - c) / (0.45 * n)) ** 2 for g, c, n in zip(grid, centre, fine.shape)) < 1
    fine = np.where(brain, fine, 0).astype(np.float32)  # skull-stripped: no air to read the noise in
    peak = np.percentile(fine[brain], 99.5)
    noise = np.random.default_rng(1).normal(0, 0.04 * peak, fine.shape).astype(np.float32)
    noisy = np.where(brain, fine + noise, 0).astype(np.float32)
    norm = fit_intensity(noisy)
    x = norm.forward(noisy)
    assert background_noise_sd(x, (1.0, 1.0, 1.0)) is None
    true_sd = 0.04 * peak / (norm.hi - norm.lo)
    assert abs(haar_noise_sd(x) - true_sd) < 0.15 * true_sd
    est = float(estimate_noise_sd(torch.from_numpy(x)[None, None])[0])
    model = load_volumetric(None, task="denoise").model
    gain, alpha = sure_tune(model, x, est, haar_noise_sd(x))
    assert gain >= 1.0 and 0.5 < alpha <= 1.0
    assert sure_tune(model, x, est, 0.0) == (1.0, 0.0)
    # with non-local means as a second term, SURE keeps a share of each
    alpha2, beta = sure_shares(model, x, est, haar_noise_sd(x), gain)
    assert 0.0 < alpha2 <= 1.0 and 0.2 < beta <= 1.0
    assert sure_shares(model, x, est, 0.0, gain) == (0.0, 0.0)

    def mse(a):
        return float(np.mean((a[brain] - fine[brain]) ** 2))

    at_1mm = brainae.denoise((noisy, np.eye(4))).get_fdata()
    tables = brainae.denoise((noisy, np.eye(4)), strength="tables").get_fdata()
    assert np.array_equal(brainae.denoise((noisy, np.eye(4)), strength="sure").get_fdata(), at_1mm)
    assert mse(at_1mm) < 0.6 * mse(noisy)  # the in-head table path keeps ~97 % of the noise here
    assert mse(at_1mm) < 0.8 * mse(tables)
    with pytest.raises(BrainaeError, match="unknown denoising strength 'strong'"):
        brainae.denoise((noisy, np.eye(4)), strength="strong")
    clean = brainae.denoise((fine, np.eye(4))).get_fdata()
    assert 10 * np.log10(peak**2 / mse(clean)) > 38


def test_inpaint_changes_only_masked_voxels_and_beats_zero_fill(crop):
    data, affine = crop
    mask = np.zeros(data.shape, bool)
    mask[24:34, 28:38, 24:34] = True
    vm = load_volumetric(None, task="inpaint")
    vol = as_volume((data, affine))
    out = inpaint_volume(vol, mask, vm)
    assert np.array_equal(out[~mask], data[~mask])
    assert np.isfinite(out).all()
    assert np.mean((out[mask] - data[mask]) ** 2) < 0.2 * np.mean(data[mask] ** 2)
    img = brainae.inpaint((data, affine), (mask.astype(np.uint8), affine))
    assert np.array_equal(img.get_fdata()[~mask], data[~mask])


def test_anomaly_map_zero_outside_brain_and_lesion_scores_higher(crop):
    data, affine = crop
    brain = np.zeros(data.shape, bool)
    brain[8:48, 8:56, 8:48] = True
    brain &= data > 0.2 * np.percentile(data, 99)
    lesion = np.zeros(data.shape, bool)
    lesion[22:30, 26:34, 22:30] = True
    lesion &= brain
    sick = data.copy()
    sick[lesion] = np.median(data[brain]) * 2.0
    vol = as_volume((sick, affine))
    res = anomaly_volume(vol, load_volumetric(None, task="anomaly"), brain=brain)
    assert np.all(res.residual[~brain] == 0)
    assert res.residual[lesion].mean() > 2 * res.residual[brain & ~lesion].mean()
    assert res.calibrated is not None and res.lesion is not None
    assert res.lesion[lesion].mean() > 0.5


@pytest.mark.data("ixi-t1-2mm")
def test_healthy_threshold_keeps_the_false_positive_rate():
    from brainae.brainmask import brain_mask

    vol = load_volume(TEST_VOLUME)
    brain = brain_mask(vol.data, vol.zooms, method="auto")
    res = anomaly_volume(vol, load_volumetric(None, task="anomaly"), brain=brain)
    assert res.lesion[brain].mean() < 0.03
    assert res.z is not None and abs(res.z) < 5


@pytest.mark.data("ixi-t1-2mm")
def test_anomaly_json_is_strict(tmp_path):
    src = tmp_path / "scan.nii.gz"
    vol = load_volume(TEST_VOLUME)
    nib.save(nib.Nifti1Image(vol.data[20:100, 20:100, 10:80], vol.affine), str(src))
    res = runner.invoke(
        app, ["anomaly", str(src), "--json", "--mask-method", "threshold", "-o", str(tmp_path / "m.nii.gz")]
    )
    assert res.exit_code == 0, res.output
    row = json.loads(
        res.stdout.strip().splitlines()[-1], parse_constant=lambda c: pytest.fail(f"non-JSON {c}")
    )
    assert set(row) >= {"score", "z", "flagged_fraction", "skull_stripped_input"}
    out = nib.load(str(tmp_path / "m.nii.gz"))
    assert out.shape == nib.load(str(src)).shape


def test_fit_writes_a_self_describing_checkpoint(tmp_path, cohort):
    out = tmp_path / "tiny.safetensors"
    res = runner.invoke(
        app,
        [
            "fit",
            "anomaly",
            str(cohort),
            "--out",
            str(out),
            "--steps",
            "2",
            "--patch",
            "16",
            "--batch-size",
            "2",
            "--mask-method",
            "threshold",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    vm = load_volumetric(out, task="anomaly")
    assert vm.training.recipe["steps"] == 2
    assert len(vm.training.get("val_ids")) >= 1
    assert vm.normative.levels[0] == 0.0
    info = runner.invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and "anomaly" in info.output
    for task in TASKS:
        assert TASKS[task].name == task


def test_fit_widths_and_time_limit(tmp_path, cohort):
    out = tmp_path / "inp.safetensors"
    args = ["fit", "inpaint", str(cohort), "--out", str(out), "--patch", "16", "--batch-size", "1"]
    args += ["--mask-method", "threshold", "--device", "cpu", "--widths", "4,8"]
    res = runner.invoke(app, [*args, "--steps", "100000", "--max-seconds", "2"])
    assert res.exit_code == 0, res.output
    vm = load_volumetric(out, task="inpaint")
    assert [m.out_channels for m in vm.model.modules() if isinstance(m, torch.nn.Conv3d)][0] == 4
    done = vm.training.get("steps_done")
    assert 1 <= done < 100000  # stopped by the clock, and the card says where
    assert vm.training.recipe["max_seconds"] == 2 and vm.preprocessing.fill == "biharmonic"
    table = vm.preprocessing.blend  # the correction table, from the validation volumes' holes
    assert len(table["hole_ml"]) == len(table["alpha"]) >= 1 and table["cases"] >= 8
    assert all(0.0 <= a <= 1.0 for a in table["alpha"])
    info = runner.invoke(app, ["info", str(out)])
    assert f"stopped by the clock at step {done}" in info.output
    precision = vm.training.get("precision")  # what this CPU trained in, on the card
    assert precision in ("bfloat16 autocast", "float32") and f"on cpu ({precision})" in info.output
    bad = runner.invoke(app, [*args, "--widths", "4,x", "--force"])
    assert bad.exit_code == 1 and "--widths '4,x'" in bad.output and "Traceback" not in bad.output


def test_public_functions_are_not_shadowed_by_modules():
    import brainae.cli  # noqa: F401 - imports every stage module
    import brainae.slice_anomaly  # noqa: F401

    assert callable(brainae.anomaly) and callable(brainae.denoise) and callable(brainae.inpaint)


@pytest.mark.data("ixi-t1-2mm")
def test_background_noise_reads_the_noise_level_whatever_the_voxel_size():
    from brainae.volumetric import background_noise_sd

    vol = load_volume(TEST_VOLUME)
    x = fit_intensity(vol.data).forward(vol.data)
    rng = np.random.default_rng(0)
    noisy = x + rng.normal(0, 0.06, x.shape).astype(np.float32)
    assert background_noise_sd(noisy, vol.zooms) == pytest.approx(0.06, rel=0.2)
    rician = np.sqrt((x + rng.normal(0, 0.06, x.shape)) ** 2 + rng.normal(0, 0.06, x.shape) ** 2)
    assert background_noise_sd(rician.astype(np.float32), vol.zooms) == pytest.approx(0.06, rel=0.2)
    # this scan's air holds ghosting (its RMS reads 0.026 on the clean scan): the median-based estimate
    # still reads low noise right, where the RMS would say 0.033
    low = x + rng.normal(0, 0.02, x.shape).astype(np.float32)
    assert background_noise_sd(low, vol.zooms) == pytest.approx(0.02, rel=0.1)
    brain = np.zeros(x.shape, bool)
    brain[30:60, 35:85, 35:85] = True
    assert background_noise_sd(np.where(brain, noisy, 0), vol.zooms) is None  # skull-stripped: no air


@pytest.mark.data("ixi-t1-2mm")
def test_anomaly_on_a_scan_with_skull_needs_a_real_brain_mask(monkeypatch):
    import brainae.brainmask

    monkeypatch.setattr(brainae.brainmask, "deepbet_available", lambda: False)
    with pytest.raises(BrainaeError, match="has its skull and deepbet is not installed"):
        anomaly_volume(load_volume(TEST_VOLUME), load_volumetric(None, task="anomaly"))


@pytest.mark.data("ixi-t1-2mm")
def test_denoise_folder_with_workers_matches_one_process(tmp_path):
    import shutil

    folder = tmp_path / "in"
    folder.mkdir()
    for f in sorted(IXI_2MM.glob("*.nii.gz"))[:3]:
        shutil.copy(f, folder / f.name)
    for workers in ("1", "2"):
        res = runner.invoke(
            app, ["denoise", str(folder), str(tmp_path / workers), "--device", "cpu", "--workers", workers]
        )
        assert res.exit_code == 0, res.output
    for f in sorted(folder.iterdir()):
        one = np.asarray(nib.load(str(tmp_path / "1" / f.name)).dataobj)
        two = np.asarray(nib.load(str(tmp_path / "2" / f.name)).dataobj)
        # the same code per volume; only torch's thread count differs (float rounding of the convolutions)
        assert one.shape == two.shape and np.abs(one - two).max() <= 1e-6 * np.abs(one).max()
        assert not np.array_equal(one, np.asarray(nib.load(str(f)).dataobj))  # it did denoise


def test_inpaint_and_anomaly_folders_with_workers_match_one_process(tmp_path, crop):
    data, affine = crop
    folder, masks = tmp_path / "in", tmp_path / "masks"
    folder.mkdir()
    masks.mkdir()
    brain = np.zeros(data.shape, bool)
    brain[8:48, 8:56, 8:48] = True
    for i in range(3):
        stripped = np.where(brain, np.roll(data, 2 * i, axis=1), 0).astype(np.float32)
        nib.save(nib.Nifti1Image(stripped, affine), str(folder / f"s{i}.nii.gz"))
        hole = np.zeros(data.shape, np.uint8)
        hole[20 + i : 28 + i, 24:32, 20:28] = 1
        nib.save(nib.Nifti1Image(hole, affine), str(masks / f"s{i}.nii.gz"))
    for workers in ("1", "2"):
        res = runner.invoke(
            app, ["inpaint", str(folder), str(masks), str(tmp_path / f"i{workers}"), "--workers", workers]
        )
        assert res.exit_code == 0, res.output
        res = runner.invoke(
            app,
            ["anomaly", str(folder), "-o", str(tmp_path / f"a{workers}"), "--model", "anomaly", "--workers", workers],
        )
        assert res.exit_code == 0, res.output
    for f in sorted(folder.iterdir()):
        for kind in ("i", "a"):
            one = np.asarray(nib.load(str(tmp_path / f"{kind}1" / f.name)).dataobj)
            two = np.asarray(nib.load(str(tmp_path / f"{kind}2" / f.name)).dataobj)
            assert one.shape == two.shape and np.abs(one - two).max() <= 1e-5 * np.abs(one).max()
        filled = np.asarray(nib.load(str(tmp_path / "i2" / f.name)).dataobj)
        hole = np.asarray(nib.load(str(masks / f.name)).dataobj) > 0
        original = np.asarray(nib.load(str(f)).dataobj)
        assert np.array_equal(filled[~hole], original[~hole]) and not np.array_equal(filled, original)


def test_only_large_volumes_run_the_network_in_bfloat16():
    """A ~1 mm whole-head volume runs the denoiser's network under bfloat16 autocast where the CPU has bfloat16
    units (faster); smaller volumes, and CPUs without such units, stay in float32."""
    import contextlib

    import torch

    from brainae.device import has_bf16_units
    from brainae.infer import BF16_VOXELS, _large_volume_autocast

    assert isinstance(_large_volume_autocast(120 * 120 * 90, "cpu"), contextlib.nullcontext)
    large = _large_volume_autocast(BF16_VOXELS, "cpu")
    if has_bf16_units(torch.device("cpu")):
        assert isinstance(large, torch.autocast) and large.fast_dtype == torch.bfloat16
    else:
        assert isinstance(large, contextlib.nullcontext)
