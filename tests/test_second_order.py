"""The fast CosReg gradients (reverse over forward, generic and encoder/decoder split) against oracles.

Oracles: central finite differences in float64, explicit per-task ``jax.grad`` loops (``reference_total`` in
conftest) and the straightforward reverse-over-reverse formulation (``implementation="reference"``).
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
    reference_total,
)

ALPHA = 3.0
PROBLEMS = {
    "mlp2": (lambda: make_mlp(0, n_tasks=2), "encoder/dense2", mlp_select),
    "mlp3": (lambda: make_mlp(1, n_tasks=3), "encoder/dense2", mlp_select),
    "convnet": (lambda: make_convnet(2, n_tasks=2), "encoder/conv2", conv_select),
}


def _objectives(fn, wrt, **kw):
    """The three formulations of the same objective, as ``f(params, *args) -> (total, aux)``."""
    encode, decode = fn.split
    return {
        "fast": lambda p, *a: orthojax.loss_with_cosreg(fn, p, *a, wrt=wrt, alpha=ALPHA, **kw),
        "reference": lambda p, *a: orthojax.loss_with_cosreg(
            fn, p, *a, wrt=wrt, alpha=ALPHA, implementation="reference", **kw),
        "split": lambda p, *a: orthojax.loss_with_cosreg_split(encode, decode, p, *a, wrt=wrt, alpha=ALPHA, **kw),
    }


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_value_and_gradient_match_finite_differences_and_explicit_loops(problem, x64):
    make, wrt, select = PROBLEMS[problem]
    params, fn, args = make()
    expected_total = float(reference_total(fn, params, *args, select=select, alpha=ALPHA))
    fd = central_fd(lambda p: reference_total(fn, p, *args, select=select, alpha=ALPHA), params)
    for name, objective in _objectives(fn, wrt).items():
        (total, aux), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(params, *args)
        np.testing.assert_allclose(float(total), expected_total, rtol=1e-12, err_msg=name)
        assert_tree_allclose(grads, fd, rtol=1e-6, atol=1e-8)
        assert aux.cosine.shape == (aux.task_losses.shape[0],) * 2


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_fast_paths_equal_reference_with_weights_and_scaled_alpha(problem, x64):
    make, wrt, _ = PROBLEMS[problem]
    params, fn, args = make()
    num_tasks = fn(params, *args).shape[0]
    weights = jnp.linspace(0.5, 2.0, num_tasks)
    outs = {
        name: jax.jit(jax.value_and_grad(f, has_aux=True))(params, *args)
        for name, f in _objectives(fn, wrt, weights=weights, scale_alpha_by_loss=True).items()
    }
    (ref_total, ref_aux), ref_grads = outs.pop("reference")
    for name, ((total, aux), grads) in outs.items():
        np.testing.assert_allclose(float(total), float(ref_total), rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(np.asarray(aux.cosine), np.asarray(ref_aux.cosine), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(float(aux.penalty), float(ref_aux.penalty), rtol=1e-12)
        assert_tree_allclose(grads, ref_grads, rtol=1e-10, atol=1e-12)


def test_first_order_jvp_of_fast_total_is_exact(x64):
    params, fn, args = make_mlp(3, n_tasks=3)
    direction = jax.tree.map(lambda x: jnp.cos(jnp.arange(x.size, dtype=x.dtype)).reshape(x.shape), params)
    tangents = {}
    for name, f in _objectives(fn, "encoder/dense2").items():
        tangents[name] = float(jax.jvp(lambda p: f(p, *args)[0], (params,), (direction,))[1])
    np.testing.assert_allclose(tangents["fast"], tangents["reference"], rtol=1e-10)
    np.testing.assert_allclose(tangents["split"], tangents["reference"], rtol=1e-10)


def test_zero_gradient_task_is_finite_and_exact(x64):
    params, fn, args = make_mlp(4, n_tasks=3)
    mask = jnp.array([1.0, 0.0, 1.0])  # task 1's loss (and gradient) is identically zero

    def masked(p, *a):
        return fn(p, *a) * mask

    masked.split = (fn.split[0], lambda *a: fn.split[1](*a) * mask)
    results = {
        name: jax.jit(jax.value_and_grad(f, has_aux=True))(params, *args)
        for name, f in _objectives(masked, "encoder/dense2").items()
    }
    (_, ref_aux), ref_grads = results["reference"]
    assert np.all(np.asarray(ref_aux.cosine)[1] == 0)
    for name, ((total, aux), grads) in results.items():
        assert np.isfinite(float(total)), name
        assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads)), name
        assert_tree_allclose(grads, ref_grads, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("factor", [1e-30, 1e-20, 1e20, 1e30])
def test_cosines_and_gradient_unchanged_when_a_task_is_rescaled_in_float32(factor):
    """Task 0's loss times c, its weight times 1/c: the same objective. Float32 all the way."""
    params, fn, args = make_mlp(5, n_tasks=3, dtype=np.float32)
    scale = jnp.array([factor, 1.0, 1.0], jnp.float32)
    weights = jnp.array([1.0 / factor, 1.0, 1.0], jnp.float32)

    def scaled(p, *a):
        return fn(p, *a) * scale

    scaled.split = (fn.split[0], lambda *a: fn.split[1](*a) * scale)
    plain = _objectives(fn, "encoder/dense2")
    for name, f in _objectives(scaled, "encoder/dense2", weights=weights).items():
        (total, aux), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(params, *args)
        (want_total, want_aux), want_grads = jax.jit(jax.value_and_grad(plain[name], has_aux=True))(params, *args)
        np.testing.assert_allclose(np.asarray(aux.cosine), np.asarray(want_aux.cosine), rtol=1e-5, atol=1e-6,
                                   err_msg=f"{name} at {factor}")
        np.testing.assert_allclose(float(total), float(want_total), rtol=1e-5, err_msg=name)
        assert_tree_allclose(grads, want_grads, rtol=2e-4, atol=1e-5)


