"""run_once / init_sharded: an initialiser compiled once, replicated over the mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orthojax.models import MultiDigitCNN
from orthojax.training import init_sharded, make_mesh, replicated, run_once


def _init(key):
    return MultiDigitCNN(features=4).init({"params": key}, jnp.zeros((1, 64, 64, 1)), train=False)


def test_run_once_equals_jit_up_to_rounding_and_is_replicated():
    mesh = make_mesh()
    key = jax.random.key(3)
    sharding = jax.tree.map(lambda _: replicated(mesh), jax.eval_shape(_init, key))
    ours = run_once(_init, sharding, key)
    reference = jax.jit(_init)(key)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
        assert a.sharding == replicated(mesh)


def test_run_once_random_bits_are_exact():
    mesh = make_mesh()
    key = jax.random.key(0)
    bits = lambda k: jax.random.bits(k, (257, 3), jnp.uint32)  # noqa: E731
    np.testing.assert_array_equal(np.asarray(run_once(bits, replicated(mesh), key)),
                                  np.asarray(jax.random.bits(key, (257, 3), jnp.uint32)))


def test_init_sharded_returns_state_and_matching_shardings():
    mesh = make_mesh()
    state, sharding = init_sharded(_init, mesh, jax.random.key(1))
    assert jax.tree.structure(state) == jax.tree.structure(sharding)
    assert all(s == replicated(mesh) for s in jax.tree.leaves(sharding))


def test_run_once_bad_input_raises():
    mesh = make_mesh()
    with pytest.raises(TypeError):
        run_once(_init, replicated(mesh), "not a key")
