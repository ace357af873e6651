"""SDMGrad against a NumPy float64 re-derivation (half-batch double sampling, projected momentum SGD on w)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orthojax.methods.base import MultiTaskProblem
from orthojax.methods.sdmgrad import normalized_cross_gramian, sdmgrad, sdmgrad_weights

RNG = np.random.default_rng(34)  # data for which w stays inside the simplex (lam = 0.3, lr = 0.5)
XB = RNG.normal(size=(8, 2))
YB = RNG.normal(size=(8, 3))
W0 = np.array([[0.4, -0.2], [0.1, 0.3]])
A0 = np.array([[1.0, 0.5], [-0.4, 0.9], [0.5, -0.3]])
SCALE = np.array([1.0, 2.0, 0.5])


def _problem(order=(0, 1, 2)):
    """L_t = s_t mean over the batch of (x W a_t - y_t)^2; ``order`` permutes the tasks."""
    order = np.asarray(order)

    def task_losses(p, batch, rng):
        z = batch["x"] @ p["encoder"]["w"]
        return SCALE[order] * jnp.mean((z @ p["heads"]["a"][order].T - batch["y"][:, order]) ** 2, axis=0), None

    params = {"encoder": {"w": jnp.asarray(W0)}, "heads": {"a": jnp.asarray(A0)}}
    return MultiTaskProblem(task_losses, last_shared="encoder", shared="encoder"), params


def _np_losses_and_grads(W, A, x, y):
    Z = x @ W
    R = Z @ A.T - y
    n = x.shape[0]
    L = SCALE * np.mean(R**2, axis=0)
    dW = np.stack([SCALE[t] * 2.0 / n * x.T @ np.outer(R[:, t], A[t]) for t in range(3)])
    dA = np.zeros((3, 3, 2))
    for t in range(3):
        dA[t, t] = SCALE[t] * 2.0 / n * Z.T @ R[:, t]
    return L, dW, dA


def _np_simplex(v):
    """Projection by bisection on theta: sum_t max(v_t - theta, 0) = 1."""
    lo, hi = v.min() - 1.0, v.max()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.maximum(v - mid, 0).sum() > 1 else (lo, mid)
    return np.maximum(v - 0.5 * (lo + hi), 0)


def _np_normalized(J1, J2):
    GG = J1 @ J2.T
    scale = np.mean(np.sqrt(np.clip(np.diag(GG), 0, None)))
    return GG / (scale**2 + 1e-8)


def _np_inner(GG, w, lam, niter, lr, momentum):
    """PyTorch SGD(lr, momentum) semantics: buf = g at the first step, then buf = momentum buf + g."""
    buf = None
    for _ in range(niter):
        g = GG @ w + lam * GG.mean(axis=1)
        buf = g if buf is None else momentum * buf + g
        w = _np_simplex(w - lr * buf)
    return w


@pytest.mark.parametrize("lam,lr,double_sampling", [(0.3, 0.5, True), (0.0, 10.0, False)])
def test_steps_match_numpy_float64(lam, lr, double_sampling):
    niter, momentum, step_size = 20, 0.5, 0.05
    with jax.enable_x64(True):
        problem, params = _problem()
        params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
        batch = {"x": jnp.asarray(XB), "y": jnp.asarray(YB)}
        method = sdmgrad(lam=lam, niter=niter, lr=lr, double_sampling=double_sampling)
        step = jax.jit(method.step, static_argnums=0)
        state = method.init(params, 3)
        np.testing.assert_allclose(state.weights, np.full(3, 1 / 3))
        W, A, w = W0.copy(), A0.copy(), np.full(3, 1 / 3)
        for k in range(3):
            out = step(problem, params, state, batch, jax.random.key(0))
            L, J, dA = _np_losses_and_grads(W, A, XB, YB)
            J = J.reshape(3, -1)
            if double_sampling:
                J1 = _np_losses_and_grads(W, A, XB[:4], YB[:4])[1].reshape(3, -1)
                J2 = _np_losses_and_grads(W, A, XB[4:], YB[4:])[1].reshape(3, -1)
            else:
                J1 = J2 = J
            w = _np_inner(_np_normalized(J1, J2), w, lam, niter, lr, momentum)
            if lam and k == 0:
                assert np.all(w > 0.05)  # an interior w: the result depends on the shift lam / T
            d = ((w @ J + lam * J.mean(axis=0)) / (1 + lam)).reshape(2, 2)
            head = dA.sum(axis=0)
            c = (w + lam / 3) / (1 + lam)
            np.testing.assert_allclose(out.metrics["simplex_weights"], w, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(out.metrics["task_weights"], c, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(out.task_losses, L, rtol=1e-13)
            np.testing.assert_allclose(out.loss, c @ L, rtol=1e-9)
            np.testing.assert_allclose(out.grads["encoder"]["w"], d, rtol=1e-9)
            np.testing.assert_allclose(out.grads["heads"]["a"], head, rtol=1e-12)
            W, A = W - step_size * d, A - step_size * head
            params = jax.tree.map(lambda p, g: p - step_size * g, params, out.grads)
            state = out.state
        assert not np.allclose(w, 1 / 3, atol=1e-3)  # w moved, so the test sees the inner loop


def test_inner_loop_and_normalisation_against_numpy():
    with jax.enable_x64(True):
        J1, J2 = RNG.normal(size=(4, 6)), RNG.normal(size=(4, 6))
        J2[2] = -J1[2]  # a negative diagonal entry, clamped to 0 in the scale
        want = _np_normalized(J1, J2)
        got = normalized_cross_gramian([jnp.asarray(J1[:, :2]), jnp.asarray(J1[:, 2:].reshape(4, 2, 2))],
                                       [jnp.asarray(J2[:, :2]), jnp.asarray(J2[:, 2:].reshape(4, 2, 2))])
        np.testing.assert_allclose(got, want, rtol=1e-12)
        w0 = np.array([0.1, 0.2, 0.3, 0.4])
        got = sdmgrad_weights(jnp.asarray(want), jnp.asarray(w0), lam=0.3, niter=20, lr=5.0, momentum=0.5)
        np.testing.assert_allclose(got, _np_inner(want, w0, 0.3, 20, 5.0, 0.5), atol=1e-12)  # a vertex
        # two close samples (A near positive definite): w stays inside the simplex, where every
        # hyper-parameter changes the result
        rng = np.random.default_rng(5)
        J1 = rng.normal(size=(4, 6))
        A = _np_normalized(J1, J1 + 0.3 * rng.normal(size=(4, 6)))
        for lam, niter, lr, momentum in ((0.3, 20, 0.2, 0.5), (0.6, 7, 0.5, 0.0), (0.0, 3, 0.1, 0.9)):
            want = _np_inner(A, w0, lam, niter, lr, momentum)
            assert np.all(want > 0.03)
            got = sdmgrad_weights(jnp.asarray(A), jnp.asarray(w0), lam=lam, niter=niter, lr=lr, momentum=momentum)
            np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13)


def test_normalisation_is_scale_safe_in_float32():
    """J J^T would overflow (J ~ 2^70) or be subnormal (J ~ 2^-70) in float32; the normalised matrix is exact.

    For small J the constant 1e-8 dominates the squared scale, so the result is ~ J J^T / 1e-8 (~ 1e-34)."""
    J1, J2 = RNG.normal(size=(3, 5)), RNG.normal(size=(3, 5))
    with jax.enable_x64(True):
        want = _np_normalized(J1, J2)
    for factor in (2.0**70, 2.0**-70, 1.0):
        got = normalized_cross_gramian(jnp.asarray(J1 * factor, jnp.float32), jnp.asarray(J2 * factor, jnp.float32))
        assert got.dtype == jnp.float32
        expected = want if factor >= 1 else _np_normalized(J1 * factor, J2 * factor)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_shapes_jit_finiteness_and_permutation_equivariance():
    problem, params = _problem()
    params = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    batch = {"x": jnp.asarray(XB, jnp.float32), "y": jnp.asarray(YB, jnp.float32)}
    method = sdmgrad()
    state = method.init(params, 3)
    assert state.weights.shape == (3,) and state.weights.dtype == jnp.float32
    step = jax.jit(method.step, static_argnums=0)
    eager = method.step(problem, params, state, batch, jax.random.key(0))
    jitted = step(problem, params, state, batch, jax.random.key(0))
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    again = step(problem, params, jitted.state, batch, jax.random.key(0))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(again))
    assert jax.tree.map(jnp.shape, again.grads) == jax.tree.map(jnp.shape, params)
    w = np.asarray(again.metrics["simplex_weights"])
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-6
    perm = np.array([2, 0, 1])
    permuted = step(_problem(tuple(perm))[0], params, state, batch, jax.random.key(0))
    np.testing.assert_allclose(permuted.metrics["task_weights"], jitted.metrics["task_weights"][perm], rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(permuted.grads["encoder"]["w"], jitted.grads["encoder"]["w"], rtol=1e-4, atol=1e-6)


def test_hyperparameter_validation_and_batch_errors():
    for kwargs in ({"lam": -0.1}, {"lam": float("nan")}, {"niter": 0}, {"lr": 0.0}, {"lr": float("inf")},
                   {"momentum": 1.0}, {"momentum": -0.5}):
        with pytest.raises(ValueError, match="sdmgrad"):
            sdmgrad(**kwargs)
    for kwargs in ({"niter": 2.5}, {"niter": True}, {"lam": "0.3"}, {"double_sampling": "yes"}):
        with pytest.raises(TypeError, match="sdmgrad"):
            sdmgrad(**kwargs)
    problem, params = _problem()
    with pytest.raises(ValueError, match="at least one task"):
        sdmgrad().init(params, 0)
    one = {"x": jnp.asarray(XB[:1]), "y": jnp.asarray(YB[:1])}
    with pytest.raises(ValueError, match="double_sampling=True.*at least 2 examples"):
        sdmgrad().step(problem, params, sdmgrad().init(params, 3), one, jax.random.key(0))
    with pytest.raises(ValueError, match="same"):
        normalized_cross_gramian(jnp.zeros((3, 4)), jnp.zeros((2, 4)))
