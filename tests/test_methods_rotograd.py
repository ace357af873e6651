"""RotoGrad (rotate_only, rotograd, rotograd_norm) against hand computation, and its two promises on a toy:
the rotations align each back-rotated task gradient with the common direction, and RotoGrad hands the
encoder every task's gradient with the same magnitude."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.scipy.linalg import expm

from orthojax.methods import (
    get_method,
    rotate_only,
    rotate_representations,
    rotation_matrices,
    rotograd,
    rotograd_norm,
)
from test_methods_common import make_toy

M = 3  # rotate the first 3 of the toy's 4 channels: the pass-through path is exercised too


def _rot(z, r):
    m = r.shape[-1]
    return jnp.concatenate([z[..., :m] @ r.T, z[..., m:]], axis=-1)


def _oracle(problem, params, batch, rotations):
    """Per-task quantities from explicit per-task jax.grad calls with the rotations held fixed."""
    zs, extras = problem.encode(params, batch, None)
    z = zs[0]
    T = len(zs)

    def loss_k(p, k):
        zs, extras = problem.encode(p, batch, None)
        return problem.decode(p, tuple(_rot(zj, rj) for zj, rj in zip(zs, rotations)), extras, batch, None)[0][k]

    def loss_k_of_z(zz, k):
        return problem.decode(params, tuple(_rot(zz, rj) for rj in rotations), extras, batch, None)[0][k]

    def loss_k_of_rotated(zt, k):
        zts = [_rot(z, rj) for rj in rotations]
        zts[k] = zt
        return problem.decode(params, tuple(zts), extras, batch, None)[0][k]

    g = [jax.grad(loss_k_of_z)(z, k) for k in range(T)]
    h = [jax.grad(loss_k_of_rotated)(_rot(z, rotations[k]), k) for k in range(T)]
    param_grads = [jax.grad(loss_k)(params, k) for k in range(T)]
    losses = jnp.stack([loss_k(params, k) for k in range(T)])
    return g, h, param_grads, losses


def _jit_oracle(problem, batch):
    run = jax.jit(lambda params, rotations: _oracle(problem, params, batch, rotations))

    def oracle(params, rotations):
        g, h, param_grads, losses = run(params, rotations)
        return [np.asarray(x) for x in g], [np.asarray(x) for x in h], param_grads, np.asarray(losses)

    return oracle


def _reference(g):
    n = np.array([np.linalg.norm(x) for x in g])
    mean_norm = np.linalg.norm(sum(g) / len(g))
    return sum(x * mean_norm / nk for x, nk in zip(g, n)) / len(g), n


@jax.jit
def _skew_grad(base, skew, h, r):
    """The package's rotation loss: geotorch's strict-lower-triangle skew, summed over a (B, m) batch."""
    def loss(skew):
        lower = jnp.tril(skew, -1)
        rs = jnp.matmul(base, jax.vmap(expm)(lower - jnp.swapaxes(lower, 1, 2)))
        return sum(jnp.sum((_rot(r, rk) - hk) ** 2) for rk, hk in zip(rs, h))

    return jax.grad(loss)(skew)


def _skew_after_sgd(state, h, r, lr):
    skew = state.learnable["skew"]
    return np.asarray(skew - lr * _skew_grad(state.base, skew, h, jnp.asarray(r)))


def _combine(param_grads, coefficients):
    return jax.tree.map(lambda *gs: sum(c * x for c, x in zip(coefficients, gs)), *param_grads)


def _assert_tree_close(a, b, rtol=2e-4, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_rotograd_three_steps_match_hand_computation():
    """Step 0 records n^0, step 1 uses it, step 2 (= burn_in_period) records it again."""
    params, problem, batch = make_toy(jax.random.key(0), scales=(1.0, 4.0))
    lr = 0.05
    method = rotograd(latent_size=M, burn_in_period=2, optimizer=optax.sgd(lr), seed=3)
    step = jax.jit(lambda p, s: method.step(problem, p, s, batch, None))
    state = method.init(params, 2)
    R0 = np.asarray(rotation_matrices(state))
    np.testing.assert_allclose(np.einsum("tij,tkj->tik", R0, R0), np.broadcast_to(np.eye(M), (2, M, M)), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(R0), [1.0, 1.0], rtol=1e-5)
    assert not np.allclose(R0, np.eye(M), atol=1e-2)  # a random start
    n0 = None
    oracle = _jit_oracle(problem, batch)
    for it in range(3):
        rotations = rotation_matrices(state)
        g, h, param_grads, losses = oracle(params, rotations)
        r, n = _reference(g)
        n0 = n if it in (0, 2) else n0
        rho = n / n0
        C = np.sum(rho / rho.sum() * n)
        out = step(params, state)
        expected = {
            "encoder": _combine(param_grads, C / n)["encoder"],
            "heads": _combine(param_grads, [1.0, 1.0])["heads"],
        }
        _assert_tree_close(out.grads, expected)
        np.testing.assert_allclose(out.task_losses, losses, rtol=1e-5)
        np.testing.assert_allclose(out.metrics["grad_norms"], n, rtol=1e-5)
        np.testing.assert_allclose(out.metrics["encoder_grad_norms"], [C, C], rtol=1e-5)
        np.testing.assert_allclose(out.state.initial_norms, n0, rtol=1e-5)
        cos = [np.sum(gk * r) / (np.linalg.norm(gk) * np.linalg.norm(r)) for gk in g]
        np.testing.assert_allclose(out.metrics["reference_cosine"], cos, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(out.state.learnable["skew"], _skew_after_sgd(state, h, r, lr), rtol=1e-4, atol=1e-6)
        state = out.state
        params = jax.tree.map(lambda p, gr: p - 0.2 * gr, params, out.grads)


def test_rotate_only_and_rotograd_norm_match_hand_computation():
    params, problem, batch = make_toy(jax.random.key(1), scales=(1.0, 4.0))
    lr, alpha = 0.1, 1.5
    for method in (rotate_only(latent_size=M, optimizer=optax.sgd(lr)),
                   rotograd_norm(latent_size=M, alpha=alpha, optimizer=optax.sgd(lr))):
        state = method.init(params, 2)
        g, h, param_grads, _ = _jit_oracle(problem, batch)(params, rotation_matrices(state))
        out = jax.jit(lambda p, s: method.step(problem, p, s, batch, None))(params, state)
        # w = 2 softmax(0) = (1, 1) at the start: both give the encoder g_0 + g_1
        _assert_tree_close(out.grads, _combine(param_grads, [1.0, 1.0]))
        np.testing.assert_allclose(out.metrics["task_weights"], [1.0, 1.0], rtol=1e-6)
        if method.name == "rotograd_norm":
            n = np.array([np.linalg.norm(x) for x in g])
            target = np.linalg.norm((g[0] + g[1]) / 2)  # L / L^0 = 1 at the first step
            dloss_dw = np.sign(n - target) * n
            jac = 2 * (np.diag([0.5, 0.5]) - 0.25)  # d(2 softmax(v))/dv at v = 0
            np.testing.assert_allclose(out.state.learnable["log_weights"], -lr * jac.T @ dloss_dw, rtol=1e-4, atol=1e-7)
        else:
            assert set(out.state.learnable) == {"skew"}


def test_rotations_align_task_gradients_with_the_common_direction():
    """RotateOnly on a 2-task toy whose heads start opposed (same target, a_1 = -a_0, R_k = I): the learned
    rotations raise cos(R_k^T h_k, r) to ~1, far above the same training with frozen rotations."""
    params, problem, batch = make_toy(jax.random.key(4), d=4, batch=16)
    x, ys = batch
    batch = (x, jnp.stack([ys[0], ys[0]]))
    params["heads"]["task1"]["kernel"] = -params["heads"]["task0"]["kernel"]
    opt = optax.adam(1e-2)
    final = {}
    for rotation_lr in (3e-2, 1e-9):
        method = rotate_only(latent_size=4, learning_rate=rotation_lr, random_init=False)
        state, p, opt_state = method.init(params, 2), params, opt.init(params)

        @jax.jit
        def train_step(p, state, opt_state):
            out = method.step(problem, p, state, batch, None)
            updates, opt_state = opt.update(out.grads, opt_state, p)
            return optax.apply_updates(p, updates), out.state, opt_state, out.metrics["reference_cosine"]

        cosines = []
        for _ in range(40):
            p, state, opt_state, cos = train_step(p, state, opt_state)
            cosines.append(np.asarray(cos))
        final[rotation_lr] = np.mean(cosines[-5:], axis=0)
        if rotation_lr > 1e-6:
            assert np.all(final[rotation_lr] > np.asarray(cosines[0]) + 0.3), (cosines[0], final[rotation_lr])
            R = np.asarray(rotation_matrices(state))
            np.testing.assert_allclose(np.einsum("tij,tkj->tik", R, R), np.broadcast_to(np.eye(4), R.shape), atol=1e-4)
            # evaluation decodes the rotated representations
            zs, extras = problem.encode(p, batch, None)
            losses, _ = problem.decode(p, rotate_representations(state, zs), extras, batch, None)
            zs_plain = problem.decode(p, zs, extras, batch, None)[0]
            assert not np.allclose(losses, zs_plain, rtol=1e-3)
    assert np.all(final[3e-2] > 0.95), final
    assert np.all(final[3e-2] > final[1e-9] + 0.2), final


def test_rotograd_equalises_the_task_gradient_magnitudes():
    """Task 1's loss is 100x task 0's: the raw gradients n_k = ||dL_k/dz|| (what rotate_only hands the
    encoder) are very unequal; RotoGrad hands the encoder both with the same norm C."""
    params, problem, batch = make_toy(jax.random.key(2), scales=(1.0, 100.0))
    method = get_method("rotograd", latent_size=4)
    step = jax.jit(lambda p, s: method.step(problem, p, s, batch, None))
    out = step(params, method.init(params, 2))
    out = step(jax.tree.map(lambda p, g: p - 1e-3 * g, params, out.grads), out.state)  # rho != 1 now
    raw, received = np.asarray(out.metrics["grad_norms"]), np.asarray(out.metrics["encoder_grad_norms"])
    assert raw.max() / raw.min() > 10
    np.testing.assert_allclose(received[0], received[1], rtol=1e-5)
    assert raw.min() < received[0] < raw.max()


def test_latent_size_larger_than_the_representation_is_an_error():
    params, problem, batch = make_toy(jax.random.key(0), d=4)
    method = rotograd(latent_size=5)
    with pytest.raises(ValueError, match="latent_size"):
        method.step(problem, params, method.init(params, 2), batch, None)
