"""SegNet-MTAN: SegNet with per-task attention over the shared features (Liu, Johns & Davison, 2019).

The Multi-Task Attention Network keeps one shared SegNet (the "global" network) and gives every task a
chain of soft attention masks that pick, at each of the 10 encoder and decoder stages, which shared
features the task uses. Channels ``c = (64, 128, 256, 512, 512)`` (times ``width``); every 3x3
convolution is followed by BatchNorm and ReLU.

Shared network (stage s = 1..5, ``n_s = 2, 2, 3, 3, 3`` convolutions as VGG16):

* encoder stage s: ``f_s = conv{s}_1(x_{s-1})`` (c_{s-1} -> c_s), then ``conv{s}_2 .. conv{s}_{n_s}``
  give ``l_s``; ``x_s, idx_s = maxpool2x2(l_s)`` (argmax indices kept);
* decoder stage s (5 first): ``u_s = unpool(y_{s+1}, idx_s)`` (``y_6 = x_5``), then ``conv{s}_{n_s}``
  (c_s -> c_{s-1}, with c_0 = c_1) and ``conv{s}_{n_s - 1} .. conv{s}_1`` give ``y_s``.

Attention of task t, with masks ``m(v) = sigmoid(BN(conv1x1(relu(BN(conv1x1(v))))))`` of the task's own
weights and task-shared 3x3 convolutions ``att_encoder/conv{s}`` (c_s -> c_{s+1}, c_6 = c_5) and
``att_decoder/conv{s}`` (c_{s-1} out):

* encoder: ``a_s = maxpool2x2(att_encoder/conv{s}(m_enc{s}([f_s, a_{s-1}]) * l_s))`` (``[f_1]`` alone at
  s = 1; ``[.,.]`` is channel concatenation);
* decoder (s = 5..1, ``d_6 = a_5``): ``b_s = att_decoder/conv{s}(up2(d_{s+1}))`` with ``up2`` the
  bilinear x2 upsampling with aligned corners, ``d_s = m_dec{s}([u_s, b_s]) * y_s``;
* head: ``conv1x1(conv3x3(d_1))`` without BatchNorm or activation; "normal" heads are L2-normalised
  over channels. Segmentation heads return logits (MTAN returns their log-softmax, a per-pixel shift
  that leaves the softmax cross-entropy unchanged).

Parameter tree (``t`` a head name)::

    shared/encoder/conv{s}_{i}, shared/encoder/bn{s}_{i}   the shared encoder (VGG16 names)
    shared/decoder/conv{s}_{i}, shared/decoder/bn{s}_{i}   the shared decoder; conv{s}_{n_s} runs first
    shared/att_encoder/conv{s}, .../bn{s}                   task-shared attention convolutions
    shared/att_decoder/conv{s}, .../bn{s}
    task_<t>/enc{s}/{conv1,bn1,conv2,bn2}                   task t's attention masks
    task_<t>/dec{s}/{conv1,bn1,conv2,bn2}
    task_<t>/head/{conv,out}                                task t's prediction head

Everything under ``shared`` is shared by all tasks (the set CAGrad's ``shared_modules()`` returns); the
task-shared attention convolutions run once per task stream with the same weights (their BatchNorm
statistics are updated once per stream, as in the reference code). Every ``task_<t>`` subtree belongs
to task t alone.

Last shared layer (CosReg's ``wrt``): ``shared/decoder/conv1_1``, the shared network's final 3x3
convolution (c_1 -> c_1, 36,928 parameters at width 1). Its output ``y_1`` is the one feature map that
every task's last mask reads, so each task's gradient there is the gradient of the task's whole
attention chain; ``shared/decoder/bn1_1`` (BatchNorm affine) follows it and can be added with a
predicate selector. ``shared/att_decoder/conv1`` is also shared but is applied once per task stream, so
it is not the layer all tasks read through one feature map.

Reference code: lorenmt/mtan, ``im2im_pred/model_segnet_mtan.py``; the layer list above follows it
(Xavier-normal convolution kernels, zero biases; BatchNorm momentum 0.1 in PyTorch's convention).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from orthojax.models.segnet import (
    VGG16_STAGES,
    Head,
    _batch_norm,
    _check_images,
    _check_model_options,
    _head_output,
    _imagenet_normalize,
    _output_hw,
    _parse_heads,
    _scaled,
)
from orthojax.models.unpool import max_pool_with_indices, max_unpool

__all__ = [
    "CITYSCAPES_HEADS",
    "MTAN_LAST_SHARED_LAYER",
    "MTAN_NYUV2_HEADS",
    "MTAN_SHARED",
    "SegNetMTAN",
    "mtan_shared_layer_names",
    "upsample_bilinear_aligned",
]

MTAN_SHARED = "shared"
"""Path of every shared parameter of :class:`SegNetMTAN` (``MultiTaskProblem.shared``)."""

MTAN_LAST_SHARED_LAYER = "shared/decoder/conv1_1"
"""Path of :class:`SegNetMTAN`'s last shared convolution (CosReg's ``wrt``)."""

MTAN_NYUV2_HEADS = (Head("seg", 13), Head("depth", 1), Head("normal", 3, "normal"))
"""MTAN's NYUv2 heads: 13 classes (void -1 ignored), depth, surface normals."""

