"""Gradient-aggregation and loss-balancing Methods on a toy two-task MLP.

Expected gradients come from explicit per-task ``jax.grad`` calls written here; DWA and FAMO weights from
NumPy re-implementations of their update rules.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from orthojax import aggregators
from orthojax.methods import aggregation, loss_balancing
from orthojax.methods import get_method
from orthojax.methods.base import MultiTaskProblem

sys.path.insert(0, os.path.dirname(__file__))
from test_methods_common import make_toy  # noqa: E402

AGG_NAMES = ["mgda", "pcgrad", "imtl_g", "aligned_mtl", "upgrad", "dualproj", "cagrad"]
ALL_FACTORIES = {**{n: aggregation.AGGREGATORS[n] for n in AGG_NAMES}, "dwa": loss_balancing.dwa,
                 "famo": loss_balancing.famo}


def _toy(dtype=jnp.float32, seed=0, d_in=4, d_h=8, n=32):
    """Shared 2-layer tanh encoder, one linear head per task; two regression tasks with different targets."""
    ks = jax.random.split(jax.random.key(seed), 8)
    params = {
        "encoder": {
            "dense1": {"kernel": jax.random.normal(ks[0], (d_in, d_h), dtype) / np.sqrt(d_in),
                       "bias": jnp.zeros((d_h,), dtype)},
            "dense2": {"kernel": jax.random.normal(ks[1], (d_h, d_h), dtype) / np.sqrt(d_h),
                       "bias": jnp.zeros((d_h,), dtype)},
        },
        "heads": {f"task{t}": {"kernel": jax.random.normal(ks[2 + t], (d_h, 1), dtype) / np.sqrt(d_h)}
                  for t in range(2)},
    }
    x = jax.random.normal(ks[4], (n, d_in), dtype)
    y0 = jnp.sin(x @ jnp.asarray([1.0, -1.0, 0.5, 0.0], dtype))[:, None]
    y1 = jnp.cos(x @ jnp.asarray([0.0, 1.0, 1.0, -0.5], dtype))[:, None]
    batch = (x, jnp.stack([y0, y1]))

    def task_losses(p, batch, rng):
        x, ys = batch
        h = jnp.tanh(x @ p["encoder"]["dense1"]["kernel"] + p["encoder"]["dense1"]["bias"])
        h = jnp.tanh(h @ p["encoder"]["dense2"]["kernel"] + p["encoder"]["dense2"]["bias"])
        losses = jnp.stack([jnp.mean((h @ p["heads"][f"task{t}"]["kernel"] - ys[t]) ** 2) for t in range(2)])
        return losses, {"h_mean": jnp.mean(h)}

    problem = MultiTaskProblem(task_losses=task_losses, last_shared="encoder/dense2", shared="encoder")
    return params, problem, batch


def _explicit(problem, params, batch, rng):
    """Per-task gradients of the whole parameter tree, from T explicit jax.grad calls."""
    return [jax.grad(lambda p, t=t: problem.task_losses(p, batch, rng)[0][t])(params) for t in range(2)]


@pytest.mark.parametrize("name", ["upgrad"])
def test_step_combines_shared_jacobian_and_sums_task_specific_gradients(name, x64):
    params, problem, batch = _toy(jnp.float64)
    rng = jax.random.key(1)
    method = aggregation.AGGREGATORS[name]()
    out = jax.jit(lambda p, b, k: method.step(problem, p, method.init(params, 2), b, k))(params, batch, rng)
    g = _explicit(problem, params, batch, rng)
    w = np.asarray(out.metrics["task_weights"])
    # shared parameters: d = w @ J
    for path in (("dense1", "kernel"), ("dense1", "bias"), ("dense2", "kernel"), ("dense2", "bias")):
        rows = [np.asarray(gt["encoder"][path[0]][path[1]]) for gt in g]
        expected = w[0] * rows[0] + w[1] * rows[1]
        np.testing.assert_allclose(np.asarray(out.grads["encoder"][path[0]][path[1]]), expected, rtol=1e-10,
                                   atol=1e-13)
    # each head gets its own task's gradient (the gradient of the sum of the losses)
    for t in range(2):
        np.testing.assert_allclose(np.asarray(out.grads["heads"][f"task{t}"]["kernel"]),
                                   np.asarray(g[t]["heads"][f"task{t}"]["kernel"]), rtol=1e-12)
    J = np.stack([np.concatenate([np.ravel(x) for x in jax.tree.leaves(gt["encoder"])]) for gt in g])
    np.testing.assert_allclose(np.asarray(out.metrics["gramian"]), J @ J.T, rtol=1e-10)
    losses, aux = problem.task_losses(params, batch, rng)
    np.testing.assert_allclose(np.asarray(out.task_losses), np.asarray(losses), rtol=1e-14)
    np.testing.assert_allclose(float(out.loss), float(jnp.sum(losses)), rtol=1e-14)
    assert float(out.aux["h_mean"]) == pytest.approx(float(aux["h_mean"]))
    assert jax.tree.structure(out.grads) == jax.tree.structure(params)


@pytest.mark.parametrize("name", sorted(ALL_FACTORIES))
def test_method_reduces_both_losses_on_toy_problem_without_retracing(name):
    params, problem, batch = _toy()
    method = ALL_FACTORIES[name]()
    assert method.name == name
    state = method.init(params, 2)
    opt = optax.adam(2e-2)
    opt_state = opt.init(params)
    traces = []

    @jax.jit
    def train_step(params, state, opt_state, rng):
        traces.append(1)
        out = method.step(problem, params, state, batch, rng)
        updates, opt_state = opt.update(out.grads, opt_state, params)
        return optax.apply_updates(params, updates), out.state, opt_state, out

    first = None
    for i in range(40):
        params, state, opt_state, out = train_step(params, state, opt_state, jax.random.key(i))
        assert bool(jnp.all(jnp.isfinite(out.task_losses))) and bool(jnp.all(jnp.isfinite(out.metrics["task_weights"])))
        if first is None:
            first = np.asarray(out.task_losses)
    last = np.asarray(problem.task_losses(params, batch, None)[0])
    assert len(traces) == 1
    assert out.metrics["task_weights"].shape == (2,)
    assert np.all(last < 0.7 * first), (name, first, last)


def test_pcgrad_order_comes_from_the_step_key():
    # three tasks are needed for the order to matter; the deterministic variant ignores the key
    params, problem, batch = _toy()
    g = jnp.asarray([[1.0, 0.0, 0.0], [-0.9, 1.0, 0.0], [-0.3, -0.8, 1.0]])

    def three(p, batch, rng):
        v = p["encoder"]["dense2"]["bias"][:3]
        return g @ v + jnp.zeros(3), ()

    prob3 = MultiTaskProblem(task_losses=three, last_shared="encoder/dense2", shared="encoder")
    seen_random, seen_fixed = set(), set()
    rand, fixed = aggregation.pcgrad(), aggregation.pcgrad(random_order=False)
    both = jax.jit(lambda k: (rand.step(prob3, params, (), batch, k), fixed.step(prob3, params, (), batch, k)))
    for i in range(8):
        out_r, out_f = both(jax.random.key(i))
        seen_random.add(tuple(np.round(np.asarray(out_r.metrics["task_weights"]), 5)))
        seen_fixed.add(tuple(np.round(np.asarray(out_f.metrics["task_weights"]), 5)))
    assert len(seen_fixed) == 1 and len(seen_random) > 1


def test_dwa_weights_follow_the_period_averages(x64):
    params, problem, batch = _toy(jnp.float64)
    method = loss_balancing.dwa(temperature=2.0, period=2)
    state = method.init(params, 2)
    step = jax.jit(lambda p, s: method.step(problem, p, s, batch, None))
    history, weights = [], []
    for i in range(6):
        out = step(params, state)
        weights.append(np.asarray(out.metrics["task_weights"]))
        history.append(np.asarray(out.task_losses))
        state = out.state
        params = jax.tree.map(lambda p, g: p - 0.1 * g, params, out.grads)
    np.testing.assert_allclose(weights[0], [1.0, 1.0])
    np.testing.assert_allclose(weights[3], [1.0, 1.0])  # only one complete period before step 4
    L = np.asarray(history)
    avg1, avg2 = L[0:2].mean(0), L[2:4].mean(0)
    r = avg2 / avg1
    expected = 2 * np.exp(r / 2) / np.sum(np.exp(r / 2))
    np.testing.assert_allclose(weights[4], expected, rtol=1e-12)
    np.testing.assert_allclose(weights[5], expected, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(state.last), L[4:6].mean(0), rtol=1e-12)
    assert int(state.periods) == 3


def test_famo_logit_update_and_weights(x64):
    params, problem, batch = _toy(jnp.float64)
    method = loss_balancing.famo(w_lr=0.025, gamma=0.01)
    state = method.init(params, 2)
    step = jax.jit(lambda p, s: method.step(problem, p, s, batch, None))
    out1 = step(params, state)
    np.testing.assert_allclose(np.asarray(out1.state.logits), [0.0, 0.0])  # no previous losses yet
    L1 = np.asarray(out1.task_losses)
    np.testing.assert_allclose(np.asarray(out1.metrics["task_weights"]), (1 / (L1 + 1e-8)) / np.sum(1 / (L1 + 1e-8)), rtol=1e-10)
    params2 = jax.tree.map(lambda p, g: p - 0.1 * g, params, out1.grads)
    out2 = step(params2, out1.state)
    L2 = np.asarray(out2.task_losses)
    # NumPy: softmax-Jacobian gradient of delta, then the first Adam step (weight decay on xi = 0 is zero)
    delta = np.log(L1 + 1e-8) - np.log(L2 + 1e-8)
    z = np.full(2, 0.5)
    d = z * (delta - z @ delta)
    xi = -0.025 * d / (np.abs(d) + 1e-8)
    np.testing.assert_allclose(np.asarray(out2.state.logits), xi, rtol=1e-6)
    zz = np.exp(xi) / np.exp(xi).sum()
    w = (zz / (L2 + 1e-8)) / np.sum(zz / (L2 + 1e-8))
    np.testing.assert_allclose(np.asarray(out2.metrics["task_weights"]), w, rtol=1e-8)
    g = _explicit(problem, params2, batch, None)
    expected = w[0] * np.asarray(g[0]["encoder"]["dense1"]["kernel"]) + w[1] * np.asarray(g[1]["encoder"]["dense1"]["kernel"])
    np.testing.assert_allclose(np.asarray(out2.grads["encoder"]["dense1"]["kernel"]), expected, rtol=1e-10)


def test_factories_validate_and_dispatch():
    for name in AGG_NAMES:
        assert aggregation.AGGREGATORS[name]().name == name
        assert aggregation.gradient_aggregation(getattr(aggregators, name)()).name == name
    with pytest.raises(TypeError, match="get_method"):
        aggregation.gradient_aggregation("mgda")
    with pytest.raises(TypeError):
        aggregation.mgda(c=0.4)
    bad = [
        lambda: aggregation.mgda(num_iters=-1),
        lambda: aggregation.cagrad(c=-1.0),
        lambda: aggregation.cagrad(rescale=5),
        lambda: aggregation.upgrad(reg_eps=float("nan")),
        lambda: aggregation.dualproj(pref=[]),
        lambda: aggregation.pcgrad(random_order=1),
        lambda: loss_balancing.dwa(temperature=0.0),
        lambda: loss_balancing.dwa(period=0),
        lambda: loss_balancing.famo(w_lr=-1.0),
        lambda: loss_balancing.famo(gamma=-0.1),
    ]
    for make in bad:
        with pytest.raises(ValueError):
            make()
    params, _, _ = _toy()
    with pytest.raises(ValueError):
        loss_balancing.famo(min_losses=[0.0, 0.0, 0.0]).init(params, 2)


@pytest.mark.parametrize("name", ["mgda", "pcgrad", "upgrad", "dualproj", "cagrad", "imtl_g", "aligned_mtl"])
def test_cosine_diagnostic_comes_from_the_methods_own_jacobian(name, x64):
    """The engine asks no extra Jacobian of these methods: their "cosine" is the last shared layer's."""
    from orthojax.methods import get_method

    params, problem, batch = _toy(jnp.float64)
    rng = jax.random.key(1)
    out = jax.jit(lambda p: get_method(name).step(problem, p, (), batch, rng))(params)
    rows = [np.concatenate([np.ravel(g["encoder"]["dense2"][k]) for k in ("bias", "kernel")])
            for g in _explicit(problem, params, batch, rng)]
    unit = np.stack([r / np.linalg.norm(r) for r in rows])
    np.testing.assert_allclose(np.asarray(out.metrics["cosine"]), unit @ unit.T, rtol=1e-10, atol=1e-12)


