"""Tests of brainae.brainmask: the threshold fallback, method resolution and the deepbet -> threshold choice."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from brainae import brainmask
from brainae.brainmask import brain_mask, matching_method, resolve_method, threshold_mask
from brainae.errors import BrainaeError, BrainaeWarning
from brainae.io import load_volume
from conftest import IXI_2MM, synthetic_head


def _ball(shape=(48, 48, 48), radius=0.6) -> tuple[np.ndarray, np.ndarray]:
    """A bright ball (the 'brain') inside a dim shell (the 'scalp'), and the ball itself."""
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    rad = np.sqrt(zz**2 + yy**2 + xx**2)
    ball = rad < radius
    vol = np.where(ball, 100.0, 0.0) + np.where((rad >= radius + 0.1) & (rad < 0.9), 30.0, 0.0)
    return vol.astype(np.float32), ball


def test_threshold_mask_keeps_the_brain_and_drops_the_background() -> None:
    vol, ball = _ball()
    mask = threshold_mask(vol, (2.0, 2.0, 2.0))
    assert mask.shape == vol.shape and mask.dtype == bool
    assert mask[ball].mean() > 0.99  # the whole ball
    assert not mask[0].any() and not mask[:, :, -1].any()  # empty background at the faces
    # on another voxel size the mask is computed on the 2 mm working grid and brought back to the input's
    fine = threshold_mask(vol, (1.0, 1.0, 1.0))  # a 48 mm 'head': the 13 mm erosion trims its rim
    assert fine.shape == vol.shape and fine[24, 24, 24] and not fine[0, 0, 0] and fine[ball].mean() > 0.85


def test_threshold_mask_of_a_flat_volume_is_empty() -> None:
    assert not threshold_mask(np.full((20, 20, 20), 7.0, np.float32), (2.0, 2.0, 2.0)).any()


@pytest.mark.data("ixi-t1-2mm")
def test_threshold_mask_on_a_real_ixi_volume() -> None:
    vol = load_volume(sorted(IXI_2MM.glob("*.nii.gz"))[0])
    mask = brain_mask(vol.data, vol.zooms, "threshold")
    frac = mask.mean()
    assert 0.05 < frac < 0.5  # a head core, not the whole field of view, not empty
    assert vol.data[mask].mean() > 2 * vol.data[~mask].mean()  # brighter inside than outside


def test_resolve_method_names_and_errors(monkeypatch) -> None:
    with pytest.raises(BrainaeError, match="unknown brain-mask method 'bet'"):
        resolve_method("bet")
    assert resolve_method("threshold") == "threshold"
    monkeypatch.setattr(brainmask, "deepbet_available", lambda: False)
    with pytest.raises(BrainaeError, match="pip install 'brainae\\[brainmask\\]'"):
        resolve_method("deepbet")
    brainmask._warn_fallback.cache_clear()
    with pytest.warns(BrainaeWarning, match="threshold brain-mask fallback"):
        assert resolve_method("auto") == "threshold"
    monkeypatch.setattr(brainmask, "deepbet_available", lambda: True)
    assert resolve_method("auto") == "deepbet"


def test_matching_method_falls_back_from_deepbet_with_a_warning(monkeypatch) -> None:
    monkeypatch.setattr(brainmask, "deepbet_available", lambda: False)
    with pytest.warns(BrainaeWarning, match="came from deepbet, which is not installed"):
        assert matching_method("deepbet") == "threshold"
    assert matching_method("threshold") == "threshold"
    monkeypatch.setattr(brainmask, "deepbet_available", lambda: True)
    assert matching_method("deepbet") == "deepbet"


def test_a_broken_deepbet_install_is_reported_not_silent(tmp_path, monkeypatch) -> None:
    pkg = tmp_path / "deepbet"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('compiled against another torch')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "deepbet", raising=False)
    brainmask.deepbet_available.cache_clear()
    try:
        with pytest.warns(BrainaeWarning, match="RuntimeError: compiled against another torch"):
            assert brainmask.deepbet_available() is False
    finally:
        brainmask.deepbet_available.cache_clear()
        sys.modules.pop("deepbet", None)


def test_resolve_selection_applies_overrides_and_the_fallback(monkeypatch) -> None:
    from brainae.apply import Selection, resolve_selection

    recorded = Selection("brain-mask", 0.05, "deepbet")
    assert resolve_selection(None) is None
    assert resolve_selection(recorded, min_brain_frac=0) is None
    assert resolve_selection(recorded, min_brain_frac=0.2) == Selection("brain-mask", 0.2, "deepbet")
    assert resolve_selection(recorded, mask_method="threshold").mask_method == "threshold"
    monkeypatch.setattr(brainmask, "deepbet_available", lambda: False)
    with pytest.warns(BrainaeWarning, match="not installed"):
        assert resolve_selection(recorded) == Selection("brain-mask", 0.05, "threshold")


def test_synthetic_head_mask_covers_its_brain() -> None:
    head = synthetic_head().astype(np.float32)
    mask = brain_mask(head, (2.0, 2.0, 2.5), "threshold")
    assert mask[20, 20, 15] and not mask[0, 0, 0]
