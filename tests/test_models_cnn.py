"""MultiDigitCNN: structure, NumPy forward oracle, BatchNorm, dropout, gradients, task-specific layers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orthojax.models.cnn import LAST_SHARED_LAYER, MultiDigitCNN, cnn_shared_layer_names

EPS = 1e-5
# The "rbg" PRNG compiles much faster on CPU than the default threefry; the model accepts any key.
key = lambda seed: jax.random.key(seed, impl="rbg")


def numpy_variables(model, x, seed=0):
    """Variables with the model's tree structure, filled with NumPy random numbers (no PRNG compile)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, False))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = path[-1].key
        if name == "kernel":
            return rng.normal(size=s.shape).astype(np.float32) / np.sqrt(math.prod(s.shape[:-1]))
        if name == "var":
            return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
        if name == "scale":
            return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
        return (0.1 * rng.normal(size=s.shape)).astype(np.float32)  # bias, mean

    return jax.tree_util.tree_map_with_path(fill, shapes)


def same_pads(size, k, s):
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def np_conv(x, k, stride):
    """Cross-correlation, NHWC x HWIO, 'SAME' padding as XLA defines it."""
    kh, kw = k.shape[:2]
    x = np.pad(x, ((0, 0), same_pads(x.shape[1], kh, stride), same_pads(x.shape[2], kw, stride), (0, 0)))
    ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = 0.0
    for a in range(kh):
        for b in range(kw):
            out = out + x[:, a : a + stride * (ho - 1) + 1 : stride, b : b + stride * (wo - 1) + 1 : stride] @ k[a, b]
    return out


def np_bn(h, p, s):
    return (h - s["mean"]) / np.sqrt(s["var"] + EPS) * p["scale"] + p["bias"]


def np_forward(v, x, use_bn, num_tasks):
    """Eval-mode forward of the paper's CNN in NumPy (float64)."""
    P = jax.tree.map(lambda a: np.asarray(a, np.float64), v["params"])
    S = jax.tree.map(lambda a: np.asarray(a, np.float64), v.get("batch_stats", {}))
    h = np.asarray(x, np.float64)
    for i in (1, 2):
        h = np_conv(h, P["encoder"][f"conv{i}"]["kernel"], 2)
        if use_bn:
            h = np_bn(h, P["encoder"][f"bn{i}"], S["encoder"][f"bn{i}"])
        h = np.maximum(h, 0)
    outs = []
    for t in range(num_tasks):
        d, ds = P[f"decoder_{t}"], S.get(f"decoder_{t}", {})
        g = np_conv(h, d["conv"]["kernel"], 2)
        if use_bn:
            g = np_bn(g, d["bn"], ds["bn"])
        g = np.maximum(g, 0).reshape(g.shape[0], -1)
        g = g @ d["dense1"]["kernel"] + d["dense1"]["bias"]
        if use_bn:
            g = np_bn(g, d["bn_dense1"], ds["bn_dense1"])
        g = np.maximum(g, 0)
        outs.append(g @ d["dense2"]["kernel"] + d["dense2"]["bias"])
    return outs


def x_batch(n=4, size=16, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=(n, size, size, 1)), jnp.float32)


def test_paper_config_param_count_and_names():
    model = MultiDigitCNN()  # 20 filters, 3x3, dense 50, two 5-way tasks
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 1)), False))
    params = shapes["params"]
    assert set(params) == {"encoder", "decoder_0", "decoder_1"}
    assert set(params["encoder"]) == {"conv1", "conv2"} and "bias" not in params["encoder"]["conv2"]
    f, k, d = 20, 3, 50
    decoder = k * k * f * f + (8 * 8 * f) * d + d + d * 5 + 5
    expected = k * k * 1 * f + k * k * f * f + 2 * decoder
    assert sum(a.size for a in jax.tree.leaves(params)) == expected
    assert params["encoder"]["conv2"]["kernel"].shape == (3, 3, 20, 20)


def test_batchnorm_param_and_stats_layout():
    model = MultiDigitCNN(features=4, dense_features=6, use_batchnorm=True)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)), False))
    assert set(shapes["params"]["encoder"]) == {"conv1", "bn1", "conv2", "bn2"}
    assert set(shapes["batch_stats"]["decoder_1"]) == {"bn", "bn_dense1"}
    assert shapes["batch_stats"]["encoder"]["bn2"]["var"].shape == (4,)


