"""Anomaly maps, volume scores and normative statistics (brainae.slice_anomaly) and the ``anomaly`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from brainae.apply import DEFAULT_MIN_BRAIN_FRAC, Selection, reconstruct, select_slices
from brainae.dataset import PreparedDataset
from brainae.errors import BrainaeError
from brainae.io import Volume, save_nifti
from brainae.slice_anomaly import (
    ScoreDefinition,
    anomaly,
    normative_statistics,
    residual_map,
    selection_from,
    volume_score,
    z_score,
)
from brainae.volume import Preprocessing, volume_to_slices

PREP = Preprocessing(size=32)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def head(seed: int = 0, shape=(24, 32, 32)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grids))
    vol = np.where(r < 0.85, 300.0, 0.0) + np.where(r < 0.6, 400.0 * (1 - r), 0.0)
    return (vol + rng.normal(0, 3, shape) * (r < 0.85)).astype(np.float32)


def as_volume(data: np.ndarray) -> Volume:
    return Volume(path=Path("v.nii"), data=data, zooms=(2.0, 2.0, 2.0), header=None, affine=AFFINE)


class Blur(nn.Module):
    """Smooth normative 'model': it reproduces smooth anatomy and misses small bright/dark spots."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.avg_pool2d(x, 4)
        return nn.functional.interpolate(y, scale_factor=4, mode="bilinear", align_corners=False)


def lesioned(data: np.ndarray, centre=(14, 12, 18), radius: float = 2.5, delta: float = 500.0):
    grids = np.meshgrid(*[np.arange(n) for n in data.shape], indexing="ij")
    blob = sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) <= radius**2
    return (data + delta * blob).astype(np.float32), blob


def test_volume_score_is_mean_of_top_fraction() -> None:
    r = np.zeros((4, 10, 10), np.float32)
    r[1, 2, :4] = [1.0, 0.5, 0.25, 0.25]
    assert volume_score(r, 0.01) == pytest.approx(0.5)  # top 4 of 400
    assert volume_score(-r, 0.01) == pytest.approx(0.5)  # absolute values
    assert volume_score(r, 1.0) == pytest.approx(2.0 / 400)
    with pytest.raises(BrainaeError):
        ScoreDefinition(top_fraction=0)


def test_z_score() -> None:
    assert z_score(3.0, {"mean": 1.0, "std": 2.0}) == pytest.approx(1.0)
    assert z_score(3.0, None) is None
    assert z_score(3.0, {"mean": 1.0, "std": None}) is None


def test_residual_map_is_larger_inside_a_planted_lesion() -> None:
    clean = head()
    for delta in (500.0, -250.0):  # hyper- and hypo-intense
        data, blob = lesioned(clean, delta=delta)
        res = anomaly(as_volume(data), Blur(), PREP, selection=None)
        inside = res.map[blob].mean()
        brain_rest = res.map[(clean > 350) & ~blob].mean()
        assert inside > 3 * brain_rest, (delta, inside, brain_rest)
        # inside the brain, the peak of the map lies in (or right next to) the lesion
        peak = np.unravel_index(np.argmax(np.where(clean > 350, res.map, 0)), res.map.shape)
        assert np.linalg.norm(np.subtract(peak, (14, 12, 18))) <= 3.5
        if delta > 0:  # the score, over the slices with enough brain, is higher than the clean volume's
            kw = {"selection": 0.3, "brain_mask": clean > 0}
            score_clean = anomaly(as_volume(clean), Blur(), PREP, **kw).score
            assert anomaly(as_volume(data), Blur(), PREP, **kw).score > score_clean


def test_signed_map_has_the_lesion_sign() -> None:
    data, blob = lesioned(head(), delta=500.0)
    res = anomaly(as_volume(data), Blur(), PREP, selection=None, signed=True)
    assert res.map[blob].mean() > 0
    assert res.map.min() < 0  # the blurred lesion spills around it: x - recon < 0 there


def test_residual_map_zero_where_not_processed() -> None:
    vol = as_volume(head())
    res = reconstruct(vol, Blur(), PREP, selection=0.3, brain_mask=vol.data > 0)
    m = residual_map(res)
    assert res.n_passed > 0
    assert np.all(m[~res.processed] == 0)


