"""``task_gradients`` against a loop of T explicit ``jax.grad`` calls."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import orthojax
from conftest import assert_tree_allclose, make_convnet, make_mlp


def loop_grads(fn, params, *args):
    """Per-task gradients of all params, stacked on a leading task axis (T explicit jax.grad calls)."""

    def run(params, *args):
        T = fn(params, *args).shape[0]
        gs = [jax.grad(lambda p, t=t: fn(p, *args)[t])(params) for t in range(T)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *gs)

    return jax.jit(run)(params, *args)


def _tg(fn, params, *args, **kw):
    """``task_gradients`` under jit (one compilation instead of one per eager primitive)."""
    return jax.jit(lambda p, *a: orthojax.task_gradients(fn, p, *a, **kw))(params, *args)


@pytest.mark.parametrize("n_tasks", [2, 3])
def test_path_wrt_matches_explicit_loop(n_tasks, x64):
    params, fn, args = make_mlp(n_tasks, n_tasks=n_tasks)
    losses, grads = _tg(fn, params, *args, wrt="encoder/dense2")
    ref = loop_grads(fn, params, *args)
    np.testing.assert_allclose(np.asarray(losses), np.asarray(jax.jit(fn)(params, *args)), rtol=1e-14)
    assert losses.shape == (n_tasks,)
    assert set(grads.keys()) == {"kernel", "bias"}
    assert grads["kernel"].shape == (n_tasks, 4, 4)
    assert grads["bias"].shape == (n_tasks, 4)
    assert_tree_allclose(grads, ref["encoder"]["dense2"], rtol=1e-12, atol=1e-14)


def test_conv_path_gives_subtree_under_path(x64):
    params, fn, args = make_convnet(2, n_tasks=2)
    losses, grads = _tg(fn, params, *args, wrt="encoder/conv2")
    ref = loop_grads(fn, params, *args)
    assert jax.tree.structure(grads) == jax.tree.structure({"kernel": 0})
    assert grads["kernel"].shape == (2, 3, 3, 2, 2)
    assert_tree_allclose(grads, ref["encoder"]["conv2"], rtol=1e-12, atol=1e-14)


def test_path_to_a_single_leaf_and_to_a_larger_subtree(x64):
    params, fn, args = make_mlp(3, n_tasks=3)
    ref = loop_grads(fn, params, *args)
    _, g_enc = _tg(fn, params, *args, wrt="encoder")
    assert_tree_allclose(g_enc, ref["encoder"], rtol=1e-12, atol=1e-14)
    _, g_leaf = _tg(fn, params, *args, wrt="encoder/dense2/kernel")
    leaves = jax.tree.leaves(g_leaf)
    assert len(leaves) == 1
    np.testing.assert_allclose(np.asarray(leaves[0]), np.asarray(ref["encoder"]["dense2"]["kernel"]), rtol=1e-12)


def test_predicate_wrt_keys_by_full_path(x64):
    params, fn, args = make_mlp(4, n_tasks=3)
    ref = loop_grads(fn, params, *args)
    seen = []

    def pred(path, leaf):
        seen.append(path)
        return path.endswith("/kernel") and (path.startswith("encoder/dense2") or path.startswith("heads/task1"))

    _, grads = _tg(fn, params, *args, wrt=pred)
    expected = {
        "encoder": {"dense2": {"kernel": ref["encoder"]["dense2"]["kernel"]}},
        "heads": {"task1": {"kernel": ref["heads"]["task1"]["kernel"]}},
    }
    assert_tree_allclose(grads, expected, rtol=1e-12, atol=1e-14)
    # the predicate saw "/"-joined key paths of leaves
    assert "encoder/dense1/bias" in seen and "heads/task2/kernel" in seen


def test_wrt_none_selects_all_params(x64):
    params, fn, args = make_mlp(5, n_tasks=2)
    _, grads = _tg(fn, params, *args, wrt=None)
    assert_tree_allclose(grads, loop_grads(fn, params, *args), rtol=1e-12, atol=1e-14)


def test_has_aux_plumbing(x64):
    params, fn, args = make_mlp(6, n_tasks=3)

    def fn_aux(p, x, ys):
        losses = fn(p, x, ys)
        return losses, {"pred_norm": jnp.sum(p["encoder"]["dense1"]["kernel"] ** 2), "n": 3}

    out = _tg(fn_aux, params, *args, wrt="encoder/dense2", has_aux=True)
    assert len(out) == 3
    losses, grads, aux = out
    np.testing.assert_allclose(np.asarray(losses), np.asarray(jax.jit(fn)(params, *args)), rtol=1e-14)
    np.testing.assert_allclose(float(aux["pred_norm"]), float(np.sum(np.asarray(params["encoder"]["dense1"]["kernel"]) ** 2)))
    assert int(aux["n"]) == 3
    assert_tree_allclose(grads, loop_grads(fn, params, *args)["encoder"]["dense2"], rtol=1e-12, atol=1e-14)
    # without has_aux: a pair
    assert len(_tg(fn, params, *args, wrt="encoder/dense2")) == 2


def test_one_forward_pass(x64):
    """The task-loss function is traced once (one forward pass; the T VJPs are batched, not T re-runs)."""
    params, fn, args = make_mlp(7, n_tasks=3)
    calls = []

    def counted(p, x, ys):
        calls.append(1)
        return fn(p, x, ys)

    jax.eval_shape(lambda p: orthojax.task_gradients(counted, p, *args, wrt="encoder/dense2"), params)
    assert len(calls) == 1


def test_jit_and_float32():
    params, fn, args = make_mlp(8, n_tasks=3, dtype=np.float32)
    f = jax.jit(lambda p, *a: orthojax.task_gradients(fn, p, *a, wrt="encoder/dense2"))
    losses, grads = f(params, *args)
    assert grads["kernel"].dtype == jnp.float32
    assert_tree_allclose(grads, loop_grads(fn, params, *args)["encoder"]["dense2"], rtol=1e-5, atol=1e-6)


def test_bad_path_raises_keyerror_naming_closest_paths():
    params, fn, args = make_mlp(0, n_tasks=2, dtype=np.float32)
    with pytest.raises(KeyError) as e:
        orthojax.task_gradients(fn, params, *args, wrt="encoder/dense3")
    assert "encoder/dense2" in str(e.value) or "encoder/dense1" in str(e.value)
    with pytest.raises(KeyError) as e:
        orthojax.task_gradients(fn, params, *args, wrt="encodr/dense2")
    assert "encoder/dense2" in str(e.value)
