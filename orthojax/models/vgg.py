"""ImageNet VGG16 weights for :class:`~orthojax.models.SegNet`'s encoder, from a local file.

:func:`convert_state_dict` maps torchvision's ``vgg16`` / ``vgg16_bn`` state dict (NumPy arrays) to
flat keys in SegNet's naming; ``python -m orthojax.models.convert_vgg16 IN OUT.npz`` writes them to an
.npz. :func:`load_vgg16_weights` puts such a file (or mapping) into a SegNet's variables.

Key layout of the converted weights (13 layers ``conv1_1`` ... ``conv5_3``)::

    conv1_1/kernel  (3, 3, C_in, C_out)   torchvision (C_out, C_in, 3, 3) transposed (2, 3, 1, 0)
    conv1_1/bias    (C_out,)
    bn1_1/scale, bn1_1/bias, bn1_1/mean, bn1_1/var   (C_out,)   vgg16_bn only

The weights expect RGB in [0, 1] normalised with the ImageNet mean and std, which SegNet applies
itself (``input_normalization="imagenet"``). No file is downloaded and nothing is unpickled.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from orthojax.models.segnet import VGG16_STAGES

__all__ = [
    "TORCHVISION_VGG16_BN_CONV_INDICES",
    "TORCHVISION_VGG16_CONV_INDICES",
    "convert_state_dict",
    "load_vgg16_weights",
    "read_weights",
    "vgg16_conv_names",
]

TORCHVISION_VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
"""Positions of the 13 convolutions in torchvision's ``vgg16().features``."""
TORCHVISION_VGG16_BN_CONV_INDICES = (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40)
"""Positions of the 13 convolutions in ``vgg16_bn().features`` (each BatchNorm follows at +1)."""

