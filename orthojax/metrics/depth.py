"""Depth estimation: absolute and relative error and RMSE over valid pixels.

With e = pred - gt over the N valid pixels (``gt != 0``; 0 marks a missing measurement):
abs_err = sum|e| / N, rel_err = sum(|e| / gt) / N, rmse = sqrt(sum e^2 / N). "pooled" (default,
LibMTL) sums over every valid pixel of the test set; "batch" (MTAN, Nash-MTL, CAGrad) averages the
per-batch values over the batches that have a valid pixel.

Accumulator: ``init_depth() -> state``, ``update_depth(state, pred, gt, mask)`` (jitted) and
``finalize_depth(state, aggregation) -> dict`` (host side, float64).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from orthojax.metrics._checks import broadcast_mask, check_aggregation, check_same_shape

__all__ = [
    "DepthState",
    "DepthStatistics",
    "depth_statistics",
    "finalize_depth",
    "init_depth",
    "update_depth",
    "valid_depth_mask",
]


def valid_depth_mask(gt: Any) -> jax.Array:
    """Where a ground-truth depth is valid: ``gt != 0`` (0 marks a missing measurement); jittable.

    Elementwise, so (..., 1) depth gives a (..., 1) mask. The losses of ``experiments.dense`` and
    ``depth_statistics`` use this rule.
    """
    return jnp.asarray(gt) != 0


class DepthStatistics(NamedTuple):
    """Sufficient statistics of depth errors e = pred - gt over valid pixels."""

    abs_sum: jax.Array  # sum |e|
    rel_sum: jax.Array  # sum |e| / gt
    sq_sum: jax.Array  # sum e^2
    count: jax.Array  # number of valid pixels (int32)


@jax.jit
def depth_statistics(pred: Any, gt: Any, mask: Any = None) -> DepthStatistics:
    """Sums of |e|, |e|/gt and e^2 and the valid count for one batch; jittable.

    A pixel is valid where ``gt != 0`` (``valid_depth_mask``) and, if given, ``mask`` is True (so
    rel error is always defined). For one-channel depth, ``gt != 0`` is MTAN's "channel sum != 0".

    Args:
      pred: predicted depth, any shape, e.g. (B, H, W, 1).
      gt: ground-truth depth, same shape; 0 marks a missing measurement.
      mask: optional boolean array broadcastable to ``gt``'s shape.

    Returns:
      DepthStatistics of scalars.
    """
    p, g = jnp.asarray(pred), jnp.asarray(gt)
    check_same_shape("pred", p, "gt", g)
    valid = valid_depth_mask(g) & broadcast_mask(mask, g.shape)
    err = jnp.where(valid, p - g, 0)
    abs_err = jnp.abs(err)
    return DepthStatistics(
        abs_sum=abs_err.sum(),
        rel_sum=jnp.where(valid, abs_err / jnp.where(valid, g, 1), 0).sum(),
        sq_sum=(err * err).sum(),
        count=valid.sum(dtype=jnp.int32),
    )


class DepthState(NamedTuple):
    """Pooled sums and sums of per-batch statistics."""

    abs_sum: jax.Array
    rel_sum: jax.Array
    sq_sum: jax.Array
    count: jax.Array
    batch_abs: jax.Array  # sum over batches of the batch mean |e|
    batch_rel: jax.Array  # ... of the batch mean |e| / gt
    batch_rmse: jax.Array  # ... of the batch sqrt(mean e^2)
    num_batches: jax.Array  # batches with at least one valid pixel


def init_depth(dtype: Any = jnp.float32) -> DepthState:
    """Empty depth accumulator with float sums of ``dtype``."""
    z = jnp.zeros((), dtype)
    n = jnp.zeros((), jnp.int32)
    return DepthState(z, z, z, n, z, z, z, n)


@jax.jit
def update_depth(state: DepthState, pred: Any, gt: Any, mask: Any = None) -> DepthState:
    """Add one batch (see ``depth_statistics`` for validity); jittable."""
    s = depth_statistics(pred, gt, mask)
    dt = state.abs_sum.dtype
    has = s.count > 0
    n = jnp.where(has, s.count, 1).astype(dt)
    one = has.astype(dt)
    return DepthState(
        abs_sum=state.abs_sum + s.abs_sum.astype(dt),
        rel_sum=state.rel_sum + s.rel_sum.astype(dt),
        sq_sum=state.sq_sum + s.sq_sum.astype(dt),
        count=state.count + s.count,
        batch_abs=state.batch_abs + one * s.abs_sum.astype(dt) / n,
        batch_rel=state.batch_rel + one * s.rel_sum.astype(dt) / n,
        batch_rmse=state.batch_rmse + one * jnp.sqrt(s.sq_sum.astype(dt) / n),
        num_batches=state.num_batches + has.astype(jnp.int32),
    )


def finalize_depth(state: DepthState, aggregation: str = "pooled") -> dict[str, float]:
    """Depth errors.

    pooled: abs_err = sum|e| / N, rel_err = sum(|e|/gt) / N, rmse = sqrt(sum e^2 / N) over all N
    valid pixels of the test set. batch: the mean over batches of the same per-batch quantities.

    Returns:
      {"abs_err", "rel_err", "rmse"} as floats.
    """
    check_aggregation(aggregation)
    if aggregation == "pooled":
        n = int(state.count)
        if n == 0:
            raise ValueError("depth accumulator holds no valid pixel")
        return {
            "abs_err": float(state.abs_sum) / n,
            "rel_err": float(state.rel_sum) / n,
            "rmse": math.sqrt(float(state.sq_sum) / n),
        }
    b = int(state.num_batches)
    if b == 0:
        raise ValueError("depth accumulator holds no batch with a valid pixel")
    return {
        "abs_err": float(state.batch_abs) / b,
        "rel_err": float(state.batch_rel) / b,
        "rmse": float(state.batch_rmse) / b,
    }
