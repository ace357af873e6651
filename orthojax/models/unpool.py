"""Max-pooling that keeps its argmax indices, and the matching max-unpooling.

SegNet's decoders upsample with the positions of the encoder's maxima (Badrinarayanan et al., 2017).
Flax has no ``MaxUnpool``; these two pure functions provide it for channels-last arrays.

Index convention (the same as PyTorch's ``MaxPool2d(return_indices=True)``): for an input of
spatial size (H, W), the index of the element at row h, column w is ``h * W + w``, one index per
(batch, pooled row, pooled column, channel).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

__all__ = ["max_pool_with_indices", "max_unpool", "pooled_size"]


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise ValueError(f"{what} must be a positive int or a pair of positive ints, got {value!r}")
    return pair  # type: ignore[return-value]


def pooled_size(size: int, window: int, stride: int, ceil_mode: bool = False) -> int:
    """Output length of a 1-D max-pool without padding (PyTorch's rule).

    ``floor((size - window) / stride) + 1``, or with ``ceil_mode`` the ceiling, less one when the
    last window would start outside the input.

    Args:
      size: input length.
      window: window length.
      stride: step between windows.
      ceil_mode: keep a last, partial window.

    Returns:
      The number of windows (at least 0).
    """
    if size < window and not ceil_mode:
        return 0
    if ceil_mode:
        out = -(-max(size - window, 0) // stride) + 1
        if (out - 1) * stride >= size:
            out -= 1
        return out
    return (size - window) // stride + 1


def max_pool_with_indices(
    x: jax.Array,
    window: int | Sequence[int] = 2,
    strides: int | Sequence[int] | None = None,
    ceil_mode: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """2-D max-pooling over (N, H, W, C) that also returns where each maximum came from.

    ``y[n, i, j, c] = max_{a < kh, b < kw} x[n, i*sh + a, j*sw + b, c]`` and
    ``indices[n, i, j, c] = (i*sh + a*) * W + (j*sw + b*)`` for the first maximising (a*, b*) in
    row-major window order. Windows are unpadded; with ``ceil_mode`` a last partial window is kept
    (its missing cells never win). The gradient flows to the maximising element only.

    Args:
      x: array of shape (N, H, W, C).
      window: window size (kh, kw) or one int.
      strides: steps (sh, sw); defaults to the window (non-overlapping windows).
      ceil_mode: keep partial windows at the bottom and right edges (odd sizes lose no pixel).

    Returns:
      ``(y, indices)``, both of shape (N, Ho, Wo, C); indices are int32 flat positions in (H, W).
    """
    if x.ndim != 4:
        raise ValueError(f"max_pool_with_indices expects (N, H, W, C), got shape {x.shape}")
    kh, kw = _pair(window, "window")
    sh, sw = _pair(window if strides is None else strides, "strides")
    n, h, w, c = x.shape
    ho, wo = pooled_size(h, kh, sh, ceil_mode), pooled_size(w, kw, sw, ceil_mode)
    if ho < 1 or wo < 1:
        raise ValueError(
            f"max_pool_with_indices: input spatial size {(h, w)} is smaller than the window {(kh, kw)}"
        )
    # Crop or pad (bottom/right, with the lowest value) to exactly the cells the windows cover.
    need_h, need_w = (ho - 1) * sh + kh, (wo - 1) * sw + kw
    x = x[:, :need_h, :need_w]
    if need_h > h or need_w > w:
        low = -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
        x = jnp.pad(x, ((0, 0), (0, need_h - x.shape[1]), (0, need_w - x.shape[2]), (0, 0)), constant_values=low)
    if (kh, kw) == (sh, sw):  # non-overlapping: a reshape (cheap to compile and run)
        blocks = x.reshape(n, ho, kh, wo, kw, c).transpose(0, 1, 3, 5, 2, 4).reshape(n, ho, wo, c, kh * kw)
    else:
        cells = [x[:, a : a + (ho - 1) * sh + 1 : sh, b : b + (wo - 1) * sw + 1 : sw, :]
                 for a in range(kh) for b in range(kw)]
        blocks = jnp.stack(cells, axis=-1)  # (N, Ho, Wo, C, kh*kw), row-major window order
    arg = jnp.argmax(blocks, axis=-1)
    chosen = arg[..., None] == jnp.arange(kh * kw)
    y = jnp.sum(jnp.where(chosen, blocks, jnp.zeros((), x.dtype)), axis=-1)
    rows = (jnp.arange(ho) * sh)[None, :, None, None] + arg // kw
    cols = (jnp.arange(wo) * sw)[None, None, :, None] + arg % kw
    return y, (rows * w + cols).astype(jnp.int32)


def max_unpool(
    y: jax.Array,
    indices: jax.Array,
    output_size: Sequence[int],
    window: int | Sequence[int] | None = None,
) -> jax.Array:
    """Inverse placement of :func:`max_pool_with_indices`: a zero map holding ``y`` at ``indices``.

    ``out[n, h, w, c] = y[n, i, j, c]`` where ``indices[n, i, j, c] = h * W + w``, and 0 elsewhere
    (PyTorch's ``MaxUnpool2d`` with ``output_size``). Out-of-range indices are dropped.

    Given the ``window`` of a non-overlapping pooling (stride == window), the map is computed without a
    scatter, ``out[n, h, w, c] = y[n, h // kh, w // kw, c] * [indices[n, h // kh, w // kw, c] = h W + w]``,
    which is faster to compile and run; every index must then lie in its own window (as the pooling
    makes it). Without ``window`` any indices are accepted (a scatter).

    Args:
      y: pooled values, shape (N, Ho, Wo, C).
      indices: int flat positions from :func:`max_pool_with_indices`, the same shape as ``y``.
      output_size: the spatial size (H, W) of the array that was pooled.
      window: the pooling window (kh, kw) when windows did not overlap, or None.

    Returns:
      Array of shape (N, H, W, C) and the dtype of ``y``.
    """
    if y.ndim != 4 or indices.shape != y.shape:
        raise ValueError(
            f"max_unpool expects values and indices of the same (N, Ho, Wo, C) shape, "
            f"got {y.shape} and {indices.shape}"
        )
    h, w = _pair(tuple(output_size), "output_size")
    n, ho, wo, c = y.shape
    if ho > h or wo > w:
        raise ValueError(f"max_unpool: output_size {(h, w)} is smaller than the pooled size {(ho, wo)}")
    if window is None:
        flat_idx = indices.reshape(n, ho * wo, c)
        batch = jnp.arange(n)[:, None, None]
        chan = jnp.arange(c)[None, None, :]
        out = jnp.zeros((n, h * w, c), y.dtype)
        out = out.at[batch, flat_idx, chan].set(y.reshape(n, ho * wo, c), mode="drop")
        return out.reshape(n, h, w, c)
    kh, kw = _pair(window, "window")

    def spread(a: jax.Array, fill: int) -> jax.Array:
        a = jnp.broadcast_to(a[:, :, None, :, None, :], (n, ho, kh, wo, kw, c)).reshape(n, ho * kh, wo * kw, c)
        a = a[:, :h, :w]
        return jnp.pad(a, ((0, 0), (0, h - a.shape[1]), (0, w - a.shape[2]), (0, 0)), constant_values=fill)

    position = (jnp.arange(h)[:, None] * w + jnp.arange(w)[None, :])[None, :, :, None]
    return jnp.where(spread(indices, -1) == position, spread(y, 0), jnp.zeros((), y.dtype))
