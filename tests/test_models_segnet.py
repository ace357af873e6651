"""SegNet: pinned VGG16 size, NumPy forward oracle, heads, BatchNorm, gradients, task-specific layers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orthojax.models.segnet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LAST_SHARED_LAYER,
    NYUV2_HEADS,
    SUNRGBD_HEADS,
    Head,
    SegNet,
    _normalize_channels,
    resize_output,
    segnet_shared_layer_names,
)

EPS = 1e-5
HEADS = (("seg", 3), ("depth", 1), ("normal", 3))
TINY = dict(width=1 / 16, heads=HEADS, output_size=8)
# Channels at width 1/16: 64 -> 4, 128 -> 8, 256 -> 16, 512 -> 32 (written out as the oracle).
ENCODER_CONVS = [(3, 4), (4, 4), (4, 8), (8, 8), (8, 16), (16, 16), (16, 16),
                 (16, 32), (32, 32), (32, 32), (32, 32), (32, 32), (32, 32)]
DECODER_CONVS = [(32, 32), (32, 32), (32, 32), (32, 32), (32, 32), (32, 16),
                 (16, 16), (16, 16), (16, 8), (8, 8), (8, 4), (4, 4), (4, 4)]


def shapes_of(model, x):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, False))


def numpy_variables(model, x, seed=0):
    """Variables with the model's structure, filled with NumPy random numbers (no PRNG compile)."""
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = path[-1].key
        if name == "kernel":
            return rng.normal(size=s.shape).astype(np.float32) * np.sqrt(2.0 / math.prod(s.shape[:-1]))
        if name in ("var", "scale"):
            return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
        return (0.1 * rng.normal(size=s.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes_of(model, x))


def images(n=2, size=32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=(n, size, size, 3)), jnp.float32)


# ---------------------------------------------------------------- NumPy oracle
def np_conv3(x, k, b):
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = x.shape[1:3]
    return sum(xp[:, a : a + h, c : c + w] @ k[a, c] for a in range(3) for c in range(3)) + b


