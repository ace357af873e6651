"""SegNet for dense multi-task prediction (CosReg, section 5; Badrinarayanan et al., 2017).

Encoder: VGG16's 13 convolutions (3x3, 'SAME', with bias) in 5 stages of 64-64 / 128-128 /
256x3 / 512x3 / 512x3 channels, each followed by optional BatchNorm and ReLU; each stage ends with a
2x2 max-pool that keeps its argmax indices. One decoder per task mirrors the encoder: max-unpool with
the encoder's indices, then the stage's convolutions in reverse order (channels mirrored), then a 1x1
output convolution. The decoder works at full input resolution and the result is resized to
``output_size`` (the paper: 320x320 in, 80x80 out).

Parameter tree (heads named e.g. "seg", "depth", "normal")::

    encoder/conv1_1, encoder/bn1_1, ..., encoder/conv5_3, encoder/bn5_3     (bn* only with BN)
    decoder_<head>/conv5_3, decoder_<head>/bn5_3, ..., decoder_<head>/conv1_1, decoder_<head>/out

A shared layer named in ``task_specific_layers`` is replaced by one copy per task, at
``encoder/<name>_task<t>`` (t is the head's position); from the first such layer on, the encoder runs
one stream per task (with its own pooling indices) and later shared layers are applied to every stream
with the same weights. A shared BatchNorm applied to several streams updates its running statistics
once per stream.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from orthojax.models.cnn import _apply_layer, _resolve_task_specific
from orthojax.models.unpool import max_pool_with_indices, max_unpool

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LAST_SHARED_LAYER",
    "NYUV2_HEADS",
    "SUNRGBD_HEADS",
    "VGG16_STAGES",
    "Head",
    "SegNet",
    "resize_output",
    "segnet_shared_layer_names",
]

VGG16_STAGES: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
"""Output channels of VGG16's convolutions, per stage (``conv<stage>_<i>``)."""

