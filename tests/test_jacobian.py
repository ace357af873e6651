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


# --------------------------------------------------------------------------------------------------------------
# Misconfiguration: a wrt that some task does not depend on; task losses that are not a (T,) vector
# --------------------------------------------------------------------------------------------------------------

import warnings  # noqa: E402

from orthojax.jacobian import (  # noqa: E402
    IndependentTaskWarning,
    independent_tasks,
    jaxpr_independent_tasks,
)


def test_wrt_on_one_task_head_warns_naming_the_other_tasks():
    params, fn, args = make_mlp(10, n_tasks=3, dtype=np.float32)
    with pytest.warns(IndependentTaskWarning, match=r"tasks \[0, 2\] \(of 3\).*wrt='heads/task1'") as record:
        losses, grads = _tg(fn, params, *args, wrt="heads/task1")
    assert len(record) == 1
    assert "heads/task1/kernel" in str(record[0].message) and "jnp" not in str(record[0].message)
    # the rows of the other tasks are exactly the zeros the warning announces
    np.testing.assert_array_equal(np.asarray(grads["kernel"])[[0, 2]], 0.0)
    assert np.abs(np.asarray(grads["kernel"][1])).sum() > 0


def test_wrt_every_task_uses_does_not_warn():
    params, fn, args = make_mlp(11, n_tasks=3, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IndependentTaskWarning)
        for wrt in ("encoder/dense2", "encoder", "heads", None):
            _tg(fn, params, *args, wrt=wrt)
            assert independent_tasks(fn, params, *args, wrt=wrt) == ()


def test_independent_tasks_is_abstract_and_warns_once_per_trace():
    params, fn, args = make_mlp(12, n_tasks=3, dtype=np.float32)
    # no concrete values: under eval_shape and vmap the answer is the same
    seen = []
    jax.eval_shape(lambda p: seen.append(independent_tasks(fn, p, *args, wrt="heads/task0")) or 0, params)
    assert seen == [(1, 2)]
    xs = jnp.stack([args[0]] * 2)
    f = jax.jit(jax.vmap(lambda x: orthojax.task_gradients(fn, params, x, args[1], wrt="heads/task2")))
    with pytest.warns(IndependentTaskWarning, match=r"tasks \[0, 1\]") as record:
        f(xs)
        f(xs)  # cached: no new trace, no new warning
    assert len(record) == 1


def test_dependency_check_adds_nothing_to_the_computation():
    params, fn, args = make_mlp(13, n_tasks=3, dtype=np.float32)
    checked = jax.make_jaxpr(lambda p: orthojax.task_jacobian(fn, p, *args, wrt="encoder/dense2")[:2])(params)
    plain = jax.make_jaxpr(lambda p: orthojax.task_jacobian(fn, p, *args, wrt="encoder/dense2",
                                                             check_dependence=False)[:2])(params)
    assert str(checked) == str(plain)


def test_dependency_pass_follows_stack_and_is_conservative():
    w = {"a": jnp.ones(3), "b": jnp.ones(3), "c": jnp.ones(3)}

    def per_task_forms(p):
        a, b, c = p["a"].sum(), p["b"].sum(), p["c"].sum()
        return jnp.stack([
            jnp.array([a, b]).sum(),                       # jnp.array of tracers: concatenate of broadcasts
            jnp.linalg.norm(jnp.stack([c, 2.0 * c])),      # inside a jit-wrapped jnp function
            jax.lax.stop_gradient(a) + jnp.floor(0.0 * b).astype(jnp.int32),  # no gradient flows
            jnp.concatenate([jnp.zeros(2), p["a"]])[:2].sum(),  # sliced to the constant part
        ])

    assert independent_tasks(per_task_forms, w, wrt="a") == (1, 2, 3)
    assert independent_tasks(per_task_forms, w, wrt="c") == (0, 2, 3)
    # a scatter is not followed element by element: no task is reported (never a false report)
    assert independent_tasks(lambda p: jnp.zeros(2).at[0].set(p["a"].sum()).at[1].set(p["b"].sum()), w,
                             wrt="a") == ()
    # on a jaxpr directly, with the differentiated inputs marked
    closed = jax.make_jaxpr(lambda a, b: jnp.stack([a.sum(), b.sum(), (a * b).sum()]))(jnp.ones(2), jnp.ones(2))
    assert jaxpr_independent_tasks(closed) == ()
    assert jaxpr_independent_tasks(closed, [True, False]) == (1,)
    assert jaxpr_independent_tasks(closed, [False, False]) == (0, 1, 2)