_BN_FIELDS = (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"), ("running_var", "var"))


def vgg16_conv_names() -> tuple[str, ...]:
    """``("conv1_1", "conv1_2", "conv2_1", ..., "conv5_3")``."""
    return tuple(f"conv{s}_{i}" for s, chans in enumerate(VGG16_STAGES, 1) for i in range(1, len(chans) + 1))


def _vgg16_channels() -> list[tuple[int, int]]:
    """(C_in, C_out) of each of the 13 convolutions."""
    out, c_in = [], 3
    for chans in VGG16_STAGES:
        for c in chans:
            out.append((c_in, c))
            c_in = c
    return out


def convert_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """torchvision VGG16 (or VGG16-BN) features -> SegNet encoder arrays.

    ``conv/kernel = W.transpose(2, 3, 1, 0)`` (OIHW -> HWIO); BatchNorm ``weight, bias,
    running_mean, running_var`` -> ``scale, bias, mean, var``. The classifier, ``num_batches_tracked``
    and a leading ``module.`` are ignored; BatchNorm layers are detected from ``features.1.running_mean``.

    Args:
      state_dict: mapping from torchvision keys (``"features.0.weight"``, ...) to arrays.

    Returns:
      Flat dict ``{"conv1_1/kernel": ..., "conv1_1/bias": ..., ["bn1_1/scale": ...]}`` of NumPy arrays.

    Raises:
      KeyError: a layer is missing (the message names the torchvision key).
      ValueError: an array does not have VGG16's shape (the message names the layer).
    """
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    with_bn = "features.1.running_mean" in sd
    indices = TORCHVISION_VGG16_BN_CONV_INDICES if with_bn else TORCHVISION_VGG16_CONV_INDICES

    def get(key: str, layer: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in sd:
            raise KeyError(f"VGG16 state dict: missing {key!r} (layer {layer})")
        arr = np.asarray(sd[key])
        if arr.shape != shape:
            raise ValueError(f"VGG16 state dict: {key!r} (layer {layer}) has shape {arr.shape}, expected {shape}")
        return arr

    out: dict[str, np.ndarray] = {}
    for name, idx, (c_in, c_out) in zip(vgg16_conv_names(), indices, _vgg16_channels()):
        w = get(f"features.{idx}.weight", name, (c_out, c_in, 3, 3))
        out[f"{name}/kernel"] = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
        out[f"{name}/bias"] = get(f"features.{idx}.bias", name, (c_out,))
        if with_bn:
            bn = name.replace("conv", "bn")
            for src, dst in _BN_FIELDS:
                out[f"{bn}/{dst}"] = get(f"features.{idx + 1}.{src}", bn, (c_out,))
    return out


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read arrays from an .npz (``allow_pickle=False``) or a .safetensors file.

    Args:
      path: the file.

    Returns:
      Flat dict of NumPy arrays, keys as stored.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VGG16 weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return dict(load_file(path))
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    raise ValueError(f"VGG16 weights: unsupported file type {path!r}; expected .npz or .safetensors")


def _copy_tree(tree: Mapping) -> dict:
    return {k: _copy_tree(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


def _targets(encoder: Mapping, name: str) -> list[str]:
    """The encoder entries holding layer ``name``: itself, or its per-task copies ``name_task<t>``."""
    if name in encoder:
        return [name]
    return sorted(k for k in encoder if k.startswith(f"{name}_task") and k[len(name) + 5:].isdigit())


def _put(tree: dict, layer: str, field: str, arrays: Mapping[str, Any], key: str, collection: str) -> None:
    if key not in arrays:
        raise KeyError(f"VGG16 weights: missing {key}")
    value = np.asarray(arrays[key])
    target = tree[layer].get(field)
    if target is None:
        raise KeyError(f"VGG16 weights: {collection}/encoder/{layer} has no {field!r}")
    if tuple(target.shape) != value.shape:
        raise ValueError(
            f"VGG16 weights: layer {layer} {field} has shape {value.shape} but the model expects "
            f"{tuple(target.shape)} (is the SegNet width 1?)"
        )
    tree[layer][field] = jnp.asarray(value, dtype=target.dtype)


def load_vgg16_weights(
    variables: Mapping[str, Any], weights: str | os.PathLike | Mapping[str, Any]
) -> dict[str, Any]:
    """Put ImageNet VGG16 weights into a SegNet's encoder.

    Convolutions go to ``params/encoder/conv*``; with VGG16-BN weights, BatchNorm scale and bias to
    ``params/encoder/bn*`` and running mean and variance to ``batch_stats/encoder/bn*``. A layer made
    task-specific (``conv5_3_task0``, ...) receives the same weights in every copy. Plain VGG16
    weights leave a BatchNorm model's BN layers as initialised.

    Args:
      variables: ``model.init(...)`` output of a width-1 :class:`~orthojax.models.SegNet`.
      weights: path to an .npz / .safetensors file or a mapping, in the converted layout or in
        torchvision's (``features.0.weight``...; converted on the fly).

    Returns:
      A new variables dict (the input is not modified).

    Raises:
      ValueError: a shape does not fit (the message names the layer), or BN weights meet a model
        without BatchNorm.
      KeyError: a layer is missing from the weights or the model.
    """
    arrays = read_weights(weights) if isinstance(weights, (str, os.PathLike)) else dict(weights)
    if any(k.startswith(("features.", "module.features.")) for k in arrays):
        arrays = convert_state_dict(arrays)
    if "params" not in variables or "encoder" not in variables["params"]:
        raise KeyError("load_vgg16_weights: variables have no params/encoder (is this a SegNet's variables?)")
    out = _copy_tree(variables)
    params = out["params"]["encoder"]
    stats = out.get("batch_stats", {}).get("encoder", {})
    with_bn = "bn1_1/mean" in arrays
    for name in vgg16_conv_names():
        bn = name.replace("conv", "bn")
        layers = _targets(params, name)
        if not layers:
            raise KeyError(f"load_vgg16_weights: the model's encoder has no layer {name}")
        for layer in layers:
            for field in ("kernel", "bias"):
                _put(params, layer, field, arrays, f"{name}/{field}", "params")
        if not with_bn:
            continue
        bn_layers = _targets(params, bn)
        if not bn_layers:
            raise ValueError(
                f"VGG16 weights hold BatchNorm layers ({bn}) but the model has none; "
                "build SegNet(use_batchnorm=True) or use plain vgg16 weights"
            )
        for layer in bn_layers:
            for field in ("scale", "bias"):
                _put(params, layer, field, arrays, f"{bn}/{field}", "params")
        for layer in _targets(stats, bn):
            for field in ("mean", "var"):
                _put(stats, layer, field, arrays, f"{bn}/{field}", "batch_stats")
    return out
