"""Krum / Multi-Krum against TorchJD 0.18 (golden values, live when torch is installed) and NumPy."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from golden._props import check_basics, load
from orthojax.aggregators.gramian import gramian
from orthojax.aggregators.krum import krum, krum_weights


def _numpy_krum(J, f, m, squared=False):
    """Blanchard et al.'s rule written out: score = sum of distances to the T - f - 2 nearest others."""
    T = J.shape[0]
    D = np.array([[np.linalg.norm(J[i] - J[j]) for j in range(T)] for i in range(T)])
    D = D**2 if squared else D
    scores = [np.sum(np.sort(np.delete(D[i], i))[: T - f - 2]) for i in range(T)]
    chosen = np.argsort(scores, kind="stable")[:m]
    return J[chosen].mean(axis=0)


def test_matches_torchjd_golden(x64):
    for case in load("krum")["cases"]:
        J = jnp.asarray(case["jacobian"], jnp.float64)
        d, _ = check_basics(krum(**case["params"]), J)
        np.testing.assert_allclose(np.asarray(d), case["expected"], rtol=1e-12, atol=1e-12)


def test_matches_torchjd_live(x64):
    torch = pytest.importorskip("torch")
    agg = pytest.importorskip("torchjd.aggregation")
    J = np.random.default_rng(11).normal(size=(7, 5))
    for f, m in [(0, 2), (2, 1), (4, 7)]:
        expected = agg.Krum(n_byzantine=f, n_selected=m)(torch.tensor(J)).numpy()
        np.testing.assert_allclose(np.asarray(krum(f, m)(jnp.asarray(J))[0]), expected, rtol=1e-12)


def test_numpy_oracle_squared_and_outlier(x64):
    rng = np.random.default_rng(5)
    J = rng.normal(size=(6, 4))
    J[2] += 100.0  # a Byzantine gradient far from the rest is never selected
    for f, m, sq in itertools.product([0, 1, 3], [1, 2], [False, True]):
        d, _ = krum(f, m, squared=sq)(jnp.asarray(J))
        np.testing.assert_allclose(np.asarray(d), _numpy_krum(J, f, m, sq), rtol=1e-12)
        w = krum_weights(gramian(jnp.asarray(J)), f, m, squared=sq)
        assert w[2] == 0 and np.isclose(float(w.sum()), 1.0)


def test_scale_permutation_and_float32():
    rng = np.random.default_rng(1)
    J = jnp.asarray(rng.normal(size=(5, 6)), jnp.float32)
    agg = krum(1, 2)
    d, _ = agg(J)
    for c in (1e-25, 1e25):  # beyond float32's Gramian range: the selection is unchanged
        np.testing.assert_allclose(np.asarray(agg(c * J)[0]) / c, np.asarray(d), rtol=1e-5)
    perm = np.array([3, 0, 4, 1, 2])
    np.testing.assert_allclose(np.asarray(agg(J[perm])[0]), np.asarray(d), rtol=1e-6)
    assert np.all(np.asarray(agg(jnp.zeros((5, 6)))[0]) == 0)


def test_errors():
    with pytest.raises(ValueError, match="n_byzantine"):
        krum(-1)
    with pytest.raises(ValueError, match="n_selected"):
        krum(0, 0)
    with pytest.raises(TypeError, match="n_byzantine"):
        krum(1.5)
    with pytest.raises(ValueError, match="n_byzantine \\+ 3 = 5"):
        krum(2)(jnp.ones((4, 3)))
    with pytest.raises(ValueError, match="n_selected = 5"):
        krum(0, 5)(jnp.ones((4, 3)))
