"""VGG16 weights: torchvision layout -> SegNet, the converter CLI, and the loader's checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orthojax.models.convert_vgg16 import main as convert_main
from orthojax.models.segnet import IMAGENET_MEAN, IMAGENET_STD, SegNet
from orthojax.models.vgg import (
    TORCHVISION_VGG16_BN_CONV_INDICES,
    TORCHVISION_VGG16_CONV_INDICES,
    convert_state_dict,
    load_vgg16_weights,
    read_weights,
    vgg16_conv_names,
)

CHANNELS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
            (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]


def torchvision_state_dict(with_bn, seed=0):
    """Random arrays in torchvision's vgg16 / vgg16_bn key layout (classifier included)."""
    rng = np.random.default_rng(seed)
    sd = {}
    idx = TORCHVISION_VGG16_BN_CONV_INDICES if with_bn else TORCHVISION_VGG16_CONV_INDICES
    for i, (ci, co) in zip(idx, CHANNELS):
        sd[f"features.{i}.weight"] = rng.standard_normal((co, ci, 3, 3), np.float32) * 0.05
        sd[f"features.{i}.bias"] = rng.standard_normal(co, np.float32)
        if with_bn:
            sd[f"features.{i + 1}.weight"] = rng.uniform(0.5, 1.5, co).astype(np.float32)
            sd[f"features.{i + 1}.bias"] = rng.standard_normal(co, np.float32)
            sd[f"features.{i + 1}.running_mean"] = rng.standard_normal(co, np.float32)
            sd[f"features.{i + 1}.running_var"] = rng.uniform(0.5, 1.5, co).astype(np.float32)
            sd[f"features.{i + 1}.num_batches_tracked"] = np.array(7, np.int64)
    sd["classifier.0.weight"] = np.zeros((4, 8), np.float32)
    return sd


