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
