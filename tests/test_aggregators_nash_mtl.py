"""Nash-MTL against SciPy solving G alpha = 1/alpha in float64, plus the method's properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import least_squares

from golden._cases import jacobians
from golden._props import check_basics
from orthojax.aggregators.nash_mtl import NashMTLState, nash_mtl, nash_mtl_solve


def _scipy_alpha(G, p=1.0):
    res = least_squares(lambda a: G @ a - a ** (-p), np.ones(len(G)), bounds=(1e-12, np.inf),
                        xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=10000)
    return res.x


def test_matches_scipy_on_standard_jacobians(x64):
    for name, J in jacobians(num_tasks=4, dim=7).items():
        if name == "rank_deficient":  # rank 2 < T: a positive null combination may exist; checked below
            continue
        G = J @ J.T
        alpha, r = nash_mtl_solve(jnp.asarray(G))
        assert float(r) <= 1e-12
        np.testing.assert_allclose(np.asarray(alpha), _scipy_alpha(G), rtol=1e-7)
        d, state = check_basics(nash_mtl(max_norm=0.0), jnp.asarray(J))
        np.testing.assert_allclose(np.asarray(d), np.asarray(alpha) @ J, rtol=1e-9)
        np.testing.assert_allclose(J @ np.asarray(d), 1.0 / np.asarray(alpha), rtol=1e-9)  # <g_t, d> = 1/alpha_t > 0
        np.testing.assert_allclose(np.linalg.norm(np.asarray(d)) ** 2, 4.0, rtol=1e-9)


def test_rank_deficient_with_solution(x64):
    rng = np.random.default_rng(0)
    J = rng.normal(size=(2, 6))
    J = np.vstack([J, J[0] + J[1]])  # rank 2, no vanishing positive combination
    alpha, r = nash_mtl_solve(jnp.asarray(J @ J.T))
    assert float(r) <= 1e-10
    np.testing.assert_allclose(np.asarray(alpha), _scipy_alpha(J @ J.T), rtol=1e-6)


def test_clipping_scale_permutation_float32():
    J = jnp.asarray(np.random.default_rng(1).normal(size=(3, 5)), jnp.float32)
    agg = nash_mtl()  # max_norm = 1: ||d|| = 1 since ||d||^2 = T before clipping
    d, state = agg(J)
    assert abs(float(jnp.linalg.norm(d)) - 1.0) < 1e-5 and float(state.residual) < 1e-3
    for c in (1e-30, 1e30):  # direction independent of the scale, beyond float32's Gramian range
        np.testing.assert_allclose(np.asarray(agg(c * J)[0]), np.asarray(d), rtol=1e-4, atol=1e-6)
    perm = np.array([2, 0, 1])
    np.testing.assert_allclose(np.asarray(agg(J[perm])[0]), np.asarray(d), rtol=1e-4, atol=1e-6)


def test_state_reuses_weights_between_updates(x64):
    rng = np.random.default_rng(2)
    J1, J2 = (jnp.asarray(rng.normal(size=(3, 4))) for _ in range(2))
    agg = nash_mtl(max_norm=0.0, update_weights_every=2)
    d1, s1 = agg(J1)
    d2, s2 = jax.jit(agg)(J2, s1)
    np.testing.assert_allclose(np.asarray(d2), np.asarray(s1.weights @ J2), rtol=1e-12)
    assert int(s2.step) == 2 and np.allclose(s2.weights, s1.weights)
    d3, s3 = agg(J2, s2)  # third call solves again, for J2
    np.testing.assert_allclose(np.asarray(s3.weights), _scipy_alpha(np.asarray(J2 @ J2.T)), rtol=1e-7)


def test_degenerate_jacobians_stay_finite(x64):
    d, s = nash_mtl()(jnp.zeros((3, 4)))
    assert np.all(np.asarray(d) == 0) and float(s.residual) == 0
    g = np.random.default_rng(3).normal(size=4)
    d, s = nash_mtl()(jnp.asarray(np.stack([g, -2 * g])))  # no solution: capped, reported, finite
    assert np.all(np.isfinite(np.asarray(d))) and float(s.residual) > 1e-3


def test_errors():
    with pytest.raises(ValueError, match="max_norm"):
        nash_mtl(max_norm=-1.0)
    with pytest.raises(ValueError, match="update_weights_every"):
        nash_mtl(update_weights_every=0)
    with pytest.raises(ValueError, match="max_iter"):
        nash_mtl(max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        nash_mtl_solve(jnp.eye(2), tol=-1.0)
    with pytest.raises(ValueError, match="NashMTLState"):
        nash_mtl()(jnp.ones((3, 2)), NashMTLState(jnp.ones(2), jnp.zeros(()), jnp.zeros((), jnp.int32)))
