"""``select_subtree``: paths and predicates over dicts and ``nnx.State``."""

from __future__ import annotations

import ast

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import orthojax


def _params():
    return {
        "encoder": {
            "conv1": {"kernel": jnp.ones((3, 3, 1, 4))},
            "conv2": {"kernel": 2 * jnp.ones((3, 3, 4, 8)), "bias": jnp.zeros((8,))},
        },
        "decoder_seg": {"dense": {"kernel": jnp.ones((8, 5)), "bias": jnp.ones((5,))}},
        "decoder_depth": {"dense": {"kernel": jnp.ones((8, 1))}},
    }


def _same(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb, f"{ta} != {tb}"
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_path_selects_subtree_under_it():
    p = _params()
    sub = orthojax.select_subtree(p, "encoder/conv2")
    assert isinstance(sub, dict)
    _same(sub, p["encoder"]["conv2"])
    _same(orthojax.select_subtree(p, "encoder"), p["encoder"])


def test_path_to_leaf():
    p = _params()
    sub = orthojax.select_subtree(p, "decoder_seg/dense/kernel")
    leaves = jax.tree.leaves(sub)
    assert len(leaves) == 1
    np.testing.assert_array_equal(np.asarray(leaves[0]), np.ones((8, 5)))


def test_predicate_gives_nested_dict_keyed_by_full_path():
    p = _params()
    seen = {}

    def pred(path, leaf):
        seen[path] = leaf.shape
        return path.endswith("kernel") and "conv" not in path

    sub = orthojax.select_subtree(p, pred)
    _same(sub, {"decoder_seg": {"dense": {"kernel": p["decoder_seg"]["dense"]["kernel"]}},
                "decoder_depth": {"dense": {"kernel": p["decoder_depth"]["dense"]["kernel"]}}})
    assert seen["encoder/conv2/bias"] == (8,)
    assert seen["encoder/conv1/kernel"] == (3, 3, 1, 4)
    assert len(seen) == 6


def test_none_selects_everything():
    p = _params()
    _same(orthojax.select_subtree(p, None), p)


@pytest.mark.parametrize(
    "bad, expected",
    [("encoder/conv3", "encoder/conv2"), ("encodr/conv2", "encoder/conv2"), ("decoder_sed", "decoder_seg")],
)
def test_missing_path_raises_keyerror_with_closest(bad, expected):
    with pytest.raises(KeyError) as e:
        orthojax.select_subtree(_params(), bad)
    assert expected in str(e.value)


def test_nnx_state_paths_and_predicates():
    class Encoder(nnx.Module):
        def __init__(self, rngs):
            self.dense1 = nnx.Linear(3, 4, rngs=rngs)
            self.dense2 = nnx.Linear(4, 5, rngs=rngs)

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.encoder = Encoder(rngs)
            self.head = nnx.Linear(5, 2, rngs=rngs)

    _, state = nnx.split(Model(nnx.Rngs(0)), nnx.Param)
    sub = orthojax.select_subtree(state, "encoder/dense2")
    leaves = jax.tree.leaves(sub)  # sorted keys: bias, kernel
    assert [x.shape for x in leaves] == [(5,), (4, 5)]
    np.testing.assert_array_equal(np.asarray(leaves[1]), np.asarray(state["encoder"]["dense2"]["kernel"][...]))
    sub = orthojax.select_subtree(state, lambda path, leaf: "head" in path)
    assert sorted(x.shape for x in jax.tree.leaves(sub)) == [(2,), (5, 2)]
    with pytest.raises(KeyError) as e:
        orthojax.select_subtree(state, "encoder/dense3")
    assert "encoder/dense2" in str(e.value) or "encoder/dense1" in str(e.value)


def _suggestions(params, wrt):
    with pytest.raises(KeyError) as e:
        orthojax.select_subtree(params, wrt)
    message = str(e.value)
    return message, ast.literal_eval(message[message.index("best first: ") + len("best first: "):].rstrip("\"'"))


def _deep_params():
    """A Flax-Linen-like tree: the conv layers deep under "params", many Dense layers at the top."""
    layer = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    return {"params": {"backbone": {"stage_2": {"block_1": {"Conv_0": layer, "Conv_1": layer}}},
                       **{f"Dense_{i}": layer for i in range(6)}}}


@pytest.mark.parametrize("typed", ["params/Conv_1", "Conv_1", "conv_1", "block_1/conv_1", "params/conv1"])
def test_missing_path_suggests_the_meant_layer_first(typed):
    message, close = _suggestions(_deep_params(), typed)
    assert close[0] == "params/backbone/stage_2/block_1/Conv_1", message
    assert "did you mean 'params/backbone/stage_2/block_1/Conv_1'?" in message
    # distinct layers, not the kernel and bias of the first
    assert "params/backbone/stage_2/block_1/Conv_1/kernel" not in close


@pytest.mark.parametrize("typed, best", [
    ("encodr/conv2", "encoder/conv2"), ("decoder_sed", "decoder_seg"), ("ENCODER/CONV2", "encoder/conv2"),
    ("encoder/conv2/kernal", "encoder/conv2/kernel"), ("seg/dense", "decoder_seg/dense"),
])
def test_missing_path_ranking_is_case_insensitive_and_component_wise(typed, best):
    message, close = _suggestions(_params(), typed)
    assert close[0] == best, message


def test_missing_path_differing_only_in_case_says_paths_are_case_sensitive():
    message, close = _suggestions(_params(), "Encoder/Conv2")
    assert close[0] == "encoder/conv2"
    assert "case-sensitive" in message and "did you mean 'encoder/conv2'?" in message
