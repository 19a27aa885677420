"""The normative anomaly model (brainae.normative): intensities, files, and maps of real held-out IXI volumes
with planted iso-intense lesions; the default of `brainae anomaly` and `brainae.anomaly`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from brainae import normative as N
from brainae.errors import BrainaeError
from brainae.lesions import mass_lesion, moved_tissue_lesion
from conftest import IXI_2MM, write_volume

HELD_OUT = "IXI212-HH-1643_T1"  # a test volume of pretrained/ixi-split.json: in neither the template nor val


def test_standardise_maps_percentiles_and_extends_linearly():
    x = np.array([-1.0, 0.0, 0.5, 1.0, 2.0, 4.0])
    out = N.standardise(x, np.array([0.0, 1.0, 2.0]), np.array([10.0, 20.0, 40.0]))
    assert np.allclose(out, [0.0, 10.0, 15.0, 20.0, 40.0, 80.0], atol=1e-5)


def test_mirror_is_left_right_along_axis_0():
    x = np.arange(24, dtype=np.float32).reshape(4, 3, 2)
    assert np.array_equal(N.mirror(x)[0], x[3]) and np.array_equal(N.mirror(N.mirror(x)), x)


def _tiny_model() -> N.NormativeModel:
    rng = np.random.default_rng(0)
    maps = {k: rng.uniform(0.1, 1.0, (8, 9, 10)).astype(np.float32) for k in N.NormativeModel.MAPS}
    return N.NormativeModel(**maps, quantiles=np.linspace(0.2, 1.5, len(N.QUANTILES)), provenance={"x": 1})


def test_save_load_roundtrip_and_recognition(tmp_path):
    m = _tiny_model()
    m.calibration = {"levels": [0.0, 1.0], "thresholds": [0.5, 2.0], "mean": 1.0, "std": 0.5}
    path = tmp_path / "n.npz"
    m.save(path)
    back = N.load_normative(path)
    assert N.is_normative_file(path)
    assert np.allclose(back.sd, m.sd, atol=1e-3) and back.calibration == m.calibration
    assert back.provenance == {"x": 1} and back.settings == m.settings
    assert [p.name for p in tmp_path.iterdir()] == ["n.npz"]  # no temporary left behind


@pytest.mark.parametrize("damage", ["text", "no-kind", "flat-maps", "nan", "quantiles"])
def test_damaged_model_file_gives_one_clear_error(tmp_path, damage):
    path = tmp_path / "bad.npz"
    if damage == "text":
        path.write_text("not a zip")
    else:
        m = _tiny_model()
        meta = {"kind": "brainae-normative", "quantiles": [float(q) for q in m.quantiles]}
        maps = {k: getattr(m, k) for k in N.NormativeModel.MAPS}
        if damage == "no-kind":
            meta.pop("kind")
        if damage == "flat-maps":
            maps["sd"] = maps["sd"].ravel()
        if damage == "nan":
            maps["mean"][0, 0, 0] = np.nan
        if damage == "quantiles":
            meta["quantiles"] = [1.0, 0.0]
        np.savez(path, **maps, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    with pytest.raises(BrainaeError, match="not a normative model written by brainae") as info:
        N.load_normative(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_moved_tissue_and_mass_lesions_keep_the_brains_intensities():
    rng = np.random.default_rng(0)
    v = np.zeros((40, 40, 40), np.float32)
    v[:, :, 20:] = 100.0
    v[:, :, :20] = 40.0
    brain = np.zeros(v.shape, bool)
    brain[3:37, 3:37, 3:37] = True
    for les in (
        moved_tissue_lesion(v, brain, rng, 5.0, zooms=(1.0, 1.0, 1.0)),
        mass_lesion(v, brain, rng, 5.0, zooms=(1.0, 1.0, 1.0)),
    ):
        assert les.truth.any() and brain[les.truth].all()
        assert les.data.min() >= 40.0 - 1e-3 and les.data.max() <= 100.0 + 1e-3  # nothing new: iso-intense
        assert np.array_equal(les.data[~brain], v[~brain])


# ------------------------------------------------------------------ the shipped model on a real held-out scan


@pytest.fixture(scope="module")
def held_out():
    """The held-out IXI volume, skull-stripped with deepbet, and the shipped model."""
    from brainae.brainmask import brain_mask
    from brainae.io import load_volume

    vol = load_volume(IXI_2MM / f"{HELD_OUT}.nii.gz")
    brain = brain_mask(vol.data, vol.zooms, method="deepbet")
    return vol, brain, N.load_normative(N.DEFAULT_NORMATIVE)


@pytest.fixture(scope="module")
def healthy_maps(held_out):
    vol, brain, model = held_out
    return N.normative_anomaly(vol, model, brain=brain)


def test_healthy_held_out_volume_stays_under_its_false_positive_bound(held_out, healthy_maps):
    _, brain, _ = held_out
    res = healthy_maps
    assert res.lesion is not None and res.calibrated is not None
    flagged = float(res.lesion[brain].mean())
    assert flagged <= 0.05, f"{100 * flagged:.2f} % of a healthy brain flagged at the 1 % threshold"
    assert res.z is not None and abs(res.z) < 4


def test_map_is_zero_outside_the_brain(held_out, healthy_maps):
    _, brain, _ = held_out
    for m in (healthy_maps.residual, healthy_maps.calibrated):
        assert np.all(m[~brain] == 0) and m[brain].max() > 0


@pytest.mark.parametrize("kind", ["moved-tissue", "mass"])
def test_planted_iso_intense_lesion_scores_higher_inside_than_outside(held_out, healthy_maps, kind):
    import dataclasses

    vol, brain, model = held_out
    rng = np.random.default_rng(3)
    make = moved_tissue_lesion if kind == "moved-tissue" else mass_lesion
    les = make(np.where(brain, vol.data, 0.0), brain, rng, 12.0, zooms=vol.zooms)
    lesioned = dataclasses.replace(vol, data=np.where(brain, les.data, vol.data))
    res = N.normative_anomaly(lesioned, model, brain=brain)
    inside = float(res.calibrated[les.truth].mean())
    outside = float(res.calibrated[brain & ~les.truth].mean())
    assert inside > 2.0 * outside, (inside, outside)
    # and more than the same place scored on the healthy scan
    assert inside > float(healthy_maps.calibrated[les.truth].mean())


def test_failed_registration_gives_one_clear_line_not_a_map(tmp_path):
    """A brain-sized blob of noise is no brain: the registration's fit is too low, no map is made."""
    from brainae.cli import app

    rng = np.random.default_rng(0)
    shape = (80, 96, 80)
    p, s, r = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    blob = (p**2 + s**2 + r**2) < 0.6
    data = np.where(blob, rng.uniform(10, 200, shape), 0.0).astype(np.float32)
    src = write_volume(tmp_path / "noise.nii.gz", data, np.diag([2.0, 2.0, 2.0, 1.0]))
    out = tmp_path / "map.nii.gz"
    result = CliRunner().invoke(app, ["anomaly", str(src), "-o", str(out)])
    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "registration" in lines[0], result.output
    assert "Traceback" not in result.output and not out.exists()


