"""Weights from the Gramian (orthojax.aggregators): properties over adversarial Jacobians and oracles.

Expected values come from NumPy (explicit projections of gradient vectors, SVD) and SciPy (SLSQP and
L-BFGS-B on the defining optimisation problems), never from the functions under test.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from orthojax import aggregators as gm

P = 7  # parameter dimension of the test Jacobians


def _adversarial(kind: str, T: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + 101 * T)
    J = rng.normal(size=(T, P))
    if kind == "random":
        return J
    if kind == "zero_row":
        J[1] = 0.0
        return J
    if kind == "all_zero":
        return np.zeros((T, P))
    if kind == "rank_one":
        return rng.normal(size=(T, 1)) @ rng.normal(size=(1, P))
    if kind == "rank_deficient":
        return rng.normal(size=(T, 2)) @ rng.normal(size=(2, P)) if T > 2 else np.outer([1.0, 2.0], J[0])
    if kind == "opposing":
        J[1] = -J[0]
        return J
    if kind == "duplicated":
        J[1] = J[0]
        return J
    if kind == "huge":
        return 1e6 * J
    if kind == "tiny":
        return 1e-6 * J
    if kind == "mixed_scales":
        return J * np.logspace(-3, 3, T)[:, None]
    raise ValueError(kind)


KINDS = ["random", "zero_row", "all_zero", "rank_one", "rank_deficient", "opposing", "duplicated", "huge",
         "tiny", "mixed_scales"]
CASES = [(k, T) for k in KINDS for T in (2, 3, 5)]

NAMES = ["aligned_mtl", "cagrad", "dualproj", "imtl_g", "mgda", "pcgrad", "upgrad"]
NON_CONFLICTING = ["mgda", "upgrad", "dualproj"]
BATCH = 32  # every call is padded to this batch, so each (method, T, dtype, hyper-parameters) compiles once


@functools.lru_cache(maxsize=None)
def _compiled(name, kw_items):
    fn = getattr(gm, f"{name}_weights")
    kw = dict(kw_items)
    if name == "pcgrad":
        return jax.jit(jax.vmap(lambda G, order: fn(G, order=order)))
    return jax.jit(jax.vmap(lambda G: fn(G, **kw)))


def _weights_many(name, Js, orders=None, **kw):
    """Weights for a stack of Jacobians (n, T, P) -> (n, T), through one compiled vmapped function."""
    Js = np.asarray(Js)
    n, T = Js.shape[:2]
    assert n <= BATCH
    pad = np.concatenate([Js, np.repeat(Js[:1], BATCH - n, axis=0)])
    Gs = jax.vmap(gm.gramian)(jnp.asarray(pad))
    f = _compiled(name, tuple(sorted(kw.items())))
    if name == "pcgrad":
        if orders is None:
            orders = np.tile(np.arange(T), (n, T, 1))
        orders = np.concatenate([orders, np.repeat(orders[:1], BATCH - n, axis=0)])
        return np.asarray(f(Gs, jnp.asarray(orders, jnp.int32)))[:n]
    return np.asarray(f(Gs))[:n]


def _weights(name, J, order=None, **kw):
    orders = None if order is None else np.asarray(order)[None]
    return _weights_many(name, np.asarray(J)[None], orders, **kw)[0]


def _simplex_argmin(f, T, jac=None, starts=4, seed=0):
    rng = np.random.default_rng(seed)
    best = None
    for k in range(starts):
        x0 = rng.dirichlet(np.ones(T)) if k else np.full(T, 1.0 / T)
        res = minimize(f, x0, jac=jac, method="SLSQP", bounds=[(0.0, 1.0)] * T,
                       constraints=[{"type": "eq", "fun": lambda x: np.sum(x) - 1.0}],
                       options={"ftol": 1e-15, "maxiter": 2000})
        if best is None or res.fun < best.fun:
            best = res
    return best


# --------------------------------------------------------------------------------------------------------------
# Gramian / combine
# --------------------------------------------------------------------------------------------------------------


def test_gramian_and_combine_on_leaves(x64):
    rng = np.random.default_rng(0)
    leaves = [rng.normal(size=(3, 4, 2)), rng.normal(size=(3,)), rng.normal(size=(3, 5))]
    J = np.concatenate([x.reshape(3, -1) for x in leaves], axis=1)
    G = gm.gramian([jnp.asarray(x) for x in leaves])
    np.testing.assert_allclose(np.asarray(G), J @ J.T, rtol=1e-13)
    w = np.array([0.5, -1.0, 2.0])
    d = gm.combine(jnp.asarray(w), {"a": jnp.asarray(leaves[0]), "b": jnp.asarray(leaves[2])})
    np.testing.assert_allclose(np.asarray(d["a"]), np.tensordot(w, leaves[0], 1), rtol=1e-13)
    assert d["b"].shape == (5,)
    with pytest.raises(ValueError):
        gm.gramian([jnp.ones((3, 2)), jnp.ones((2, 2))])


# --------------------------------------------------------------------------------------------------------------
# Properties over adversarial Jacobians
# --------------------------------------------------------------------------------------------------------------


TS = (2, 5)


def _stack(T, seed=0):
    return np.stack([_adversarial(k, T, seed) for k in KINDS])


@pytest.mark.parametrize("name", NAMES)
def test_finite_and_shape_float64(name, x64):
    for T in TS:
        W = _weights_many(name, _stack(T))
        assert W.shape == (len(KINDS), T)
        assert np.all(np.isfinite(W)), (name, T, W)


@pytest.mark.parametrize("name", NON_CONFLICTING)
def test_non_conflicting(name, x64):
    for T in TS:
        Js = _stack(T)
        W = _weights_many(name, Js)
        for kind, J, w in zip(KINDS, Js, W):
            scale = np.sum(J * J)
            slack = 1e-4 * np.max(np.abs(w)) if name != "mgda" else 0.0  # reg_eps = 1e-4 relaxes the guarantee
            assert np.all(J @ (w @ J) >= -(slack + 1e-10) * scale), (name, kind, T, J @ (w @ J))


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
def test_non_conflicting_exact_without_regularisation(name, x64):
    rng = np.random.default_rng(0)
    Js = rng.normal(size=(6, 3, P))
    Js[:, 2] = -0.7 * Js[:, 0] + 0.2 * Js[:, 2]  # conflicting
    W = _weights_many(name, Js, reg_eps=0.0)
    for J, w in zip(Js, W):
        assert np.all(J @ (w @ J) >= -1e-12 * np.sum(J * J))
        assert np.all(w >= 1 / 3 - 1e-12)  # the weights never fall below the preference vector
    mean_conflicts = [np.any(J @ J.mean(0) < 0) for J in Js]
    assert any(mean_conflicts)  # the dual cone constraint was active somewhere


@pytest.mark.parametrize("name", [n for n in NAMES if n != "pcgrad"])
def test_task_permutation_equivariance(name, x64):
    perm_rng = np.random.default_rng(7)
    for T in TS:
        Js = _stack(T)
        perms = [perm_rng.permutation(T) for _ in KINDS]
        Jp = np.stack([J[p] for J, p in zip(Js, perms)])
        D = np.einsum("nt,ntp->np", _weights_many(name, Js), Js)
        Dp = np.einsum("nt,ntp->np", _weights_many(name, Jp), Jp)
        for kind, J, d, dp in zip(KINDS, Js, D, Dp):
            np.testing.assert_allclose(dp, d, atol=1e-7 * np.linalg.norm(J), rtol=1e-6, err_msg=f"{name} {kind} {T}")


def test_pcgrad_permutation_equivariance_with_consistent_order(x64):
    rng = np.random.default_rng(3)
    for T in TS:
        Js = _stack(T)
        orders = np.stack([np.stack([rng.permutation(T) for _ in range(T)]) for _ in KINDS])
        perms = [rng.permutation(T) for _ in KINDS]
        # new task k is old task perm[k]; it visits the same old tasks in the same order
        orders_p = np.stack([np.argsort(p)[o[p]] for o, p in zip(orders, perms)])
        Jp = np.stack([J[p] for J, p in zip(Js, perms)])
        W = _weights_many("pcgrad", Js, orders)
        Wp = _weights_many("pcgrad", Jp, orders_p)
        for w, wp, p in zip(W, Wp, perms):
            np.testing.assert_allclose(wp, w[p], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_weights_invariant_to_global_scale(name, x64):
    for T in TS:
        Js = np.stack([_adversarial(k, T) for k in ("random", "rank_deficient", "mixed_scales", "opposing")])
        W = _weights_many(name, Js)
        for s in (1e-7, 1e5):
            np.testing.assert_allclose(_weights_many(name, s * Js), W, rtol=1e-6, atol=1e-9, err_msg=f"{T} {s}")


def test_mgda_direction_scales_with_the_jacobian(x64):
    J = _adversarial("mixed_scales", 5)
    d = _weights("mgda", J) @ J
    d_big = _weights("mgda", 1e8 * J) @ (1e8 * J)
    np.testing.assert_allclose(d_big, 1e8 * d, rtol=1e-8)


def _random_jacobians(rng, T, n, full_rank=False):
    Js = []
    for _ in range(n):
        rank = T if full_rank else int(rng.integers(1, T + 1))
        Js.append((rng.normal(size=(T, rank)) @ rng.normal(size=(rank, P))) * np.exp(rng.normal(size=(T, 1))))
    return np.stack(Js)


def test_mgda_against_scipy_min_norm(x64):
    rng = np.random.default_rng(11)
    for T in TS:
        Js = _random_jacobians(rng, T, 5)
        for J, w in zip(Js, _weights_many("mgda", Js)):
            Gn = J @ J.T / np.sum(J * J)
            ref = _simplex_argmin(lambda x: x @ Gn @ x, T, jac=lambda x: 2 * Gn @ x)
            assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-12
            assert w @ Gn @ w <= ref.fun + 1e-12
            # the min-norm point is unique even when the weights are not
            np.testing.assert_allclose(w @ J, ref.x @ J, atol=1e-6 * np.linalg.norm(J))


def test_mgda_many_tasks_against_slsqp(x64):
    rng = np.random.default_rng(5)
    J = rng.normal(size=(12, 30)) + 0.5
    Gn = J @ J.T / np.sum(J * J)
    ref = _simplex_argmin(lambda x: x @ Gn @ x, 12, jac=lambda x: 2 * Gn @ x, starts=2)
    w = _weights("mgda", J)
    assert w @ Gn @ w <= ref.fun * (1 + 1e-9) + 1e-15


def _numpy_pcgrad(J, order):
    """PCGrad on explicit gradient vectors (Yu et al., with TorchJD's j != i)."""
    T = J.shape[0]
    out = np.zeros(J.shape[1])
    for i in range(T):
        g = J[i].copy()
        for j in order[i]:
            if j == i:
                continue
            dot = g @ J[j]
            if dot < 0:
                g = g - dot / (J[j] @ J[j]) * J[j]
        out += g
    return out


def test_pcgrad_against_numpy_projections(x64):
    rng = np.random.default_rng(2)
    for T in TS:
        Js = _stack(T)
        fixed = np.tile(np.arange(T), (len(KINDS), T, 1))
        random = np.stack([np.stack([rng.permutation(T) for _ in range(T)]) for _ in KINDS])
        for orders in (fixed, random):
            for J, w, order in zip(Js, _weights_many("pcgrad", Js, orders), orders):
                np.testing.assert_allclose(w @ J, _numpy_pcgrad(J, order), rtol=1e-9, atol=1e-9 * np.linalg.norm(J))
    # default: deterministic order 0..T-1; with a key: the per-task permutations pcgrad_order draws from it
    J = _adversarial("random", 5)
    G = gm.gramian(jnp.asarray(J))
    key = jax.random.key(4)
    w_default, w_key, order = jax.jit(lambda G, k: (gm.pcgrad_weights(G), gm.pcgrad_weights(G, k), gm.pcgrad_order(k, 5)))(G, key)
    np.testing.assert_allclose(np.asarray(w_default) @ J, _numpy_pcgrad(J, np.tile(np.arange(5), (5, 1))), rtol=1e-9)
    order = np.asarray(order)
    assert all(sorted(row) == list(range(5)) for row in order)
    np.testing.assert_allclose(np.asarray(w_key) @ J, _numpy_pcgrad(J, order), rtol=1e-9)


def test_pcgrad_two_tasks_closed_form(x64):
    g1, g2 = np.array([1.0, 0.0] + [0.0] * (P - 2)), np.array([-1.0, 1.0] + [0.0] * (P - 2))
    J = np.stack([g1, g2])
    expected = (g1 - (g1 @ g2) / (g2 @ g2) * g2) + (g2 - (g2 @ g1) / (g1 @ g1) * g1)
    np.testing.assert_allclose(_weights("pcgrad", J) @ J, expected, rtol=1e-12)
    np.testing.assert_allclose(_weights("pcgrad", np.abs(J)), [1.0, 1.0])  # no conflict: the plain sum


def test_imtl_g_equal_projections(x64):
    for T in TS:
        Js = np.stack([_adversarial("mixed_scales", T, seed) for seed in range(4)])
        for J, w in zip(Js, _weights_many("imtl_g", Js)):
            proj = J @ (w @ J) / np.linalg.norm(J, axis=1)
            np.testing.assert_allclose(proj, np.full(T, proj[0]), rtol=1e-6)
            assert abs(w.sum() - 1) < 1e-10
    # exactly opposing gradients: no direction with equal positive projections -> zero weights
    np.testing.assert_allclose(_weights("imtl_g", _adversarial("opposing", 2)), [0.0, 0.0], atol=1e-12)


def test_aligned_mtl_against_svd(x64):
    for T in TS:
        J = _adversarial("mixed_scales", T, 4)
        U, S, Wt = np.linalg.svd(J, full_matrices=False)
        pref = np.full(T, 1.0 / T)
        expected = S[-1] * pref @ U @ Wt  # the aligned rows s_min U W^T, weighted by pref
        np.testing.assert_allclose(_weights("aligned_mtl", J) @ J, expected, rtol=1e-8, atol=1e-10 * np.linalg.norm(J))
    pref = np.linspace(1.0, 2.0, 5)
    w = np.asarray(jax.jit(gm.aligned_mtl_weights)(gm.gramian(jnp.asarray(J)), jnp.asarray(pref)))
    np.testing.assert_allclose(w @ J, S[-1] * pref @ U @ Wt, rtol=1e-8, atol=1e-10 * np.linalg.norm(J))
    # rank-deficient: the aligned rows live on the rank-r subspace, with the r-th singular value
    J = _adversarial("rank_deficient", 5)
    U, S, Wt = np.linalg.svd(J, full_matrices=False)
    expected = S[1] * np.full(5, 0.2) @ U[:, :2] @ Wt[:2]
    np.testing.assert_allclose(_weights("aligned_mtl", J) @ J, expected, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(_weights("aligned_mtl", np.zeros((3, P))), np.full(3, 1 / 3))  # zero J: B = I


def _scipy_min_above(Q, u):
    res = minimize(lambda v: v @ Q @ v, np.maximum(u, 0) + 0.1, jac=lambda v: 2 * Q @ v, method="L-BFGS-B",
                   bounds=[(ui, None) for ui in u], options={"ftol": 1e-16, "gtol": 1e-12, "maxiter": 5000})
    return res.x


@pytest.mark.parametrize("reg_eps", [1e-4, 0.0])
def test_upgrad_dualproj_against_scipy_qp(reg_eps, x64):
    rng = np.random.default_rng(13)
    for T in (5,) if reg_eps else (3,):
        Js = _random_jacobians(rng, T, 6, full_rank=reg_eps == 0.0) + 0.3 * (np.arange(6) % 2)[:, None, None]
        Wu = _weights_many("upgrad", Js, reg_eps=reg_eps)
        Wd = _weights_many("dualproj", Js, reg_eps=reg_eps)
        for J, wu, wd in zip(Js, Wu, Wd):
            Q = J @ J.T / np.sum(J * J) + reg_eps * np.eye(T)
            u = np.full(T, 1.0 / T)
            np.testing.assert_allclose(wu, sum(_scipy_min_above(Q, u[i] * np.eye(T)[i]) for i in range(T)), atol=1e-6)
            np.testing.assert_allclose(wd, _scipy_min_above(Q, u), atol=1e-6)


def test_dualproj_is_the_primal_projection_onto_the_dual_cone(x64):
    # argmin_x ||x - mean g||^2 s.t. J x >= 0, solved in the primal by SLSQP.
    rng = np.random.default_rng(40)
    Js = rng.normal(size=(3, 3, P))
    Js[:, 2] = -1.5 * Js[:, 0] + 0.1 * Js[:, 1]  # a conflict, so the projection is active
    assert any(np.any(J @ J.mean(0) < 0) for J in Js)
    for J, w in zip(Js, _weights_many("dualproj", Js, reg_eps=0.0)):
        g = J.mean(axis=0)
        res = minimize(lambda x: np.sum((x - g) ** 2), g, jac=lambda x: 2 * (x - g), method="SLSQP",
                       constraints=[{"type": "ineq", "fun": lambda x: J @ x, "jac": lambda x: J}],
                       options={"ftol": 1e-15, "maxiter": 1000})
        np.testing.assert_allclose(w @ J, res.x, atol=1e-6)


def test_upgrad_dualproj_iterative_path_for_many_tasks(x64):
    rng = np.random.default_rng(21)
    J = rng.normal(size=(12, 20))
    J[6:] = -0.5 * J[:6] + 0.2 * rng.normal(size=(6, 20))
    Q = J @ J.T / np.sum(J * J) + 1e-4 * np.eye(12)
    u = np.full(12, 1.0 / 12)
    G = gm.gramian(jnp.asarray(J))
    np.testing.assert_allclose(np.asarray(jax.jit(gm.dualproj_weights)(G)), _scipy_min_above(Q, u), atol=1e-5)
    up = sum(_scipy_min_above(Q, u[i] * np.eye(12)[i]) for i in range(12))
    np.testing.assert_allclose(np.asarray(jax.jit(gm.upgrad_weights)(G)), up, atol=1e-5)


@pytest.mark.parametrize("c", [0.4, 0.9])
def test_cagrad_closed_form_and_dual(c, x64):
    rng = np.random.default_rng(17)
    for T in TS if c == 0.4 else (3,):
        Js = rng.normal(size=(4, T, P)) + 0.5 * (np.arange(4) % 2)[:, None, None]
        W = _weights_many("cagrad", Js) if c == 0.4 else _weights_many("cagrad", Js, c=c)
        for J, w in zip(Js, W * (1 + c * c)):  # undo the default rescaling (rescale=1)
            Gn = J @ J.T / np.sum(J * J)
            Jn = J / np.sqrt(np.sum(J * J))
            g0 = Jn.mean(axis=0)
            r = c * np.linalg.norm(g0)
            b = np.full(T, 1.0 / T)
            ref = _simplex_argmin(lambda x: x @ Gn @ b + r * np.sqrt(max(x @ Gn @ x, 0.0) + 1e-30), T)
            d = w @ Jn
            # closed form: d lies on the ball's boundary and its worst-task improvement equals the dual optimum
            np.testing.assert_allclose(np.linalg.norm(d - g0), r, rtol=1e-8)
            np.testing.assert_allclose(np.min(Jn @ d), ref.fun, rtol=1e-6, atol=1e-9)
            pts = g0 + r * rng.uniform(-1, 1, size=(500, P)) / np.sqrt(P)  # feasible points do no better
            assert np.all(np.min(pts @ Jn.T, axis=1) <= np.min(Jn @ d) + 1e-12)


def test_cagrad_rescaling_and_zero_radius(x64):
    Js = np.stack([_adversarial("random", 2), _adversarial("opposing", 2)])
    W0 = _weights_many("cagrad", Js, rescale=0)
    np.testing.assert_allclose(_weights_many("cagrad", Js), W0 / 1.16, rtol=1e-12)  # default rescale=1
    np.testing.assert_allclose(W0[1], [0.5, 0.5])  # 0 in the hull: the mean gradient


def test_hyperparameters_are_validated_eagerly():
    G = jnp.eye(3)
    with pytest.raises(ValueError):
        gm.mgda_weights(G, num_iters=-1)
    with pytest.raises(ValueError):
        gm.cagrad_weights(G, c=-0.1)
    with pytest.raises(ValueError):
        gm.cagrad_weights(G, rescale=3)
    with pytest.raises(ValueError):
        gm.upgrad_weights(G, reg_eps=-1.0)
    with pytest.raises(ValueError):
        gm.upgrad_weights(G, pref=jnp.ones(2))
    with pytest.raises(ValueError):
        gm.pcgrad_weights(G, order=jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError):
        gm.aligned_mtl_weights(jnp.ones((2, 3)))
    for bad in (dict(num_outer=0), dict(num_inner=0), dict(num_outer=1.5)):
        with pytest.raises(ValueError):
            gm.cagrad_weights(G, **bad)
    with pytest.raises(ValueError):
        gm.upgrad_weights(G, num_iters=0)


@pytest.mark.parametrize("name", NAMES)
def test_float32_finite_and_jit_without_retracing(name):
    traces = []
    fn = getattr(gm, f"{name}_weights")

    @jax.jit
    def f(Gs):
        traces.append(1)
        return jax.vmap(fn)(Gs)

    for seed in range(2):
        Js = jnp.asarray(_stack(3, seed), jnp.float32)
        W = f(jax.vmap(gm.gramian)(Js))
        assert W.dtype == jnp.float32 and W.shape == (len(KINDS), 3)
        assert bool(jnp.all(jnp.isfinite(W))), (name, W)
    assert len(traces) == 1


# --------------------------------------------------------------------------------------------------------------
# Where orthojax differs from TorchJD, and why (as the docstrings state)
# --------------------------------------------------------------------------------------------------------------
# NumPy transcriptions of torchjd (aggregation/_upgrad.py, _cagrad.py, _linalg/_gramian.py): the Gramian is
# zeroed when its trace is below norm_eps = 1e-4, else divided by its trace; UPGrad adds reg_eps I and solves
# min_{v >= u} v^T G v per task (quadprog there, an exact NNLS here); CAGrad solves its dual on the reduced
# matrix U sqrt(S) and returns 0 when ||g_w|| < norm_eps. No rescaling.


def _torchjd_normalize(G, norm_eps=1e-4):
    trace = np.trace(G)
    return np.zeros_like(G) if trace < norm_eps else G / trace


def _torchjd_upgrad(G, reg_eps=1e-4):
    from scipy.optimize import nnls

    T = G.shape[0]
    Q = _torchjd_normalize(G) + reg_eps * np.eye(T)
    A = np.linalg.cholesky(Q).T  # A^T A = Q
    total = np.zeros(T)
    for i in range(T):
        u = np.eye(T)[i] / T
        z, _ = nnls(A, -A @ u)
        total += u + z
    return total


def _torchjd_cagrad(G, c=0.4, norm_eps=1e-4):
    T = G.shape[0]
    U, S, _ = np.linalg.svd(_torchjd_normalize(G, norm_eps))
    R = U * np.sqrt(S)
    g0 = R.T @ np.full(T, 1.0 / T)
    phi = c * np.linalg.norm(g0)
    w = _simplex_argmin(lambda x: (R @ g0) @ x + phi * np.linalg.norm(R.T @ x), T).x
    norm = np.linalg.norm(R.T @ w)
    return np.full(T, 1.0 / T) + phi / norm * w if norm >= norm_eps else np.zeros(T)


def test_upgrad_matches_torchjd_except_below_its_trace_threshold(x64):
    rng = np.random.default_rng(8)
    J = rng.normal(size=(3, P))
    J[2] = -0.9 * J[0] + 0.3 * J[2]  # conflicting: the mean gradient conflicts with task 2
    assert np.min(J @ J.mean(axis=0)) < 0
    np.testing.assert_allclose(_weights("upgrad", J), _torchjd_upgrad(J @ J.T), atol=1e-9)
    # ||J||_F^2 < 1e-4: TorchJD's Gramian becomes 0, its QPs return the preference (no projection, conflict
    # kept); orthojax is scale-invariant and still projects
    small = 1e-3 * J
    assert np.sum(small * small) < 1e-4
    np.testing.assert_allclose(_torchjd_upgrad(small @ small.T), np.full(3, 1 / 3), atol=1e-12)
    w = _weights("upgrad", small)
    np.testing.assert_allclose(w, _torchjd_upgrad(J @ J.T), atol=1e-9)
    assert np.min(small @ (w @ small)) > np.min(small @ small.mean(axis=0))


def test_cagrad_matches_torchjd_with_rescale0_except_where_documented(x64):
    rng = np.random.default_rng(9)
    J = rng.normal(size=(2, P))
    J[1] = -0.5 * J[0] + 0.8 * J[1]
    np.testing.assert_allclose(_weights("cagrad", J, rescale=0), _torchjd_cagrad(J @ J.T), atol=1e-5)
    # (2) ||J||_F^2 < 1e-4: TorchJD returns zero weights; orthojax's do not depend on the scale
    small = 1e-3 * J
    np.testing.assert_allclose(_torchjd_cagrad(small @ small.T), [0.0, 0.0])
    np.testing.assert_allclose(_weights("cagrad", small, rescale=0), _weights("cagrad", J, rescale=0), rtol=1e-9)
    # (3) 0 in the convex hull with F* = 0 (g_1 = -g_2, g_3 orthogonal to both): the maximiser is not unique;
    # TorchJD returns zero weights (d = 0, outside the ball), orthojax d = g0
    e = np.eye(P)
    hull = np.stack([e[0], -e[0], e[1]])
    np.testing.assert_allclose(_torchjd_cagrad(hull @ hull.T), [0.0, 0.0, 0.0])
    np.testing.assert_allclose(_weights("cagrad", hull, rescale=0), np.full(3, 1 / 3), atol=1e-12)
    # (4) a genuine but small optimal g_w (a task 1e-5 times smaller): TorchJD zeroes the update, orthojax keeps
    # the CAGrad direction: on the ball's boundary, with the dual optimum as its worst-task improvement
    tiny = np.stack([J[0], 1e-5 * J[1]])
    np.testing.assert_allclose(_torchjd_cagrad(tiny @ tiny.T), [0.0, 0.0])
    w = _weights("cagrad", tiny, rescale=0)
    d, g0 = w @ tiny, tiny.mean(axis=0)
    np.testing.assert_allclose(np.linalg.norm(d - g0), 0.4 * np.linalg.norm(g0), rtol=1e-9)
    xs = np.linspace(0.0, 1.0, 200001)
    gws = xs[:, None] * tiny[0] + (1 - xs[:, None]) * tiny[1]
    dual = gws @ g0 + 0.4 * np.linalg.norm(g0) * np.linalg.norm(gws, axis=1)
    assert np.min(tiny @ d) >= np.min(dual) - 1e-9 * np.linalg.norm(g0) ** 2
    assert np.min(tiny @ d) > np.min(tiny @ g0)  # better than the mean


def test_docstrings_state_the_differences_from_torchjd():
    for fn in (gm.cagrad_solution, gm.upgrad_solution, gm.dualproj_solution, gm.imtl_g_solution):
        doc = fn.__doc__
        assert "as in TorchJD" not in doc and "TorchJD" in doc
    for fn in (gm.upgrad_solution, gm.dualproj_solution):
        assert "trace(G) = ||J||_F^2 < norm_eps = 1e-4" in fn.__doc__ and "convex" in fn.__doc__
    doc = gm.cagrad_solution.__doc__
    assert "trace(G) = ||J||_F^2 < 1e-4" in doc and "convex hull" in doc and "rescale=0" in doc


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_gramian_gives_nan_not_a_guess(name):
    # e.g. a Gramian formed in float32 from gradients with norms above ~1.8e19 (use scaled_gramian instead)
    fn = jax.jit(getattr(gm, f"{name}_weights"))
    for bad in (np.inf, np.nan):
        G = jnp.asarray([[bad, 0.0, 0.0], [0.0, 1.0, 0.5], [0.0, 0.5, 1.0]], jnp.float32)
        assert np.all(np.isnan(np.asarray(fn(G)))), (name, bad)
    J = jnp.asarray([[1.0, np.nan], [0.0, 1.0]], jnp.float32)
    assert np.all(np.isnan(np.asarray(getattr(gm, f"{name}_weights")(gm.scaled_gramian(J)))))
