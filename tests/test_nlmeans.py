"""brainae.nlmeans: the fast non-local means equals the textbook definition and removes noise."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from brainae.nlmeans import nl_means, nl_means_batch


def _reference(x: np.ndarray, sigma: float, radius: int, h_factor: float, patch: int = 3) -> np.ndarray:
    """Non-local means written out voxel by voxel (edge-replicated padding, patches of ``patch`` voxels a side)."""
    half = patch // 2
    q = radius + half
    p = np.pad(x.astype(np.float64), q, mode="edge")
    h2 = (h_factor * sigma) ** 2
    out = np.empty(x.shape)

    def around(a, b, d):
        return p[a - half : a + half + 1, b - half : b + half + 1, d - half : d + half + 1]

    for i, j, k in itertools.product(*(range(n) for n in x.shape)):
        c = (i + q, j + q, k + q)
        ref = around(*c)
        num = den = 0.0
        for o in itertools.product(range(-radius, radius + 1), repeat=3):
            a, b, d = c[0] + o[0], c[1] + o[1], c[2] + o[2]
            d2 = float(np.mean((ref - around(a, b, d)) ** 2))
            w = np.exp(-max(d2 - 2 * sigma**2, 0.0) / h2)
            num += w * p[a, b, d]
            den += w
        out[i, j, k] = num / den
    return out


@pytest.mark.parametrize(
    ("radius", "patch", "h_factor"), [(1, 3, 1.0), (2, 3, 1.0), (1, 5, 0.5), (2, 1, 2.0)]
)
def test_nl_means_equals_the_voxel_by_voxel_definition(radius, patch, h_factor):
    x = np.random.default_rng(0).normal(0.5, 0.1, (7, 6, 5)).astype(np.float32)
    got = nl_means(x, 0.1, radius=radius, patch=patch, h_factor=h_factor)
    np.testing.assert_allclose(got, _reference(x, 0.1, radius, h_factor, patch), atol=1e-5)


def test_several_strengths_at_once_equal_one_at_a_time():
    x = np.random.default_rng(1).normal(0.5, 0.2, (12, 10, 9)).astype(np.float32)
    several = nl_means(x, 0.1, h_factor=(0.5, 1.0, 4.0))
    assert several.shape == (3, *x.shape)
    for got, h in zip(several, (0.5, 1.0, 4.0)):
        np.testing.assert_allclose(got, nl_means(x, 0.1, h_factor=h), atol=1e-6)
    assert not np.allclose(several[0], several[2])  # the strengths differ
    with pytest.raises(ValueError, match="odd"):
        nl_means(x, 0.1, patch=4)


def test_nl_means_batch_treats_each_image_with_its_own_sigma():
    batch = torch.rand(3, 9, 8, 10)
    sigmas = torch.tensor([0.02, 0.1, 0.3])
    out = nl_means_batch(batch, sigmas)
    assert out.shape == batch.shape
    for i in range(3):
        np.testing.assert_allclose(out[i].numpy(), nl_means(batch[i].numpy(), float(sigmas[i])), atol=1e-6)


def test_nl_means_removes_noise_and_keeps_edges_and_constants():
    rng = np.random.default_rng(1)
    clean = np.zeros((24, 24, 24), np.float32)
    clean[:, 12:] = 1.0
    noisy = clean + rng.normal(0, 0.1, clean.shape).astype(np.float32)
    out = nl_means(noisy, 0.1)
    assert np.mean((out - clean) ** 2) < 0.2 * np.mean((noisy - clean) ** 2)
    assert abs(out[:, 10].mean() - 0.0) < 0.05 and abs(out[:, 13].mean() - 1.0) < 0.05  # the edge stays
    flat = np.full((8, 8, 8), 3.0, np.float32)
    np.testing.assert_allclose(nl_means(flat, 0.5), flat)
    with pytest.raises(ValueError, match="3-D"):
        nl_means(np.zeros((4, 4)), 0.1)


def test_slabs_give_the_same_result_as_the_whole_volume():
    x = torch.from_numpy(np.random.default_rng(2).normal(0.5, 0.2, (2, 11, 9, 8)).astype(np.float32))
    whole = nl_means_batch(x, 0.1, h_factor=(0.5, 2.0), slab_voxels=10**9)
    for slab in (1, 150, 500):  # one plane at a time, a few planes, a ragged last slab
        np.testing.assert_allclose(
            nl_means_batch(x, 0.1, h_factor=(0.5, 2.0), slab_voxels=slab), whole, atol=1e-6
        )


def test_squares_are_the_weighted_means_of_the_squared_intensities():
    """With ``squares`` each strength also gives the mean of x^2 with the same weights: on a constant image it
    is the constant's square, it is never below the squared mean (Jensen), and in the head box helper the air
    keeps x^2."""
    from brainae.nlmeans import nl_means_head

    x = np.random.default_rng(3).normal(0.5, 0.1, (10, 9, 8)).astype(np.float32)
    out = nl_means(x, 0.1, h_factor=(1.0, 2.0), squares=True)
    assert out.shape == (4, *x.shape)
    np.testing.assert_allclose(out[:2], nl_means(x, 0.1, h_factor=(1.0, 2.0)), atol=1e-6)
    assert np.all(out[2:] >= out[:2] ** 2 - 1e-6) and np.any(out[2:] > out[:2] ** 2 + 1e-4)
    np.testing.assert_allclose(
        nl_means(np.full((6, 6, 6), 0.3, np.float32), 0.1, squares=True)[1], 0.09, rtol=1e-5
    )
    some = nl_means(x, 0.1, h_factor=(1.0, 2.0), squares=[2.0])  # only the listed strength's squares
    assert some.shape == (3, *x.shape)
    np.testing.assert_allclose(some[2], out[3], atol=1e-6)
    vol = np.zeros((30, 30, 30), np.float32)
    vol[12:20, 12:20, 12:20] = 0.8 + x[:8, :8, :8] - 0.5
    vol[0, 0, 0] = 0.3  # air outside the head box
    head = nl_means_head(vol, 0.1, h_factor=(1.0,), squares=True)
    assert head[1, 0, 0, 0] == pytest.approx(0.09) and head[0, 0, 0, 0] == pytest.approx(0.3)
