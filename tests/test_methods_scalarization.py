"""Single-task learning with the task as a value of the method state.

* Its step equals the step on ``L_task`` alone (the former definition, written out here as the oracle), in
  float64: the objective, every gradient, the reported task weights.
* The compiled train step does not depend on the task: the lowered programs of every task are the same
  text (one persistent-cache entry for the T runs of a row).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from orthojax.methods import MultiTaskProblem, get_method
from orthojax.methods.scalarization import SingleTaskState, single_task
from orthojax.models.cnn import MultiDigitCNN
from orthojax.training import init_train_state, make_train_step


def _toy(dtype):
    """Two-layer shared encoder, three linear heads; losses of very different scales."""
    rng = np.random.default_rng(0)
    params = {"encoder": {"w": rng.normal(size=(4, 5)).astype(dtype)},
              "heads": {"w": rng.normal(size=(3, 5)).astype(dtype)}}
    batch = {"x": rng.normal(size=(6, 4)).astype(dtype), "y": rng.normal(size=(6, 3)).astype(dtype)}
    scale = jnp.asarray([1.0, 1e3, 1e-3], dtype)

    def task_losses(p, b, rng_):
        h = jnp.tanh(b["x"] @ p["encoder"]["w"])
        pred = h @ p["heads"]["w"].T
        return scale * jnp.mean((pred - b["y"]) ** 2, axis=0), {}

    return params, MultiTaskProblem(task_losses, last_shared="encoder"), batch


def _oracle(problem, params, batch, task):
    """The step on L_task alone (value_and_grad of the task's loss)."""
    def loss(p):
        return problem.task_losses(p, batch, None)[0][task]
    return jax.value_and_grad(loss)(params)


@pytest.mark.parametrize("task", [0, 1, 2])
def test_step_equals_the_gradient_of_the_task_loss_alone(task):
    with jax.enable_x64(True):
        params, problem, batch = _toy(np.float64)
        method = single_task(task)
        state = method.init(params, 3)
        assert isinstance(state, SingleTaskState) and state.weights.dtype == jnp.float64
        np.testing.assert_array_equal(state.weights, np.eye(3)[task])
        out = jax.jit(lambda p, s: method.step(problem, p, s, batch, jax.random.key(0)))(params, state)
        value, grads = _oracle(problem, params, batch, task)
        np.testing.assert_allclose(out.loss, value, rtol=1e-15, atol=0)
        for got, want in zip(jax.tree.leaves(out.grads), jax.tree.leaves(grads)):
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-300)
        others = [t for t in range(3) if t != task]
        # the other heads' rows get exactly zero gradient
        np.testing.assert_array_equal(np.asarray(out.grads["heads"]["w"])[others], 0.0)
        np.testing.assert_array_equal(out.metrics["task_weights"], np.eye(3)[task])
        np.testing.assert_array_equal(out.state.weights, state.weights)  # the state does not change


def test_a_non_finite_loss_of_another_task_does_not_reach_the_trained_task():
    params, problem, batch = _toy(np.float32)

    def with_inf(p, b, rng_):
        losses, aux = problem.task_losses(p, b, rng_)
        return losses.at[2].set(jnp.inf), aux

    inf_problem = problem._replace(task_losses=with_inf)
    method = single_task(0)
    out = method.step(inf_problem, params, method.init(params, 3), batch, jax.random.key(0))
    value, grads = _oracle(problem, params, batch, 0)
    assert np.isfinite(float(out.loss)) and float(out.loss) == pytest.approx(float(value), rel=1e-6)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(out.grads))


def test_the_compiled_train_step_is_the_same_program_for_every_task():
    model = MultiDigitCNN(features=2, dense_features=3)
    images = np.zeros((2, 8, 8, 1), np.float32)
    batch = {"image": images, "labels": np.zeros((2, 2), np.int32)}

    def task_losses(outputs, b):
        return jnp.stack([optax.softmax_cross_entropy_with_integer_labels(o, b["labels"][:, t]).mean()
                          for t, o in enumerate(outputs)])

    texts = []
    for task in (0, 1):
        method = get_method("single_task", task=task)
        state = init_train_state(jax.random.key(0), model, method, optax.adam(1e-3), images)
        step = make_train_step(model, task_losses, method, optax.adam(1e-3), last_shared="encoder/conv2")
        texts.append(jax.jit(step).lower(state, batch).as_text())
    assert texts[0] == texts[1]


@pytest.mark.parametrize("task", [-1, 1.0, True, "0"])
def test_bad_task_index_is_a_clear_error(task):
    with pytest.raises(ValueError, match="task must be a non-negative task index"):
        single_task(task)


def test_task_index_beyond_the_tasks_is_an_error_at_init():
    params, _, _ = _toy(np.float32)
    with pytest.raises(ValueError, match="task index 3 out of range for 3 tasks"):
        single_task(3).init(params, 3)
