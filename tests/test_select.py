from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainae.brainmask import brain_mask
from brainae.errors import BrainaeError
from brainae.select import KEEP_COLUMN, check_method, cohort_thresholds, keep_flags, slice_measures
from brainae.volume import to_view
from conftest import synthetic_head


def _measures(empty=5):
    data = synthetic_head(empty=empty).transpose(2, 0, 1)[:, ::-1, :].astype(np.float32)  # PSR -> RAS
    mask = brain_mask(data, (2.5, 2.0, 2.0), method="threshold")
    view, mview = to_view(data, "sagittal"), to_view(mask, "sagittal")
    m = slice_measures(np.asarray(view), np.asarray(mview))
    return pd.DataFrame({"slice": np.arange(view.shape[0]), **m})


def test_each_method_drops_the_known_empty_slices():
    table = _measures(empty=5)
    flags = keep_flags(table, cohort_thresholds(table))
    empty = np.r_[0:5, 25:30]
    for method, col in KEEP_COLUMN.items():
        assert not flags.loc[empty, col].any(), method
        assert flags.loc[15, col], method  # the middle slice holds the most brain
    assert flags[KEEP_COLUMN["brain-mask"]].sum() >= 10


def test_brain_mask_threshold_is_a_fraction():
    table = _measures()
    flags = keep_flags(table, {"nonzero-count": 0, "nonzero-mean": 0, "brain-mask": 0.99})
    assert not flags[KEEP_COLUMN["brain-mask"]].any()


def test_nonzero_quartile_thresholds():
    table = pd.DataFrame(
        {
            "nonzero_frac": np.linspace(0, 1, 101),
            "nonzero_mean": np.linspace(0, 2, 101),
            "brain_frac": np.zeros(101),
        }
    )
    th = cohort_thresholds(table)
    assert th["nonzero-count"] == pytest.approx(0.25) and th["nonzero-mean"] == pytest.approx(0.5)
    flags = keep_flags(table, th)
    assert flags[KEEP_COLUMN["nonzero-count"]].sum() == 75


def test_unknown_method():
    with pytest.raises(BrainaeError, match="brain-mask, nonzero-count, nonzero-mean"):
        check_method("otsu")


def test_brain_mask_methods():
    vol = np.zeros((40, 40, 40), np.float32)
    vol[6:34, 6:34, 6:34] = 100
    m = brain_mask(vol, (2.0, 2.0, 2.0), method="threshold")
    assert m[20, 20, 20] and not m[1, 1, 1]
    with pytest.raises(BrainaeError, match="unknown brain-mask method"):
        brain_mask(vol, (2.0, 2.0, 2.0), method="bet2")