LAST_SHARED_LAYER = "encoder/conv5_3"
"""Path of the last convolution of :class:`SegNet`'s encoder (CosReg's ``wrt``)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_NUM_STAGES = len(VGG16_STAGES)
_DOWNSAMPLE = 2**_NUM_STAGES
_BN_MOMENTUM = 0.9  # PyTorch's momentum 0.1
_BN_EPSILON = 1e-5
_HEAD_KINDS = ("linear", "normal")


@dataclasses.dataclass(frozen=True)
class Head:
    """One task's output head.

    Attributes:
      name: task name; the decoder lives at ``decoder_<name>``.
      channels: output channels (classes for segmentation, 1 for depth, 3 for normals).
      kind: "linear" (raw logits or values) or "normal" (unit-normalised over channels).
    """

    name: str
    channels: int
    kind: str = "linear"


NYUV2_HEADS = (Head("seg", 14), Head("depth", 1), Head("normal", 3, "normal"))
SUNRGBD_HEADS = (Head("seg13", 13), Head("seg37", 37), Head("depth", 1))


def _parse_heads(heads: Sequence[Head | tuple]) -> tuple[Head, ...]:
    """Heads as :class:`Head`; a tuple ``(name, channels[, kind])`` defaults its kind to "normal"
    when the name starts with "normal", else "linear"."""
    out = []
    for spec in heads:
        if not isinstance(spec, Head):
            if not isinstance(spec, (tuple, list)) or len(spec) not in (2, 3):
                raise ValueError(f"SegNet: a head must be a Head or (name, channels[, kind]), got {spec!r}")
            name, channels = spec[0], spec[1]
            kind = spec[2] if len(spec) == 3 else ("normal" if str(name).startswith("normal") else "linear")
            spec = Head(name, channels, kind)
        if not isinstance(spec.name, str) or not spec.name.isidentifier():
            raise ValueError(f"SegNet: head name must be an identifier, got {spec.name!r}")
        if not isinstance(spec.channels, int) or spec.channels < 1:
            raise ValueError(f"SegNet: head {spec.name!r} needs channels >= 1, got {spec.channels!r}")
        if spec.kind not in _HEAD_KINDS:
            raise ValueError(f"SegNet: head {spec.name!r} has kind {spec.kind!r}; expected one of {_HEAD_KINDS}")
        out.append(spec)
    if not out:
        raise ValueError("SegNet: at least one head is required")
    names = [h.name for h in out]
    if len(set(names)) != len(names):
        raise ValueError(f"SegNet: head names must be unique, got {names}")
    return tuple(out)


def segnet_shared_layer_names(use_batchnorm: bool = True) -> tuple[str, ...]:
    """Paths of :class:`SegNet`'s shared layers, input to output.

    Args:
      use_batchnorm: whether the model has BatchNorm layers.

    Returns:
      ``("encoder/conv1_1", "encoder/bn1_1", ..., "encoder/conv5_3", "encoder/bn5_3")`` (26 with
      BatchNorm, 13 without).
    """
    names = []
    for s, chans in enumerate(VGG16_STAGES, 1):
        for i in range(1, len(chans) + 1):
            names.append(f"encoder/conv{s}_{i}")
            if use_batchnorm:
                names.append(f"encoder/bn{s}_{i}")
    return tuple(names)


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _normalize_channels(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``x / max(||x||, eps)`` over the last axis, with finite gradients at 0."""
    sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def resize_output(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Resize (N, H, W, C) maps to ``size``.

    Integer down-sampling factors use area averaging, ``y[i, j] = mean of the fh x fw block``
    (exact for 320 -> 80); any other size uses antialiased bilinear interpolation.

    Args:
      x: maps of shape (N, H, W, C).
      size: target (H_out, W_out).

    Returns:
      Array of shape (N, H_out, W_out, C).
    """
    n, h, w, c = x.shape
    oh, ow = size
    if (h, w) == (oh, ow):
        return x
    if oh <= h and ow <= w and h % oh == 0 and w % ow == 0:
        return x.reshape(n, oh, h // oh, ow, w // ow, c).mean(axis=(2, 4))
    return jax.image.resize(x, (n, oh, ow, c), method="linear", antialias=True)


def _check_model_options(model: str, width: float, input_normalization: str | None) -> None:
    """Eager checks of the options SegNet and SegNet-MTAN share; ``model`` names the class in errors."""
    if not width > 0:
        raise ValueError(f"{model}: width must be > 0, got {width}")
    if input_normalization not in ("imagenet", None):
        raise ValueError(f"{model}: input_normalization must be 'imagenet' or None, got {input_normalization!r}")


def _output_hw(size: int | Sequence[int] | None, model: str) -> tuple[int, int] | None:
    """``output_size`` as an (H, W) pair, or None for the network's own resolution.

    Raises:
      ValueError: ``size`` is not a positive int or a pair of positive ints.
    """
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise ValueError(f"{model}: output_size must be a positive int or pair, got {size!r}")
    return pair  # type: ignore[return-value]


def _check_images(x: jax.Array, input_normalization: str | None, model: str) -> None:
    """Images must be (N, H, W, C) with H and W multiples of 32, and RGB when ImageNet-normalised."""
    if x.ndim != 4:
        raise ValueError(f"{model} expects images (N, H, W, C), got shape {x.shape}")
    if input_normalization == "imagenet" and x.shape[-1] != 3:
        raise ValueError(f"{model}: imagenet input normalisation needs 3 (RGB) channels, got {x.shape[-1]}")
    if x.shape[1] % _DOWNSAMPLE or x.shape[2] % _DOWNSAMPLE:
        raise ValueError(f"{model}: input height and width must be multiples of {_DOWNSAMPLE}, got {x.shape[1:3]}")


def _imagenet_normalize(x: jax.Array) -> jax.Array:
    """``(x - mean) / std`` per RGB channel with the ImageNet statistics, in ``x``'s dtype."""
    return (x - jnp.asarray(IMAGENET_MEAN, x.dtype)) / jnp.asarray(IMAGENET_STD, x.dtype)


def _head_output(y: jax.Array, head: Head, size: tuple[int, int] | None) -> jax.Array:
    """A head's raw map resized to ``size`` (None: kept) and, for "normal" heads, unit-normalised."""
    if size is not None:
        y = resize_output(y, size)
    if head.kind == "normal":
        y = _normalize_channels(y)
    return y


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name=name)