def _linear_problem(J):
    """Task losses L_t = <J_t, w> + L_head,t, so that the shared Jacobian is exactly J; a head per task."""
    def task_losses(p, batch, rng):
        return batch @ p["encoder"]["w"] + 0.5 * p["heads"] ** 2, ()

    params = {"encoder": {"w": jnp.zeros((J.shape[1],), J.dtype)}, "heads": jnp.arange(1.0, J.shape[0] + 1.0)}
    return MultiTaskProblem(task_losses=task_losses, last_shared="encoder", shared="encoder"), params


# registry name -> (aggregator factory, hyper-parameters) for every registered aggregation method
REGISTERED = {
    **{n: (getattr(aggregators, n), {}) for n in AGG_NAMES + ["config", "nash_mtl", "fairgrad", "gradvac", "graddrop"]},
    "sum": (aggregators.sum_aggregator, {}),
    "mean": (aggregators.mean_aggregator, {}),
    "trimmed_mean": (aggregators.trimmed_mean, {"trim_number": 1}),
}
STATEFUL = {"nash_mtl", "gradvac"}


def test_every_aggregation_method_is_covered():
    assert set(REGISTERED) == set(aggregation.AGGREGATORS)


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_method_update_is_the_aggregators_direction(name, x64):
    J = jnp.asarray(np.random.default_rng(4).normal(size=(3, 5)) * [[1.0], [-2.0], [0.5]])
    problem, params = _linear_problem(J)
    factory, kwargs = REGISTERED[name]
    method = aggregation.AGGREGATORS[name](**kwargs)
    assert method.name == name
    rng = jax.random.key(7)
    state = method.init(params, 3)
    out = jax.jit(lambda p, s: method.step(problem, p, s, J, rng))(params, state)
    key = jax.random.fold_in(rng, aggregation._AGGREGATOR_KEY_SALT)  # the documented key derivation
    expected = factory(**kwargs).with_info(J, key=key)
    np.testing.assert_allclose(np.asarray(out.grads["encoder"]["w"]), np.asarray(expected.direction), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(out.grads["heads"]), np.asarray(params["heads"]), rtol=1e-14)
    for k, v in expected.info.items():
        np.testing.assert_allclose(np.asarray(out.metrics[k]), np.asarray(v), rtol=1e-12, err_msg=k)
    if name in STATEFUL:  # one state structure and shape from init on: no retrace, a fixed checkpoint layout
        shapes = lambda tree: jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)  # noqa: E731
        assert shapes(state) == shapes(out.state) == shapes(expected.state)
        for a, b in zip(jax.tree.leaves(out.state), jax.tree.leaves(expected.state)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)
    else:
        assert state == () and out.state == ()


