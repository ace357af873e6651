"""``loss_with_cosreg`` with Flax Linen, Flax NNX and a hand-written function of a dict; jit caching; vmap."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import orthojax
from conftest import assert_tree_allclose, make_mlp, mlp_select, reference_total

T = 3


def _data(seed=0, batch=5, d_in=3):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(batch, d_in))), jnp.asarray(rng.normal(size=(T, batch, 2)))


def _mse_losses(preds, ys):
    return jnp.stack([jnp.mean((preds[t] - ys[t]) ** 2) for t in range(T)])


# --------------------------------------------------------------------------------------------------------------
# Linen
# --------------------------------------------------------------------------------------------------------------


class LinenEncoder(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Dense(4, name="dense1", param_dtype=jnp.float64)(x))
        return jnp.tanh(nn.Dense(4, name="dense2", param_dtype=jnp.float64)(x))


class LinenModel(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = LinenEncoder(name="encoder")(x)
        return [nn.Dense(2, name=f"head{t}", param_dtype=jnp.float64)(h) for t in range(T)]


def test_flax_linen_model(x64):
    x, ys = _data(1)
    model = LinenModel()
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]
    assert "dense2" in params["encoder"]

    def fn(p, x, ys):
        return _mse_losses(model.apply({"params": p}, x), ys)

    def total(p):
        return orthojax.loss_with_cosreg(fn, p, x, ys, wrt="encoder/dense2", alpha=2.0)

    (val, aux), g = jax.jit(jax.value_and_grad(total, has_aux=True))(params)
    ref = jax.jit(jax.value_and_grad(lambda p: reference_total(fn, p, x, ys, select=mlp_select, alpha=2.0)))
    val_ref, g_ref = ref(params)
    np.testing.assert_allclose(float(val), float(val_ref), rtol=1e-12)
    assert_tree_allclose(g, g_ref, rtol=1e-9, atol=1e-12)
    assert aux.cosine.shape == (T, T)


# --------------------------------------------------------------------------------------------------------------
# NNX
# --------------------------------------------------------------------------------------------------------------


class NNXEncoder(nnx.Module):
    def __init__(self, rngs):
        self.dense1 = nnx.Linear(3, 4, rngs=rngs, param_dtype=jnp.float64)
        self.dense2 = nnx.Linear(4, 4, rngs=rngs, param_dtype=jnp.float64)

    def __call__(self, x):
        return jnp.tanh(self.dense2(jnp.tanh(self.dense1(x))))


class NNXModel(nnx.Module):
    def __init__(self, rngs):
        self.encoder = NNXEncoder(rngs)
        self.head0 = nnx.Linear(4, 2, rngs=rngs, param_dtype=jnp.float64)
        self.head1 = nnx.Linear(4, 2, rngs=rngs, param_dtype=jnp.float64)
        self.head2 = nnx.Linear(4, 2, rngs=rngs, param_dtype=jnp.float64)

    def __call__(self, x):
        h = self.encoder(x)
        return [self.head0(h), self.head1(h), self.head2(h)]


def test_flax_nnx_model_split_merge(x64):
    x, ys = _data(2)
    graphdef, state = nnx.split(NNXModel(nnx.Rngs(0)), nnx.Param)

    def fn(state, x, ys):
        model = nnx.merge(graphdef, state)
        return _mse_losses(model(x), ys)

    def total(s):
        return orthojax.loss_with_cosreg(fn, s, x, ys, wrt="encoder/dense2", alpha=2.0)

    def select(g):  # bias, kernel
        return jax.tree.leaves(g["encoder"]["dense2"])

    (val, aux), g = jax.jit(jax.value_and_grad(total, has_aux=True))(state)
    val_ref, g_ref = jax.jit(jax.value_and_grad(lambda s: reference_total(fn, s, x, ys, select=select, alpha=2.0)))(state)
    np.testing.assert_allclose(float(val), float(val_ref), rtol=1e-12)
    assert jax.tree.structure(g) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
    # the per-task gradients of the NNX subtree
    losses, tg = jax.jit(lambda s: orthojax.task_gradients(fn, s, x, ys, wrt="encoder/dense2"))(state)
    assert [a.shape for a in jax.tree.leaves(tg)] == [(T, 4), (T, 4, 4)]


# --------------------------------------------------------------------------------------------------------------
# hand-written function of a dict: jit caching, vmap over seeds
# --------------------------------------------------------------------------------------------------------------


def test_jit_does_not_retrace_on_second_call():
    params, fn, (x, ys) = make_mlp(0, n_tasks=T, dtype=np.float32)
    traces = []

    @jax.jit
    def step(p, x, ys):
        traces.append(1)
        (val, aux), g = jax.value_and_grad(
            lambda p: orthojax.loss_with_cosreg(fn, p, x, ys, wrt="encoder/dense2", alpha=1.0), has_aux=True
        )(p)
        return val, aux, g

    v1, _, g1 = step(params, x, ys)
    params2 = jax.tree.map(lambda a: a * 0.5, params)
    v2, _, g2 = step(params2, x + 1.0, ys)
    assert len(traces) == 1
    assert float(v1) != float(v2)
    assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves((g1, g2)))


def test_vmap_over_seeds_equals_separate_calls(x64):
    seeds = [0, 1, 2]
    problems = [make_mlp(s, n_tasks=T) for s in seeds]
    _, fn, (x, ys) = problems[0]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[p for p, _, _ in problems])

    def vg(p):
        (val, aux), g = jax.value_and_grad(
            lambda p: orthojax.loss_with_cosreg(fn, p, x, ys, wrt="encoder/dense2", alpha=3.0), has_aux=True
        )(p)
        return val, aux.penalty, aux.cosine, g

    batched = jax.jit(jax.vmap(vg))(stacked)
    single = jax.jit(vg)
    for i, (p, _, _) in enumerate(problems):
        one = single(p)
        assert_tree_allclose(jax.tree.map(lambda a: a[i], batched), one, rtol=1e-10, atol=1e-12)
    # the seeds really differ
    assert float(jnp.max(jnp.abs(batched[1][0] - batched[1][1]))) > 1e-6
