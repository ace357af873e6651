"""Constant / Sum / Mean against TorchJD 0.18 (golden values, and live when torch is installed)."""

import jax.numpy as jnp
import numpy as np
import pytest

from golden._props import check_basics, load
from orthojax.aggregators.constant import constant, mean_aggregator, sum_aggregator


def _make(params):
    kind = params["kind"]
    if kind == "constant":
        return constant(params["weights"])
    return {"sum": sum_aggregator, "mean": mean_aggregator}[kind]()


def test_matches_torchjd_golden(x64):
    for case in load("constant")["cases"]:
        J = jnp.asarray(case["jacobian"], jnp.float64)
        d, state = check_basics(_make(case["params"]), J)
        assert state is None
        np.testing.assert_allclose(np.asarray(d), case["expected"], rtol=1e-12, atol=1e-12)


def test_matches_torchjd_live(x64):
    torch = pytest.importorskip("torch")
    agg = pytest.importorskip("torchjd.aggregation")
    J = np.random.default_rng(3).normal(size=(4, 6))
    w = [0.3, -1.0, 2.0, 0.0]
    pairs = [(sum_aggregator(), agg.Sum()), (mean_aggregator(), agg.Mean()),
             (constant(w), agg.Constant(torch.tensor(w, dtype=torch.float64)))]
    for ours, ref in pairs:
        d, _ = ours(jnp.asarray(J))
        np.testing.assert_allclose(np.asarray(d), ref(torch.tensor(J)).numpy(), rtol=1e-12, atol=1e-12)


def test_float32_dtype_and_scale():
    J = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
    for agg in (sum_aggregator(), mean_aggregator(), constant([1.0, 2.0, 3.0])):
        d, _ = agg(J)
        assert d.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(agg(7.0 * J)[0]), 7.0 * np.asarray(d), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(mean_aggregator()(jnp.zeros((3, 4)))[0]), np.zeros(4))


def test_errors():
    with pytest.raises(ValueError, match="weights"):
        constant([[1.0]])
    with pytest.raises(ValueError, match="finite"):
        constant([1.0, np.nan])
    with pytest.raises(TypeError, match="weights"):
        constant(["a", object()])
    with pytest.raises(ValueError, match="T=3 tasks but 2 weights"):
        constant([1.0, 2.0])(jnp.ones((3, 4)))
    with pytest.raises(ValueError, match="stateless"):
        mean_aggregator()(jnp.ones((3, 4)), ())
    with pytest.raises(TypeError, match="floating"):
        sum_aggregator()(jnp.ones((3, 4), jnp.int32))
    with pytest.raises(ValueError, match="leading task axis"):
        sum_aggregator()({"a": jnp.ones((3, 4)), "b": jnp.ones((2, 4))})
