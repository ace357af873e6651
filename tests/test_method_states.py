"""Method states as the training engine uses them: donated to the compiled step, and in the parameters' dtype.

* Every registered method's state, built by ``init_train_state`` outside ``jit``, survives the donated
  compiled step (``jax.jit(make_train_step(...), donate_argnums=0)``): no two leaves share a buffer.
* The states of the methods with learnable or recorded floating quantities follow the parameters' dtype
  (float64 under x64; x64 is switched on by a context manager only, so nothing leaks into other tests).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from orthojax.methods import Method, get_method, method_names
from orthojax.models.cnn import MultiDigitCNN
from orthojax.training import TrainState, init_train_state, make_train_step
from orthojax.training.state import distinct_buffers

FEATURES = 3

# hyper-parameters a registered method needs (the others are built with their defaults)
REQUIRED = {
    "single_task": dict(task=0),
    "rotate_only": dict(latent_size=FEATURES),
    "rotograd": dict(latent_size=FEATURES),
    "rotograd_norm": dict(latent_size=FEATURES),
    "recon": dict(layers=("encoder/conv1",)),
    "trimmed_mean": dict(trim_number=0),
    "stch": dict(steps_per_epoch=2),
}


def _method(name: str) -> Method:
    try:
        return get_method(name, **REQUIRED.get(name, {}))
    except TypeError as e:  # a newly registered method with a required hyper-parameter: add it to REQUIRED
        raise AssertionError(f"add {name!r}'s required hyper-parameters to REQUIRED: {e}") from e


def _task_losses(outputs, batch):
    return jnp.stack([
        optax.softmax_cross_entropy_with_integer_labels(o, batch["labels"][:, t]).mean()
        for t, o in enumerate(outputs)
    ])


MODEL = MultiDigitCNN(features=FEATURES, dense_features=4)
_rng = np.random.default_rng(0)
BATCH = {"image": _rng.normal(size=(4, 8, 8, 1)).astype(np.float32),
         "labels": _rng.integers(0, 5, size=(4, 2)).astype(np.int32)}


def _buffers(tree) -> list:
    out = []
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array):
            out.extend(s.data.unsafe_buffer_pointer() for s in leaf.addressable_shards)
    return out


def _donated_steps(method: Method, optimizer: optax.GradientTransformation, state: TrainState, steps: int = 2):
    step = jax.jit(make_train_step(MODEL, _task_losses, method, optimizer, last_shared="encoder/conv2"),
                   donate_argnums=0)
    for _ in range(steps):
        first_param = jax.tree.leaves(state.params)[0]
        state, metrics = step(state, BATCH)
        assert first_param.is_deleted()  # the state really was donated
    return state, metrics


@pytest.mark.parametrize("name", method_names())
def test_every_method_state_survives_the_donated_step(name):
    """init_train_state outside jit, then two donated compiled steps ("Attempt to donate the same buffer
    twice" before the fix for dwa and the RotoGrad methods)."""
    method = _method(name)
    optimizer = optax.adam(1e-3)
    state = init_train_state(jax.random.key(0), MODEL, method, optimizer, BATCH["image"][:2])
    pointers = _buffers(state)
    assert len(pointers) == len(set(pointers)), "two leaves of the train state share a buffer"
    state, metrics = _donated_steps(method, optimizer, state)
    assert int(state.step) == 2 and int(state.nonfinite_total) == 0
    assert np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize("name", method_names())
def test_every_method_init_returns_distinct_buffers(name):
    """The method's own init (a state assembled without init_train_state) holds no buffer twice."""
    params = MODEL.init(jax.random.key(0), BATCH["image"][:2], train=False)["params"]
    state = _method(name).init(params, 2)
    pointers = _buffers(state)
    assert len(pointers) == len(set(pointers)), f"{name}: two leaves of the method state share a buffer"


def test_init_train_state_copies_aliased_leaves_of_any_method_and_optimiser():
    """A method whose init repeats one array and an optimiser whose state is the parameters themselves:
    init_train_state still returns a donatable state (one copy per repeated buffer)."""
    equal = get_method("equal")

    def init(params, num_tasks):
        z = jnp.zeros((num_tasks,))
        return {"a": z, "b": z}

    def step(problem, params, state, batch, rng):
        return equal.step(problem, params, (), batch, rng)._replace(state=state)

    aliasing = Method(name="aliasing", init=init, step=step)
    holds_params = optax.GradientTransformation(lambda p: {"params": p}, lambda u, s, p=None: (u, s))
    optimizer = optax.chain(optax.sgd(0.1), holds_params)
    state = init_train_state(jax.random.key(0), MODEL, aliasing, optimizer, BATCH["image"][:2])
    pointers = _buffers(state)
    assert len(pointers) == len(set(pointers))
    # the copies hold the same values
    np.testing.assert_array_equal(state.method_state["a"], state.method_state["b"])
    for p, q in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.opt_state[1]["params"])):
        np.testing.assert_array_equal(p, q)
    _donated_steps(aliasing, optimizer, state)


def test_distinct_buffers_leaves_distinct_and_traced_leaves_alone():
    a, b = jnp.ones(3), jnp.zeros(2)
    tree = {"x": a, "y": b, "z": 1.0}
    out = distinct_buffers(tree)
    assert out["x"] is a and out["y"] is b and out["z"] == 1.0
    out = distinct_buffers((a, a, [a]))
    assert out[0] is a and len(set(_buffers(out))) == 3
    traced = jax.jit(lambda x: distinct_buffers((x, x)))(a)  # a no-op under jit
    assert len(set(_buffers(traced))) == 2


# --------------------------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------------------------

FLOAT_STATE_METHODS = ("gradnorm", "uncertainty", "rotate_only", "rotograd", "rotograd_norm", "dwa", "famo")


def _float_leaves(tree):
    return [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.floating)]


@pytest.mark.parametrize("name", FLOAT_STATE_METHODS)
def test_state_follows_float64_parameters_under_x64(name):
    with jax.enable_x64(True):
        params = {"encoder": {"w": jnp.ones((3, FEATURES), jnp.float64)}, "head": jnp.ones((2,), jnp.float64)}
        state = _method(name).init(params, 2)
        leaves = _float_leaves(state)
        assert leaves and all(x.dtype == jnp.float64 for x in leaves), [x.dtype for x in leaves]


@pytest.mark.parametrize("name", FLOAT_STATE_METHODS)
def test_state_stays_float32_for_float32_and_bfloat16_parameters(name):
    for dtype in (jnp.float32, jnp.bfloat16):
        params = {"encoder": {"w": jnp.ones((3, FEATURES), dtype)}}
        leaves = _float_leaves(_method(name).init(params, 2))
        assert all(x.dtype == jnp.float32 for x in leaves), (dtype, [x.dtype for x in leaves])