def np_pool(x):
    n, h, w, c = x.shape
    blocks = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(n, h // 2, w // 2, c, 4)
    arg = blocks.argmax(-1)
    rows = 2 * np.arange(h // 2)[None, :, None, None] + arg // 2
    cols = 2 * np.arange(w // 2)[None, None, :, None] + arg % 2
    return blocks.max(-1), rows * w + cols


def np_unpool(y, idx):
    n, ho, wo, c = y.shape
    out = np.zeros((n, 4 * ho * wo, c))
    out[np.arange(n)[:, None, None], idx.reshape(n, -1, c), np.arange(c)[None, None, :]] = y.reshape(n, -1, c)
    return out.reshape(n, 2 * ho, 2 * wo, c)


def np_segnet(v, x, heads, out_size):
    """Eval-mode SegNet (BatchNorm, ImageNet normalisation) in float64 NumPy."""
    P = jax.tree.map(lambda a: np.asarray(a, np.float64), v["params"])
    S = jax.tree.map(lambda a: np.asarray(a, np.float64), v["batch_stats"])

    def block(h, p, s, name):
        h = np_conv3(h, p[f"conv{name}"]["kernel"], p[f"conv{name}"]["bias"])
        bn, st = p[f"bn{name}"], s[f"bn{name}"]
        return np.maximum((h - st["mean"]) / np.sqrt(st["var"] + EPS) * bn["scale"] + bn["bias"], 0)

    h = (np.asarray(x, np.float64) - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    sizes, indices = (2, 2, 3, 3, 3), []
    for s, n in enumerate(sizes, 1):
        for i in range(1, n + 1):
            h = block(h, P["encoder"], S["encoder"], f"{s}_{i}")
        h, ix = np_pool(h)
        indices.append(ix)
    outs = []
    for name, _, kind in heads:
        d, ds, g = P[f"decoder_{name}"], S[f"decoder_{name}"], h
        for s in range(5, 0, -1):
            g = np_unpool(g, indices[s - 1])
            for i in range(sizes[s - 1], 0, -1):
                g = block(g, d, ds, f"{s}_{i}")
        g = g @ d["out"]["kernel"][0, 0] + d["out"]["bias"]
        f = g.shape[1] // out_size
        g = g.reshape(g.shape[0], out_size, f, out_size, f, -1).mean(axis=(2, 4))
        if kind == "normal":
            g = g / np.linalg.norm(g, axis=-1, keepdims=True)
        outs.append(g)
    return outs


# ---------------------------------------------------------------- structure
def test_width_one_encoder_holds_vgg16_conv_numbers():
    shapes = shapes_of(SegNet(), jnp.zeros((1, 32, 32, 3)))
    enc = shapes["params"]["encoder"]
    convs = [k for k in enc if k.startswith("conv")]
    assert len(convs) == 13 and "conv5_3" in enc
    assert sum(a.size for k in convs for a in enc[k].values()) == 14_714_688
    assert set(shapes["params"]) == {"encoder", "decoder_seg", "decoder_depth", "decoder_normal"}


def test_tiny_param_counts_and_layout_match_the_channel_table():
    heads = (("seg13", 13), ("seg37", 37), ("depth", 1))
    shapes = shapes_of(SegNet(width=1 / 16, heads=heads), jnp.zeros((1, 32, 32, 3)))
    p, bs = shapes["params"], shapes["batch_stats"]
    conv = lambda ci, co, k=3: k * k * ci * co + co
    bn = lambda co: 2 * co
    enc = sum(conv(ci, co) + bn(co) for ci, co in ENCODER_CONVS)
    assert sum(a.size for a in jax.tree.leaves(p["encoder"])) == enc
    for name, c in heads:
        dec = sum(conv(ci, co) + bn(co) for ci, co in DECODER_CONVS) + conv(4, c, k=1)
        assert sum(a.size for a in jax.tree.leaves(p[f"decoder_{name}"])) == dec
        assert p[f"decoder_{name}"]["conv4_1"]["kernel"].shape == (3, 3, 32, 16)
    assert bs["encoder"]["bn5_3"]["mean"].shape == (32,)
    assert p["encoder"]["conv3_1"]["kernel"].shape == (3, 3, 8, 16)


def test_layer_names_and_head_presets():
    names = segnet_shared_layer_names()
    assert len(names) == 26 and names[0] == "encoder/conv1_1" and names[-2:] == ("encoder/conv5_3", "encoder/bn5_3")
    assert segnet_shared_layer_names(False)[-1] == LAST_SHARED_LAYER == "encoder/conv5_3"
    assert SegNet().last_shared_layer() == LAST_SHARED_LAYER
    assert SegNet(task_specific_layers=("conv5_3", "bn5_3")).last_shared_layer() == "encoder/conv5_2"
    assert [h.name for h in NYUV2_HEADS] == ["seg", "depth", "normal"] and NYUV2_HEADS[2].kind == "normal"
    assert [(h.name, h.channels) for h in SUNRGBD_HEADS] == [("seg13", 13), ("seg37", 37), ("depth", 1)]
    assert SegNet(heads=HEADS).head_specs()[2] == Head("normal", 3, "normal")


# ---------------------------------------------------------------- forward
@pytest.fixture(scope="module")
def tiny():
    model = SegNet(**TINY)
    x = images()
    return model, numpy_variables(model, x, seed=1), x


def test_forward_oracle_encode_decode_split_and_batchnorm_train_vs_eval(tiny):
    model, v, x = tiny

    @jax.jit
    def run(v, x):
        zs, extras = model.apply(v, x, False, method="encode")
        split = model.apply(v, zs, extras, False, method="decode")
        train, new = model.apply(v, x, True, mutable=["batch_stats"])
        return model.apply(v, x, False), zs, extras, split, train, new

    outs, zs, extras, split, train, new = run(v, x)
    # Eval mode (running statistics) against the NumPy oracle, per head.
    assert [o.shape for o in outs] == [(2, 8, 8, 3), (2, 8, 8, 1), (2, 8, 8, 3)]
    refs = np_segnet(v, x, [("seg", 3, "linear"), ("depth", 1, "linear"), ("normal", 3, "normal")], 8)
    for o, ref in zip(outs, refs):
        np.testing.assert_allclose(np.asarray(o), ref, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(outs[2]), axis=-1), 1.0, rtol=1e-5)
    # decode(*encode(x)) == __call__(x); the representation and the pooling indices.
    assert len(zs) == 3 and zs[0].shape == (2, 1, 1, 32) and len(extras) == 3
    assert [ix.shape for ix in extras[0]] == [(2, 16, 16, 4), (2, 8, 8, 8), (2, 4, 4, 16), (2, 2, 2, 32), (2, 1, 1, 32)]
    for a, b in zip(outs, split):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    # Train mode normalises with batch statistics and updates the running averages:
    # mean <- 0.9 mean + 0.1 (batch mean of the first conv's output).
    xn = (np.asarray(x, np.float64) - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    c = v["params"]["encoder"]["conv1_1"]
    h = np_conv3(xn, np.asarray(c["kernel"], np.float64), np.asarray(c["bias"], np.float64))
    old = v["batch_stats"]["encoder"]["bn1_1"]
    got = new["batch_stats"]["encoder"]["bn1_1"]
    np.testing.assert_allclose(np.asarray(got["mean"]), 0.9 * np.asarray(old["mean"]) + 0.1 * h.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got["var"]), 0.9 * np.asarray(old["var"]) + 0.1 * h.var(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-5)
    assert set(new["batch_stats"]) == {"encoder", "decoder_seg", "decoder_depth", "decoder_normal"}
    assert not np.allclose(np.asarray(train[0]), np.asarray(outs[0]), atol=1e-3)


def test_gradients_reach_every_layer():
    # One head keeps compilation short; the decoders are identical modules (see the CNN test for several).
    model = SegNet(width=1 / 16, heads=(("normal", 3),), output_size=8)
    x = images()
    v = numpy_variables(model, x, seed=2)
    r = [jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)]

    def loss(params):
        outs, _ = model.apply({**v, "params": params}, x, True, mutable=["batch_stats"])
        return sum(jnp.sum(o * rt) for o, rt in zip(outs, r))

    grads = jax.jit(jax.grad(loss))(v["params"])
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert float(jnp.linalg.norm(g)) > 0, jax.tree_util.keystr(path)


def test_task_specific_tail_makes_each_output_depend_on_its_own_copies_only():
    later = ("conv5_2", "bn5_2", "conv5_3", "bn5_3")
    model = SegNet(width=1 / 16, heads=(("a", 2), ("b", 2)), use_batchnorm=True, task_specific_layers=later)
    x = images(n=1)
    v = numpy_variables(model, x, seed=3)
    enc = v["params"]["encoder"]
    assert {"conv5_1", "bn5_1", "conv5_2_task0", "conv5_2_task1", "bn5_3_task1"} <= set(enc)
    assert "conv5_2" not in enc and "bn5_3_task0" in v["batch_stats"]["encoder"]
    assert model.last_shared_layer() == "encoder/conv5_1"
    f = jax.jit(lambda v, x: (model.apply(v, x, False), model.apply(v, x, False, method="encode")))
    base, (zs, extras) = f(v, x)
    bumped = jax.tree.map(lambda a: a, v)
    for name in ("conv5_2_task1", "conv5_3_task1"):
        bumped["params"]["encoder"][name]["kernel"] = enc[name]["kernel"] * -1.0 + 0.3
    moved, _ = f(bumped, x)
    np.testing.assert_array_equal(np.asarray(base[0]), np.asarray(moved[0]))
    assert not np.allclose(np.asarray(base[1]), np.asarray(moved[1]))
    for s in range(4):  # shared stages give both streams the same pooling indices
        np.testing.assert_array_equal(np.asarray(extras[0][s]), np.asarray(extras[1][s]))
    assert not np.array_equal(np.asarray(zs[0]), np.asarray(zs[1]))


# ---------------------------------------------------------------- pieces and errors
def test_resize_output_area_and_bilinear():
    x = np.random.default_rng(4).normal(size=(2, 12, 8, 3)).astype(np.float32)
    area = resize_output(jnp.asarray(x), (3, 2))
    np.testing.assert_allclose(np.asarray(area), x.reshape(2, 3, 4, 2, 4, 3).mean(axis=(2, 4)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(resize_output(jnp.asarray(x), (12, 8))), x)
    const = jnp.full((1, 10, 10, 2), 3.0)
    for size in ((4, 4), (15, 7)):  # non-integer factors: bilinear keeps constants constant
        y = resize_output(const, size)
        assert y.shape == (1, *size, 2)
        np.testing.assert_allclose(np.asarray(y), 3.0, rtol=1e-6)


def test_output_size_none_keeps_input_resolution():
    model = SegNet(width=1 / 16, heads=(("normal", 3),), use_batchnorm=False, input_normalization=None)
    x = jnp.zeros((1, 32, 32, 3))
    shapes = jax.eval_shape(lambda v: model.apply(v, x, False), shapes_of(model, x))
    assert shapes[0].shape == (1, 32, 32, 3)


def test_normal_normalisation_is_safe_at_zero():
    y = jnp.asarray([[0.0, 0.0, 0.0], [3.0, 0.0, 4.0]])
    out, grad = _normalize_channels(y), jax.grad(lambda y: jnp.sum(_normalize_channels(y) * 2.0))(y)
    np.testing.assert_allclose(np.asarray(out), [[0, 0, 0], [0.6, 0, 0.8]], rtol=1e-6)
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_dropout_needs_the_dropout_rng_in_training():
    model = SegNet(width=1 / 16, heads=(("seg", 2),), dropout_rate=0.3)
    x = jnp.zeros((1, 32, 32, 3))
    shapes = shapes_of(model, x)
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda v: model.apply(v, x, True, mutable=["batch_stats"]), shapes)
    rngs = {"dropout": jax.random.key(0)}
    out, _ = jax.eval_shape(lambda v: model.apply(v, x, True, rngs=rngs, mutable=["batch_stats"]), shapes)
    assert out[0].shape == (1, 32, 32, 2)


@pytest.mark.parametrize(
    "kwargs, x_shape, match",
    [
        (dict(), (1, 30, 32, 3), "multiples of 32"),
        (dict(), (1, 32, 32, 1), "3 \\(RGB\\) channels"),
        (dict(heads=(("seg", 0),)), (1, 32, 32, 3), "head 'seg' needs channels >= 1"),
        (dict(heads=(("seg", 2), ("seg", 3))), (1, 32, 32, 3), "unique"),
        (dict(heads=(Head("depth", 1, "softmax"),)), (1, 32, 32, 3), "kind 'softmax'"),
        (dict(heads=()), (1, 32, 32, 3), "at least one head"),
        (dict(width=0.0), (1, 32, 32, 3), "width"),
        (dict(output_size=(8,)), (1, 32, 32, 3), "output_size"),
        (dict(input_normalization="caffe"), (1, 32, 32, 3), "input_normalization"),
        (dict(task_specific_layers=("conv6_1",)), (1, 32, 32, 3), "unknown shared layer 'conv6_1'"),
        (dict(use_batchnorm=False, task_specific_layers=("bn5_3",)), (1, 32, 32, 3), "'bn5_3'"),
    ],
)
def test_bad_configuration_errors(kwargs, x_shape, match):
    model = SegNet(**{"width": 1 / 16, "heads": (("seg", 2),), **kwargs})
    with pytest.raises(ValueError, match=match):
        shapes_of(model, jnp.zeros(x_shape))
