"""Trimmed mean against TorchJD 0.18 (golden values, live when torch is installed) and NumPy."""

import jax.numpy as jnp
import numpy as np
import pytest

from golden._props import check_basics, load
from orthojax.aggregators.trimmed_mean import trimmed_mean


def test_matches_torchjd_golden(x64):
    for case in load("trimmed_mean")["cases"]:
        J = jnp.asarray(case["jacobian"], jnp.float64)
        d, _ = check_basics(trimmed_mean(**case["params"]), J)
        np.testing.assert_allclose(np.asarray(d), case["expected"], rtol=1e-12, atol=1e-12)


def test_matches_torchjd_live(x64):
    torch = pytest.importorskip("torch")
    agg = pytest.importorskip("torchjd.aggregation")
    J = np.random.default_rng(2).normal(size=(6, 5))
    for k in (0, 1, 2):
        expected = agg.TrimmedMean(trim_number=k)(torch.tensor(J)).numpy()
        np.testing.assert_allclose(np.asarray(trimmed_mean(k)(jnp.asarray(J))[0]), expected, rtol=1e-12)


def test_numpy_oracle_permutation_scale(x64):
    rng = np.random.default_rng(4)
    J = rng.normal(size=(7, 3))
    d, _ = trimmed_mean(2)(jnp.asarray(J))
    np.testing.assert_allclose(np.asarray(d), np.sort(J, axis=0)[2:5].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(trimmed_mean(2)(jnp.asarray(J[::-1]))[0]), np.asarray(d), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(trimmed_mean(2)(jnp.asarray(3.0 * J))[0]), 3.0 * np.asarray(d), rtol=1e-12)
    assert np.all(np.asarray(trimmed_mean(1)(jnp.zeros((3, 2)))[0]) == 0)


def test_errors():
    with pytest.raises(ValueError, match="trim_number"):
        trimmed_mean(-1)
    with pytest.raises(TypeError, match="trim_number"):
        trimmed_mean(1.0)
    with pytest.raises(ValueError, match="T >= 2 \\* trim_number \\+ 1 = 5"):
        trimmed_mean(2)(jnp.ones((4, 3)))
