"""GradDrop against TorchJD 0.18 with shared uniform draws (golden and live), and by its distribution."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from golden._props import check_basics, load
from orthojax.aggregators.graddrop import graddrop

graddrop_module = importlib.import_module("orthojax.aggregators.graddrop")  # the module; the package's name is the factory


def _leak(params, T):
    return jnp.zeros((T,)) if params["leak"] is None else jnp.asarray(params["leak"])


def test_matches_torchjd_golden_with_shared_draws(x64):
    for case in load("graddrop")["cases"]:
        J = jnp.asarray(case["jacobian"], jnp.float64)
        leak = _leak(case["params"], J.shape[0]).astype(jnp.float64)
        d = graddrop_module._direction(J, jnp.asarray(case["uniform"]), leak, lambda p: p)
        np.testing.assert_allclose(np.asarray(d), case["expected"], rtol=1e-12, atol=1e-12)


def test_key_draws_one_uniform_per_coordinate(x64):
    J = jnp.asarray(load("graddrop")["cases"][0]["jacobian"], jnp.float64)
    key = jax.random.key(7)
    d, state = check_basics(graddrop(), J, key=key)
    assert state is None
    U = jax.random.uniform(key, (J.shape[1],), jnp.float64)
    expected = graddrop_module._direction(J, U, jnp.zeros((J.shape[0],)), lambda p: p)
    np.testing.assert_allclose(np.asarray(d), np.asarray(expected), rtol=1e-12)


def test_matches_torchjd_live(x64, monkeypatch):
    torch = pytest.importorskip("torch")
    agg = pytest.importorskip("torchjd.aggregation")
    J = np.random.default_rng(9).normal(size=(3, 8))
    key = jax.random.key(3)
    U = np.asarray(jax.random.uniform(key, (8,), jnp.float64))
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.tensor(U))
    leak = [0.1, 0.0, 0.7]
    expected = agg.GradDrop(leak=torch.tensor(leak, dtype=torch.float64))(torch.tensor(J)).numpy()
    d, _ = graddrop(leak=leak)(jnp.asarray(J), key=key)
    np.testing.assert_allclose(np.asarray(d), expected, rtol=1e-12)


def test_distribution_keeps_positive_side_with_probability_purity(x64):
    # Column entries +3, +1, -2: purity P = (1 + 2/6) / 2 = 2/3; d = +4 w.p. 2/3, -2 w.p. 1/3.
    J = jnp.asarray([[3.0], [1.0], [-2.0]])
    agg = graddrop()
    keys = jax.random.split(jax.random.key(0), 4000)
    ds = np.asarray(jax.vmap(lambda k: agg(J, key=k)[0])(keys))[:, 0]
    assert set(np.unique(ds)) <= {4.0, -2.0}
    p_hat = np.mean(ds == 4.0)
    assert abs(p_hat - 2.0 / 3.0) < 4 * np.sqrt(2 / 9 / 4000)  # 4 standard errors


def test_agreeing_signs_and_zero_and_scale():
    J = jnp.asarray([[1.0, -2.0, 0.0], [3.0, -1.0, 0.0]])
    d, _ = graddrop()(J, key=jax.random.key(1))  # pure columns are kept whole, zero columns give 0
    np.testing.assert_allclose(np.asarray(d), [4.0, -3.0, 0.0])
    Jr = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5)), jnp.float32)
    k = jax.random.key(2)
    np.testing.assert_allclose(np.asarray(graddrop()(5.0 * Jr, key=k)[0]), 5.0 * np.asarray(graddrop()(Jr, key=k)[0]), rtol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="key"):
        graddrop()(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        graddrop(leak=[0.5, 1.5])
    with pytest.raises(TypeError, match="callable"):
        graddrop(f=3)
    with pytest.raises(ValueError, match="T=3 tasks but 2 leaks"):
        graddrop(leak=[0.0, 0.0])(jnp.ones((3, 4)), key=jax.random.key(0))