def fake_dataset(volumes: dict[str, np.ndarray], threshold: float) -> PreparedDataset:
    """A prepared dataset as brainae prepare would make it: the selected slices of each volume."""
    slices, rows = [], []
    for vid, data in volumes.items():
        vol = as_volume(data)
        keep, frac = select_slices(vol, PREP, threshold)
        stack = volume_to_slices(data, vol.zooms, PREP)
        for k in np.flatnonzero(keep):
            slices.append(stack.images[k])
            rows.append({"volume_id": vid, "slice": int(k), "split": "val", "brain_frac": float(frac[k])})
    settings = {
        "preprocessing": PREP.to_dict(),
        "select": {
            "method": "brain-mask",
            "thresholds": {"brain-mask": threshold, "nonzero-count": 0.5, "nonzero-mean": 0.2},
            "brain_fraction": threshold,
            "mask_method": "threshold",
        },
    }
    return PreparedDataset(
        path=Path("ds"), slices=np.stack(slices), index=pd.DataFrame(rows), volumes=None, settings=settings
    )


def test_normative_statistics_and_nifti_score_share_one_definition() -> None:
    vols = {f"v{i}": head(seed=i) for i in range(3)}
    ds = fake_dataset(vols, threshold=0.1)
    model = Blur()
    stats = normative_statistics(model, ds, split="val")
    assert stats["n"] == 3 and set(stats["scores"]) == set(vols)
    assert stats["definition"]["selection"] == {
        "method": "brain-mask",
        "threshold": 0.1,
        "mask_method": "threshold",
    }
    assert stats["std"] > 0
    assert stats["mean"] == pytest.approx(np.mean(list(stats["scores"].values())))
    json.dumps(stats)  # storable in a checkpoint
    # the NIfTI path, given only the normative statistics, scores the same slices the same way
    res = anomaly(as_volume(vols["v1"]), model, PREP, normative=stats)
    assert res.n_slices == stats["n_slices"]["v1"]
    assert res.score == pytest.approx(stats["scores"]["v1"], rel=1e-5)
    assert res.z == pytest.approx((res.score - stats["mean"]) / stats["std"])


def test_selection_sources() -> None:
    assert selection_from(None) == Selection()
    assert Selection().threshold == pytest.approx(DEFAULT_MIN_BRAIN_FRAC)
    stored = {"definition": ScoreDefinition(selection=Selection("nonzero-count", 0.4)).to_dict()}
    assert selection_from(stored) == Selection("nonzero-count", 0.4)
    assert selection_from({"definition": ScoreDefinition(selection=None).to_dict()}) is None
    select = {"method": "nonzero-mean", "thresholds": {"nonzero-mean": 0.3}, "mask_method": "deepbet"}
    assert Selection.from_settings(select) == Selection("nonzero-mean", 0.3, "deepbet")


def test_nonzero_selection_matches_the_select_module() -> None:
    from brainae.select import slice_measures
    from brainae.volume import to_view

    vol = as_volume(head())
    keep, measure = select_slices(vol, PREP, Selection("nonzero-count", 0.2))
    expected = slice_measures(np.asarray(to_view(vol.data, "sagittal")))["nonzero_frac"]
    assert np.allclose(measure, expected)
    assert np.array_equal(keep, expected > 0.2) and 0 < keep.sum() < len(keep)


def test_anomaly_without_brain_slices_is_a_clear_error() -> None:
    empty = as_volume(np.zeros((24, 32, 32), np.float32))
    with pytest.raises(BrainaeError, match="no slice passes the selection"):
        anomaly(empty, Blur(), PREP, brain_mask=np.zeros((24, 32, 32), bool))


def test_cli_anomaly_json(tmp_path: Path) -> None:
    from brainae.checkpoint import save_checkpoint
    from brainae.cli import app
    from brainae.models import build_model

    torch.manual_seed(0)
    model = build_model("skip-cae", latent_channels=8)
    normative = {"mean": 0.1, "std": 0.05, "n": 3, "definition": {"selection": {"threshold": 0.05}}}
    ckpt = save_checkpoint(
        tmp_path / "m.safetensors", model, preprocessing=PREP.to_dict(), normative=normative
    )
    src = save_nifti(tmp_path / "scan.nii.gz", np.rint(head()).astype(np.int16), AFFINE)
    out = tmp_path / "map.nii.gz"
    r = CliRunner().invoke(app, ["anomaly", str(src), "--model", str(ckpt), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert set(doc) == {"score", "z", "slices"}
    assert doc["z"] == pytest.approx((doc["score"] - 0.1) / 0.05)
    assert doc["slices"] > 0 and out.exists()
    r = CliRunner().invoke(app, ["anomaly", str(src), "--model", str(ckpt), "--out", str(out)])
    assert r.exit_code == 1 and "already exists" in r.stderr
