"""The iterative solvers of orthojax.aggregators reach their optimum, for up to 40 tasks.

MGDA, UPGrad, DualProj and CAGrad solve small QPs (CAGrad a second-order cone program) with an iteration
budget. Here Jacobians with 12 to 40 tasks, singular (rank 3 or 7 in 30 dimensions) and near-singular
(rank T/2 plus a 1e-6 perturbation), are checked against exact solutions computed in float64 by SciPy,
never by orthojax: ``scipy.optimize.nnls`` on the least-distance form of the simplex QP (MGDA: the
nearest point of the hull to 0 via min_{x >= 0} ||[J^T; 1^T] x - e||) and on a factor of the regularised
normalised Gramian (UPGrad, DualProj: min_{z >= 0} ||A (u + z)||, A^T A = G / tr G + reg I), and SLSQP on the
primal of CAGrad (max tau s.t. J d >= tau, ||d - g0|| <= r). The solvers' own guarantees (MGDA's
min_t <g_t, d> >= ||d||^2, J d >= 0 for the dual-cone projections) and the reported "solver_residual" are
checked as well.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize, nnls

from orthojax.methods import aggregation
from orthojax import aggregators as gm
from orthojax.methods.base import MultiTaskProblem

P = 30


def _jacobians(T: int, seed: int = 0) -> np.ndarray:
    """Singular (rank 3, rank 7), near-singular (rank T/2 + 1e-6 noise) and generic Jacobians, with
    per-task scales spread over a factor ~20 and conflicts between the two halves of the tasks."""
    rng = np.random.default_rng(seed + 17 * T)
    out = []
    for rank, noise, shift in ((3, 0.0, 0.0), (3, 0.0, 0.5), (7, 0.0, 0.0), (7, 0.0, 0.5), (T // 2, 1e-6, 0.0),
                               (T // 2, 1e-6, 0.5), (min(T, P), 0.0, 0.0), (min(T, P), 0.0, 0.5)):
        J = rng.normal(size=(T, rank)) @ rng.normal(size=(rank, P)) + noise * rng.normal(size=(T, P)) + shift
        J *= np.exp(rng.normal(size=(T, 1)))
        h = T // 2
        J[:h] -= 0.8 * J[h:2 * h]
        out.append(J)
    return np.stack(out)


@functools.lru_cache(maxsize=None)
def _batched(name, kw_items):
    fn = getattr(gm, f"{name}_solution")
    return jax.jit(jax.vmap(lambda G: fn(G, **dict(kw_items))))


def _solve(name, Js, dtype=jnp.float64, **kw):
    """(weights, residuals) of ``*_solution`` for a stack of Jacobians, in one compiled vmapped call."""
    Gs = jax.vmap(gm.gramian)(jnp.asarray(Js, dtype))
    sol = _batched(name, tuple(sorted(kw.items())))(Gs)
    return np.asarray(sol.weights, np.float64), np.asarray(sol.residual, np.float64)


def _mgda_reference(J):
    T = J.shape[0]
    A = np.vstack([J.T, np.ones((1, T))])
    b = np.zeros(A.shape[0])
    b[-1] = 1.0
    x, _ = nnls(A, b, maxiter=100 * T)
    return x / x.sum()


def _min_above_reference(J, u, reg_eps):
    T = J.shape[0]
    Jn = J / np.linalg.norm(J)
    A = np.hstack([Jn, np.sqrt(reg_eps) * np.eye(T)]).T if reg_eps > 0 else Jn.T  # A^T A = Q + reg I
    z, _ = nnls(A, -A @ u, maxiter=100 * T)
    return u + z


# --------------------------------------------------------------------------------------------------------------
# MGDA
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [12, 24, 40])
def test_mgda_reaches_the_min_norm_point(T, x64):
    Js = _jacobians(T)
    W, R = _solve("mgda", Js)
    for k, (J, w) in enumerate(zip(Js, W)):
        n = np.linalg.norm(J, axis=1)
        d, d_ref = w @ J, _mgda_reference(J) @ J
        assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-12
        # optimal: no worse than the exact QP solution, and the min-norm point is unique
        assert d @ d <= d_ref @ d_ref + 1e-12 * n.min() ** 2, (T, k, d @ d, d_ref @ d_ref)
        np.testing.assert_allclose(d, d_ref, atol=1e-7 * n.min(), err_msg=f"{T} {k}")
        # MGDA's guarantee: <g_t, d> >= ||d||^2 for every task
        assert np.min((J @ d - d @ d) / n) >= -1e-10 * n.min(), (T, k)
    assert np.all(R <= 1e-10), (T, R)


@pytest.mark.parametrize("T", [12, 40])
def test_mgda_float32_to_its_stated_tolerance(T):
    Js = _jacobians(T)[[0, 1, 2, 3, 6, 7]]  # exactly singular and generic
    W, R = _solve("mgda", Js.astype(np.float32), jnp.float32)
    for k, (J, w) in enumerate(zip(Js, W)):
        n = np.linalg.norm(J, axis=1)
        d, d_ref = w @ J, _mgda_reference(J) @ J
        assert d @ d <= d_ref @ d_ref + 1e-5 * n.min() ** 2, (T, k)
        assert np.min((J @ d - d @ d) / n) >= -1e-4 * n.min(), (T, k)
    assert np.all(R <= 1e-4), (T, R)


def test_mgda_cap_too_small_shows_in_the_residual(x64):
    Js = _jacobians(12)[2:3]
    short = _solve("mgda", Js, num_iters=2)[1]
    full = _solve("mgda", Js)[1]
    assert short[0] > 1e-3 > 1e-10 >= full[0]


# --------------------------------------------------------------------------------------------------------------
# UPGrad and DualProj
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reg_eps", [1e-4, 0.0])
@pytest.mark.parametrize("T", [12, 40])
def test_dual_cone_projections_reach_the_qp_solution(T, reg_eps, x64):
    Js = _jacobians(T)
    Wu, Ru = _solve("upgrad", Js, reg_eps=reg_eps)
    Wd, Rd = _solve("dualproj", Js, reg_eps=reg_eps)
    u = np.full(T, 1.0 / T)
    for k, J in enumerate(Js):
        scale = np.linalg.norm(J.mean(axis=0)) + np.linalg.norm(J) / T
        vd = _min_above_reference(J, u, reg_eps)
        vu = sum(_min_above_reference(J, u[i] * np.eye(T)[i], reg_eps) for i in range(T))
        near_singular = k in (4, 5) and reg_eps == 0.0  # condition number ~1e12: compare optimality, not digits
        for name, w, v in (("upgrad", Wu[k], vu), ("dualproj", Wd[k], vd)):
            msg = f"{name} T={T} reg={reg_eps} case {k}"
            # the direction is unique (the weights too when reg_eps > 0)
            np.testing.assert_allclose(w @ J, v @ J, atol=(1e-5 if near_singular else 1e-8) * scale, err_msg=msg)
            if reg_eps > 0:
                np.testing.assert_allclose(w, v, atol=1e-8 * np.max(np.abs(v)), err_msg=msg)
            else:  # exact: no conflict, weights above the preference
                assert np.min(J @ (w @ J)) >= -1e-10 * np.linalg.norm(J) * scale, msg
            assert np.all(w >= u - 1e-12), msg
        if reg_eps == 0.0:  # DualProj is the projection of the mean onto {x : J x >= 0}: as close as SciPy's
            y = u @ J
            assert np.sum((Wd[k] @ J - y) ** 2) <= np.sum((vd @ J - y) ** 2) + 1e-12 * (y @ y), (T, k)
    assert np.all(Ru <= 1e-12) and np.all(Rd <= 1e-12), (T, reg_eps, Ru, Rd)


@pytest.mark.parametrize("T", [12, 40])
def test_dual_cone_projections_float32(T):
    Js = _jacobians(T)[[0, 1, 2, 3, 6, 7]]
    u = np.full(T, 1.0 / T)
    for reg_eps in (1e-4, 0.0):
        Wd, R = _solve("dualproj", Js.astype(np.float32), jnp.float32, reg_eps=reg_eps)
        for k, (J, w) in enumerate(zip(Js, Wd)):
            scale = np.linalg.norm(J.mean(axis=0)) + np.linalg.norm(J) / T
            np.testing.assert_allclose(w @ J, _min_above_reference(J, u, reg_eps) @ J, atol=1e-3 * scale,
                                       err_msg=f"T={T} reg={reg_eps} case {k}")
        assert np.all(R <= 1e-5), (T, reg_eps, R)


# --------------------------------------------------------------------------------------------------------------
# CAGrad
# --------------------------------------------------------------------------------------------------------------


def _cagrad_reference(J, c):
    """argmax_{||d - g0|| <= r} min_t <g_t, d> by SLSQP on (d, tau), on J / ||J||_F (None if SLSQP fails)."""
    T = J.shape[0]
    s = np.linalg.norm(J)
    Jn = J / s
    g0 = Jn.mean(axis=0)
    r = c * np.linalg.norm(g0)
    cons = [{"type": "ineq", "fun": lambda x: Jn @ x[:P] - x[P], "jac": lambda x: np.hstack([Jn, -np.ones((T, 1))])},
            {"type": "ineq", "fun": lambda x: r * r - np.sum((x[:P] - g0) ** 2),
             "jac": lambda x: np.concatenate([-2 * (x[:P] - g0), [0.0]])}]
    x0 = np.concatenate([g0, [np.min(Jn @ g0)]])
    res = minimize(lambda x: -x[P], x0, jac=lambda x: np.concatenate([np.zeros(P), [-1.0]]), constraints=cons,
                   method="SLSQP", options={"ftol": 1e-16, "maxiter": 3000})
    return (res.x[:P] * s, -res.fun * s * s) if res.success else None


def _cagrad_duality_gap(J, w, c):
    """The CAGrad dual value at the simplex weights behind w (rescale=0: w = 1/T + lam w*) minus the primal
    value min_t <g_t, d>: >= 0 for every feasible pair, 0 exactly at the optimum (NumPy, float64)."""
    T = J.shape[0]
    d, g0 = w @ J, J.mean(axis=0)
    w_star = w - 1.0 / T
    w_star = w_star / w_star.sum()
    g_w = w_star @ J
    dual = g_w @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(g_w)
    return dual - np.min(J @ d)


@pytest.mark.parametrize("T", [12, 40])
def test_cagrad_reaches_the_conflict_averse_optimum(T, x64):
    Js = _jacobians(T)[[0, 1, 3, 5, 6, 7]]
    W, R = _solve("cagrad", Js, rescale=0)
    for k, (J, w) in enumerate(zip(Js, W)):
        d = w @ J
        g0 = J.mean(axis=0)
        scale = np.linalg.norm(J) ** 2
        np.testing.assert_allclose(np.linalg.norm(d - g0), 0.4 * np.linalg.norm(g0), rtol=1e-9)  # on the sphere
        assert np.all(w >= 1.0 / T - 1e-15)
        assert abs(_cagrad_duality_gap(J, w, 0.4)) <= 1e-10 * scale, (T, k)  # optimal, certified by duality
        ref = _cagrad_reference(J, 0.4)
        if ref is not None:  # and as good as SLSQP's primal solution
            assert np.min(J @ d) >= ref[1] - 1e-10 * scale, (T, k, np.min(J @ d), ref[1])
            np.testing.assert_allclose(d, ref[0], atol=1e-6 * np.linalg.norm(g0), err_msg=f"{T} {k}")
    assert np.all(R <= 1e-10), (T, R)


@pytest.mark.parametrize("T", [12, 40])
def test_cagrad_float32(T):
    Js = _jacobians(T)[[0, 1, 6, 7]]
    W, R = _solve("cagrad", Js.astype(np.float32), jnp.float32, rescale=0)
    for k, (J, w) in enumerate(zip(Js, W)):
        assert abs(_cagrad_duality_gap(J, w, 0.4)) <= 1e-4 * np.linalg.norm(J) ** 2, (T, k)
    assert np.all(R <= 1e-4), (T, R)


# --------------------------------------------------------------------------------------------------------------
# Through the Methods; purity
# --------------------------------------------------------------------------------------------------------------


def test_methods_report_the_solver_residual():
    def task_losses(p, batch, rng):
        return batch @ p["encoder"]["w"], ()

    problem = MultiTaskProblem(task_losses=task_losses, last_shared="encoder", shared="encoder")
    params = {"encoder": {"w": jnp.zeros((P,), jnp.float32)}}
    J = jnp.asarray(_jacobians(12)[2], jnp.float32)
    for name in ("mgda", "pcgrad", "imtl_g", "aligned_mtl", "upgrad", "dualproj", "cagrad"):  # this file's solvers
        method = aggregation.AGGREGATORS[name]()
        out = jax.jit(lambda J: method.step(problem, params, (), J, jax.random.key(0)))(J)
        assert out.metrics["grad_norms"].shape == (12,)
        np.testing.assert_allclose(np.asarray(out.metrics["grad_norms"]), np.linalg.norm(np.asarray(J), axis=1),
                                   rtol=1e-6)
        if name in ("mgda", "upgrad", "dualproj", "cagrad"):
            assert out.metrics["solver_residual"].shape == ()
            assert 0.0 <= float(out.metrics["solver_residual"]) <= 1e-4, name
        else:
            assert "solver_residual" not in out.metrics


def _primitives(jaxpr):
    try:
        from jax.extend.core import jaxprs_in_params
    except ImportError:  # older JAX
        jaxprs_in_params = jax.core.jaxprs_in_params
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for sub in jaxprs_in_params(eqn.params):
            names |= _primitives(sub)
    return names


@pytest.mark.parametrize("name", ["mgda", "upgrad", "dualproj", "cagrad"])
def test_solvers_are_pure_jax_loops(name):
    fn = getattr(gm, f"{name}_solution")
    jaxpr = jax.make_jaxpr(lambda G: fn(G))(jnp.eye(5, dtype=jnp.float32))
    prims = _primitives(jaxpr.jaxpr)
    assert "while" in prims
    assert not any("callback" in p for p in prims), prims