class _Encoder(nn.Module):
    width: float
    num_tasks: int
    use_batchnorm: bool
    dropout_rate: float
    input_normalization: str | None
    task_specific: frozenset[str]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool):
        if self.input_normalization == "imagenet":
            x = _imagenet_normalize(x)
        streams = [x]
        stage_indices = []  # per stage: one index array per stream
        for s, chans in enumerate(VGG16_STAGES, 1):
            for i, c in enumerate(chans, 1):
                conv = lambda name, c=c: nn.Conv(_scaled(c, self.width), (3, 3), padding="SAME", name=name)
                streams = _apply_layer(streams, f"conv{s}_{i}", conv, self.task_specific, self.num_tasks)
                if self.use_batchnorm:
                    bn = lambda name: _batch_norm(train, name)
                    streams = _apply_layer(streams, f"bn{s}_{i}", bn, self.task_specific, self.num_tasks)
                streams = [nn.relu(h) for h in streams]
            pooled = [max_pool_with_indices(h, 2) for h in streams]
            drop = nn.Dropout(self.dropout_rate, deterministic=not train)
            streams = [drop(p) for p, _ in pooled]
            stage_indices.append([ix for _, ix in pooled])
        pick = lambda seq, t: seq[t] if len(seq) > 1 else seq[0]
        zs = tuple(pick(streams, t) for t in range(self.num_tasks))
        extras = tuple(tuple(pick(ix, t) for ix in stage_indices) for t in range(self.num_tasks))
        return zs, extras


class _Decoder(nn.Module):
    width: float
    head: Head
    use_batchnorm: bool
    dropout_rate: float

    @nn.compact
    def __call__(self, z: jax.Array, indices: Sequence[jax.Array], train: bool) -> jax.Array:
        h = z
        for s in range(_NUM_STAGES, 0, -1):
            size = (2 * h.shape[1], 2 * h.shape[2])
            h = max_unpool(h, indices[s - 1], size, window=2)
            chans = VGG16_STAGES[s - 1]
            for i in range(len(chans), 0, -1):
                out = chans[0] if s == 1 else (VGG16_STAGES[s - 2][-1] if i == 1 else chans[i - 1])
                h = nn.Conv(_scaled(out, self.width), (3, 3), padding="SAME", name=f"conv{s}_{i}")(h)
                if self.use_batchnorm:
                    h = _batch_norm(train, f"bn{s}_{i}")(h)
                h = nn.relu(h)
            h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        return nn.Conv(self.head.channels, (1, 1), name="out")(h)


