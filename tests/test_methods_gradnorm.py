"""GradNorm against a hand computation (two steps, both choices of W) and its balancing property."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from orthojax.methods import MultiTaskProblem, gradnorm

X = np.array([[1.0, 0.5], [-0.3, 2.0], [0.7, -1.2]])


def _problem(scale=(1.0, 1.0)):
    """z = tanh(x W1) W2 (shared: layer1, layer2 = the last shared layer), L_t = scale_t mean (z a_t - y_t)^2."""
    y = np.array([[1.0, -1.0, 0.5], [0.2, 0.3, -0.7]])

    def task_losses(p, batch, rng):
        z = jnp.tanh(X @ p["encoder"]["layer1"]["kernel"]) @ p["encoder"]["layer2"]["kernel"]
        losses = [jnp.mean((z @ p["heads"]["a"][t] - y[t]) ** 2) for t in range(2)]
        return jnp.stack(losses) * jnp.asarray(scale), None

    params = {
        "encoder": {"layer1": {"kernel": jnp.array([[0.4, -0.2], [0.1, 0.3]])},
                    "layer2": {"kernel": jnp.array([[0.5, 0.1], [-0.3, 0.8]])}},
        "heads": {"a": jnp.array([[1.0, 0.5], [-0.4, 0.9]])},
    }
    problem = MultiTaskProblem(task_losses, last_shared="encoder/layer2", shared="encoder")
    return problem, params


def _per_task_grads(problem, params):
    """Independent oracle: one jax.grad per task."""
    return [jax.grad(lambda p, t=t: problem.task_losses(p, None, None)[0][t])(params) for t in range(2)]


def _flat(tree, keys):
    out = []
    for key in keys:
        node = tree
        for part in key:
            node = node[part]
        out.append(np.ravel(node))
    return np.concatenate(out)


@pytest.mark.parametrize("on,keys", [
    ("last_shared", [("encoder", "layer2", "kernel")]),
    ("shared", [("encoder", "layer1", "kernel"), ("encoder", "layer2", "kernel")]),
])
def test_two_steps_match_hand_computation(on, keys):
    problem, params = _problem()
    lr, alpha = 0.05, 1.5
    method = gradnorm(alpha=alpha, on=on, optimizer=optax.sgd(lr))
    state = method.init(params, 2)
    w = np.ones(2)
    L0 = None
    p = params
    for it in range(2):
        out = method.step(problem, p, state, None, jax.random.key(0))
        grads = _per_task_grads(problem, p)
        L = np.asarray(problem.task_losses(p, None, None)[0])
        L0 = L if L0 is None else L0
        n = np.array([np.linalg.norm(_flat(g, keys)) for g in grads])
        G = w * n
        r = (L / L0) / np.mean(L / L0)
        target = np.mean(G) * r**alpha
        expected_model_grad = jax.tree.map(lambda a, b: w[0] * a + w[1] * b, grads[0], grads[1])
        for got, want in zip(jax.tree.leaves(out.grads), jax.tree.leaves(expected_model_grad)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(out.metrics["grad_norms"], G, rtol=1e-5)
        np.testing.assert_allclose(out.metrics["task_weights"], w, rtol=1e-6)
        np.testing.assert_allclose(out.metrics["gradnorm_loss"], np.sum(np.abs(G - target)), rtol=1e-5)
        np.testing.assert_allclose(out.loss, w @ L, rtol=1e-6)
        w = w - lr * np.sign(G - target) * n
        w = 2 * w / w.sum()
        np.testing.assert_allclose(out.state.weights, w, rtol=1e-5)
        np.testing.assert_allclose(out.state.initial_losses, L0, rtol=1e-6)
        assert int(out.state.count) == it + 1
        state = out.state
        p = jax.tree.map(lambda a, g: a - 0.3 * g, p, out.grads)  # move so that L / L(0) differs from 1


def test_on_last_shared_and_on_shared_differ():
    problem, params = _problem()
    a = gradnorm(on="last_shared").step(problem, params, gradnorm().init(params, 2), None, None)
    b = gradnorm(on="shared").step(problem, params, gradnorm().init(params, 2), None, None)
    assert np.all(np.asarray(b.metrics["grad_norms"]) > np.asarray(a.metrics["grad_norms"]))


def test_weights_balance_the_gradient_norms():
    """alpha = 0 and a task 5x larger: the weighted norms w_t ||grad_W L_t|| become equal, sum w = T."""
    problem, params = _problem(scale=(1.0, 5.0))
    method = gradnorm(alpha=0.0, optimizer=optax.sgd(0.01))
    step = jax.jit(lambda s: method.step(problem, params, s, None, None))
    state = method.init(params, 2)
    first = step(state).metrics["grad_norms"]
    for _ in range(400):
        out = step(state)
        state = out.state
    G = np.asarray(out.metrics["grad_norms"])
    assert abs(np.log(first[1] / first[0])) > 1.0
    assert abs(np.log(G[1] / G[0])) < 0.1, G
    big = int(np.argmax(first))  # the task with the larger gradient ends with the smaller weight
    assert state.weights[big] < state.weights[1 - big]
    np.testing.assert_allclose(np.sum(state.weights), 2.0, rtol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# NumPy float64 oracle (hand-derived gradients), dtype and scale safety
# --------------------------------------------------------------------------------------------------------------

Y = np.array([[1.0, -1.0, 0.5], [0.2, 0.3, -0.7]])
PARAMS = {"W1": np.array([[0.4, -0.2], [0.1, 0.3]]), "W2": np.array([[0.5, 0.1], [-0.3, 0.8]]),
          "a": np.array([[1.0, 0.5], [-0.4, 0.9]])}


def _np_losses_and_grads(p, scale):
    """L_t = scale_t mean_i (z_i a_t - y_ti)^2, z = tanh(X W1) W2, and its gradients, in NumPy float64."""
    h = np.tanh(X @ p["W1"])
    z = h @ p["W2"]
    losses, grads = [], []
    for t in range(2):
        e = z @ p["a"][t] - Y[t]
        losses.append(scale[t] * np.mean(e ** 2))
        dz = scale[t] * 2.0 / len(e) * np.outer(e, p["a"][t])
        da = np.zeros_like(p["a"])
        da[t] = z.T @ (scale[t] * 2.0 / len(e) * e)
        grads.append({"W1": X.T @ ((dz @ p["W2"].T) * (1 - h ** 2)), "W2": h.T @ dz, "a": da})
    return np.array(losses), grads


def _scaled_problem():
    """The problem above with the task scales read from the batch (one compilation for every scale)."""

    def task_losses(p, batch, rng):
        z = jnp.tanh(X @ p["encoder"]["layer1"]["kernel"]) @ p["encoder"]["layer2"]["kernel"]
        losses = [jnp.mean((z @ p["heads"]["a"][t] - Y[t]) ** 2) for t in range(2)]
        return jnp.stack(losses) * batch, None

    return MultiTaskProblem(task_losses, last_shared="encoder/layer2", shared="encoder")


def _jax_params(dtype):
    return {"encoder": {"layer1": {"kernel": jnp.asarray(PARAMS["W1"], dtype)},
                        "layer2": {"kernel": jnp.asarray(PARAMS["W2"], dtype)}},
            "heads": {"a": jnp.asarray(PARAMS["a"], dtype)}}


def _np_gradnorm_step(w, L0, scale, alpha, update):
    """One GradNorm step on PARAMS (W = layer2) in NumPy float64; ``update(grad) -> step`` is the optimiser."""
    L, grads = _np_losses_and_grads(PARAMS, scale)
    L0 = L if L0 is None else L0
    n = np.array([np.linalg.norm(g["W2"]) for g in grads])
    G = w * n
    r = (L / L0) / np.mean(L / L0)
    target = np.mean(G) * r ** alpha
    new_w = np.maximum(w + update(np.sign(G - target) * n), 1e-6)
    return dict(losses=L, grads=grads, norms=G, loss=np.sum(np.abs(G - target)), weights=2 * new_w / new_w.sum())


SIGN_SGD = 0.05


def _sign_sgd():
    return optax.chain(optax.scale_by_sign(), optax.scale(-SIGN_SGD))


SCALES = [1e-30, 1e-25, 1e-20, 1e-15, 1e-10, 1.0, 1e10, 1e15, 1e20, 1e25, 1e30]


def test_gradient_norms_are_scale_safe_in_float32():
    """Every task loss times c, c from 1e-30 to 1e30, float32: the norms G_t are c times the NumPy float64
    ones (no flush to zero near 1e-20, no overflow near 1e20), the model gradient is c times, and the weights
    after a step of a scale-invariant optimiser (sign SGD) are those of c = 1: GradNorm's weights are
    invariant to a common rescaling of the task gradients. Everything stays finite."""
    problem, params = _scaled_problem(), _jax_params(jnp.float32)
    method = gradnorm(alpha=1.5, optimizer=_sign_sgd())
    step = jax.jit(lambda s, c: method.step(problem, params, s, c, None))
    state = method.init(params, 2)
    w_at_1 = _np_gradnorm_step(np.ones(2), None, np.ones(2), 1.5, lambda g: -SIGN_SGD * np.sign(g))["weights"]
    assert not np.allclose(w_at_1, 1.0)  # the weights move
    for c in SCALES:
        scale = np.array([c, c])
        want = _np_gradnorm_step(np.ones(2), None, scale, 1.5, lambda g: -SIGN_SGD * np.sign(g))
        out = step(state, jnp.asarray(scale, jnp.float32))
        np.testing.assert_allclose(out.metrics["grad_norms"], want["norms"], rtol=1e-5, err_msg=f"c={c}")
        np.testing.assert_allclose(out.metrics["gradnorm_loss"], want["loss"], rtol=1e-4, err_msg=f"c={c}")
        np.testing.assert_allclose(out.state.weights, w_at_1, rtol=1e-6, err_msg=f"c={c}")
        g = want["grads"][0]["W2"] + want["grads"][1]["W2"]
        np.testing.assert_allclose(out.grads["encoder"]["layer2"]["kernel"], g, rtol=1e-5, err_msg=f"c={c}")
        for leaf in jax.tree.leaves((out.grads, out.state, out.metrics, out.loss)):
            assert np.all(np.isfinite(leaf)), c


def test_default_adam_stays_finite_at_every_scale():
    """With the default Adam the weights stay finite for every c (an update whose optimiser state overflows,
    Adam's second moment beyond ~1e19 in float32, is skipped: the previous weights and state are kept)."""
    problem, params = _scaled_problem(), _jax_params(jnp.float32)
    method = gradnorm(alpha=1.5, learning_rate=0.05)
    step = jax.jit(lambda s, c: method.step(problem, params, s, c, None))
    for c in SCALES:
        state = method.init(params, 2)
        for _ in range(2):
            out = step(state, jnp.asarray([c, 3 * c], jnp.float32))
            state = out.state
            for leaf in jax.tree.leaves((out.grads, out.state, out.metrics, out.loss)):
                assert np.all(np.isfinite(leaf)), c
        np.testing.assert_allclose(np.sum(state.weights), 2.0, rtol=1e-6)
        if 1e-5 <= c <= 1e15:  # Adam is invariant here (eps negligible, no overflow): the weights moved alike
            assert not np.allclose(state.weights, 1.0), c


def test_two_steps_match_numpy_in_float64_and_state_is_float64():
    """Under x64 with float64 parameters the state is float64 and two steps agree with NumPy to 1e-12."""
    with jax.enable_x64(True):
        problem, params = _scaled_problem(), _jax_params(jnp.float64)
        lr = 0.05
        method = gradnorm(alpha=1.5, on="last_shared", optimizer=optax.sgd(lr))
        state = method.init(params, 2)
        for leaf in jax.tree.leaves(state):
            assert leaf.dtype in (jnp.float64, jnp.int32), leaf.dtype
        scale = np.array([1.0, 2.5])
        out = method.step(problem, params, state, jnp.asarray(scale), None)
        want = _np_gradnorm_step(np.ones(2), None, scale, 1.5, lambda g: -lr * g)
        assert out.state.weights.dtype == jnp.float64 and out.state.initial_losses.dtype == jnp.float64
        np.testing.assert_allclose(out.metrics["grad_norms"], want["norms"], rtol=1e-12)
        np.testing.assert_allclose(out.state.weights, want["weights"], rtol=1e-12)
        np.testing.assert_allclose(out.state.initial_losses, want["losses"], rtol=1e-12)
        # second step at the same parameters: L / L0 = 1, weights from step 1
        out2 = method.step(problem, params, out.state, jnp.asarray(scale), None)
        L, grads = _np_losses_and_grads(PARAMS, scale)
        n = np.array([np.linalg.norm(g["W2"]) for g in grads])
        G = want["weights"] * n
        w2 = np.maximum(want["weights"] - lr * np.sign(G - np.mean(G)) * n, 1e-6)
        np.testing.assert_allclose(out2.metrics["grad_norms"], G, rtol=1e-12)
        np.testing.assert_allclose(out2.state.weights, 2 * w2 / w2.sum(), rtol=1e-12)
        assert out2.grads["encoder"]["layer2"]["kernel"].dtype == jnp.float64
