"""Tests for orthojax.diagnostics against explicit-loop oracles."""

import math

import numpy as np
import pytest

from orthojax import diagnostics as D


def loop_std(xs, ddof=0):
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - ddof))


def cosine_history(rng, steps, t):
    """Random valid cosine matrices: normalised Gram matrices of random task gradients."""
    g = rng.normal(size=(steps, t, 8))
    g /= np.linalg.norm(g, axis=-1, keepdims=True)
    return np.einsum("sip,sjp->sij", g, g)


def test_pairwise_cosines_order_and_labels():
    rng = np.random.default_rng(0)
    c = cosine_history(rng, 4, 3)
    pairs, labels = D.pairwise_cosines(c, ["seg", "depth", "normal"])
    assert labels == ["seg/depth", "seg/normal", "depth/normal"]
    want = np.stack([[c[s, i, j] for i, j in ((0, 1), (0, 2), (1, 2))] for s in range(4)])
    np.testing.assert_array_equal(pairs, want)
    assert D.pairwise_cosines(c)[1] == ["0/1", "0/2", "1/2"]


def test_phi_stats_matrices_pairs_and_single_pair_agree_with_loops():
    rng = np.random.default_rng(1)
    c = cosine_history(rng, 30, 3)
    stats = D.phi_stats(c)
    for p, (i, j) in enumerate(((0, 1), (0, 2), (1, 2))):
        xs = [c[s, i, j] for s in range(30)]
        assert stats.mu[p] == pytest.approx(sum(xs) / 30, abs=1e-12)
        assert stats.sigma[p] == pytest.approx(loop_std(xs), abs=1e-12)
        assert D.phi_stats(c, ddof=1).sigma[p] == pytest.approx(loop_std(xs, 1), abs=1e-12)
    single = D.phi_stats(c[:, 0, 1])
    assert np.ndim(single.mu) == 0 and single.sigma == pytest.approx(stats.sigma[0])


def test_rolling_sigma_matches_loop_oracle():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, size=23)
    w = 5
    got = D.rolling_sigma(x, window=w)
    want = [loop_std(list(x[k:k + w])) for k in range(23 - w + 1)]
    np.testing.assert_allclose(got, want, atol=1e-12)
    two = D.rolling_sigma(np.stack([x, -2 * x], axis=1), window=w, ddof=1)
    assert two.shape == (19, 2)
    np.testing.assert_allclose(two[:, 1], 2 * np.array([loop_std(list(x[k:k + w]), 1)
                                                        for k in range(19)]), atol=1e-12)
    # a constant stretch has zero rolling sigma
    assert D.rolling_sigma(np.full(10, 0.3), window=4) == pytest.approx(np.zeros(7), abs=1e-15)


def test_conflict_rate_and_first_epoch_sigma():
    x = np.array([-0.5, -0.01, 0.0, 0.2, -0.3, 0.9, -0.02, 0.1])
    assert D.conflict_rate(x) == pytest.approx(4 / 8)  # strictly below 0
    assert D.conflict_rate(x, threshold=-0.02) == pytest.approx(2 / 8)  # -0.02 is not below
    assert D.first_epoch_sigma(x, 3) == pytest.approx(loop_std([-0.5, -0.01, 0.0]))
    assert D.first_epoch_sigma(x, 8) == pytest.approx(D.phi_stats(x).sigma)


def test_summarize_cosines():
    rng = np.random.default_rng(3)
    c = cosine_history(rng, 60, 2)
    out = D.summarize_cosines(c, task_names=["left", "right"], threshold=-0.1, window=50,
                              steps_per_epoch=20)
    assert list(out) == ["left/right"]
    s = out["left/right"]
    x = c[:, 0, 1]
    assert s["mu"] == pytest.approx(x.mean())
    assert s["sigma"] == pytest.approx(loop_std(list(x)))
    assert s["conflict_rate"] == pytest.approx(np.mean(x < 0))
    assert s["s_conflict_rate"] == pytest.approx(np.mean(x < -0.1))
    assert s["rolling_sigma_last"] == pytest.approx(loop_std(list(x[10:])))
    assert s["first_epoch_sigma"] == pytest.approx(loop_std(list(x[:20])))
    assert all(isinstance(v, float) for v in s.values())
    short = D.summarize_cosines(x[:10], window=50)
    assert list(short) == ["pair"] and "rolling_sigma_last" not in short["pair"]
    assert list(D.summarize_cosines(np.stack([x, x], 1))) == ["pair_0", "pair_1"]


def test_bad_input():
    with pytest.raises(ValueError, match="shape"):
        D.phi_stats(np.zeros((2, 2, 2, 2)))
    with pytest.raises(ValueError, match="at least one step"):
        D.phi_stats(np.zeros(0))
    with pytest.raises(ValueError, match="finite"):
        D.phi_stats(np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match=r"\(steps, T, T\)"):
        D.pairwise_cosines(np.zeros((3, 2, 3)))
    with pytest.raises(ValueError, match="task_names"):
        D.pairwise_cosines(np.zeros((3, 2, 2)), ["a"])
    with pytest.raises(ValueError, match="window"):
        D.rolling_sigma(np.zeros(10), window=0)
    with pytest.raises(ValueError, match="must not exceed"):
        D.rolling_sigma(np.zeros(10), window=11)
    with pytest.raises(ValueError, match="ddof"):
        D.phi_stats(np.zeros(3), ddof=3)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        D.first_epoch_sigma(np.zeros(10), 11)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        D.first_epoch_sigma(np.zeros(10), 0)
    with pytest.raises(ValueError, match="threshold"):
        D.conflict_rate(np.zeros(3), threshold=float("nan"))
    with pytest.raises(ValueError, match="task_names"):
        D.summarize_cosines(np.zeros(5), task_names=["a", "b"])
