"""Scale safety of the Gramian-based aggregators (orthojax.aggregators, orthojax.methods.aggregation) in float32.

Task gradients with norms near 1e-20 or 1e20 have squared norms that flush to zero or overflow in float32;
these tests feed float32 Jacobians whose rows are scaled by 1e-30..1e30 (globally, one task at a time,
and several scales at once) through the public weight functions and through the aggregation Methods, and
compare with oracles that never use orthojax:

* exact rational arithmetic (``fractions.Fraction``) on the float32-rounded Jacobian for MGDA (support
  enumeration of the simplex QP), UPGrad and DualProj (free-set enumeration of min_{v >= u} v^T H v) and
  PCGrad (the projections, on the exact Gramian);
* 80-digit ``decimal`` arithmetic where a square root is needed: IMTL-G (Liu et al.'s closed form on the
  gradient vectors, a_{2..T} = g_1 U^T (D U^T)^-1) and two-task CAGrad (the dual on [0, 1], by bisection
  on its monotone derivative);
* NumPy float64 for Aligned-MTL (eigendecomposition of the exact Gramian, with the rank tolerance of the
  float32 input).
"""

from __future__ import annotations

import functools
import itertools
from decimal import Decimal, localcontext
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orthojax.methods import aggregation
from orthojax import aggregators as gm
from orthojax.methods.base import MultiTaskProblem

P = 5
F32_MAX = float(np.finfo(np.float32).max)
F32_TINY = float(np.finfo(np.float32).tiny)
SCALES = (1e-30, 1e-20, 1e-10, 1e10, 1e20, 1e30)