def test_method_from_a_users_plain_stateful_aggregator(x64):
    """A plain function: key from the step, state None at first, then threaded; no diagnostics needed."""
    seen_keys = []

    def momentum_mean(jacobian, state=None, *, key=None):
        seen_keys.append(key)
        m = jax.tree.map(lambda leaf: jnp.mean(leaf, axis=0), jacobian)
        m = m if state is None else jax.tree.map(lambda s, x: 0.5 * s + x, state, m)
        return m, m

    J = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4)))
    problem, params = _linear_problem(J)
    method = aggregation.gradient_aggregation(momentum_mean, name="momentum_mean")
    assert method.name == "momentum_mean"
    state = method.init(params, 2)
    assert state == ()
    expected = np.zeros(4)
    for i in range(3):
        out = method.step(problem, params, state, J, jax.random.key(i))
        expected = np.asarray(J).mean(0) + (0.5 * expected if i else 0.0)
        np.testing.assert_allclose(np.asarray(out.grads["encoder"]["w"]), expected, rtol=1e-14)
        state = out.state
    assert all(k is not None for k in seen_keys)
    assert "task_weights" not in out.metrics
    with pytest.raises(TypeError, match="name"):
        aggregation.gradient_aggregation(momentum_mean)


def test_method_factories_take_the_aggregators_hyperparameters():
    import inspect

    for name, (factory, _) in REGISTERED.items():
        method_params = dict(inspect.signature(aggregation.AGGREGATORS[name]).parameters)
        rep_grad = method_params.pop("rep_grad", None)
        assert method_params == dict(inspect.signature(factory).parameters)
        # every weighting takes rep_grad (keyword-only, default False); the coordinate-wise ones do not
        assert (rep_grad is None) == (name in ("graddrop", "trimmed_mean")), name
        if rep_grad is not None:
            assert rep_grad.kind is inspect.Parameter.KEYWORD_ONLY and rep_grad.default is False
    make = aggregation._method_from_aggregator(aggregators.upgrad, name="upgrad_exact")
    assert make(reg_eps=0.0).name == "upgrad_exact"