def test_cli_default_is_the_normative_model_and_model_anomaly_keeps_the_autoencoder(tmp_path, held_out):
    """On a skull-stripped held-out scan (no brain extraction to wait for)."""
    from brainae.cli import app
    from brainae.io import load_volume

    vol, brain, _ = held_out
    src = write_volume(
        tmp_path / "stripped.nii.gz", np.where(brain, vol.data, 0.0).astype(np.float32), vol.affine
    )
    runner = CliRunner()
    out = {}
    for name, extra in (("normative", []), ("dae", ["--model", "anomaly"])):
        target = tmp_path / f"{name}.nii.gz"
        result = runner.invoke(app, ["anomaly", str(src), "-o", str(target), "--json", *extra])
        assert result.exit_code == 0, result.output
        out[name] = load_volume(target).data
        row = json.loads(result.output.strip().splitlines()[-1])
        assert row["flagged_fraction"] <= 0.05
    assert not np.allclose(out["normative"], out["dae"])
    # the Python API takes the same default and, seeded on one ITK thread, repeats the map bit for bit
    import brainae

    api = brainae.anomaly(str(src))
    assert np.array_equal(np.asarray(api.residual.dataobj, dtype=np.float32), out["normative"])


def test_info_shows_the_normative_card():
    from brainae.cli import app

    result = CliRunner().invoke(app, ["info", "normative"])
    assert result.exit_code == 0, result.output
    assert "normative model" in result.output and "brainae fit normative" in result.output
    card = json.loads(CliRunner().invoke(app, ["info", "normative", "--json"]).output)
    assert card["task"] == "anomaly" and len(card["provenance"]["train"]) == 20
    assert not set(card["provenance"]["train"]) & set(card["provenance"]["val"])