def test_layer_name_helpers():
    assert LAST_SHARED_LAYER == "encoder/conv2"
    assert cnn_shared_layer_names() == ("encoder/conv1", "encoder/conv2")
    assert cnn_shared_layer_names(True) == ("encoder/conv1", "encoder/bn1", "encoder/conv2", "encoder/bn2")
    model = MultiDigitCNN(use_batchnorm=True)
    assert model.shared_layer_names() == cnn_shared_layer_names(True)
    assert model.last_shared_layer() == LAST_SHARED_LAYER
    assert MultiDigitCNN(task_specific_layers=("conv2",)).last_shared_layer() == "encoder/conv1"


@pytest.mark.parametrize("use_bn", [False, True])
def test_forward_matches_numpy_oracle_per_task_under_jit(use_bn):
    model = MultiDigitCNN(features=3, dense_features=5, num_classes=(5, 3, 2), use_batchnorm=use_bn)
    x = x_batch()
    v = numpy_variables(model, x, seed=1)
    outs = jax.jit(lambda v, x: model.apply(v, x, False))(v, x)
    assert [o.shape for o in outs] == [(4, 5), (4, 3), (4, 2)]
    for o, ref in zip(outs, np_forward(v, x, use_bn, 3)):
        np.testing.assert_allclose(np.asarray(o), ref, rtol=1e-4, atol=1e-5)


