"""Recon: per-layer cosines against per-task jax.grad, S-conflict scores against a hand count, layer
selection, the JSON round trip, and a toy where the conflicting layer is the one selected."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orthojax.methods import MultiTaskProblem, cosreg, equal
from orthojax.methods.recon import (
    conflict_counts,
    conflict_scores,
    layer_cosines,
    layer_short_name,
    load_scores_json,
    recon,
    save_scores_json,
    select_conflict_layers,
    shared_layer_prefixes,
)

X = np.array([[1.0, -0.5], [0.3, 0.8], [-1.2, 0.4], [0.6, 0.9]], np.float32)


def _problem(n_tasks=3):
    """conv-like layer (kernel + bias), a BatchNorm-like layer (scale, bias), a dense layer; T linear heads."""
    key = jax.random.key(0)
    ks = jax.random.split(key, 4 + n_tasks)
    params = {
        "encoder": {
            "conv1": {"kernel": jax.random.normal(ks[0], (2, 3)), "bias": 0.1 * jax.random.normal(ks[1], (3,))},
            "bn1": {"scale": 1.0 + 0.1 * jax.random.normal(ks[2], (3,)), "bias": jnp.zeros((3,))},
            "conv2": {"kernel": jax.random.normal(ks[3], (3, 3))},
        },
        "heads": {f"t{t}": jax.random.normal(ks[4 + t], (3,)) for t in range(n_tasks)},
    }
    ys = np.linspace(-1.0, 1.0, 4 * n_tasks).reshape(n_tasks, 4).astype(np.float32)

    def task_losses(p, batch, rng):
        e = p["encoder"]
        h = jnp.tanh(X @ e["conv1"]["kernel"] + e["conv1"]["bias"])
        h = h * e["bn1"]["scale"] + e["bn1"]["bias"]
        h = jnp.tanh(h @ e["conv2"]["kernel"])
        return jnp.stack([jnp.mean((h @ p["heads"][f"t{t}"] - ys[t]) ** 2) for t in range(n_tasks)]), None

    return MultiTaskProblem(task_losses, last_shared="encoder/conv2", shared="encoder"), params


def _np_cos(rows):
    rows = np.asarray(rows, np.float64)
    u = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return u @ u.T


def test_shared_layer_prefixes_and_short_names():
    _, params = _problem()
    assert shared_layer_prefixes(params, "encoder") == ("encoder/bn1", "encoder/conv1", "encoder/conv2")
    assert shared_layer_prefixes(params, lambda path, leaf: path.startswith("heads")) == ("heads",)
    assert layer_short_name("encoder/conv5_3") == "conv5_3"
    assert layer_short_name("encoder/block1/conv") == "block1/conv"
    assert layer_short_name("bn1") == "bn1"


def test_layer_cosines_match_per_task_gradients():
    problem, params = _problem()
    layers = ("encoder/conv1", "encoder/bn1", "encoder/conv2")
    got = layer_cosines(problem, params, None, None, layers)
    assert got.shape == (3, 3, 3)
    grads = [jax.grad(lambda p, t=t: problem.task_losses(p, None, None)[0][t])(params)["encoder"] for t in range(3)]
    leaves = {  # weight and bias concatenated; the BatchNorm scale / bias its own layer
        "encoder/conv1": lambda g: np.concatenate([np.ravel(g["conv1"]["bias"]), np.ravel(g["conv1"]["kernel"])]),
        "encoder/bn1": lambda g: np.concatenate([np.ravel(g["bn1"]["bias"]), np.ravel(g["bn1"]["scale"])]),
        "encoder/conv2": lambda g: np.ravel(g["conv2"]["kernel"]),
    }
    for i, layer in enumerate(layers):
        np.testing.assert_allclose(got[i], _np_cos([leaves[layer](g) for g in grads]), rtol=1e-4, atol=1e-5)


def test_layer_cosines_errors():
    problem, params = _problem()
    with pytest.raises(KeyError, match="(?i)closest"):
        layer_cosines(problem, params, None, None, ("encoder/conv3",))
    with pytest.raises(ValueError, match="not inside problem.shared"):
        layer_cosines(problem, params, None, None, ("heads/t0",))


@pytest.mark.parametrize("base", ["equal", "cosreg", cosreg(alpha=0.5)])
def test_recon_trains_like_its_base_and_reports_layer_cosines(base):
    problem, params = _problem()
    layers = ("encoder/conv1", "encoder/conv2")
    method = recon(layers=layers, stage1_base=base)
    reference = equal() if base == "equal" else cosreg() if base == "cosreg" else base
    state = method.init(params, 3)
    out = jax.jit(lambda p, s: method.step(problem, p, s, None, None))(params, state)
    ref = reference.step(problem, params, reference.init(params, 3), None, None)
    for a, b in zip(jax.tree.leaves(out.grads), jax.tree.leaves(ref.grads)):  # jit vs eager, float32
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.loss, ref.loss, rtol=1e-5)
    assert set(ref.metrics) < set(out.metrics)
    np.testing.assert_allclose(out.metrics["layer_cosines"], layer_cosines(problem, params, None, None, layers),
                               rtol=1e-5, atol=1e-6)
    assert method.name == "recon"


def test_recon_rejects_unknown_layers_at_init():
    problem, params = _problem()
    with pytest.raises(KeyError):
        recon(layers=("encoder/nope",)).init(params, 3)


def test_conflict_scores_match_a_hand_count():
    rng = np.random.default_rng(0)
    steps, L, T, S = 6, 4, 3, -0.02
    history = rng.uniform(-1, 1, (steps, L, T, T)).astype(np.float32)
    history = (history + np.swapaxes(history, 2, 3)) / 2
    expected = np.zeros(L, int)
    for s in range(steps):
        for layer in range(L):
            for i in range(T):
                for j in range(i + 1, T):
                    expected[layer] += history[s, layer, i, j] < S
    np.testing.assert_array_equal(conflict_scores(history, S), expected)
    np.testing.assert_array_equal(sum(conflict_counts(h, S) for h in history), expected)
    # the diagonal never counts: all cosines -1 with T = 3 gives 3 pairs per step
    np.testing.assert_array_equal(conflict_scores(-np.ones((2, 1, 3, 3)), 0.0), [6])
    with pytest.raises(ValueError):
        conflict_scores(history, 1.5)
    with pytest.raises(ValueError):
        conflict_scores(history[0], S)


def test_select_conflict_layers():
    names = ("encoder/conv1", "encoder/bn1", "encoder/conv2", "encoder/conv3")
    assert select_conflict_layers([3, 7, 7, 1], names, 2) == ("bn1", "conv2")  # ties: earlier first
    assert select_conflict_layers([3, 7, 7, 1], names, 3, short_names=False) == (
        "encoder/bn1", "encoder/conv2", "encoder/conv1")
    assert select_conflict_layers([3, 7, 7, 1], names, 0) == ()
    with pytest.raises(ValueError):
        select_conflict_layers([3, 7, 7, 1], names, 5)
    with pytest.raises(ValueError):
        select_conflict_layers([3, 7], names, 1)


def test_scores_json_round_trip(tmp_path):
    path = tmp_path / "recon_scores.json"
    names = ["encoder/conv1", "encoder/conv2", "encoder/conv3"]
    written = save_scores_json(path, names, np.array([4, 9, 0]), threshold=-0.02, num_steps=10, k=2)
    loaded = load_scores_json(path)
    assert loaded["layers"] == names and loaded["threshold"] == -0.02 and loaded["num_steps"] == 10
    np.testing.assert_array_equal(loaded["scores"], [4, 9, 0])
    assert loaded["selected"] == written["selected"] == ["conv2", "conv1"]
    (tmp_path / "bad.json").write_text('{"layers": ["a"]}')
    with pytest.raises(ValueError, match="scores"):
        load_scores_json(tmp_path / "bad.json")


def test_the_conflicting_layer_is_selected():
    """Two tasks pull layer "a" in opposite directions and layer "b" in the same one: stage 1 + 2 pick "a"."""

    def task_losses(p, batch, rng):
        a, b = p["encoder"]["a"]["w"], p["encoder"]["b"]["w"]
        return jnp.stack([jnp.sum((a - 1.0) ** 2) + jnp.sum((b - 1.0) ** 2),
                          jnp.sum((a + 1.0) ** 2) + 2.0 * jnp.sum((b - 1.0) ** 2)]), None

    problem = MultiTaskProblem(task_losses, last_shared="encoder/b", shared="encoder")
    params = {"encoder": {"a": {"w": jnp.zeros(3)}, "b": {"w": jnp.zeros(3)}}}
    layers = shared_layer_prefixes(params, "encoder")
    method = recon(layers=layers)
    step = jax.jit(lambda p, s: method.step(problem, p, s, None, None))
    state, history = method.init(params, 2), []
    for _ in range(20):
        out = step(params, state)
        params = jax.tree.map(lambda p, g: p - 0.05 * g, params, out.grads)
        state = out.state
        history.append(out.metrics["layer_cosines"])
    scores = conflict_scores(jnp.stack(history), -0.02)
    np.testing.assert_array_equal(scores, [20, 0])
    assert select_conflict_layers(scores, layers, 1) == ("a",)
