"""SegNet-MTAN against a NumPy float64 transcription of its layer list, parameter counts, masks, paths."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from orthojax.models.mtan import (
    CITYSCAPES_HEADS,
    MTAN_LAST_SHARED_LAYER,
    MTAN_NYUV2_HEADS,
    MTAN_SHARED,
    SegNetMTAN,
    _KERNEL_INIT,
    mtan_shared_layer_names,
    upsample_bilinear_aligned,
)
from orthojax.select import make_selection

EPS = 1e-5
HEADS = (("seg", 3), ("depth", 1), ("normal", 3))
TINY = dict(width=1 / 16, heads=HEADS)
C = (4, 8, 16, 32, 32)  # channels at width 1/16, written out as the oracle
CONVS_PER_STAGE = (2, 2, 3, 3, 3)


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


def images(n=2, hw=(32, 64), seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=(n, *hw, 3)), jnp.float32)


# ---------------------------------------------------------------- NumPy oracle (eval mode, float64)
def f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def np_conv(x, layer):
    k, b = layer["kernel"], layer["bias"]
    kh, kw = k.shape[:2]
    xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    h, w = x.shape[1:3]
    return sum(xp[:, a : a + h, c : c + w] @ k[a, c] for a in range(kh) for c in range(kw)) + b


def np_bn(x, p, s):
    return (x - s["mean"]) / np.sqrt(s["var"] + EPS) * p["scale"] + p["bias"]


def np_conv_bn_relu(x, params, stats, suffix):
    return np.maximum(np_bn(np_conv(x, params[f"conv{suffix}"]), params[f"bn{suffix}"], stats[f"bn{suffix}"]), 0)


def np_pool(x):
    """2x2 max-pool with PyTorch-style flat indices (row * W + col), by explicit loops."""
    n, h, w, c = x.shape
    y = np.zeros((n, h // 2, w // 2, c))
    ix = np.zeros((n, h // 2, w // 2, c), np.int64)
    for i in range(h // 2):
        for j in range(w // 2):
            win = x[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].reshape(n, 4, c)
            a = win.argmax(axis=1)
            y[:, i, j] = win.max(axis=1)
            ix[:, i, j] = (2 * i + a // 2) * w + (2 * j + a % 2)
    return y, ix


def np_unpool(y, ix, hw):
    n, _, _, c = y.shape
    out = np.zeros((n, hw[0] * hw[1], c))
    for b in range(n):
        for ch in range(c):
            out[b, ix[b, ..., ch].ravel(), ch] = y[b, ..., ch].ravel()
    return out.reshape(n, *hw, c)


def np_up2(x):
    """Bilinear x2 with aligned corners (scipy's zoom maps first/last samples onto each other)."""
    return ndimage.zoom(x, (1, 2, 2, 1), order=1, grid_mode=False, mode="nearest")


def np_mask(v, params, stats):
    h = np.maximum(np_bn(np_conv(v, params["conv1"]), params["bn1"], stats["bn1"]), 0)
    return 1 / (1 + np.exp(-np_bn(np_conv(h, params["conv2"]), params["bn2"], stats["bn2"])))


def np_mtan(variables, x, heads):
    """MTAN's forward pass written from its layer list (lorenmt/mtan model_segnet_mtan.py, eval mode)."""
    p, st = f64(variables["params"]), f64(variables["batch_stats"])
    ps, ss = p["shared"], st["shared"]
    h = np.asarray(x, np.float64)
    firsts, lasts, idx = [], [], []
    for s in range(1, 6):
        h = np_conv_bn_relu(h, ps["encoder"], ss["encoder"], f"{s}_1")
        firsts.append(h)
        for i in range(2, CONVS_PER_STAGE[s - 1] + 1):
            h = np_conv_bn_relu(h, ps["encoder"], ss["encoder"], f"{s}_{i}")
        lasts.append(h)
        h, ix = np_pool(h)
        idx.append(ix)
    unpooled, outs = {}, {}
    for s in range(5, 0, -1):
        h = np_unpool(h, idx[s - 1], lasts[s - 1].shape[1:3])
        unpooled[s] = h
        for i in range(CONVS_PER_STAGE[s - 1], 0, -1):
            h = np_conv_bn_relu(h, ps["decoder"], ss["decoder"], f"{s}_{i}")
        outs[s] = h
    results = []
    for name, _, kind in heads:
        pt, stt = p[f"task_{name}"], st[f"task_{name}"]
        a = None
        for s in range(1, 6):
            v = firsts[s - 1] if a is None else np.concatenate([firsts[s - 1], a], axis=-1)
            g = np_mask(v, pt[f"enc{s}"], stt[f"enc{s}"]) * lasts[s - 1]
            a = np_pool(np_conv_bn_relu(g, ps["att_encoder"], ss["att_encoder"], str(s)))[0]
        d = a
        for s in range(5, 0, -1):
            b = np_conv_bn_relu(np_up2(d), ps["att_decoder"], ss["att_decoder"], str(s))
            d = np_mask(np.concatenate([unpooled[s], b], axis=-1), pt[f"dec{s}"], stt[f"dec{s}"]) * outs[s]
        y = np_conv(np_conv(d, pt["head"]["conv"]), pt["head"]["out"])
        if kind == "normal":
            y = y / np.linalg.norm(y, axis=-1, keepdims=True)
        results.append(y)
    return results


# ---------------------------------------------------------------- structure (no compilation)
def count(tree):
    return sum(math.prod(a.shape) for a in jax.tree.leaves(tree))


def test_parameter_counts_match_the_reference_layer_list():
    # Counts of lorenmt/mtan's SegNet-MTAN at width 1 (its 3-element logsigma excluded): 13-class NYUv2
    # 44,229,073; the shared SegNet 24,943,296; task-shared attention convs 10,220,160; masks per task
    # 2,984,576; 2-task Cityscapes (7 classes) 41,206,984.
    p = shapes_of(SegNetMTAN(heads=MTAN_NYUV2_HEADS), jnp.zeros((1, 32, 32, 3)))["params"]
    assert count(p) == 44_229_073
    assert count(p["shared"]["encoder"]) + count(p["shared"]["decoder"]) == 24_943_296
    assert count(p["shared"]["att_encoder"]) + count(p["shared"]["att_decoder"]) == 10_220_160
    for t in ("seg", "depth", "normal"):
        assert count({k: v for k, v in p[f"task_{t}"].items() if k != "head"}) == 2_984_576
    assert count(p["shared"]["decoder"]["conv1_1"]) == 36_928 == 3 * 3 * 64 * 64 + 64
    city = shapes_of(SegNetMTAN(heads=CITYSCAPES_HEADS), jnp.zeros((1, 32, 32, 3)))["params"]
    assert count(city) == 41_206_984 and set(city) == {"shared", "task_seg", "task_depth"}


def test_paths_of_the_shared_layers_and_last_shared_layer():
    model = SegNetMTAN(**TINY)
    shapes = shapes_of(model, images(1))
    params = shapes["params"]
    names = model.shared_layer_names()
    assert names == mtan_shared_layer_names(True) and len(names) == 72 and len(mtan_shared_layer_names(False)) == 36
    assert names[:2] == ("shared/encoder/conv1_1", "shared/encoder/bn1_1")
    dec = [n for n in names if n.startswith("shared/decoder/conv")]
    assert dec[0] == "shared/decoder/conv5_3" and dec[-1] == "shared/decoder/conv1_1"
    # every shared layer exists, and together they are exactly the "shared" subtree
    shared_leaves = set(make_selection(params, MTAN_SHARED).indices)
    union = set()
    for n in names:
        union |= set(make_selection(params, n).indices)
    assert union == shared_leaves
    assert model.shared_path() == MTAN_SHARED == "shared"
    # last shared layer: one path string selects exactly the final 3x3 conv's kernel and bias
    assert model.last_shared_layer() == MTAN_LAST_SHARED_LAYER == "shared/decoder/conv1_1"
    sel = make_selection(params, model.last_shared_layer())
    assert [sel.leaves[i].shape for i in sel.indices] == [(C[0],), (3, 3, C[0], C[0])]
    # kernel shapes of the shared network, written out at width 1/16
    enc = params["shared"]["encoder"]
    assert [enc[f"conv{s}_{i}"]["kernel"].shape[2:] for s in range(1, 6) for i in range(1, CONVS_PER_STAGE[s - 1] + 1)] \
        == [(3, 4), (4, 4), (4, 8), (8, 8), (8, 16), (16, 16), (16, 16), (16, 32), (32, 32), (32, 32), (32, 32),
            (32, 32), (32, 32)]
    d = params["shared"]["decoder"]
    assert [d[f"conv{s}_{i}"]["kernel"].shape[2:] for s in range(5, 0, -1) for i in range(CONVS_PER_STAGE[s - 1], 0, -1)] \
        == [(32, 32), (32, 32), (32, 32), (32, 16), (16, 16), (16, 16), (16, 8), (8, 8), (8, 8), (8, 4), (4, 4),
            (4, 4), (4, 4)]
    # mask inputs: encoder (c_1), (2c_s) ...; decoder [unpooled, task] channels
    t = params["task_seg"]
    assert [t[f"enc{s}"]["conv1"]["kernel"].shape[2:] for s in range(1, 6)] == [(4, 4), (16, 8), (32, 16), (64, 32), (64, 32)]
    assert [t[f"dec{s}"]["conv1"]["kernel"].shape[2:] for s in range(5, 0, -1)] == [(64, 32), (48, 16), (24, 8), (12, 4), (8, 4)]
    assert t["head"]["conv"]["kernel"].shape == (3, 3, 4, 4) and t["head"]["out"]["kernel"].shape == (1, 1, 4, 3)


def test_configuration_errors():
    x = images(1)
    with pytest.raises(ValueError, match="multiples of 32"):
        shapes_of(SegNetMTAN(**TINY), images(1, (33, 64)))
    with pytest.raises(ValueError, match="width must be > 0"):
        shapes_of(SegNetMTAN(heads=HEADS, width=0.0), x)
    with pytest.raises(ValueError, match="input_normalization"):
        shapes_of(SegNetMTAN(heads=HEADS, input_normalization="caffe"), x)
    with pytest.raises(ValueError, match="output_size"):
        shapes_of(SegNetMTAN(heads=HEADS, output_size=(0, 4)), x)
    with pytest.raises(ValueError, match="head names must be unique"):
        shapes_of(SegNetMTAN(heads=(("seg", 3), ("seg", 2))), x)
    with pytest.raises(ValueError, match="expects images"):
        shapes_of(SegNetMTAN(**TINY), jnp.zeros((32, 32, 3)))


def test_upsample_bilinear_aligned_matches_scipy_including_odd_sizes():
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 2))
    np.testing.assert_allclose(np.asarray(upsample_bilinear_aligned(jnp.asarray(x), (6, 10))), np_up2(x),
                               rtol=1e-5, atol=1e-6)
    # arbitrary sizes: corners coincide; a 1-pixel axis is copied
    y = np.asarray(upsample_bilinear_aligned(jnp.asarray(x), (7, 4)))
    ref = ndimage.zoom(x, (1, 7 / 3, 4 / 5, 1), order=1, grid_mode=False, mode="nearest")
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    one = np.asarray(upsample_bilinear_aligned(jnp.asarray(x[:, :1]), (3, 5)))
    np.testing.assert_allclose(one, np.repeat(x[:, :1], 3, axis=1), rtol=1e-6)


