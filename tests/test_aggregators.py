"""The public aggregators of orthojax.aggregators: contract, key and state handling, and TorchJD's values.

Expected directions come from TorchJD 0.18 (live where torch is installed, else the golden values in
tests/golden/gramian_aggregators.json, made by tests/golden/make_gramian_aggregators.py) and from the
weightings applied to explicit NumPy Gramians; the contract tests compare an aggregator with itself across
input layouts (array, pytree), jit and keys.
"""

from __future__ import annotations

import json
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orthojax import aggregators as agg

GOLDEN = pathlib.Path(__file__).parent / "golden" / "gramian_aggregators.json"
# The orthojax settings that solve TorchJD's problem (see make_gramian_aggregators.py), and the tolerance of
# the comparison. TorchJD's MGDA (Frank-Wolfe, which converges sublinearly) and CAGrad (CLARABEL) stop at their
# own tolerances: on conflicting_3x5 both are 4e-5 away from the exact optimum (SciPy NNLS / SLSQP), which
# orthojax matches to 1e-15 / 5e-9 (the exact optima are checked in test_solvers_exact.py).
TORCHJD_SETTINGS = {
    "mgda": ({}, 1e-4),
    "pcgrad": ({"random_order": False}, 1e-12),
    "imtl_g": ({}, 1e-10),
    "aligned_mtl": ({}, 1e-10),
    "upgrad": ({}, 1e-9),
    "dualproj": ({}, 1e-9),
    "cagrad": ({"rescale": 0}, 1e-4),
}
NAMES = sorted(TORCHJD_SETTINGS)
ITERATIVE = {"mgda", "upgrad", "dualproj", "cagrad"}