CITYSCAPES_HEADS = (Head("seg", 7), Head("depth", 1))
"""Cityscapes heads: 7 classes (void -1 ignored) and disparity."""

_NUM_STAGES = len(VGG16_STAGES)
_KERNEL_INIT = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")  # torch xavier_normal_


def _stage_channels(width: float) -> tuple[int, ...]:
    """c_1..c_5 scaled by ``width``."""
    return tuple(_scaled(chans[-1], width) for chans in VGG16_STAGES)


def mtan_shared_layer_names(use_batchnorm: bool = True) -> tuple[str, ...]:
    """Paths of :class:`SegNetMTAN`'s shared layers, in the order the forward pass first applies them.

    The shared encoder, the shared decoder (stage 5 first), then the task-shared attention
    convolutions (encoder stages 1..5, decoder stages 5..1). The last entry of the shared network
    proper is ``shared/decoder/conv1_1`` (with ``bn1_1`` after it).

    Args:
      use_batchnorm: whether the model has BatchNorm layers.

    Returns:
      A tuple of paths (72 with BatchNorm, 36 without).
    """
    names: list[str] = []

    def add(prefix: str, suffix: str) -> None:
        names.append(f"{prefix}/conv{suffix}")
        if use_batchnorm:
            names.append(f"{prefix}/bn{suffix}")

    for s, chans in enumerate(VGG16_STAGES, 1):
        for i in range(1, len(chans) + 1):
            add("shared/encoder", f"{s}_{i}")
    for s in range(_NUM_STAGES, 0, -1):
        for i in range(len(VGG16_STAGES[s - 1]), 0, -1):
            add("shared/decoder", f"{s}_{i}")
    for s in range(1, _NUM_STAGES + 1):
        add("shared/att_encoder", str(s))
    for s in range(_NUM_STAGES, 0, -1):
        add("shared/att_decoder", str(s))
    return tuple(names)


def _aligned_weights(n_in: int, n_out: int, dtype) -> jax.Array:
    """(n_out, n_in) linear-interpolation matrix mapping the first/last samples onto each other."""
    if n_in == 1:
        return jnp.ones((n_out, 1), dtype)
    pos = np.arange(n_out) * ((n_in - 1) / max(n_out - 1, 1))
    lo = np.minimum(np.floor(pos).astype(np.int64), n_in - 2)
    frac = pos - lo
    w = np.zeros((n_out, n_in))
    w[np.arange(n_out), lo] = 1 - frac
    w[np.arange(n_out), lo + 1] += frac
    return jnp.asarray(w, dtype)


