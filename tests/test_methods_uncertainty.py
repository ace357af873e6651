"""Uncertainty weighting against hand computation, and its fixed point s_t = log L_t (Kendall et al.)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from orthojax.methods import MultiTaskProblem, uncertainty

A = np.array([1.0, 2.0])
B = np.array([-1.0, 0.5])


def _problem():
    def task_losses(p, batch, rng):
        w = p["encoder"]["w"]
        return jnp.stack([(w @ A - 1.0) ** 2, 2.0 * (w @ B) ** 2]), None

    return MultiTaskProblem(task_losses, last_shared="encoder"), {"encoder": {"w": jnp.array([0.3, -0.4])}}


def _hand_losses_and_grads(w):
    l0, l1 = (w @ A - 1.0) ** 2, 2.0 * (w @ B) ** 2
    return np.array([l0, l1]), np.stack([2 * (w @ A - 1.0) * A, 4.0 * (w @ B) * B])


@pytest.mark.parametrize("form", ["half", "full"])
def test_values_and_update_match_hand_computation(form):
    problem, params = _problem()
    method = uncertainty(init_log_var=-0.5, form=form, optimizer=optax.sgd(0.1))
    state = method.init(params, 2)
    np.testing.assert_allclose(state.log_vars, [-0.5, -0.5])
    out = method.step(problem, params, state, None, jax.random.key(0))

    s = np.array([-0.5, -0.5])
    L, dL = _hand_losses_and_grads(np.array([0.3, -0.4]))
    if form == "half":
        c, loss, ds = np.exp(-s) / 2, np.sum(L * np.exp(-s) / 2 + s / 2), -L * np.exp(-s) / 2 + 0.5
    else:
        c, loss, ds = np.exp(-s), np.sum(L * np.exp(-s) + s), -L * np.exp(-s) + 1.0
    np.testing.assert_allclose(out.loss, loss, rtol=1e-6)
    np.testing.assert_allclose(out.grads["encoder"]["w"], c @ dL, rtol=1e-5)
    np.testing.assert_allclose(out.metrics["task_weights"], c, rtol=1e-6)
    np.testing.assert_allclose(out.metrics["log_vars"], s)
    np.testing.assert_allclose(out.state.log_vars, s - 0.1 * ds, rtol=1e-6)


def test_log_variances_converge_to_log_losses():
    """With the losses held fixed the optimum of sum L/(2e^s) + s/2 is s_t = log L_t."""
    problem, params = _problem()
    method = uncertainty(optimizer=optax.sgd(0.5))
    step = jax.jit(lambda s: method.step(problem, params, s, None, jax.random.key(0)))
    state = method.init(params, 2)
    for _ in range(300):
        out = step(state)
        state = out.state
    L, _ = _hand_losses_and_grads(np.array([0.3, -0.4]))
    np.testing.assert_allclose(state.log_vars, np.log(L), atol=1e-3)
    # the larger loss gets the smaller weight
    assert out.metrics["task_weights"][int(np.argmax(L))] < out.metrics["task_weights"][int(np.argmin(L))]


def test_default_optimizer_is_adam_with_the_learning_rate():
    problem, params = _problem()
    method = uncertainty(learning_rate=0.01)
    out = method.step(problem, params, method.init(params, 2), None, jax.random.key(0))
    # Adam's first step moves every coordinate by learning_rate against the sign of its gradient
    L, _ = _hand_losses_and_grads(np.array([0.3, -0.4]))
    ds = -L * np.exp(0.5) / 2 + 0.5
    np.testing.assert_allclose(out.state.log_vars, -0.5 - 0.01 * np.sign(ds), rtol=1e-5)


@pytest.mark.parametrize("form", ["half", "full"])
def test_float64_state_and_step_match_numpy_under_x64(form):
    """Under x64 with float64 parameters s and its optimiser state are float64 and a step agrees with the
    NumPy float64 hand computation to 1e-13 (float32 state before: ~1e-8)."""
    with jax.enable_x64(True):
        problem, _ = _problem()
        w = np.array([0.3, -0.4]) + 1e-9 * np.array([1.0, 3.0])  # not representable in float32
        params = {"encoder": {"w": jnp.asarray(w, jnp.float64)}}
        init = -0.5 + 1e-10
        method = uncertainty(init_log_var=init, form=form, optimizer=optax.sgd(0.1))
        state = method.init(params, 2)
        for leaf in jax.tree.leaves(state):
            assert leaf.dtype == jnp.float64, leaf.dtype
        out = method.step(problem, params, state, None, jax.random.key(0))
        s = np.full(2, init)
        L, dL = _hand_losses_and_grads(w)
        c, off = (np.exp(-s) / 2, 0.5) if form == "half" else (np.exp(-s), 1.0)
        assert out.state.log_vars.dtype == jnp.float64
        np.testing.assert_allclose(out.state.log_vars, s - 0.1 * (-L * c + off), rtol=1e-13)
        np.testing.assert_allclose(out.grads["encoder"]["w"], c @ dL, rtol=1e-13)
        np.testing.assert_allclose(out.loss, np.sum(c * L + off * s), rtol=1e-13)
