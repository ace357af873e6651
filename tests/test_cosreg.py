"""CosReg core: cosine matrix, penalty and ``loss_with_cosreg`` against independent oracles.

Oracles: NumPy (cosines), central finite differences in float64 (gradients), explicit per-task ``jax.grad`` loops
(``reference_penalty`` in conftest).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import orthojax
from conftest import (
    assert_tree_allclose,
    central_fd,
    conv_select,
    make_convnet,
    make_mlp,
    mlp_select,
    numpy_cosine,
    numpy_penalty,
    reference_penalty,
    reference_total,
)

# Everything is jitted: one compilation per function instead of one per eager primitive keeps the suite fast.
_cos = jax.jit(lambda g: orthojax.cosine_matrix(g))
_pen = jax.jit(lambda g: orthojax.cosreg_penalty(g))


def _ref_pen(fn, params, *args, select):
    return jax.jit(lambda p, *a: reference_penalty(fn, p, *a, select=select))(params, *args)

# --------------------------------------------------------------------------------------------------------------
# 1. cosine_matrix / cosreg_penalty
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", range(2, 9))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cosine_and_penalty_match_numpy(T, dtype, x64):
    rng = np.random.default_rng(T)
    G = rng.normal(size=(T, 5, 3)).astype(dtype)
    C = _cos(jnp.asarray(G))
    pen = _pen(jnp.asarray(G))
    assert C.shape == (T, T)
    assert pen.shape == ()
    assert C.dtype == jnp.dtype(dtype)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(np.asarray(C), numpy_cosine(G), rtol=tol, atol=tol)
    np.testing.assert_allclose(float(pen), numpy_penalty(G), rtol=tol, atol=tol)
    # the formula of the paper, written from the full matrix: ||C - I||_F^2 / (T (T-1))
    Cn = numpy_cosine(G)
    np.testing.assert_allclose(float(pen), np.sum((Cn - np.eye(T)) ** 2) / (T * (T - 1)), rtol=tol, atol=tol)


@pytest.mark.parametrize("T", [2, 3, 5])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pytree_input_is_concatenation_of_flattened_leaves(T, dtype, x64):
    rng = np.random.default_rng(10 + T)
    tree = {
        "a": rng.normal(size=(T, 3, 2)).astype(dtype),
        "b": {"c": rng.normal(size=(T, 4)).astype(dtype), "d": rng.normal(size=(T,)).astype(dtype)},
    }
    G = np.concatenate([tree["a"].reshape(T, -1), tree["b"]["c"], tree["b"]["d"][:, None]], axis=1)
    jtree = jax.tree.map(jnp.asarray, tree)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(np.asarray(_cos(jtree)), numpy_cosine(G), rtol=tol, atol=tol)
    np.testing.assert_allclose(float(_pen(jtree)), numpy_penalty(G), rtol=tol, atol=tol)


def test_pytree_leaves_with_different_leading_sizes_raise():
    tree = {"a": jnp.ones((3, 4)), "b": jnp.ones((2, 4))}
    with pytest.raises(ValueError):
        orthojax.cosine_matrix(tree)
    with pytest.raises(ValueError):
        orthojax.cosreg_penalty(tree)


@pytest.mark.parametrize("T", [0, 1])
def test_penalty_needs_two_tasks(T):
    with pytest.raises(ValueError):
        orthojax.cosreg_penalty(jnp.ones((T, 4)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_invariant_to_positive_scaling_of_each_task(dtype, x64):
    rng = np.random.default_rng(0)
    G = rng.normal(size=(4, 7)).astype(dtype)
    scales = np.array([1e-3, 1.0, 37.0, 1e3] if dtype == "float32" else [1e-8, 1.0, 37.0, 1e8], dtype)
    Gs = G * scales[:, None]
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(
        np.asarray(_cos(jnp.asarray(Gs))),
        np.asarray(_cos(jnp.asarray(G))),
        rtol=tol,
        atol=tol,
    )
    np.testing.assert_allclose(
        float(_pen(jnp.asarray(Gs))), float(_pen(jnp.asarray(G))), rtol=tol, atol=tol
    )
    # a negative scale flips the sign of that row/column of C and leaves the penalty (cos^2) unchanged
    Gn = G.copy()
    Gn[1] *= -2.0
    Cn = np.asarray(_cos(jnp.asarray(Gn)))
    C = np.asarray(_cos(jnp.asarray(G)))
    np.testing.assert_allclose(Cn[1, [0, 2, 3]], -C[1, [0, 2, 3]], rtol=tol, atol=tol)
    np.testing.assert_allclose(
        float(_pen(jnp.asarray(Gn))), float(_pen(jnp.asarray(G))), rtol=tol, atol=tol
    )


@pytest.mark.parametrize("T", [2, 3, 6])
def test_orthogonal_gradients_give_zero(T, x64):
    rng = np.random.default_rng(T)
    Q, _ = np.linalg.qr(rng.normal(size=(9, 9)))
    G = Q[:T] * rng.uniform(0.5, 3.0, size=(T, 1))  # mutually orthogonal rows, various norms
    np.testing.assert_allclose(np.asarray(_cos(jnp.asarray(G))), np.eye(T), atol=1e-12)
    assert abs(float(_pen(jnp.asarray(G)))) < 1e-12
    # one-hot style orthogonality (disjoint supports) in float32 too
    G32 = np.zeros((T, 2 * T), np.float32)
    for t in range(T):
        G32[t, 2 * t : 2 * t + 2] = [1.0 + t, -2.0]
    assert float(_pen(jnp.asarray(G32))) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("T", [2, 3, 6])
def test_parallel_and_antiparallel_gradients_give_one(T, x64):
    rng = np.random.default_rng(T)
    v = rng.normal(size=(11,))
    signs = np.where(np.arange(T) % 2 == 0, 1.0, -1.0)
    G = (signs * rng.uniform(0.1, 10.0, size=T))[:, None] * v[None, :]
    np.testing.assert_allclose(np.asarray(_cos(jnp.asarray(G))), np.outer(signs, signs), atol=1e-12)
    assert float(_pen(jnp.asarray(G))) == pytest.approx(1.0, abs=1e-12)
    # all parallel (no sign flips) in float32
    G32 = (rng.uniform(0.1, 10.0, size=T)[:, None] * v[None, :]).astype(np.float32)
    assert float(_pen(jnp.asarray(G32))) == pytest.approx(1.0, abs=1e-5)


def test_penalty_range_property_on_random_and_adversarial_inputs(x64):
    rng = np.random.default_rng(1234)
    for trial in range(24):
        T = (2, 3, 8)[trial % 3]  # few distinct shapes: few compilations
        D = 6
        kind = (trial // 3) % 4
        G = rng.normal(size=(T, D))
        if kind == 1:  # rank one with random signs and scales
            G = rng.normal(size=(T, 1)) * rng.normal(size=(1, D))
        elif kind == 2:  # duplicated rows + one zero row
            G[1:] = G[0]
            G[-1] = 0.0
        elif kind == 3:  # widely varying scales
            G = G * (10.0 ** rng.uniform(-6, 6, size=(T, 1)))
        for dt in (np.float32, np.float64):
            p = float(_pen(jnp.asarray(G.astype(dt))))
            assert np.isfinite(p)
            assert -1e-6 <= p <= 1.0 + 1e-5, (trial, kind, p)
            C = np.asarray(_cos(jnp.asarray(G.astype(dt))))
            assert np.all(np.isfinite(C))
            assert np.all(np.abs(C) <= 1.0 + 1e-5)
            np.testing.assert_allclose(C, C.T, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------
# 3. zero gradients (the 0/0 case)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_zero_task_gradient_gives_zero_cosines_and_finite_gradients(dtype, x64):
    """Documented convention: a task whose gradient is exactly zero has cosine 0 with every task, itself included
    (its diagonal entry is 0, not 1). The penalty uses the off-diagonal entries only."""
    rng = np.random.default_rng(3)
    G = rng.normal(size=(4, 6)).astype(dtype)
    G[2] = 0.0
    C = np.asarray(_cos(jnp.asarray(G)))
    assert np.all(np.isfinite(C))
    np.testing.assert_array_equal(C[2], np.zeros(4))
    np.testing.assert_array_equal(C[:, 2], np.zeros(4))
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(np.diag(C)[[0, 1, 3]], 1.0, atol=tol)
    np.testing.assert_allclose(C, numpy_cosine(G), atol=tol)
    pen = float(_pen(jnp.asarray(G)))
    np.testing.assert_allclose(pen, numpy_penalty(G), rtol=tol, atol=tol)

    dpen = jax.jit(jax.grad(orthojax.cosreg_penalty))(jnp.asarray(G))
    dC = jax.jit(jax.jacobian(orthojax.cosine_matrix))(jnp.asarray(G))
    assert np.all(np.isfinite(np.asarray(dpen))) and np.all(np.isfinite(np.asarray(dC)))
    # all tasks zero
    Z = jnp.zeros((3, 5), dtype)
    assert float(_pen(Z)) == 0.0
    assert np.all(np.isfinite(np.asarray(jax.jit(jax.grad(orthojax.cosreg_penalty))(Z))))


def _constant_head_problem():
    params, fn, args = make_mlp(5, n_tasks=3)

    def fn_const(p, x, ys):
        losses = fn(p, x, ys)
        # task 2 no longer depends on any parameter: its gradient is exactly zero
        return losses.at[2].set(1.5 + 0.0 * jnp.sum(x))

    return params, fn_const, args


@pytest.mark.parametrize("case", ["constant_loss", "zero_head_weights"])
def test_loss_with_cosreg_finite_when_a_task_gradient_is_zero(case, x64):
    if case == "constant_loss":
        params, fn, args = _constant_head_problem()
    else:
        params, fn, args = make_mlp(6, n_tasks=3)
        head = params["heads"]["task1"]
        params["heads"]["task1"] = {"kernel": jnp.zeros_like(head["kernel"]), "bias": head["bias"]}

    def total(p):
        return orthojax.loss_with_cosreg(fn, p, *args, wrt="encoder/dense2", alpha=2.0)

    (val, aux), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(params)
    zero_task = 2 if case == "constant_loss" else 1
    assert np.isfinite(float(val))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
    C = np.asarray(aux.cosine)
    assert np.all(np.isfinite(C))
    np.testing.assert_array_equal(C[zero_task], 0.0)
    np.testing.assert_array_equal(C[:, zero_task], 0.0)
    assert 0.0 <= float(aux.penalty) <= 1.0
    if case != "constant_loss":
        return
    # float32 too
    params32 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float32)), params)
    args32 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float32)), args)
    g32 = jax.jit(jax.grad(lambda p: orthojax.loss_with_cosreg(fn, p, *args32, wrt="encoder/dense2", alpha=2.0)[0]))(
        params32
    )
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(g32))


def test_constant_task_gradient_matches_finite_differences(x64):
    """With a constant task, the penalty of the remaining pairs is still exact (the zero task contributes 0)."""
    params, fn, args = _constant_head_problem()
    T = 3

    def total(p):
        return orthojax.loss_with_cosreg(fn, p, *args, wrt="encoder/dense2", alpha=3.0)[0]

    # oracle for the value: only pair (0, 1) is non-zero, counted twice over T (T-1) ordered pairs
    pen01, C01, losses = _ref_pen(
        lambda p, *a: fn(p, *a)[:2], params, *args, select=mlp_select
    )
    expected = float(jnp.sum(fn(params, *args))) + 3.0 * float(pen01) * 2 / (T * (T - 1))
    val, g = jax.jit(jax.value_and_grad(total))(params)
    np.testing.assert_allclose(float(val), expected, rtol=1e-12)
    assert_tree_allclose(g, central_fd(total, params), rtol=1e-5, atol=1e-8)


# --------------------------------------------------------------------------------------------------------------
# 2. loss_with_cosreg: value and exact (second-order) gradient
# --------------------------------------------------------------------------------------------------------------


def test_mlp_value_and_gradient_match_finite_differences(x64):
    n_tasks = 3
    params, fn, args = make_mlp(n_tasks, n_tasks=n_tasks)
    alpha = 5.0
    w = jnp.linspace(0.5, 1.5, n_tasks)

    def total(p):
        return orthojax.loss_with_cosreg(fn, p, *args, wrt="encoder/dense2", alpha=alpha, weights=w)[0]

    def total_aux(p):
        return orthojax.loss_with_cosreg(fn, p, *args, wrt="encoder/dense2", alpha=alpha, weights=w)

    def ref_aux(p):
        pen, C, losses = reference_penalty(fn, p, *args, select=mlp_select)
        return jnp.sum(w * losses) + alpha * pen, (pen, C, losses)

    (val, aux), g = jax.jit(jax.value_and_grad(total_aux, has_aux=True))(params)
    (val_ref, (pen, C, losses)), g_ref = jax.jit(jax.value_and_grad(ref_aux, has_aux=True))(params)
    np.testing.assert_allclose(np.asarray(aux.task_losses), np.asarray(losses), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(aux.cosine), np.asarray(C), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(float(aux.penalty), float(pen), rtol=1e-10)
    np.testing.assert_allclose(float(val), float(val_ref), rtol=1e-12)
    assert aux.aux is None
    assert 0.0 < float(aux.penalty) < 1.0

    assert_tree_allclose(g, central_fd(total, params), rtol=1e-5, atol=1e-8)
    # and the explicit per-task-grad oracle differentiated by JAX
    assert_tree_allclose(g, g_ref, rtol=1e-9, atol=1e-12)


def test_convnet_value_and_gradient_match_finite_differences(x64):
    params, fn, args = make_convnet(11, n_tasks=2)
    alpha = 4.0

    def total(p):
        return orthojax.loss_with_cosreg(fn, p, *args, wrt="encoder/conv2", alpha=alpha)[0]

    pen, C, losses = _ref_pen(fn, params, *args, select=conv_select)
    assert 0.01 < float(pen) < 0.99
    val, g = jax.jit(jax.value_and_grad(total))(params)
    np.testing.assert_allclose(float(val), float(jnp.sum(losses) + alpha * pen), rtol=1e-12)
    assert_tree_allclose(g, central_fd(total, params), rtol=1e-5, atol=1e-8)


def test_penalty_gradient_reaches_selected_layer_layer_below_and_every_decoder(x64):
    """Guards against the silent no-op of taking task gradients without differentiating through them."""
    params, fn, args = make_mlp(21, n_tasks=3)

    def pen_only(p):  # weights 0: the total is alpha * penalty
        return orthojax.loss_with_cosreg(fn, p, *args, wrt="encoder/dense2", alpha=1.0, weights=jnp.zeros(3))[0]

    g0 = jax.jit(jax.grad(pen_only))(params)
    g_ref = jax.jit(jax.grad(lambda p: reference_penalty(fn, p, *args, select=mlp_select)[0]))(params)
    assert_tree_allclose(g0, g_ref, rtol=1e-9, atol=1e-12)

    def norm(tree):
        return float(np.sqrt(sum(np.sum(np.asarray(x) ** 2) for x in jax.tree.leaves(tree))))

    assert norm(g0["encoder"]["dense2"]) > 1e-4  # the selected layer
    assert norm(g0["encoder"]["dense1"]) > 1e-4  # a layer below it
    for t in range(3):
        assert norm(g0["heads"][f"task{t}"]) > 1e-4, f"decoder {t}"


def test_scale_alpha_by_loss_value_and_stop_gradient(x64):
    params, fn, args = make_mlp(31, n_tasks=3)
    alpha = 7.0
    frozen = float(jnp.mean(fn(params, *args)))

    def total(p):
        return orthojax.loss_with_cosreg(fn, p, *args, wrt="encoder/dense2", alpha=alpha, scale_alpha_by_loss=True)[0]

    (val, aux), g = jax.jit(
        jax.value_and_grad(
            lambda p: orthojax.loss_with_cosreg(fn, p, *args, wrt="encoder/dense2", alpha=alpha, scale_alpha_by_loss=True),
            has_aux=True,
        )
    )(params)
    np.testing.assert_allclose(float(val), float(jnp.sum(aux.task_losses)) + alpha * frozen * float(aux.penalty), rtol=1e-12)
    assert 0.0 <= float(aux.penalty) <= 1.0  # reported before alpha and before the loss factor

    def frozen_total(p):  # the mean-loss factor is a constant
        return reference_total(fn, p, *args, select=mlp_select, alpha=alpha, frozen_scale=frozen)

    def live_total(p):  # the factor differentiated (wrong)
        return reference_total(fn, p, *args, select=mlp_select, alpha=alpha, frozen_scale=jnp.mean(fn(p, *args)))

    assert_tree_allclose(g, central_fd(frozen_total, params), rtol=1e-5, atol=1e-8)
    # the test can tell the two apart
    g_live = jax.jit(jax.grad(live_total))(params)
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_live)))
    assert diff > 1e-3


def test_has_aux_is_passed_through(x64):
    params, fn, args = make_mlp(41, n_tasks=2)

    def fn_aux(p, x, ys):
        losses = fn(p, x, ys)
        return losses, {"twice": 2.0 * losses, "tag": jnp.arange(3)}

    (val, aux), g1 = jax.jit(jax.value_and_grad(
        lambda p: orthojax.loss_with_cosreg(fn_aux, p, *args, wrt="encoder/dense2", alpha=1.0, has_aux=True), has_aux=True
    ))(params)
    (val2, aux2), g2 = jax.jit(jax.value_and_grad(
        lambda p: orthojax.loss_with_cosreg(fn, p, *args, wrt="encoder/dense2", alpha=1.0), has_aux=True
    ))(params)
    assert isinstance(aux, orthojax.CosRegAux)
    assert aux._fields == ("task_losses", "cosine", "penalty", "aux")
    np.testing.assert_allclose(float(val), float(val2), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(aux.aux["twice"]), 2.0 * np.asarray(aux2.task_losses), rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(aux.aux["tag"]), np.arange(3))
    # gradient with has_aux equals gradient without
    assert_tree_allclose(g1, g2, rtol=1e-12, atol=1e-14)


def test_predicate_wrt_in_loss_with_cosreg(x64):
    params, fn, args = make_mlp(51, n_tasks=3)

    def pred(path, leaf):
        return path.startswith("encoder/dense2") or path.startswith("encoder/dense1/kernel")

    def sel(g):
        return [g["encoder"]["dense1"]["kernel"], g["encoder"]["dense2"]["bias"], g["encoder"]["dense2"]["kernel"]]

    (val, aux), g = jax.jit(
        jax.value_and_grad(lambda p: orthojax.loss_with_cosreg(fn, p, *args, wrt=pred, alpha=2.0), has_aux=True)
    )(params)
    val_ref, g_ref = jax.jit(jax.value_and_grad(lambda p: reference_total(fn, p, *args, select=sel, alpha=2.0)))(params)
    np.testing.assert_allclose(float(val), float(val_ref), rtol=1e-12)
    assert_tree_allclose(g, g_ref, rtol=1e-9, atol=1e-12)


def test_bad_hyperparameters_raise():
    params, fn, args = make_mlp(0, n_tasks=3, dtype=np.float32)
    with pytest.raises(ValueError):
        orthojax.loss_with_cosreg(fn, params, *args, wrt="encoder/dense2", alpha=-1.0)

    def traced(**kw):  # eval_shape: the checks run while tracing, nothing is compiled
        return jax.eval_shape(lambda p: orthojax.loss_with_cosreg(fn, p, *args, **kw), params)

    traced(wrt="encoder/dense2", alpha=1.0, weights=jnp.ones(3))  # the right shape is fine
    with pytest.raises(ValueError):
        traced(wrt="encoder/dense2", alpha=1.0, weights=jnp.ones(2))
    with pytest.raises(ValueError):
        traced(wrt="encoder/dense2", alpha=1.0, weights=jnp.ones((3, 1)))
    with pytest.raises(KeyError):
        traced(wrt="encoder/dense9", alpha=1.0)
