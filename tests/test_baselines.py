"""Classical baselines: non-local means, biharmonic inpainting, intensity z-score."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from brainae.baselines import biharmonic_inpaint, intensity_zscore, nlm_denoise


def _phantom(shape=(18, 20, 18), scale=1.0):
    rng = np.random.default_rng(0)
    v = ndimage.gaussian_filter(rng.random(shape), 3.0)
    v = (v - v.min()) / (v.max() - v.min())
    head = np.zeros(shape, bool)
    head[3:-3, 3:-3, 3:-3] = True
    return (np.where(head, 0.3 + 0.7 * v, 0.0) * scale).astype(np.float32), head


@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_nlm_lowers_error_any_scale(scale):
    clean, _ = _phantom(scale=scale)
    sigma = 0.08 * scale
    noisy = clean + np.random.default_rng(1).normal(0, sigma, clean.shape).astype(np.float32)
    out = nlm_denoise(noisy, sigma)
    assert out.dtype == np.float32 and out.shape == clean.shape
    assert np.mean((out - clean) ** 2) < 0.6 * np.mean((noisy - clean) ** 2)
    assert np.array_equal(nlm_denoise(noisy, 0.0), noisy)


def test_nlm_scale_invariant():
    clean, _ = _phantom()
    noisy = clean + np.random.default_rng(2).normal(0, 0.05, clean.shape).astype(np.float32)
    a = nlm_denoise(noisy, 0.05, patch_size=3, patch_distance=2)
    b = nlm_denoise(noisy * 250.0, 0.05 * 250.0, patch_size=3, patch_distance=2) / 250.0
    assert np.allclose(a, b, atol=1e-4)


def test_biharmonic_keeps_unmasked_and_beats_zero_fill():
    clean, head = _phantom()
    mask = np.zeros(clean.shape, bool)
    mask[5:9, 5:9, 5:8] = True
    mask[11:14, 13:16, 11:14] = True  # two components
    blanked = np.where(mask, 0.0, clean).astype(np.float32)
    out = biharmonic_inpaint(blanked, mask)
    assert out.dtype == np.float32
    assert np.array_equal(out[~mask], blanked[~mask])
    err = np.mean((out[mask] - clean[mask]) ** 2)
    assert err < 0.1 * np.mean(clean[mask] ** 2)
    # the masked input values are never read
    garbage = np.where(mask, 1e6, clean).astype(np.float32)
    assert np.allclose(biharmonic_inpaint(garbage, mask), out)
    ints = np.round(clean * 100).astype(np.int16)
    out_i = biharmonic_inpaint(ints, mask)
    assert np.array_equal(out_i[~mask], ints[~mask].astype(np.float64))
    assert np.array_equal(biharmonic_inpaint(clean, np.zeros(clean.shape, bool)), clean)


def test_zscore_zero_outside_and_high_on_bright_blob():
    rng = np.random.default_rng(3)
    v = rng.normal(100, 5, (30, 30, 30)).astype(np.float32)
    brain = np.zeros(v.shape, bool)
    brain[5:25, 5:25, 5:25] = True
    blob = np.zeros(v.shape, bool)
    blob[12:16, 12:16, 12:16] = True
    v[blob] += 60
    z = intensity_zscore(v, brain)
    assert np.all(z[~brain] == 0) and z.dtype == np.float32
    assert z[blob].mean() > 8 and np.median(z[brain & ~blob]) < 1
    s = intensity_zscore(v - 2 * 60 * blob, brain, signed=True)  # a dark blob
    assert s[blob].mean() < -8
    assert np.all(intensity_zscore(v, np.zeros(v.shape, bool)) == 0)