def upsample_bilinear_aligned(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """Bilinear resize of (N, H, W, C) maps with aligned corners (PyTorch ``align_corners=True``).

    Output pixel i of an axis of length n_out samples the input at ``i * (n_in - 1) / (n_out - 1)``,
    so the corner pixels of input and output coincide; the two axes are interpolated separately
    (two small matrix products).

    Args:
      x: floating array (N, H, W, C).
      size: (H_out, W_out), each >= 1.

    Returns:
      Array (N, H_out, W_out, C) of ``x``'s dtype.
    """
    if x.ndim != 4:
        raise ValueError(f"upsample_bilinear_aligned expects (N, H, W, C), got shape {x.shape}")
    oh, ow = (int(v) for v in size)
    if oh < 1 or ow < 1:
        raise ValueError(f"upsample_bilinear_aligned: size must be positive, got {tuple(size)}")
    wh = _aligned_weights(x.shape[1], oh, x.dtype)
    ww = _aligned_weights(x.shape[2], ow, x.dtype)
    return jnp.einsum("oh,pw,nhwc->nopc", wh, ww, x)


class _ConvLayers(nn.Module):
    """Named 3x3 conv + BatchNorm + ReLU layers, created on first use: ``conv<suffix>``, ``bn<suffix>``."""

    use_batchnorm: bool

    @nn.compact
    def __call__(self, x: jax.Array, suffix: str, features: int, train: bool) -> jax.Array:
        x = nn.Conv(features, (3, 3), padding="SAME", kernel_init=_KERNEL_INIT, name=f"conv{suffix}")(x)
        if self.use_batchnorm:
            x = _batch_norm(train, f"bn{suffix}")(x)
        return nn.relu(x)


class _Shared(nn.Module):
    """Container of the shared layers (see the module docstring for the paths)."""

    use_batchnorm: bool

    def setup(self) -> None:
        self.encoder = _ConvLayers(self.use_batchnorm)
        self.decoder = _ConvLayers(self.use_batchnorm)
        self.att_encoder = _ConvLayers(self.use_batchnorm)
        self.att_decoder = _ConvLayers(self.use_batchnorm)


class _AttentionMask(nn.Module):
    """``sigmoid(BN(conv1x1(relu(BN(conv1x1(v))))))``: a soft mask in (0, 1) per feature."""

    features: int
    use_batchnorm: bool

    @nn.compact
    def __call__(self, v: jax.Array, train: bool) -> jax.Array:
        h = nn.Conv(self.features, (1, 1), kernel_init=_KERNEL_INIT, name="conv1")(v)
        if self.use_batchnorm:
            h = _batch_norm(train, "bn1")(h)
        h = nn.relu(h)
        h = nn.Conv(self.features, (1, 1), kernel_init=_KERNEL_INIT, name="conv2")(h)
        if self.use_batchnorm:
            h = _batch_norm(train, "bn2")(h)
        mask = nn.sigmoid(h)
        self.sow("intermediates", "mask", mask)
        return mask


class _Head(nn.Module):
    """conv3x3 (c_1 -> c_1) then conv1x1 (c_1 -> channels), no normalisation or activation."""

    channels: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(x.shape[-1], (3, 3), padding="SAME", kernel_init=_KERNEL_INIT, name="conv")(x)
        return nn.Conv(self.channels, (1, 1), kernel_init=_KERNEL_INIT, name="out")(x)


class _TaskBranch(nn.Module):
    """One task's attention masks (``enc{s}``, ``dec{s}``) and head, created on first use."""

    channels: int
    use_batchnorm: bool

    @nn.compact
    def __call__(self, x: jax.Array, part: str, train: bool, features: int = 0) -> jax.Array:
        if part == "head":
            return _Head(self.channels, name="head")(x)
        return _AttentionMask(features, self.use_batchnorm, name=part)(x, train)


class SegNetMTAN(nn.Module):
    """SegNet-MTAN: a shared SegNet and, per task, attention masks over its features and a head.

    ``__call__(x, train) = decode(*encode(x, train), train)`` returns one array
    (N, H_out, W_out, channels_t) per head, in the order of ``heads``; "normal" heads are unit
    vectors. The split for representation-level methods is at the heads: ``encode`` runs the shared
    network and every task's attention chain and returns task t's attended feature
    ``z_t = d_1`` (N, H, W, c_1), the product of task t's last mask and the shared network's output;
    ``decode`` applies the heads. Each loss L_t reads the last shared layer only through z_t, which is
    what :func:`orthojax.loss_with_cosreg_split` needs; the z_t differ between tasks (they are
    task-specific features, not one shared representation).

    Inputs are RGB (N, H, W, 3) with H and W multiples of 32. MTAN feeds images in [0, 1] unnormalised
    (``input_normalization=None``, the default); "imagenet" standardises them first.

    Attributes:
      heads: :class:`~orthojax.models.segnet.Head` specs or ``(name, channels[, kind])`` tuples; see
        :data:`MTAN_NYUV2_HEADS`, :data:`CITYSCAPES_HEADS`.
      width: channel multiplier; every layer has ``max(1, round(c * width))`` channels.
      output_size: (H_out, W_out) or one int; None keeps the input resolution (MTAN). See
        :func:`orthojax.models.resize_output`.
      use_batchnorm: BatchNorm after every convolution except the heads' (momentum 0.9, epsilon 1e-5).
      input_normalization: None or "imagenet".

    Example::

      model = SegNetMTAN(heads=CITYSCAPES_HEADS, width=0.25)
      variables = model.init(jax.random.key(0), jnp.zeros((1, 128, 256, 3)), train=False)
      seg_logits, disparity = model.apply(variables, images, train=False)
      wrt = model.last_shared_layer()      # "shared/decoder/conv1_1"

    References:
      Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019; reference code
      lorenmt/mtan (im2im_pred/model_segnet_mtan.py).
    """

    heads: tuple = MTAN_NYUV2_HEADS
    width: float = 1.0
    output_size: int | tuple[int, int] | None = None
    use_batchnorm: bool = True
    input_normalization: str | None = None

    def setup(self) -> None:
        heads = _parse_heads(self.heads)
        _check_model_options("SegNetMTAN", self.width, self.input_normalization)
        _output_hw(self.output_size, "SegNetMTAN")  # validate eagerly
        self.shared = _Shared(self.use_batchnorm)
        self.task = {h.name: _TaskBranch(h.channels, self.use_batchnorm) for h in heads}

    @nn.nowrap
    def head_specs(self) -> tuple[Head, ...]:
        """The heads as :class:`~orthojax.models.segnet.Head` objects, in output order."""
        return _parse_heads(self.heads)

    @nn.nowrap
    def shared_layer_names(self) -> tuple[str, ...]:
        """Paths of the shared layers (see :func:`mtan_shared_layer_names`)."""
        return mtan_shared_layer_names(self.use_batchnorm)

    @nn.nowrap
    def shared_path(self) -> str:
        """Path of the subtree holding every shared parameter: ``"shared"``."""
        return MTAN_SHARED

    @nn.nowrap
    def last_shared_layer(self) -> str:
        """Path of the last shared convolution, ``"shared/decoder/conv1_1"`` (see the module docstring)."""
        return MTAN_LAST_SHARED_LAYER

    def _shared_network(self, x: jax.Array, train: bool):
        """The shared SegNet: per stage f_s, l_s, u_s, y_s (see the module docstring)."""
        c = _stage_channels(self.width)
        enc, dec = self.shared.encoder, self.shared.decoder
        firsts, lasts, indices = [], [], []
        h = x
        for s, chans in enumerate(VGG16_STAGES, 1):
            h = enc(h, f"{s}_1", c[s - 1], train)
            firsts.append(h)
            for i in range(2, len(chans) + 1):
                h = enc(h, f"{s}_{i}", c[s - 1], train)
            lasts.append(h)
            h, ix = max_pool_with_indices(h, 2)
            indices.append(ix)
        unpooled, outs = [None] * _NUM_STAGES, [None] * _NUM_STAGES
        for s in range(_NUM_STAGES, 0, -1):
            h = max_unpool(h, indices[s - 1], lasts[s - 1].shape[1:3], window=2)
            unpooled[s - 1] = h
            out = c[max(s - 2, 0)]
            for i in range(len(VGG16_STAGES[s - 1]), 0, -1):
                h = dec(h, f"{s}_{i}", out, train)
            outs[s - 1] = h
        return firsts, lasts, unpooled, outs

    def encode(self, x: jax.Array, train: bool = False):
        """Shared network and every task's attention chain.

        Args:
          x: RGB images, shape (N, H, W, 3), H and W multiples of 32.
          train: BatchNorm batch statistics on.

        Returns:
          ``(zs, extras)``: zs holds T attended features (N, H, W, c_1), task t's ``d_1``; extras holds
          one empty tuple per task (the heads need nothing else).

        Raises:
          ValueError: ``x`` not 4-D, or H or W not a multiple of 32.
        """
        _check_images(x, self.input_normalization, "SegNetMTAN")
        if self.input_normalization == "imagenet":
            x = _imagenet_normalize(x)
        c = _stage_channels(self.width)
        firsts, lasts, unpooled, outs = self._shared_network(x, train)
        att_enc, att_dec = self.shared.att_encoder, self.shared.att_decoder
        zs = []
        for head in self.head_specs():
            branch = self.task[head.name]
            a = None
            for s in range(1, _NUM_STAGES + 1):
                v = firsts[s - 1] if a is None else jnp.concatenate([firsts[s - 1], a], axis=-1)
                g = branch(v, f"enc{s}", train, c[s - 1]) * lasts[s - 1]
                a = att_enc(g, str(s), c[min(s, _NUM_STAGES - 1)], train)
                a = nn.max_pool(a, (2, 2), strides=(2, 2))
            d = a
            for s in range(_NUM_STAGES, 0, -1):
                out = c[max(s - 2, 0)]
                b = upsample_bilinear_aligned(d, unpooled[s - 1].shape[1:3])
                b = att_dec(b, str(s), out, train)
                mask = branch(jnp.concatenate([unpooled[s - 1], b], axis=-1), f"dec{s}", train, out)
                d = mask * outs[s - 1]
            zs.append(d)
        return tuple(zs), tuple(() for _ in zs)

    def decode(self, zs: Sequence[jax.Array], extras: Sequence = (), train: bool = False):
        """Task heads, then resizing to ``output_size`` and unit-normalising "normal" heads.

        Args:
          zs: T attended features from :meth:`encode`.
          extras: what :meth:`encode` returned beside them (unused).
          train: unused (the heads have no BatchNorm); kept for the common interface.

        Returns:
          T arrays (N, H_out, W_out, channels_t).

        Raises:
          ValueError: ``len(zs)`` differs from the number of heads.
        """
        del extras, train
        heads = self.head_specs()
        if len(zs) != len(heads):
            raise ValueError(f"SegNetMTAN.decode: expected {len(heads)} representations, got {len(zs)}")
        size = _output_hw(self.output_size, "SegNetMTAN")
        return tuple(_head_output(self.task[head.name](z, "head", False), head, size) for head, z in zip(heads, zs))

    def __call__(self, x: jax.Array, train: bool = False):
        """Per-head predictions: ``decode(*encode(x, train), train)``."""
        zs, extras = self.encode(x, train)
        return self.decode(zs, extras, train)