def test_cosine_matrix_scale_safe_across_float32_range():
    rng = np.random.default_rng(0)
    G = rng.normal(size=(3, 50)).astype(np.float32)
    want = numpy_cosine(G)
    cos = jax.jit(orthojax.cosine_matrix)
    for factor in (1e-30, 1e-25, 1e-20, 1e-10, 1e10, 1e20, 1e25, 1e30):
        scaled = G * np.array([[factor], [1.0], [1.0 / factor]], np.float32)
        np.testing.assert_allclose(np.asarray(cos(jnp.asarray(scaled))), want, rtol=2e-6, atol=2e-6,
                                   err_msg=f"factor {factor}")


def test_vmap_over_parameter_sets_matches_per_set_results(x64):
    params_a, fn, args = make_convnet(6, n_tasks=2)
    params_b, _, _ = make_convnet(7, n_tasks=2)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params_a, params_b)
    for name, f in _objectives(fn, "encoder/conv2").items():
        grad = jax.grad(lambda p: f(p, *args)[0])
        batched = jax.jit(jax.vmap(grad))(stacked)
        for i, p in enumerate((params_a, params_b)):
            assert_tree_allclose(jax.tree.map(lambda g: g[i], batched), jax.jit(grad)(p), rtol=1e-10, atol=1e-12)


def test_flax_cnn_split_equals_generic_and_reference():
    from orthojax.models import MultiDigitCNN

    model = MultiDigitCNN(features=4, dense_features=6, num_classes=(3, 3, 3))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.random((4, 16, 16, 1), np.float32))
    labels = jnp.asarray(rng.integers(0, 3, (4, 3)).astype(np.int32))
    params = model.init(jax.random.key(0), images[:1])["params"]

    def losses_of(outputs):
        return jnp.stack([jnp.mean(jax.nn.logsumexp(o, -1) - jnp.take_along_axis(o, labels[:, t:t + 1], 1)[:, 0])
                          for t, o in enumerate(outputs)])

    fn = lambda p: losses_of(model.apply({"params": p}, images))
    encode = lambda p: model.apply({"params": p}, images, method="encode")
    decode = lambda p, zs, extras: losses_of(model.apply({"params": p}, zs, extras, method="decode"))
    kw = dict(wrt="encoder/conv2", alpha=10.0)
    runs = {
        "reference": lambda p: orthojax.loss_with_cosreg(fn, p, implementation="reference", **kw),
        "fast": lambda p: orthojax.loss_with_cosreg(fn, p, **kw),
        "split": lambda p: orthojax.loss_with_cosreg_split(encode, decode, p, **kw),
    }
    out = {k: jax.jit(jax.value_and_grad(f, has_aux=True))(params) for k, f in runs.items()}
    (ref_total, _), ref_grads = out["reference"]
    for name in ("fast", "split"):
        (total, _), grads = out[name]
        np.testing.assert_allclose(float(total), float(ref_total), rtol=1e-6, err_msg=name)
        assert_tree_allclose(grads, ref_grads, rtol=2e-4, atol=2e-6)


