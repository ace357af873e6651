"""The MultiDigitMNIST network of the CosReg paper (section 4).

Shared encoder: two 'SAME'-padded convolutions with stride 2, no bias (stride replaces pooling).
Each task's decoder: one such convolution, then two dense layers (hidden + logits). Optional
BatchNorm after every convolution and the hidden dense layer, optional dropout after every
hidden activation. With a 64x64 input the encoder maps to 16x16xF and each decoder to 8x8xF.

Parameter tree (``T`` tasks)::

    encoder/conv1, encoder/bn1, encoder/conv2, encoder/bn2     (bn* only with use_batchnorm)
    decoder_t/conv, decoder_t/bn, decoder_t/dense1, decoder_t/bn_dense1, decoder_t/dense2

A shared layer named in ``task_specific_layers`` is replaced by one copy per task, at
``encoder/<name>_task<t>``; from the first such layer on, the encoder runs one stream per task and
later shared layers are applied to every stream with the same weights.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax

__all__ = ["LAST_SHARED_LAYER", "MultiDigitCNN", "cnn_shared_layer_names"]

LAST_SHARED_LAYER = "encoder/conv2"
"""Path of the last shared convolution of :class:`MultiDigitCNN` (CosReg's ``wrt``)."""

_BN_MOMENTUM = 0.9  # PyTorch's momentum 0.1
_BN_EPSILON = 1e-5


def cnn_shared_layer_names(use_batchnorm: bool = False) -> tuple[str, ...]:
    """Paths of :class:`MultiDigitCNN`'s shared layers, input to output.

    Args:
      use_batchnorm: whether the model has BatchNorm layers.

    Returns:
      E.g. ``("encoder/conv1", "encoder/bn1", "encoder/conv2", "encoder/bn2")``.
    """
    names = ("conv1", "bn1", "conv2", "bn2") if use_batchnorm else ("conv1", "conv2")
    return tuple(f"encoder/{n}" for n in names)


def _resolve_task_specific(names: Sequence[str], valid: Sequence[str], model: str) -> frozenset[str]:
    short_valid = [v.split("/", 1)[1] for v in valid]
    out = set()
    for name in names:
        short = name[len("encoder/"):] if name.startswith("encoder/") else name
        if short not in short_valid:
            raise ValueError(
                f"{model}: task_specific_layers names unknown shared layer {name!r}; "
                f"expected some of {short_valid}"
            )
        out.add(short)
    return frozenset(out)


def _apply_layer(
    streams: list[jax.Array],
    name: str,
    make: Callable[[str], Callable[[jax.Array], jax.Array]],
    task_specific: frozenset[str],
    num_tasks: int,
) -> list[jax.Array]:
    """Apply layer ``name`` to every stream: shared weights, or one copy per task."""
    if name in task_specific:
        if len(streams) == 1:
            streams = streams * num_tasks
        return [make(f"{name}_task{t}")(s) for t, s in enumerate(streams)]
    layer = make(name)
    return [layer(s) for s in streams]


class _Encoder(nn.Module):
    features: int
    kernel_size: int
    num_tasks: int
    dropout_rate: float
    use_batchnorm: bool
    task_specific: frozenset[str]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, ...]:
        k = (self.kernel_size, self.kernel_size)
        conv = lambda name: nn.Conv(self.features, k, strides=2, padding="SAME", use_bias=False, name=name)
        bn = lambda name: nn.BatchNorm(
            use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name=name
        )
        streams = [x]
        for i in (1, 2):
            streams = _apply_layer(streams, f"conv{i}", conv, self.task_specific, self.num_tasks)
            if self.use_batchnorm:
                streams = _apply_layer(streams, f"bn{i}", bn, self.task_specific, self.num_tasks)
            drop = nn.Dropout(self.dropout_rate, deterministic=not train)
            streams = [drop(nn.relu(s)) for s in streams]
        if len(streams) == 1:
            streams = streams * self.num_tasks
        return tuple(streams)


class _Decoder(nn.Module):
    features: int
    kernel_size: int
    dense_features: int
    num_classes: int
    dropout_rate: float
    use_batchnorm: bool

    @nn.compact
    def __call__(self, z: jax.Array, train: bool) -> jax.Array:
        drop = nn.Dropout(self.dropout_rate, deterministic=not train)
        bn = lambda name: nn.BatchNorm(
            use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name=name
        )
        k = (self.kernel_size, self.kernel_size)
        h = nn.Conv(self.features, k, strides=2, padding="SAME", use_bias=False, name="conv")(z)
        if self.use_batchnorm:
            h = bn("bn")(h)
        h = drop(nn.relu(h)).reshape(h.shape[0], -1)
        h = nn.Dense(self.dense_features, name="dense1")(h)
        if self.use_batchnorm:
            h = bn("bn_dense1")(h)
        h = drop(nn.relu(h))
        return nn.Dense(self.num_classes, name="dense2")(h)


