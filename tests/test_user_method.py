"""A method written in the user's own module runs like a built-in one: built by reference, its
hyper-parameters read from its signature and docstring, trained through the engine's compiled step."""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(__file__))
from _training_common import LAST_SHARED, TinyMTL, make_data, task_losses  # noqa: E402

from orthojax import training  # noqa: E402
from orthojax.methods import build_method, method_spec  # noqa: E402

REFERENCE = "tests._user_method:my_method"


def test_user_method_spec_from_its_module():
    spec = method_spec(REFERENCE)
    (hp,) = spec.hyperparameters
    assert (hp.name, hp.type, hp.default) == ("first_weight", float, 2.0)
    assert hp.help.startswith("the weight of the first task's loss") and hp.parse("3") == 3.0
    assert spec.summary.startswith("A fixed weighting of two tasks")
    assert build_method(REFERENCE, first_weight=3.0).hyperparameters == {"first_weight": 3.0}


def test_user_method_through_the_train_step_matches_its_objective():
    """One SGD step with the user's method moves the parameters by -lr * grad(3 L_0 + L_1) (oracle:
    jax.grad of the model's losses, written here)."""
    lr, model = 0.1, TinyMTL()
    method = build_method(REFERENCE, first_weight=3.0)
    data = {k: jnp.asarray(v) for k, v in make_data(8).items()}
    state = training.init_train_state(jax.random.key(0), model, method, optax.sgd(lr), data["image"][:2])
    step = jax.jit(training.make_train_step(model, task_losses, method, optax.sgd(lr), last_shared=LAST_SHARED))
    new_state, metrics = step(state, data)

    def objective(params):
        losses = task_losses(model.apply({"params": params}, data["image"], train=True), data)
        return 3.0 * losses[0] + losses[1]

    grads = jax.grad(objective)(state.params)
    expected = jax.tree.map(lambda p, g: p - lr * g, state.params, grads)
    for got, want in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["task_weights"], [3.0, 1.0])