class SegNet(nn.Module):
    """Multi-task SegNet: shared VGG16 encoder, one symmetric unpooling decoder per head.

    ``__call__(x, train) = decode(*encode(x, train), train)`` returns one array
    (N, H_out, W_out, channels_t) per head, in the order of ``heads``; "normal" heads are unit vectors.
    The representation ``z`` is the encoder's output after the last max-pool,
    (N, H/32, W/32, round(512 * width)); the decoders unpool it with the indices in ``extras``.

    Inputs are RGB in [0, 1], (N, H, W, 3), H and W multiples of 32. With
    ``input_normalization="imagenet"`` (the default, matching torchvision's VGG16 weights) the model
    itself subtracts the ImageNet mean and divides by its std.

    Attributes:
      heads: :class:`Head` specs or ``(name, channels[, kind])`` tuples, e.g.
        ``(("seg", 14), ("depth", 1), ("normal", 3))``; see :data:`NYUV2_HEADS`, :data:`SUNRGBD_HEADS`.
      width: channel multiplier; every layer has ``max(1, round(c * width))`` channels.
      output_size: (H_out, W_out) or one int; None keeps the input resolution. See
        :func:`resize_output`.
      use_batchnorm: BatchNorm after every convolution (vgg16_bn); momentum 0.9, epsilon 1e-5.
      dropout_rate: dropout after every encoder pool and decoder stage (needs a "dropout" RNG).
      input_normalization: "imagenet" or None.
      task_specific_layers: shared layers (``"conv5_3"`` or ``"encoder/conv5_3"``) turned into one
        copy per task, stored at ``encoder/<name>_task<t>``.

    Example::

      model = SegNet(heads=NYUV2_HEADS, output_size=80)
      variables = model.init(jax.random.key(0), jnp.zeros((1, 320, 320, 3)), train=False)
      seg_logits, depth, normals = model.apply(variables, images, train=False)
    """

    heads: tuple = NYUV2_HEADS
    width: float = 1.0
    output_size: int | tuple[int, int] | None = None
    use_batchnorm: bool = True
    dropout_rate: float = 0.0
    input_normalization: str | None = "imagenet"
    task_specific_layers: tuple[str, ...] = ()

    def setup(self) -> None:
        heads = _parse_heads(self.heads)
        _check_model_options("SegNet", self.width, self.input_normalization)
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"SegNet: dropout_rate must be in [0, 1), got {self.dropout_rate}")
        _output_hw(self.output_size, "SegNet")  # validate eagerly
        specific = _resolve_task_specific(self.task_specific_layers, self.shared_layer_names(), "SegNet")
        self.encoder = _Encoder(
            self.width, len(heads), self.use_batchnorm, self.dropout_rate, self.input_normalization, specific
        )
        self.decoder = {h.name: _Decoder(self.width, h, self.use_batchnorm, self.dropout_rate) for h in heads}

    @nn.nowrap
    def head_specs(self) -> tuple[Head, ...]:
        """The heads as :class:`Head` objects, in output order."""
        return _parse_heads(self.heads)

    @nn.nowrap
    def shared_layer_names(self) -> tuple[str, ...]:
        """Paths of the shared layers in order (see :func:`segnet_shared_layer_names`)."""
        return segnet_shared_layer_names(self.use_batchnorm)

    @nn.nowrap
    def last_shared_layer(self) -> str:
        """Path of the last encoder convolution all tasks share (``"encoder/conv5_3"`` by default)."""
        specific = _resolve_task_specific(self.task_specific_layers, self.shared_layer_names(), "SegNet")
        for path in reversed(self.shared_layer_names()):
            name = path.split("/", 1)[1]
            if name.startswith("conv") and name not in specific:
                return path
        raise ValueError("SegNet: every encoder convolution is task-specific; none is shared")

    def encode(self, x: jax.Array, train: bool = False):
        """Shared VGG16 encoder.

        Args:
          x: RGB images in [0, 1], shape (N, H, W, 3), H and W multiples of 32.
          train: BatchNorm batch statistics and dropout on.

        Returns:
          ``(zs, extras)``: zs holds T representations (N, H/32, W/32, C), one per task stream (the
          same array T times when no layer is task-specific); ``extras[t]`` holds the 5 max-pool index
          arrays of stream t, stage 1 first.
        """
        _check_images(x, self.input_normalization, "SegNet")
        return self.encoder(x, train)

    def decode(self, zs: Sequence[jax.Array], extras: Sequence[Sequence[jax.Array]], train: bool = False):
        """Task decoders, then resizing to ``output_size`` and unit-normalising "normal" heads.

        Args:
          zs: T representations from :meth:`encode`.
          extras: per-task pooling indices from :meth:`encode`.
          train: BatchNorm batch statistics and dropout on.

        Returns:
          T arrays (N, H_out, W_out, channels_t).
        """
        heads = self.head_specs()
        if len(zs) != len(heads) or len(extras) != len(heads):
            raise ValueError(
                f"SegNet.decode: expected {len(heads)} representations and index sets, "
                f"got {len(zs)} and {len(extras)}"
            )
        size = _output_hw(self.output_size, "SegNet")
        return tuple(
            _head_output(self.decoder[head.name](z, ix, train), head, size) for head, z, ix in zip(heads, zs, extras)
        )

    def __call__(self, x: jax.Array, train: bool = False):
        """Per-head predictions: ``decode(*encode(x, train), train)``."""
        zs, extras = self.encode(x, train)
        return self.decode(zs, extras, train)