class MultiDigitCNN(nn.Module):
    """Hard-parameter-sharing CNN for T classification tasks (CosReg, section 4).

    ``__call__(x, train) = decode(*encode(x, train), train)`` returns one logits array
    (N, num_classes[t]) per task. The representation ``z`` handed to the decoders is the output of
    the last shared block (conv2 -> BN -> ReLU -> dropout), shape (N, H/4, W/4, features).

    Attributes:
      features: filters of every convolution (20 in the paper).
      kernel_size: square kernel size of every convolution (not stated in the paper).
      dense_features: width of each decoder's hidden dense layer.
      num_classes: classes per task; the number of tasks is its length.
      dropout_rate: dropout after every hidden activation (0 disables; needs a "dropout" RNG).
      use_batchnorm: BatchNorm after every convolution and the hidden dense layer.
      task_specific_layers: shared layers (``"conv2"`` or ``"encoder/conv2"``) turned into one
        copy per task, stored at ``encoder/<name>_task<t>``.

    Example::

      model = MultiDigitCNN()
      variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 1)), train=False)
      left_logits, right_logits = model.apply(variables, images, train=False)
    """

    features: int = 20
    kernel_size: int = 3
    dense_features: int = 50
    num_classes: tuple[int, ...] = (5, 5)
    dropout_rate: float = 0.0
    use_batchnorm: bool = False
    task_specific_layers: tuple[str, ...] = ()

    def setup(self) -> None:
        if len(self.num_classes) < 1 or not all(int(c) >= 1 for c in self.num_classes):
            raise ValueError(f"MultiDigitCNN: num_classes must be positive ints, got {self.num_classes!r}")
        if self.features < 1 or self.kernel_size < 1 or self.dense_features < 1:
            raise ValueError(
                "MultiDigitCNN: features, kernel_size and dense_features must be >= 1, got "
                f"{self.features}, {self.kernel_size}, {self.dense_features}"
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"MultiDigitCNN: dropout_rate must be in [0, 1), got {self.dropout_rate}")
        specific = _resolve_task_specific(
            self.task_specific_layers, cnn_shared_layer_names(self.use_batchnorm), "MultiDigitCNN"
        )
        self.encoder = _Encoder(
            self.features, self.kernel_size, len(self.num_classes), self.dropout_rate,
            self.use_batchnorm, specific,
        )
        self.decoder = [
            _Decoder(self.features, self.kernel_size, self.dense_features, int(c), self.dropout_rate,
                     self.use_batchnorm)
            for c in self.num_classes
        ]

    @nn.nowrap
    def shared_layer_names(self) -> tuple[str, ...]:
        """Paths of the shared layers in order (see :func:`cnn_shared_layer_names`)."""
        return cnn_shared_layer_names(self.use_batchnorm)

    @nn.nowrap
    def last_shared_layer(self) -> str:
        """Path of the last convolution whose weights all tasks share (``"encoder/conv2"`` by default)."""
        specific = _resolve_task_specific(
            self.task_specific_layers, self.shared_layer_names(), "MultiDigitCNN"
        )
        for path in reversed(self.shared_layer_names()):
            name = path.split("/", 1)[1]
            if name.startswith("conv") and name not in specific:
                return path
        raise ValueError("MultiDigitCNN: every encoder convolution is task-specific; none is shared")

    def encode(self, x: jax.Array, train: bool = False) -> tuple[tuple[jax.Array, ...], None]:
        """Shared encoder.

        Args:
          x: images (N, H, W, C_in).
          train: BatchNorm batch statistics and dropout on.

        Returns:
          ``(zs, None)``: zs holds T representations (N, H/4, W/4, features), one per task
          stream (the same array T times when no layer is task-specific).
        """
        if x.ndim != 4:
            raise ValueError(f"MultiDigitCNN expects images (N, H, W, C), got shape {x.shape}")
        return self.encoder(x, train), None

    def decode(self, zs: Sequence[jax.Array], extras: None = None, train: bool = False) -> tuple[jax.Array, ...]:
        """Task decoders: ``logits_t = decoder_t(zs[t])``.

        Args:
          zs: T representations from :meth:`encode`.
          extras: unused (``None``), for the common ``decode(*encode(x))`` form.
          train: BatchNorm batch statistics and dropout on.

        Returns:
          T logits arrays of shape (N, num_classes[t]).
        """
        if len(zs) != len(self.num_classes):
            raise ValueError(f"MultiDigitCNN.decode: expected {len(self.num_classes)} representations, got {len(zs)}")
        return tuple(dec(z, train) for dec, z in zip(self.decoder, zs))

    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
        """Logits per task: ``decode(*encode(x, train), train)``."""
        zs, extras = self.encode(x, train)
        return self.decode(zs, extras, train)