def test_bad_input_is_named():
    params, fn, args = make_mlp(0, n_tasks=2, dtype=np.float32)
    with pytest.raises(ValueError, match="implementation must be one of"):
        orthojax.loss_with_cosreg(fn, params, *args, wrt="encoder/dense2", alpha=1.0, implementation="double")
    encode, decode = fn.split
    three = lambda p, *a: (encode(p, *a)[0] + encode(p, *a)[0][:1], None)
    with pytest.raises(ValueError, match="one representation per task: got 3 representations for 2"):
        orthojax.loss_with_cosreg_split(three, lambda p, zs, e, *a: decode(p, zs[:2], e, *a), params, *args,
                                        wrt="encoder/dense2", alpha=1.0)
    with pytest.raises(ValueError, match="alpha must be a finite non-negative"):
        orthojax.loss_with_cosreg_split(encode, decode, params, *args, wrt="encoder/dense2", alpha=-1.0)
    with pytest.raises(KeyError):
        orthojax.loss_with_cosreg_split(encode, decode, params, *args, wrt="encoder/nope", alpha=1.0)


def test_a_task_that_does_not_use_wrt_is_warned_about_by_every_implementation():
    from orthojax.jacobian import IndependentTaskWarning

    params, fn, args = make_mlp(0, n_tasks=2, dtype=np.float32)
    encode, decode = fn.split

    def detached_decode(p, zs, extras, x, ys):  # task 1 reads its head only, never the encoder
        losses = decode(p, zs, extras, x, ys)
        return jnp.stack([losses[0], jnp.sum(p["heads"]["task1"]["kernel"] ** 2)])

    detached = lambda p, *a: detached_decode(p, *encode(p, *a), *a)
    kw = dict(wrt="encoder/dense2", alpha=1.0)
    calls = {
        "fast": lambda: orthojax.loss_with_cosreg(detached, params, *args, **kw),
        "reference": lambda: orthojax.loss_with_cosreg(detached, params, *args, implementation="reference", **kw),
        "split": lambda: orthojax.loss_with_cosreg_split(encode, detached_decode, params, *args, **kw),
    }
    for name, call in calls.items():
        with pytest.warns(IndependentTaskWarning, match=r"task \[1\]"):
            total, _ = jax.jit(call)()
        assert np.isfinite(float(total)), name


def _contract_problem():
    """Plain-JAX encoder + 3 heads; returns (params, x, encode, good decode)."""
    rng = np.random.default_rng(0)
    params = {"enc": {"w": jnp.asarray(rng.normal(size=(4, 5)))}, "heads": jnp.asarray(rng.normal(size=(3, 5)))}
    x = jnp.asarray(rng.normal(size=(8, 4)))
    encode = lambda p, x: ((jnp.tanh(x @ p["enc"]["w"]),) * 3, None)  # noqa: E731

    def decode(p, zs, extras, x):
        return jnp.stack([jnp.mean((zs[t] @ p["heads"][t]) ** 2) for t in range(3)])

    return params, x, encode, decode


@pytest.mark.parametrize("violation", ["reads_other_zs", "reads_mean_of_zs", "tied_weights", "extras_from_wrt"])
def test_split_contract_violations_warn_and_fall_back_to_the_exact_generic_path(violation, x64):
    from orthojax.second_order import SplitContractWarning

    params, x, encode, decode = _contract_problem()
    if violation == "reads_other_zs":
        bad_decode = lambda p, zs, e, x: decode(p, (zs[0],) * 3, e, x)  # noqa: E731
        bad_encode = encode
    elif violation == "reads_mean_of_zs":
        bad_decode = lambda p, zs, e, x: decode(p, (sum(zs) / 3,) * 3, e, x)  # noqa: E731
        bad_encode = encode
    elif violation == "tied_weights":
        bad_decode = lambda p, zs, e, x: decode(p, zs, e, x) + jnp.sum(p["enc"]["w"] ** 2)  # noqa: E731
        bad_encode = encode
    else:
        def bad_encode(p, x):
            z = jnp.tanh(x @ p["enc"]["w"])
            return (z,) * 3, {"skip": z * 2.0}

        bad_decode = lambda p, zs, e, x: decode(p, zs, e, x) + jnp.mean(e["skip"] ** 2)  # noqa: E731
    whole = lambda p, x: bad_decode(p, *bad_encode(p, x), x)  # noqa: E731
    kw = dict(wrt="enc", alpha=1.0)
    (want, want_aux), want_grads = jax.value_and_grad(
        lambda p: orthojax.loss_with_cosreg(whole, p, x, implementation="reference", **kw), has_aux=True)(params)
    with pytest.warns(SplitContractWarning, match="contract"):
        (got, aux), grads = jax.value_and_grad(
            lambda p: orthojax.loss_with_cosreg_split(bad_encode, bad_decode, p, x, **kw), has_aux=True)(params)
    np.testing.assert_allclose(float(aux.penalty), float(want_aux.penalty), rtol=1e-12)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-12)
    assert_tree_allclose(grads, want_grads, rtol=1e-10, atol=1e-12)