def _base(T: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    J = rng.normal(size=(T, P))
    J[-1] -= 0.6 * J[0]  # a conflict, so that every method does something
    return J


def _scale_patterns(T: int) -> list[tuple[float, ...]]:
    """Global scales, one task scaled at a time, and several extreme scales at once."""
    out = [(s,) * T for s in (1.0,) + SCALES]
    out += [tuple(f if k == t else 1.0 for k in range(T)) for t in range(T) for f in SCALES]
    mixed = [(1e-30, 1.0, 1e30), (1e-20, 1e-20, 1e20), (1e20, 1e-20, 1.0)]
    out += [m[:T] for m in mixed]
    return out


def _float32_jacobian(T: int, factors) -> tuple[np.ndarray, np.ndarray]:
    J32 = (_base(T) * np.asarray(factors)[:, None]).astype(np.float32)
    return J32, J32.astype(np.float64)


# --------------------------------------------------------------------------------------------------------------
# Exact oracles
# --------------------------------------------------------------------------------------------------------------


def _solve(A, b):
    """Gauss-Jordan elimination in exact (Fraction) or high-precision (Decimal) arithmetic; None if singular."""
    n = len(b)
    M = [list(A[i]) + [b[i]] for i in range(n)]
    for k in range(n):
        piv = max(range(k, n), key=lambda i: abs(M[i][k]))
        if M[piv][k] == 0:
            return None
        M[k], M[piv] = M[piv], M[k]
        for i in range(n):
            if i != k and M[i][k] != 0:
                f = M[i][k] / M[k][k]
                M[i] = [a - f * c for a, c in zip(M[i], M[k])]
    return [M[i][n] / M[i][i] for i in range(n)]


def _frac_gram(J):
    F = [[Fraction(float(x)) for x in row] for row in J]
    return [[sum(a * b for a, b in zip(F[i], F[j])) for j in range(len(F))] for i in range(len(F))]


def _oracle_mgda(J):
    """Exact min-norm weights: the KKT system on every support; the first feasible, optimal one."""
    G = _frac_gram(J)
    T = len(G)
    for size in range(1, T + 1):
        for S in itertools.combinations(range(T), size):
            A = [[G[i][j] for j in S] + [Fraction(1)] for i in S] + [[Fraction(1)] * size + [Fraction(0)]]
            sol = _solve(A, [Fraction(0)] * size + [Fraction(1)])
            if sol is None:
                continue
            w = [Fraction(0)] * T
            for k, i in enumerate(S):
                w[i] = sol[k]
            if any(x < 0 for x in w):
                continue
            Gw = [sum(G[i][j] * w[j] for j in range(T)) for i in range(T)]
            mu = sum(w[i] * Gw[i] for i in range(T))
            if all(Gw[i] >= mu for i in range(T)):
                return np.array([float(x) for x in w])
    raise AssertionError("no KKT point found")


def _oracle_min_above(H, u):
    """Exact argmin_{v >= u} v^T H v (H positive definite): the free set whose solution satisfies the KKT conditions."""
    T = len(u)
    for size in range(T + 1):
        for Fs in itertools.combinations(range(T), size):
            v = list(u)
            if Fs:
                B = [i for i in range(T) if i not in Fs]
                rhs = [-sum(H[i][j] * u[j] for j in B) for i in Fs]
                sol = _solve([[H[i][j] for j in Fs] for i in Fs], rhs)
                if sol is None:
                    continue
                for k, i in enumerate(Fs):
                    v[i] = sol[k]
            if any(v[i] < u[i] for i in range(T)):
                continue
            Hv = [sum(H[i][j] * v[j] for j in range(T)) for i in range(T)]
            if all(Hv[i] >= 0 for i in range(T) if i not in Fs):
                return v
    raise AssertionError("no KKT point found")


def _oracle_dual_cone(J, reg_eps, upgrad):
    G = _frac_gram(J)
    T = len(G)
    trace = sum(G[i][i] for i in range(T))
    eps = Fraction(reg_eps)
    H = [[G[i][j] / trace + (eps if i == j else 0) for j in range(T)] for i in range(T)]
    pref = [Fraction(1, T)] * T
    if not upgrad:
        return np.array([float(x) for x in _oracle_min_above(H, pref)])
    total = [Fraction(0)] * T
    for i in range(T):
        v = _oracle_min_above(H, [pref[i] if k == i else Fraction(0) for k in range(T)])
        total = [a + b for a, b in zip(total, v)]
    return np.array([float(x) for x in total])


def _oracle_pcgrad(J):
    """PCGrad with the order 0..T-1, on the exact Gramian (coefficients of the projected gradients)."""
    G = _frac_gram(J)
    T = len(G)
    w = [Fraction(0)] * T
    for i in range(T):
        c = [Fraction(int(k == i)) for k in range(T)]
        for j in range(T):
            if j == i or G[j][j] == 0:
                continue
            inner = sum(G[j][k] * c[k] for k in range(T))
            if inner < 0:
                c[j] -= inner / G[j][j]
        w = [a + b for a, b in zip(w, c)]
    return np.array([float(x) for x in w])


def _dec_vectors(J):
    return [[Decimal(float(x)) for x in row] for row in J]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _oracle_imtl_g(J):
    """Liu et al.'s closed form on the gradient vectors: a_{2..T} = g_1 U^T (D U^T)^-1, a_1 = 1 - sum."""
    with localcontext() as ctx:
        ctx.prec = 80
        g = _dec_vectors(J)
        u = [[x / _dot(r, r).sqrt() for x in r] for r in g]
        D = [[a - b for a, b in zip(g[0], g[t])] for t in range(1, len(g))]
        U = [[a - b for a, b in zip(u[0], u[t])] for t in range(1, len(g))]
        # x (D U^T) = g_1 U^T  <=>  (U D^T) x^T = U g_1
        A = [[_dot(U[i], D[j]) for j in range(len(D))] for i in range(len(U))]
        rhs = [_dot(U[i], g[0]) for i in range(len(U))]
        a = _solve(A, rhs)
        return np.array([float(1 - sum(a))] + [float(x) for x in a])


def _oracle_cagrad_two_tasks(J, c=0.4, rescale=1):
    """Two-task CAGrad: min_{x in [0, 1]} F(x) = <g_w, g0> + r ||g_w||, g_w = x g_1 + (1 - x) g_2, by bisection
    on the nondecreasing F'; weights (1/2 + r x / ||g_w||, 1/2 + r (1 - x) / ||g_w||) / (1 + c^2)."""
    with localcontext() as ctx:
        ctx.prec = 80
        g1, g2 = _dec_vectors(J)
        g0 = [(a + b) / 2 for a, b in zip(g1, g2)]
        delta = [a - b for a, b in zip(g1, g2)]
        r = Decimal(c) * _dot(g0, g0).sqrt()

        def gw(x):
            return [b + x * d for b, d in zip(g2, delta)]

        def dF(x):
            v = gw(x)
            return _dot(delta, g0) + r * _dot(delta, v) / _dot(v, v).sqrt()

        if dF(Decimal(0)) >= 0:
            x = Decimal(0)
        elif dF(Decimal(1)) <= 0:
            x = Decimal(1)
        else:
            lo, hi = Decimal(0), Decimal(1)
            for _ in range(320):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if dF(mid) < 0 else (lo, mid)
            x = (lo + hi) / 2
        norm = _dot(gw(x), gw(x)).sqrt()
        lam = r / norm
        div = {0: 1, 1: 1 + Decimal(c) ** 2, 2: 1 + Decimal(c)}[rescale]
        return np.array([float((Decimal("0.5") + lam * x) / div), float((Decimal("0.5") + lam * (1 - x)) / div)])


def _oracle_aligned_mtl(J, eps=float(np.finfo(np.float32).eps)):
    G = np.array([[float(x) for x in row] for row in _frac_gram(J)])
    T = G.shape[0]
    Q = G / np.trace(G)
    lam, V = np.linalg.eigh(Q)
    keep = lam > lam.max() * T * eps
    B = np.sqrt(lam[keep].min()) * (V[:, keep] / np.sqrt(lam[keep])) @ V[:, keep].T
    return B @ np.full(T, 1.0 / T)


ORACLES = {
    ("mgda", ()): _oracle_mgda,
    ("pcgrad", ()): _oracle_pcgrad,
    ("imtl_g", ()): _oracle_imtl_g,
    ("aligned_mtl", ()): _oracle_aligned_mtl,
    ("upgrad", ()): lambda J: _oracle_dual_cone(J, 1e-4, True),
    ("upgrad", (("reg_eps", 0.0),)): lambda J: _oracle_dual_cone(J, 0.0, True),
    ("dualproj", ()): lambda J: _oracle_dual_cone(J, 1e-4, False),
    ("dualproj", (("reg_eps", 0.0),)): lambda J: _oracle_dual_cone(J, 0.0, False),
    ("cagrad", ()): _oracle_cagrad_two_tasks,
}


def test_oracles_agree_with_float64_at_unit_scale():
    # sanity of the oracles themselves (they are the expected values below): the KKT / defining properties
    J = _base(3).astype(np.float32).astype(np.float64)
    d = _oracle_mgda(J) @ J
    assert np.min(J @ d) >= d @ d * (1 - 1e-12)
    d = _oracle_imtl_g(J) @ J
    proj = J @ d / np.linalg.norm(J, axis=1)
    np.testing.assert_allclose(proj, proj[0], rtol=1e-12)
    w = _oracle_dual_cone(J, 0.0, False)
    assert np.all(w >= 1 / 3 - 1e-15) and np.all(J @ (w @ J) >= -1e-12)
    J2 = _base(2).astype(np.float32).astype(np.float64)
    w = _oracle_cagrad_two_tasks(J2, rescale=0)
    d, g0 = w @ J2, J2.mean(0)
    np.testing.assert_allclose(np.linalg.norm(d - g0), 0.4 * np.linalg.norm(g0), rtol=1e-12)


# --------------------------------------------------------------------------------------------------------------
# The Gramian itself
# --------------------------------------------------------------------------------------------------------------


def test_gramian_exact_where_representable_float32():
    # entries ~3e-20: every product flushes to zero in float32, their sum (~1e-36) does not; entries ~1e17 in
    # one row, ~1e-17 in the other: every cross product is ~1, the squares overflow / flush on their own
    rng = np.random.default_rng(0)
    mixed = np.stack([1e17 * rng.normal(size=400), 1e-17 * rng.normal(size=400)])
    for J64 in (3e-20 * rng.normal(size=(3, 1000)), mixed):
        J32 = J64.astype(np.float32)
        J64 = J32.astype(np.float64)
        G = np.asarray(gm.gramian([jnp.asarray(J32[:, :7]), jnp.asarray(J32[:, 7:])]), np.float64)
        G_ref = J64 @ J64.T
        rep = (np.abs(G_ref) >= F32_TINY) & (np.abs(G_ref) <= F32_MAX)
        assert np.any(rep)
        np.testing.assert_allclose(G[rep], G_ref[rep], rtol=1e-5)
        assert np.all(np.isinf(G[np.abs(G_ref) > F32_MAX]))


def test_gramian_norms_and_cosines_float32_at_every_scale():
    for factors in _scale_patterns(3):
        J32, J64 = _float32_jacobian(3, factors)
        leaves = [jnp.asarray(J32[:, :2]), jnp.asarray(J32[:, 2:])]
        G = np.asarray(gm.gramian(leaves), np.float64)
        G_ref = J64 @ J64.T
        n_ref = np.linalg.norm(J64, axis=1)
        rep = (np.abs(G_ref) >= F32_TINY) & (np.abs(G_ref) <= F32_MAX)
        np.testing.assert_allclose(G[rep], G_ref[rep], rtol=2e-6, err_msg=str(factors))
        assert np.all(np.isinf(G[np.abs(G_ref) > F32_MAX])), factors
        assert np.all(np.abs(G[np.abs(G_ref) < F32_TINY]) < F32_TINY), factors
        S = gm.scaled_gramian(leaves)  # representable whatever the scale
        np.testing.assert_allclose(np.asarray(S.norms, np.float64), n_ref, rtol=2e-6, err_msg=str(factors))
        np.testing.assert_allclose(np.asarray(S.cosines, np.float64), G_ref / np.outer(n_ref, n_ref), atol=2e-6,
                                   err_msg=str(factors))
        if np.all(rep):  # the factored form of a representable Gramian is recovered from G as well
            S2 = gm.as_scaled_gramian(jnp.asarray(G, jnp.float32))
            np.testing.assert_allclose(np.asarray(S2.norms, np.float64), n_ref, rtol=2e-6)


# --------------------------------------------------------------------------------------------------------------
# Weights and directions against the oracles
# --------------------------------------------------------------------------------------------------------------


def _linear_problem():
    """L_t(theta) = <g_t, theta>: the shared Jacobian is exactly the batch J."""

    def task_losses(p, batch, rng):
        return batch @ p["encoder"]["w"] + 0.0 * p["head"]["b"][0], ()

    params = {"encoder": {"w": jnp.zeros((P,), jnp.float32)}, "head": {"b": jnp.zeros((1,), jnp.float32)}}
    return MultiTaskProblem(task_losses=task_losses, last_shared="encoder", shared="encoder"), params


@functools.lru_cache(maxsize=None)
def _method_step(name, kw_items):
    problem, params = _linear_problem()
    method = aggregation.AGGREGATORS[name](**dict(kw_items))
    if name == "pcgrad":
        method = aggregation.pcgrad(random_order=False)

    @jax.jit
    def run(J):
        out = method.step(problem, params, method.init(params, J.shape[0]), J, jax.random.key(0))
        return out.metrics["task_weights"], out.grads["encoder"]["w"], out.grads["head"]["b"]

    return run


@functools.lru_cache(maxsize=None)
def _weights_fn(name, kw_items):
    fn = getattr(gm, f"{name}_weights")
    return jax.jit(lambda G: fn(G, **dict(kw_items)))


def _assert_weights(w, w_ref, n, msg):
    """Each weight to 1e-3 relative, or to 1e-5 of the largest contribution max_s |w_s| n_s in task t's units;
    weights beyond float32's range saturate, those below it may flush to 0."""
    w = np.asarray(w, np.float64)
    contrib = np.max(np.abs(w_ref) * n)
    for t in range(len(w)):
        if abs(w_ref[t]) > F32_MAX:
            assert np.sign(w[t]) == np.sign(w_ref[t]) and abs(w[t]) >= 0.999 * F32_MAX, (msg, t, w, w_ref)
        else:
            tol = 1e-3 * abs(w_ref[t]) + (1e-5 * contrib / n[t] if n[t] > 0 else 0.0) + F32_TINY
            assert abs(w[t] - w_ref[t]) <= tol, (msg, t, w, w_ref)


METHOD_CASES = [
    ("mgda", (), 3),
    ("pcgrad", (), 3),
    ("imtl_g", (), 3),
    ("aligned_mtl", (), 3),
    ("upgrad", (), 3),
    ("upgrad", (("reg_eps", 0.0),), 3),
    ("dualproj", (), 3),
    ("dualproj", (("reg_eps", 0.0),), 3),
    ("cagrad", (), 2),
]


@pytest.mark.parametrize("name,kw,T", METHOD_CASES, ids=[f"{n}{'-reg0' if k else ''}" for n, k, _ in METHOD_CASES])
def test_float32_weights_and_direction_match_the_oracle_at_extreme_scales(name, kw, T):
    step = _method_step(name, kw)
    weights = _weights_fn(name, kw)
    oracle = ORACLES[(name, kw)]
    for factors in _scale_patterns(T):
        J32, J64 = _float32_jacobian(T, factors)
        n = np.linalg.norm(J64, axis=1)
        w_ref = oracle(J64)
        d_ref = w_ref @ J64
        w_step, d, head = step(jnp.asarray(J32))
        msg = f"{name} {dict(kw)} {factors}"
        _assert_weights(w_step, w_ref, n, msg)
        np.testing.assert_allclose(np.asarray(d, np.float64), d_ref, rtol=0,
                                   atol=1e-4 * np.linalg.norm(d_ref), err_msg=msg)
        assert np.all(np.asarray(head) == 0)
        # the weights from the public (T, T) Gramian, where G is representable in float32
        G_ref = J64 @ J64.T
        if np.all((np.abs(G_ref) <= F32_MAX) & ((np.abs(G_ref) >= F32_TINY) | (G_ref == 0))):
            _assert_weights(weights(gm.gramian(jnp.asarray(J32))), w_ref, n, msg + " (from G)")


@pytest.mark.parametrize("name,kw,T", METHOD_CASES, ids=[f"{n}{'-reg0' if k else ''}" for n, k, _ in METHOD_CASES])
def test_weights_invariant_to_a_global_rescaling(name, kw, T):
    step = _method_step(name, kw)
    ref = None
    for s in (1.0,) + SCALES:
        w, d, _ = step(jnp.asarray((_base(T) * s).astype(np.float32)))
        w = np.asarray(w)
        assert np.all(np.isfinite(w)) and np.all(np.isfinite(np.asarray(d))), (name, s, w)
        if ref is None:
            ref = w
        np.testing.assert_allclose(w, ref, rtol=1e-5, atol=1e-6 * np.max(np.abs(ref)), err_msg=f"{name} {s}")


@pytest.mark.parametrize("name,kw,T", METHOD_CASES, ids=[f"{n}{'-reg0' if k else ''}" for n, k, _ in METHOD_CASES])
def test_scaled_gramian_path_invariant_to_a_global_rescaling(name, kw, T):
    weights = _weights_fn(name, kw)
    ref = np.asarray(weights(gm.scaled_gramian(jnp.asarray(_base(T), jnp.float32))))
    for s in SCALES:
        w = np.asarray(weights(gm.scaled_gramian(jnp.asarray((_base(T) * s).astype(np.float32)))))
        np.testing.assert_allclose(w, ref, rtol=1e-5, atol=1e-6 * np.max(np.abs(ref)), err_msg=f"{name} {s}")


def test_imtl_g_direction_invariant_to_rescaling_single_tasks():
    # IMTL-G's direction depends on the unit gradients only
    step = _method_step("imtl_g", ())
    J = _base(3)
    d0 = np.asarray(step(jnp.asarray(J, jnp.float32))[1], np.float64)
    for factors in itertools.product((1e-30, 1.0, 1e30), repeat=3):
        d = np.asarray(step(jnp.asarray(J * np.asarray(factors)[:, None], jnp.float32))[1], np.float64)
        np.testing.assert_allclose(d / np.linalg.norm(d), d0 / np.linalg.norm(d0), atol=1e-5, err_msg=str(factors))
