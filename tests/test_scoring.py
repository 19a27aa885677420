"""Benchmark metrics, noise models and mask generators on tiny arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from brainae import lesions, scoring


def test_auroc_perfect_inverted_random_ties():
    labels = np.array([0, 0, 0, 1, 1])
    assert scoring.auroc(np.array([0.1, 0.2, 0.3, 0.8, 0.9]), labels) == 1.0
    assert scoring.auroc(-np.array([0.1, 0.2, 0.3, 0.8, 0.9]), labels) == 0.0
    assert scoring.auroc(np.ones(5), labels) == 0.5
    rng = np.random.default_rng(0)
    y = rng.random(20000) < 0.3
    assert abs(scoring.auroc(rng.random(20000), y) - 0.5) < 0.02
    assert np.isnan(scoring.auroc(np.arange(3.0), np.zeros(3)))


def test_auroc_matches_pair_count():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, 60).astype(float)  # many ties
    y = rng.random(60) < 0.4
    pos, neg = s[y], s[~y]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert scoring.auroc(s, y) == pytest.approx(pairs)


def test_average_precision_known_values():
    assert scoring.average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0])) == 1.0
    assert scoring.average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == pytest.approx(
        5 / 6
    )
    # inverted: positives ranked last
    assert scoring.average_precision(np.array([0.9, 0.8, 0.1]), np.array([0, 0, 1])) == pytest.approx(1 / 3)
    # all tied: one threshold, precision = prevalence
    assert scoring.average_precision(np.ones(10), np.r_[np.ones(3), np.zeros(7)]) == pytest.approx(0.3)
    rng = np.random.default_rng(2)
    y = rng.random(50000) < 0.1
    assert abs(scoring.average_precision(rng.random(50000), y) - 0.1) < 0.01
    assert np.isnan(scoring.average_precision(np.arange(3.0), np.zeros(3)))


def test_best_dice_matches_brute_force():
    rng = np.random.default_rng(3)
    s = np.round(rng.random(300), 2)
    y = (s + rng.normal(0, 0.3, 300)) > 0.7
    brute = max(scoring.dice(s >= t, y) for t in np.unique(s))
    d, t = scoring.best_dice_threshold(s, y)
    assert d == pytest.approx(brute)
    assert scoring.dice_at(s, y, t) == pytest.approx(d)
    assert scoring.best_dice(np.array([0.2, 0.9, 0.8]), np.array([0, 1, 1])) == 1.0
    assert scoring.best_dice(np.arange(4.0), np.zeros(4)) == 0.0


def test_dice_fpr_threshold():
    assert scoring.dice(np.zeros(3), np.zeros(3)) == 1.0
    assert scoring.dice_at(np.array([0.1, 0.6, 0.7]), np.array([0, 1, 1]), 0.5) == 1.0
    assert scoring.fpr_at(np.array([0.1, 0.6, 0.7, 0.9]), None, 0.65) == 0.5
    assert scoring.fpr_at(np.array([0.1, 0.6, 0.7, 0.9]), np.array([1, 1, 0, 0]), 0.5) == 0.5
    healthy = np.random.default_rng(4).normal(size=100000)
    t = scoring.threshold_at_fpr(healthy, 0.01)
    assert scoring.fpr_at(healthy, None, t) == pytest.approx(0.01, abs=1e-4)


def test_psnr_definitions():
    clean = np.zeros((10, 10, 10))
    clean[2:8, 2:8, 2:8] = 100.0
    assert np.isinf(scoring.head_psnr(clean, clean))
    test = clean + 1.0  # error 1 everywhere, background ignored by the head
    assert scoring.head_psnr(clean, test) == pytest.approx(40.0)
    assert scoring.masked_psnr(clean, test, clean > 0, peak=10.0) == pytest.approx(20.0)
    assert scoring.masked_psnr(clean, test, clean > 0) == pytest.approx(40.0)
    with pytest.raises(ValueError):
        scoring.masked_psnr(clean, test, np.zeros(clean.shape, bool))
    assert scoring.head_mask(clean).sum() == 216


def test_noise_levels_and_kinds():
    clean = np.full((40, 40, 40), 200.0)
    g = scoring.add_noise(clean, 0.05, "gaussian", seed=0)
    assert g.dtype == np.float32
    assert float((g - clean).std()) == pytest.approx(10.0, rel=0.02)
    assert np.array_equal(g, scoring.add_noise(clean, 0.05, "gaussian", seed=0))
    r = scoring.add_noise(np.zeros((40, 40, 40)) + 1e-9, 0.05, "rician", seed=0)  # Rayleigh on zero
    assert r.min() >= 0
    assert scoring.head_psnr(clean, g) == pytest.approx(20 * np.log10(20), abs=0.1)
    with pytest.raises(ValueError):
        scoring.add_noise(clean, 0.05, "poisson")


def test_cube_and_irregular_masks_inside_brain():
    rng = np.random.default_rng(0)
    brain = np.zeros((40, 50, 45), bool)
    brain[5:35, 8:45, 5:40] = True
    cube = lesions.random_cube_mask(brain, (2.0, 2.0, 2.0), rng, side_mm=20)
    assert cube.sum() == 1000 and brain[cube].all()
    assert lesions.cube_mask((20, 20, 20), (1.0, 1.0, 1.0), (10, 10, 10), side_mm=5).sum() == 125
    for ml in (1.0, 4.0, 8.0):
        m = lesions.irregular_mask(brain.shape, (2.0, 2.0, 2.0), rng, ml, brain_mask=brain)
        assert brain[m].all()
        from scipy import ndimage

        assert ndimage.label(m)[1] == 1
        assert abs(m.sum() * 8 / 1000 - ml) / ml < 0.15
    with pytest.raises(ValueError):
        lesions.random_cube_mask(brain, (2.0, 2.0, 2.0), rng, side_mm=100)
    # seeded
    a = lesions.irregular_mask(brain.shape, (2.0, 2.0, 2.0), np.random.default_rng(5), 2.0, brain_mask=brain)
    b = lesions.irregular_mask(brain.shape, (2.0, 2.0, 2.0), np.random.default_rng(5), 2.0, brain_mask=brain)
    assert np.array_equal(a, b)


def test_synthetic_lesion_hyper_hypo():
    v = np.full((40, 40, 40), 100.0, np.float32)
    brain = np.zeros(v.shape, bool)
    brain[4:36, 4:36, 4:36] = True
    hyper = lesions.synthetic_lesion(v, brain, np.random.default_rng(0), 6.0, 0.5)
    hypo = lesions.synthetic_lesion(v, brain, np.random.default_rng(0), 6.0, -0.5)
    for les, sign in ((hyper, 1), (hypo, -1)):
        assert brain[les.truth].all() and les.truth.any()
        assert np.all(les.data[~brain] == v[~brain])
        assert sign * (les.data[les.truth].mean() - 100.0) > 35
        assert les.weight.max() == pytest.approx(1.0)
    ball = 4 / 3 * np.pi * 6.0**3 / 8.0
    assert abs(hyper.truth.sum() - ball) / ball < 0.35


def test_gradient_sharpness_blur_lowers_it():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    v = ndimage.gaussian_filter(rng.random((20, 20, 20)), 1.0)
    m = np.ones(v.shape, bool)
    assert scoring.gradient_sharpness(ndimage.gaussian_filter(v, 1.0), m) < scoring.gradient_sharpness(v, m)