def test_split_contract_check_passes_clean_models_silently(recwarn, x64):
    params, x, encode, decode = _contract_problem()
    jax.grad(lambda p: orthojax.loss_with_cosreg_split(encode, decode, p, x, wrt="enc", alpha=1.0)[0])(params)
    from orthojax.second_order import SplitContractWarning

    assert not [w for w in recwarn if issubclass(w.category, SplitContractWarning)]


def test_custom_vjp_models_get_a_pointer_to_the_reference_implementation(x64):
    params, x, encode, decode = _contract_problem()

    @jax.custom_vjp
    def act(z):
        return jnp.tanh(z)

    act.defvjp(lambda z: (jnp.tanh(z), jnp.tanh(z)), lambda t, g: (g * (1 - t ** 2),))
    fn = lambda p, x: decode(p, (act(x @ p["enc"]["w"]),) * 3, None, x)  # noqa: E731
    with pytest.raises(TypeError, match="implementation='reference'"):
        jax.grad(lambda p: orthojax.loss_with_cosreg(fn, p, x, wrt="enc", alpha=1.0)[0])(params)
    grads = jax.grad(lambda p: orthojax.loss_with_cosreg(fn, p, x, wrt="enc", alpha=1.0,
                                                          implementation="reference")[0])(params)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))


def test_reported_cosine_and_penalty_are_constants_in_every_implementation(x64):
    params, fn, args = make_mlp(2, n_tasks=3)
    for name, f in _objectives(fn, "encoder/dense2").items():
        grads = jax.grad(lambda p: f(p, *args)[1].penalty + jnp.sum(f(p, *args)[1].cosine))(params)
        assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads)), name


def test_alpha_validation_and_array_alpha():
    params, fn, args = make_mlp(0, n_tasks=2, dtype=np.float32)
    call = lambda a: orthojax.loss_with_cosreg(fn, params, *args, wrt="encoder/dense2", alpha=a)  # noqa: E731
    for bad in (-1.0, float("nan"), float("inf"), jnp.array(-1.0), jnp.array(jnp.nan)):
        with pytest.raises(ValueError, match="finite non-negative"):
            call(bad)
    with pytest.raises(ValueError, match="scalar"):
        call(jnp.ones(3))
    for bad in ("10", True, None):
        with pytest.raises(TypeError, match="alpha must be a real number"):
            call(bad)
    # traced alpha (jit, vmap over alpha) is fine
    totals = jax.jit(jax.vmap(lambda a: call(a)[0]))(jnp.array([0.0, 1.0, 10.0]))
    assert totals.shape == (3,) and bool(jnp.all(jnp.diff(totals) >= 0))


def test_non_float_selected_leaves_and_malformed_encoders_are_named():
    params, fn, args = make_mlp(0, n_tasks=2, dtype=np.float32)
    with_count = {**params, "encoder": {**params["encoder"], "dense2": {**params["encoder"]["dense2"],
                                                                       "count": jnp.zeros((), jnp.int32)}}}
    for impl in ("fast", "reference"):
        with pytest.raises(ValueError, match=r"not floating point: encoder/dense2/count \(int32\)"):
            orthojax.loss_with_cosreg(fn, with_count, *args, wrt="encoder/dense2", alpha=1.0, implementation=impl)
    encode, decode = fn.split
    cases = {
        "a pair \\(zs, extras\\)": lambda p, *a: encode(p, *a)[0][0],
        "tuple or list of T arrays": lambda p, *a: (encode(p, *a)[0][0], None),
    }
    for message, bad in cases.items():
        with pytest.raises(ValueError, match=message):
            orthojax.loss_with_cosreg_split(bad, decode, params, *args, wrt="encoder/dense2", alpha=1.0)
    with pytest.raises(ValueError, match="decode_fn must return"):
        orthojax.loss_with_cosreg_split(encode, lambda *a: decode(*a)[:, None], params, *args,
                                        wrt="encoder/dense2", alpha=1.0)
