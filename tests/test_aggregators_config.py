"""ConFIG against TorchJD 0.18 (golden, live) and a NumPy pseudo-inverse of the unit gradients."""

import jax.numpy as jnp
import numpy as np
import pytest

from golden._props import check_basics, load
from orthojax.aggregators.config import config, config_weights
from orthojax.aggregators.gramian import gramian


def _numpy_config(J, pref=None):
    n = np.linalg.norm(J, axis=1, keepdims=True)
    U = np.where(n > 0, J / np.where(n > 0, n, 1), 0.0)
    v = np.linalg.pinv(U) @ (np.ones(J.shape[0]) if pref is None else np.asarray(pref))
    v = v / np.linalg.norm(v)
    return np.sum(J @ v) * v


def test_matches_torchjd_golden(x64):
    for n, case in enumerate(load("config")["cases"]):
        J = jnp.asarray(case["jacobian"], jnp.float64)
        agg = config(**case["params"])
        d, _ = check_basics(agg, J) if n < 2 else agg(J)
        np.testing.assert_allclose(np.asarray(d), case["expected"], rtol=1e-9, atol=1e-12)


def test_matches_torchjd_and_numpy_live(x64):
    torch = pytest.importorskip("torch")
    agg = pytest.importorskip("torchjd.aggregation")
    J = np.random.default_rng(6).normal(size=(5, 8))
    d = np.asarray(config()(jnp.asarray(J))[0])
    np.testing.assert_allclose(d, agg.ConFIG()(torch.tensor(J)).numpy(), rtol=1e-10)
    np.testing.assert_allclose(d, _numpy_config(J), rtol=1e-10)


def test_no_conflict_equal_cosines_scale_permutation(x64):
    rng = np.random.default_rng(1)
    J = rng.normal(size=(4, 6))
    J[1] = -J[0] + 0.3 * rng.normal(size=6)  # a strong conflict
    d = np.asarray(config()(jnp.asarray(J))[0])
    cos = J @ d / (np.linalg.norm(J, axis=1) * np.linalg.norm(d))
    assert np.all(cos > 0) and np.allclose(cos, cos[0], rtol=1e-10)  # equal angles to every task
    np.testing.assert_allclose(np.asarray(config()(jnp.asarray(2.5 * J))[0]), 2.5 * d, rtol=1e-12)
    perm = [2, 0, 3, 1]
    np.testing.assert_allclose(np.asarray(config()(jnp.asarray(J[perm]))[0]), d, rtol=1e-10)
    w = config_weights(gramian(jnp.asarray(J)))
    np.testing.assert_allclose(np.asarray(w @ jnp.asarray(J)), d, rtol=1e-10)


def test_float32_extreme_scales_and_zero():
    J = jnp.asarray(np.random.default_rng(2).normal(size=(3, 5)), jnp.float32)
    d = np.asarray(config()(J)[0])
    for c in (1e-30, 1e30):
        np.testing.assert_allclose(np.asarray(config()(c * J)[0]) / c, d, rtol=1e-4)
    assert np.all(np.asarray(config()(jnp.zeros((3, 5)))[0]) == 0)


def test_errors():
    with pytest.raises(ValueError, match="pref"):
        config(pref=[1.0, np.inf])
    with pytest.raises(ValueError, match="T=3 tasks but pref has 2"):
        config(pref=[1.0, 1.0])(jnp.ones((3, 4)))
    with pytest.raises(ValueError, match="stateless"):
        config()(jnp.ones((3, 4)), 0)