def test_output_dependence_moves_with_the_data_and_stops_at_integers():
    from orthojax.dependence import any_dependence, output_dependence

    def f(a, b):
        v = jnp.stack([a.sum(), b.sum(), jnp.zeros(())])   # (3,): per element
        return v[::-1], jnp.transpose(jnp.outer(a, jnp.ones(2))), (a > 0).astype(jnp.int32), a @ b

    jaxpr = jax.make_jaxpr(f)(jnp.ones(2), jnp.ones(2)).jaxpr
    rev, outer_t, ints, dot = output_dependence(jaxpr, [True, False])
    np.testing.assert_array_equal(rev, [False, False, True])      # reversed stack: only a's sum
    np.testing.assert_array_equal(outer_t, np.ones((2, 2), bool))  # transposed broadcast of a
    assert ints is False and not any_dependence(ints)             # integers carry no gradient
    assert any_dependence(dot) and any_dependence(np.array([False, True]))
    assert output_dependence(jaxpr, [False, False]) == [False, False, False, False]


def test_predicate_wrt_is_named_in_the_warning():
    params, fn, args = make_mlp(14, n_tasks=2, dtype=np.float32)

    def first_head(path, leaf):
        return path.startswith("heads/task0")

    with pytest.warns(IndependentTaskWarning, match=r"task \[1\] \(of 2\).*first_head"):
        _tg(fn, params, *args, wrt=first_head)


@pytest.mark.parametrize("returns, has_aux, expected", [
    (lambda l: (l[0], l[1], l[2]), False, r"returned a tuple of 3 scalars.*jnp\.stack\(\[loss_0"),
    (lambda l: [l[0], l[1], l[2]], False, r"a list of 3 scalars.*has_aux=True"),
    (lambda l: (l, {"aux": 1}), False, r"looks like \(losses, aux\): pass has_aux=True"),
    (lambda l: ((l[0], l[1]), None), True, r"pair was a tuple of 2 scalars.*jnp\.stack"),
    (lambda l: (l[0], l[1]), True, r"pair was a scalar.*jnp\.stack.*read as \(losses, aux\)"),
    (lambda l: l, True, r"expects .* pair \(losses, aux\); it returned an array of shape \(3,\).*jnp\.stack"),
    (lambda l: l.sum(), False, r"returned a scalar.*jnp\.stack"),
])
def test_losses_that_are_not_a_vector_say_what_was_returned(returns, has_aux, expected):
    params, fn, args = make_mlp(15, n_tasks=3, dtype=np.float32)
    with pytest.raises(ValueError, match=expected):
        orthojax.task_gradients(lambda p, *a: returns(fn(p, *a)), params, *args, wrt="encoder", has_aux=has_aux)


@pytest.mark.parametrize("returns, expected", [
    (lambda l: (l[0], l[1], l[2]), r"it returned a tuple of 3 scalars.*jnp\.stack\(\[loss_0, loss_1, \.\.\.\]\), aux"),
    (lambda l: ((l[0], l[1], l[2]), None), r"first item was a tuple of 3 scalars.*jnp\.stack"),
    (lambda l: (l[0], l[1]), r"first item was a scalar.*read as \(losses, aux\).*jnp\.stack"),
    (lambda l: l, r"it returned an array of shape \(3,\).*jnp\.stack"),
])
def test_problem_task_losses_that_are_not_a_pair_say_what_was_returned(returns, expected):
    from orthojax.methods.base import MultiTaskProblem, task_losses_and_aux

    params, fn, args = make_mlp(16, n_tasks=3, dtype=np.float32)
    problem = MultiTaskProblem(task_losses=lambda p, batch, rng: returns(fn(p, *batch)), last_shared="encoder")
    with pytest.raises(ValueError, match=expected):
        task_losses_and_aux(problem, params, args, None)