def test_kernel_init_is_xavier_normal():
    k = np.asarray(_KERNEL_INIT(jax.random.key(0), (3, 3, 64, 128)))
    std = math.sqrt(2.0 / (9 * 64 + 9 * 128))  # torch.nn.init.xavier_normal_
    assert abs(k.std() / std - 1) < 0.02 and abs(k.mean()) < 0.01 * std * 10


# ---------------------------------------------------------------- forward (one compilation)
@pytest.fixture(scope="module")
def tiny_run():
    model = SegNetMTAN(**TINY)
    x = images()
    v = numpy_variables(model, x, seed=1)

    @jax.jit
    def run(v, x):
        outs, inter = model.apply(v, x, False, mutable=["intermediates"])
        zs, extras = model.apply(v, x, False, method="encode")
        split = model.apply(v, zs, extras, False, method="decode")
        train, new = model.apply(v, x, True, mutable=["batch_stats"])
        return outs, inter["intermediates"], zs, extras, split, train, new

    return model, v, x, jax.device_get(run(v, x))


def test_forward_matches_numpy_oracle(tiny_run):
    model, v, x, (outs, _, _, _, _, _, _) = tiny_run
    assert [o.shape for o in outs] == [(2, 32, 64, 3), (2, 32, 64, 1), (2, 32, 64, 3)]
    assert all(o.dtype == np.float32 for o in outs)
    refs = np_mtan(v, x, [("seg", 3, "linear"), ("depth", 1, "linear"), ("normal", 3, "normal")])
    for o, ref in zip(outs, refs):
        np.testing.assert_allclose(o, ref, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(np.linalg.norm(outs[2], axis=-1), 1.0, rtol=1e-5)


def test_attention_masks_lie_in_unit_interval_and_have_their_shapes(tiny_run):
    _, _, _, (_, inter, _, _, _, _, _) = tiny_run
    for t in ("seg", "depth", "normal"):
        masks = inter[f"task_{t}"]
        assert sorted(masks) == sorted([f"enc{s}" for s in range(1, 6)] + [f"dec{s}" for s in range(1, 6)])
        shapes = {k: m["mask"][0].shape for k, m in masks.items()}
        assert shapes["enc1"] == (2, 32, 64, 4) and shapes["enc5"] == (2, 2, 4, 32)
        assert shapes["dec5"] == (2, 2, 4, 32) and shapes["dec1"] == (2, 32, 64, 4)
        for m in masks.values():
            a = m["mask"][0]
            assert np.all(a >= 0) and np.all(a <= 1) and a.std() > 0


def test_encode_decode_split_and_batchnorm_updates(tiny_run):
    model, v, x, (outs, _, zs, extras, split, train, new) = tiny_run
    # decode(*encode(x)) == __call__(x); z_t are the tasks' attended full-resolution features
    assert len(zs) == 3 and all(z.shape == (2, 32, 64, 4) for z in zs) and extras == ((), (), ())
    assert not np.allclose(zs[0], zs[1])
    for a, b in zip(outs, split):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # train mode: batch statistics; running mean <- 0.9 mean + 0.1 batch mean (first conv's output)
    assert not np.allclose(train[0], outs[0], atol=1e-3)
    c = f64(v["params"]["shared"]["encoder"]["conv1_1"])
    h = np_conv(np.asarray(x, np.float64), c)
    old = v["batch_stats"]["shared"]["encoder"]["bn1_1"]["mean"]
    got = new["batch_stats"]["shared"]["encoder"]["bn1_1"]["mean"]
    np.testing.assert_allclose(got, 0.9 * old + 0.1 * h.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    assert set(new["batch_stats"]) == {"shared", "task_seg", "task_depth", "task_normal"}
    with pytest.raises(ValueError, match="expected 3 representations"):
        model.apply(v, zs[:2], extras, method="decode")


def test_a_task_gradient_reaches_the_last_shared_layer_and_its_own_branch_only():
    model = SegNetMTAN(width=1 / 16, heads=(("seg", 3), ("depth", 1)), output_size=(8, 16))
    x = images(1)
    v = numpy_variables(model, x, seed=2)

    @jax.jit
    def seg_grad(params):
        return jax.grad(lambda p: jnp.sum(model.apply({"params": p, "batch_stats": v["batch_stats"]}, x)[0] ** 2))(params)

    g = seg_grad(v["params"])
    assert np.abs(np.asarray(g["shared"]["decoder"]["conv1_1"]["kernel"])).sum() > 0
    assert np.abs(np.asarray(g["shared"]["encoder"]["conv1_1"]["kernel"])).sum() > 0
    assert all(np.abs(np.asarray(a)).sum() > 0 for a in jax.tree.leaves(g["task_seg"]))
    assert all(np.all(np.asarray(a) == 0) for a in jax.tree.leaves(g["task_depth"]))