def test_encode_decode_split_matches_call():
    model = MultiDigitCNN(features=3, dense_features=5, use_batchnorm=True)
    x = x_batch()
    v = numpy_variables(model, x)

    @jax.jit
    def both(v, x):  # train mode: BatchNorm on batch statistics
        out, _ = model.apply(v, x, True, mutable=["batch_stats"])
        (zs, extras), _ = model.apply(v, x, True, method="encode", mutable=["batch_stats"])
        dec, _ = model.apply(v, zs, extras, True, method="decode", mutable=["batch_stats"])
        return out, zs, extras, dec

    out, zs, extras, dec = both(v, x)
    assert len(zs) == 2 and zs[0].shape == (4, 4, 4, 3) and extras is None
    np.testing.assert_array_equal(np.asarray(zs[0]), np.asarray(zs[1]))
    for a, b in zip(out, dec):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_batchnorm_train_uses_batch_stats_and_updates_running_averages():
    model = MultiDigitCNN(features=3, dense_features=5, use_batchnorm=True)
    x = x_batch(n=6)
    v = numpy_variables(model, x, seed=2)

    @jax.jit
    def run(v, x):
        train = lambda x: model.apply(v, x, True, mutable=["batch_stats"])
        (t_full, new), (t_part, _) = train(x), train(x[:3])
        return new, t_full, t_part, model.apply(v, x, False), model.apply(v, x[:3], False)

    new, t_full, t_part, e_full, e_part = run(v, x)
    h = np_conv(np.asarray(x, np.float64), np.asarray(v["params"]["encoder"]["conv1"]["kernel"], np.float64), 2)
    old = v["batch_stats"]["encoder"]["bn1"]
    np.testing.assert_allclose(np.asarray(new["batch_stats"]["encoder"]["bn1"]["mean"]),
                               0.9 * np.asarray(old["mean"]) + 0.1 * h.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(new["batch_stats"]["encoder"]["bn1"]["var"]),
                               0.9 * np.asarray(old["var"]) + 0.1 * h.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    # Eval: one example's output does not depend on the rest of the batch; train: it does.
    np.testing.assert_allclose(np.asarray(e_full[0][:3]), np.asarray(e_part[0]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(t_full[0][:3]), np.asarray(t_part[0]), atol=1e-4)


def test_dropout_uses_the_dropout_rng_only_in_training():
    model = MultiDigitCNN(features=3, dense_features=8, dropout_rate=0.5)
    x = x_batch()
    v = numpy_variables(model, x)
    f = jax.jit(lambda v, x, k: model.apply(v, x, True, rngs={"dropout": k}))
    a, b, a2 = f(v, x, key(1)), f(v, x, key(2)), f(v, x, key(1))
    assert not np.allclose(np.asarray(a[0]), np.asarray(b[0]))
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(a2[0]))
    ref = np_forward(v, x, False, 2)
    np.testing.assert_allclose(np.asarray(jax.jit(model.apply)(v, x)[0]), ref[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda v, x: model.apply(v, x, True), v, x)


def test_gradients_reach_every_layer():
    model = MultiDigitCNN(features=3, dense_features=5, num_classes=(4, 3), use_batchnorm=True)
    x = x_batch()
    v = numpy_variables(model, x, seed=3)
    r = [jnp.asarray(np.random.default_rng(t).normal(size=(4, c)), jnp.float32) for t, c in enumerate((4, 3))]

    def loss(params):
        outs, _ = model.apply({**v, "params": params}, x, True, mutable=["batch_stats"])
        return sum(jnp.sum(o * rt) for o, rt in zip(outs, r))

    grads = jax.jit(jax.grad(loss))(v["params"])
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert float(jnp.linalg.norm(g)) > 0, jax.tree_util.keystr(path)


def test_task_specific_layers_split_the_streams():
    model = MultiDigitCNN(features=3, dense_features=5, use_batchnorm=True, task_specific_layers=("conv2", "bn2"))
    x = x_batch()
    v = numpy_variables(model, x, seed=4)
    enc = v["params"]["encoder"]
    assert set(enc) == {"conv1", "bn1", "conv2_task0", "conv2_task1", "bn2_task0", "bn2_task1"}
    assert set(v["batch_stats"]["encoder"]) == {"bn1", "bn2_task0", "bn2_task1"}
    f = jax.jit(lambda v, x: model.apply(v, x, False))
    base = f(v, x)
    bumped = jax.tree.map(lambda a: a, v)
    bumped["params"]["encoder"]["conv2_task1"]["kernel"] = enc["conv2_task1"]["kernel"] + 0.5
    moved = f(bumped, x)
    np.testing.assert_array_equal(np.asarray(base[0]), np.asarray(moved[0]))  # task 0 ignores task 1's copy
    assert not np.allclose(np.asarray(base[1]), np.asarray(moved[1]))
    zs, _ = model.apply(v, x, False, method="encode")
    assert not np.allclose(np.asarray(zs[0]), np.asarray(zs[1]))


def test_task_specific_conv_copies_hold_each_stream_and_shared_later_layers_are_reused():
    model = MultiDigitCNN(features=3, dense_features=5, use_batchnorm=True, task_specific_layers=("encoder/conv1",))
    x = x_batch()
    v = numpy_variables(model, x, seed=5)
    assert set(v["params"]["encoder"]) == {"conv1_task0", "conv1_task1", "bn1", "conv2", "bn2"}
    # With both copies equal the streams coincide and match the shared model with those weights.
    enc = v["params"]["encoder"]
    same = jax.tree.map(lambda a: a, v)
    same["params"]["encoder"]["conv1_task1"] = enc["conv1_task0"]
    outs = model.apply(same, x, False)
    shared = {**same, "params": {**same["params"], "encoder": {
        "conv1": enc["conv1_task0"], "bn1": enc["bn1"], "conv2": enc["conv2"], "bn2": enc["bn2"]}}}
    ref = MultiDigitCNN(features=3, dense_features=5, use_batchnorm=True).apply(shared, x, False)
    for a, b in zip(outs, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_bad_configuration_errors():
    x = jnp.zeros((1, 16, 16, 1))
    init = lambda m, x=x: jax.eval_shape(lambda: m.init(jax.random.key(0), x, False))
    with pytest.raises(ValueError, match="MultiDigitCNN: task_specific_layers.*'conv3'"):
        init(MultiDigitCNN(task_specific_layers=("conv3",)))
    with pytest.raises(ValueError, match="'bn1'"):
        init(MultiDigitCNN(task_specific_layers=("bn1",)))  # no BatchNorm in this model
    with pytest.raises(ValueError, match="num_classes"):
        init(MultiDigitCNN(num_classes=()))
    with pytest.raises(ValueError, match="dropout_rate"):
        init(MultiDigitCNN(dropout_rate=1.0))
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        init(MultiDigitCNN(), jnp.zeros((16, 16, 1)))
    with pytest.raises(ValueError, match="every encoder convolution is task-specific"):
        MultiDigitCNN(task_specific_layers=("conv1", "conv2")).last_shared_layer()