@pytest.mark.data("ixi-t1-2mm")
def test_build_normative_gives_a_symmetric_template_and_sane_maps(tmp_path):
    """Three real volumes, few iterations: the recipe's steps run end to end and their products hold."""
    from brainae.brainmask import brain_mask
    from brainae.io import load_volume

    scans = []
    for name in ("IXI132-HH-1415_T1", "IXI162-HH-1548_T1", "IXI211-HH-1568_T1"):  # train volumes
        vol = load_volume(IXI_2MM / f"{name}.nii.gz")
        scans.append(N.prepare_scan(vol.data, vol.zooms, brain_mask(vol.data, vol.zooms, method="threshold")))
    quick = N.NormativeSettings(aff_iterations=(30, 10), syn_iterations=(5, 0))
    model = N.build_normative(scans, rounds=1, settings=quick, provenance={"train": ["a", "b", "c"]})
    assert model.template.shape == N.TEMPLATE_SHAPE
    assert np.allclose(model.template, N.mirror(model.template), atol=1e-5)
    assert np.allclose(model.mean, N.mirror(model.mean), atol=1e-4)
    assert 0.0 <= model.brain.min() and model.brain.max() <= 1.0 and (model.brain >= 0.5).sum() > 50_000
    assert (model.sd >= 0).all() and (model.lr_sd >= 0).all() and (model.jac_sd >= 0).all()
    assert np.all(np.diff(model.quantiles) >= 0)
    model.save(tmp_path / "n.npz")
    assert N.load_normative(tmp_path / "n.npz").settings == quick


def test_a_field_of_view_that_holds_no_brain_is_refused():
    with pytest.raises(BrainaeError, match="field of view"):
        N.prepare_scan(np.ones((10, 10, 10), np.float32), (1.0, 1.0, 1.0), np.ones((10, 10, 10), bool))


def test_a_bids_dataset_gets_normative_maps_as_derivatives(tmp_path, held_out):
    """The default model in cohort mode: maps, calibrated map and mask as BIDS derivatives, a sidecar that
    names the normative model."""
    from brainae.cli import app

    vol, brain, _ = held_out
    anat = tmp_path / "bids" / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (tmp_path / "bids" / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    write_volume(anat / "sub-01_T1w.nii.gz", np.where(brain, vol.data, 0.0).astype(np.float32), vol.affine)
    result = CliRunner().invoke(app, ["anomaly", str(tmp_path / "bids")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "bids" / "derivatives" / "brainae" / "sub-01" / "anat"
    names = sorted(p.name for p in out.iterdir())
    assert "sub-01_desc-anomaly_T1w.nii.gz" in names and "sub-01_desc-anomaly_mask.nii.gz" in names, names
    side = json.loads((out / "sub-01_desc-anomaly_T1w.json").read_text())
    assert side["Model"]["Name"] == "normative" and side["Model"]["Task"] == "anomaly"


@pytest.mark.parametrize("kind", ["tiny", "constant", "zeros"])
def test_malformed_scans_give_one_line_with_the_default_model(tmp_path, kind):
    from brainae.cli import app

    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    data = {
        "tiny": rng.uniform(0, 100, (8, 8, 8)),
        "constant": np.full((80, 96, 80), 100.0),
        "zeros": np.zeros((80, 96, 80)),
    }[kind].astype(np.float32)
    src = write_volume(tmp_path / "scan.nii.gz", data, affine)
    before = src.read_bytes()
    out = tmp_path / "map.nii.gz"
    result = CliRunner().invoke(app, ["anomaly", str(src), "-o", str(out)])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output and "unexpected failure" not in result.output
    assert not out.exists() and src.read_bytes() == before