def _jacobian(T=3, P=6, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    J = rng.normal(size=(T, P))
    J[1] -= 1.3 * J[0]  # a conflict
    return J.astype(dtype)


def _as_tree(J):
    """The same Jacobian as a pytree of (T, ...) leaves: columns 0-1 as (T, 2, 1), the rest as (T, P - 2)."""
    T = J.shape[0]
    return {"a": jnp.reshape(J[:, :2], (T, 2, 1)), "b": {"c": J[:, 2:]}}


def _make(name, **extra):
    kwargs = dict(TORCHJD_SETTINGS[name][0])
    kwargs.update(extra)
    return getattr(agg, name)(**kwargs)


def _check_torchjd(name, J, expected):
    kwargs, tol = TORCHJD_SETTINGS[name]
    d, state = getattr(agg, name)(**kwargs)(jnp.asarray(J))
    assert state is None
    np.testing.assert_allclose(np.asarray(d), expected, atol=tol * max(1.0, np.abs(expected).max()), err_msg=name)


def test_golden_torchjd_directions(x64):
    data = json.loads(GOLDEN.read_text())
    assert data["meta"]["torchjd"] == "0.18.0"
    assert {c["aggregator"] for c in data["cases"]} == set(NAMES)
    for case in data["cases"]:
        _check_torchjd(case["aggregator"], np.asarray(case["jacobian"]), np.asarray(case["expected"]))


@pytest.mark.parametrize("name", NAMES)
def test_live_torchjd_directions(name, x64):
    torch = pytest.importorskip("torch")
    ta = pytest.importorskip("torchjd.aggregation")
    if name in ("upgrad", "dualproj"):
        pytest.importorskip("quadprog")
    make = {"mgda": lambda: ta.MGDA(epsilon=1e-12, max_iters=100000), "pcgrad": ta.PCGrad, "imtl_g": ta.IMTLG,
            "aligned_mtl": ta.AlignedMTL, "upgrad": ta.UPGrad, "dualproj": ta.DualProj,
            "cagrad": lambda: ta.CAGrad(c=0.4)}[name]
    J = _jacobian(T=3, P=7, seed=11)
    if name == "pcgrad":
        from torchjd.aggregation import _pcgrad

        real = _pcgrad.torch.randperm
        _pcgrad.torch.randperm = lambda n, *a, **k: torch.arange(n)  # the fixed order of random_order=False
        try:
            expected = make()(torch.tensor(J)).numpy()
        finally:
            _pcgrad.torch.randperm = real
    else:
        expected = make()(torch.tensor(J)).numpy()
    _check_torchjd(name, J, expected)


@pytest.mark.parametrize("name", NAMES)
def test_array_pytree_jit_and_weights_agree(name, x64):
    J = _jacobian()
    aggregate = _make(name)
    d, state = aggregate(jnp.asarray(J))
    d_tree, state_tree = aggregate(_as_tree(jnp.asarray(J)))
    d_jit, _ = jax.jit(aggregate)(jnp.asarray(J))
    assert state is None and state_tree is None
    chex.assert_shape(d, (J.shape[1],))
    chex.assert_type(d, jnp.float64)
    # the pytree's direction has the Jacobian's leaf structure, each leaf the matching slice of d
    chex.assert_trees_all_close(d_tree, {"a": jnp.reshape(d[:2], (2, 1)), "b": {"c": d[2:]}}, rtol=1e-12, atol=1e-14)
    chex.assert_trees_all_close(d_jit, d, rtol=1e-12, atol=1e-14)
    # the direction is combine(weights, J) with the weights of the Gramian weighting on a NumPy Gramian
    kwargs = dict(TORCHJD_SETTINGS[name][0])
    kwargs.pop("random_order", None)
    w = np.asarray(getattr(agg, f"{name}_weights")(jnp.asarray(J @ J.T), **kwargs))
    np.testing.assert_allclose(np.asarray(d), w @ J, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(agg.combine(jnp.asarray(w), jnp.asarray(J))), w @ J, rtol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_float32_keeps_the_dtype_and_reports_diagnostics(name):
    J = jnp.asarray(_jacobian(dtype=np.float32))
    out = _make(name).with_info(_as_tree(J))
    assert out.direction["a"].dtype == jnp.float32 and out.direction["a"].shape == (2, 1)
    assert out.state is None
    assert set(out.info) == {"task_weights", "grad_norms", "gramian"} | ({"solver_residual"} if name in ITERATIVE
                                                                         else set())
    np.testing.assert_allclose(np.asarray(out.info["grad_norms"]), np.linalg.norm(np.asarray(J), axis=1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out.info["gramian"]), np.asarray(J) @ np.asarray(J).T, rtol=1e-5,
                               atol=1e-5)
    assert bool(jnp.all(jnp.isfinite(out.info["task_weights"])))


def test_pcgrad_needs_a_key_for_its_random_order(x64):
    J = jnp.asarray([[1.0, 0.0, 0.0], [-0.9, 1.0, 0.0], [-0.3, -0.8, 1.0]])
    aggregate = agg.pcgrad()
    assert aggregate.needs_key
    with pytest.raises(ValueError, match="pcgrad.*key"):
        aggregate(J)
    run = jax.jit(lambda k: aggregate(J, key=k)[0])
    seen = {tuple(np.round(np.asarray(run(jax.random.key(i))), 9)) for i in range(8)}
    assert len(seen) > 1  # the order matters for three tasks, and the key sets it
    np.testing.assert_array_equal(np.asarray(run(jax.random.key(3))), np.asarray(run(jax.random.key(3))))
    # each result is PCGrad with the orders the key draws, applied by hand in NumPy
    key = jax.random.key(5)
    order = np.asarray(agg.pcgrad_order(key, 3))
    g = np.asarray(J)
    expected = np.zeros(3)
    for i in range(3):
        gi = g[i].copy()
        for j in order[i]:
            if j != i and gi @ g[j] < 0:
                gi -= (gi @ g[j]) / (g[j] @ g[j]) * g[j]
        expected += gi
    np.testing.assert_allclose(np.asarray(run(key)), expected, rtol=1e-12)
    fixed = agg.pcgrad(random_order=False)
    assert not fixed.needs_key
    np.testing.assert_array_equal(np.asarray(fixed(J)[0]), np.asarray(fixed(J, key=jax.random.key(1))[0]))


def test_stateless_aggregators_refuse_a_state():
    with pytest.raises(ValueError, match="upgrad.*stateless"):
        agg.upgrad()(jnp.eye(2), (jnp.zeros(2),))


def test_state_threads_through_a_stateful_aggregator(x64):
    """An Aggregator with ``init``: state=None is the initial state; the state threads through jit."""

    def fn(jacobian, state, key):
        ema = 0.5 * state + 0.5 * jnp.mean(jacobian, axis=0)
        return agg.Aggregation(ema, ema, {})

    ema = agg.Aggregator(name="ema_mean", fn=fn, init=lambda T, dtype: jnp.zeros((4,), dtype))
    Js = np.random.default_rng(0).normal(size=(3, 2, 4))
    step = jax.jit(ema)
    state, expected = None, np.zeros(4)
    for J in Js:
        d, state = step(jnp.asarray(J), state)
        expected = 0.5 * expected + 0.5 * J.mean(0)
        np.testing.assert_allclose(np.asarray(d), expected, rtol=1e-14)
    np.testing.assert_allclose(np.asarray(state), expected, rtol=1e-14)


def test_malformed_jacobians_and_hyperparameters_raise_clearly():
    aggregate = agg.mgda()
    with pytest.raises(ValueError, match="mgda.*leading task axis"):
        aggregate({"a": jnp.ones((2, 3)), "b": jnp.ones((3, 3))})
    with pytest.raises(ValueError, match="mgda.*no leaves"):
        aggregate({})
    with pytest.raises(TypeError, match="mgda.*floating"):
        aggregate(jnp.ones((2, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"mgda: the Jacobian is one vector of shape \(3,\).*jnp.stack"):
        aggregate(jnp.ones((3,)))  # a gradient without its task axis
    direction, _ = aggregate({"w": jnp.asarray([1.0, -0.5])})  # a pytree of (T,) leaves: scalar parameters
    assert direction["w"].shape == ()
    for make, match in ((lambda: agg.mgda(num_iters=-1), "num_iters"), (lambda: agg.cagrad(rescale=3), "rescale"),
                        (lambda: agg.upgrad(pref=["x"]), "pref"), (lambda: agg.pcgrad(random_order=1), "random_order"),
                        (lambda: agg.imtl_g(eps=float("nan")), "eps"), (lambda: agg.dualproj(reg_eps=-1.0), "reg_eps")):
        with pytest.raises(ValueError, match=match):
            make()
    with pytest.raises(ValueError, match="pref"):
        agg.upgrad(pref=(0.5, 0.5))(jnp.ones((3, 2)))