# --------------------------------------------------------------------------------------------------------------
# rep_grad: the Jacobian with respect to the shared representation
# --------------------------------------------------------------------------------------------------------------


def _mgda_two_tasks(R):
    """Min-norm point of the segment [r_0, r_1] (Sener & Koltun, Algorithm 1 for T = 2): NumPy float64."""
    r0, r1 = R
    gamma = np.clip(np.dot(r1 - r0, r1) / np.dot(r1 - r0, r1 - r0), 0.0, 1.0)
    return np.array([gamma, 1.0 - gamma])


@pytest.mark.parametrize("name", ["mgda", "upgrad", "nash_mtl"])
def test_rep_grad_against_an_explicit_computation(name, x64):
    """jax.jacrev on z, the weights from that Jacobian's Gramian, then the gradient of sum_t w_t L_t for the
    encoder and of sum_t L_t for the heads."""
    params, problem, batch = make_toy(jax.random.key(5), batch=6, scales=(1.0, 4.0), dtype=jnp.float64)
    rng = jax.random.key(2)
    method = get_method(name, rep_grad=True)
    assert method.hyperparameters["rep_grad"] is True
    state = method.init(params, 2)
    out = jax.jit(lambda p, s: method.step(problem, p, s, batch, rng))(params, state)

    (z, _), extras = problem.encode(params, batch, rng)
    R = jax.jacrev(lambda z: problem.decode(params, (z, z), extras, batch, rng)[0])(z)  # (T, B, d)
    R = np.asarray(R).reshape(2, -1)
    G = R @ R.T
    if name == "mgda":
        w = _mgda_two_tasks(R)
    elif name == "upgrad":
        w = np.asarray(aggregators.upgrad_weights(jnp.asarray(G)))
    else:  # Nash-MTL: alpha (G alpha) = 1, ||d||^2 = alpha^T G alpha = T = 2, clipped to norm 1: w (G w) = 1/2
        w = np.asarray(out.metrics["task_weights"])
        np.testing.assert_allclose(w * (G @ w), [0.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out.metrics["task_weights"]), w, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.asarray(out.metrics["gramian"]), G, rtol=1e-12)

    def weighted(p):
        return jnp.dot(jnp.asarray(w), problem.task_losses(p, batch, rng)[0])

    def total(p):
        return jnp.sum(problem.task_losses(p, batch, rng)[0])

    enc = jax.grad(weighted)(params)["encoder"]
    heads = jax.grad(total)(params)["heads"]
    for got, want in zip(jax.tree.leaves(out.grads["encoder"]), jax.tree.leaves(enc)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-10)
    for got, want in zip(jax.tree.leaves(out.grads["heads"]), jax.tree.leaves(heads)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12)
    assert "cosine" not in out.metrics  # the engine computes the parameter-space diagnostic
    losses, _ = problem.task_losses(params, batch, rng)
    np.testing.assert_allclose(np.asarray(out.task_losses), np.asarray(losses), rtol=1e-12)


def test_rep_grad_errors():
    params, problem, batch = _toy()  # no encode / decode
    method = get_method("mgda", rep_grad=True)
    with pytest.raises(ValueError, match="encode"):
        method.step(problem, params, (), batch, jax.random.key(0))
    with pytest.raises(TypeError, match="rep_grad"):
        get_method("graddrop", rep_grad=True)  # not a weighting: no such hyper-parameter
    with pytest.raises(TypeError, match="rep_grad"):
        aggregation.gradient_aggregation(aggregators.mgda(), rep_grad=1)
    with pytest.raises(ValueError, match="task_weights"):
        aggregation.gradient_aggregation(lambda J, s=None, *, key=None: (J[0], s), name="first", rep_grad=True)
    with pytest.raises(ValueError, match="task_weights"):  # an Aggregator that reports no weights
        method = aggregation.gradient_aggregation(aggregators.trimmed_mean(0), rep_grad=True)
        params, problem, batch = make_toy(jax.random.key(0))
        method.step(problem, params, (), batch, jax.random.key(0))