def encoder_variables(model, x):
    """Only the encoder's variables (what the loader fills), as zeros of the right shapes."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, False))
    out = {"params": {"encoder": shapes["params"]["encoder"]}}
    if "batch_stats" in shapes:
        out["batch_stats"] = {"encoder": shapes["batch_stats"]["encoder"]}
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), out)


def np_conv3(x, w_oihw, b):
    """'SAME' 3x3 cross-correlation with a torchvision (out, in, kh, kw) kernel, in float64."""
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = x.shape[1:3]
    out = sum(xp[:, a : a + h, c : c + w] @ w_oihw[:, :, a, c].T for a in range(3) for c in range(3))
    return out + b


@pytest.fixture(scope="module")
def sd_bn():
    return torchvision_state_dict(with_bn=True)


def test_convert_state_dict_layout(sd_bn):
    out = convert_state_dict(sd_bn)
    names = vgg16_conv_names()
    assert names[0] == "conv1_1" and names[-1] == "conv5_3" and len(names) == 13
    assert len(out) == 13 * 6
    w = sd_bn["features.40.weight"]  # conv5_3 in vgg16_bn
    k = out["conv5_3/kernel"]
    assert k.shape == (3, 3, 512, 512)
    np.testing.assert_array_equal(k[1, 2, 7, 9], w[9, 7, 1, 2])  # HWIO[a, b, i, o] = OIHW[o, i, a, b]
    np.testing.assert_array_equal(k, w.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(out["bn5_3/mean"], sd_bn["features.41.running_mean"])
    np.testing.assert_array_equal(out["bn1_1/scale"], sd_bn["features.1.weight"])
    assert sum(v.size for key, v in out.items() if key.startswith("conv")) == 14_714_688
    plain = convert_state_dict({f"module.{k}": v for k, v in torchvision_state_dict(with_bn=False).items()})
    assert len(plain) == 26 and not any(k.startswith("bn") for k in plain)


def test_convert_state_dict_errors_name_the_layer(sd_bn):
    broken = dict(sd_bn)
    del broken["features.24.bias"]
    with pytest.raises(KeyError, match=r"features\.24\.bias.*conv4_1"):
        convert_state_dict(broken)
    broken = dict(sd_bn)
    broken["features.27.weight"] = np.zeros((512, 256, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"conv4_2.*\(512, 256, 3, 3\).*\(512, 512, 3, 3\)"):
        convert_state_dict(broken)


def test_loaded_first_conv_equals_numpy_convolution_of_normalised_rgb(sd_bn):
    model = SegNet(heads=(("seg", 1),), output_size=2)  # width 1: VGG16's shapes
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(1, 32, 32, 3)), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, False))
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    loaded = load_vgg16_weights(variables, sd_bn)  # torchvision layout, converted on the fly
    assert loaded["params"]["encoder"]["conv1_1"]["kernel"].shape == (3, 3, 3, 64)
    np.testing.assert_array_equal(np.asarray(loaded["batch_stats"]["encoder"]["bn3_2"]["var"]),
                                  sd_bn["features.18.running_var"])
    assert float(np.abs(variables["params"]["encoder"]["conv1_1"]["kernel"]).max()) == 0.0  # input untouched

    @jax.jit
    def first_conv(v, x):
        _, state = model.apply(v, x, False, method="encode", mutable=["intermediates"],
                               capture_intermediates=lambda mdl, _: mdl.name == "conv1_1")
        return state["intermediates"]["encoder"]["conv1_1"]["__call__"][0]

    got = np.asarray(first_conv(loaded, x))
    xn = (np.asarray(x, np.float64) - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    ref = np_conv3(xn, sd_bn["features.0.weight"].astype(np.float64), sd_bn["features.0.bias"])
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_cli_converts_safetensors_and_the_npz_loads(tmp_path, capsys):
    from safetensors.numpy import save_file

    sd = torchvision_state_dict(with_bn=False, seed=2)
    src, dst = tmp_path / "vgg16.safetensors", tmp_path / "vgg16.npz"
    save_file(sd, str(src))
    assert convert_main([str(src), str(dst)]) == 0
    assert "vgg16, 26 arrays, 14,714,688 numbers" in capsys.readouterr().out
    arrays = read_weights(dst)
    np.testing.assert_array_equal(arrays["conv2_1/kernel"], sd["features.5.weight"].transpose(2, 3, 1, 0))
    model = SegNet(heads=(("seg", 2),))
    v = encoder_variables(model, jnp.zeros((1, 32, 32, 3)))
    loaded = load_vgg16_weights(v, dst)
    np.testing.assert_array_equal(np.asarray(loaded["params"]["encoder"]["conv5_3"]["bias"]), sd["features.28.bias"])
    # Plain vgg16 weights leave a BatchNorm model's BN layers as they were.
    np.testing.assert_array_equal(np.asarray(loaded["batch_stats"]["encoder"]["bn1_1"]["var"]), 0.0)
    with pytest.raises(SystemExit):
        convert_main([str(src), str(tmp_path / "out.bin")])


def test_task_specific_copies_all_receive_the_weights(sd_bn):
    model = SegNet(heads=(("a", 1), ("b", 1)), task_specific_layers=("conv5_3", "bn5_3"))
    v = encoder_variables(model, jnp.zeros((1, 32, 32, 3)))
    loaded = load_vgg16_weights(v, convert_state_dict(sd_bn))
    for t in (0, 1):
        np.testing.assert_array_equal(np.asarray(loaded["params"]["encoder"][f"conv5_3_task{t}"]["kernel"]),
                                      sd_bn["features.40.weight"].transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(np.asarray(loaded["batch_stats"]["encoder"][f"bn5_3_task{t}"]["mean"]),
                                      sd_bn["features.41.running_mean"])


def test_loader_errors(tmp_path, sd_bn):
    x = jnp.zeros((1, 32, 32, 3))
    small = encoder_variables(SegNet(width=1 / 16, heads=(("s", 1),)), x)
    with pytest.raises(ValueError, match=r"layer conv1_1 kernel has shape \(3, 3, 3, 64\).*\(3, 3, 3, 4\)"):
        load_vgg16_weights(small, sd_bn)
    no_bn = encoder_variables(SegNet(heads=(("s", 1),), use_batchnorm=False), x)
    with pytest.raises(ValueError, match="BatchNorm layers \\(bn1_1\\).*use_batchnorm=True"):
        load_vgg16_weights(no_bn, sd_bn)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_vgg16_weights(no_bn, tmp_path / "missing.npz")
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_vgg16_weights(no_bn, tmp_path / "w.pth")
    converted = convert_state_dict(torchvision_state_dict(with_bn=False))
    del converted["conv3_3/bias"]
    with pytest.raises(KeyError, match="conv3_3/bias"):
        load_vgg16_weights(no_bn, converted)
    with pytest.raises(KeyError, match="params/encoder"):
        load_vgg16_weights({"params": {}}, converted)
