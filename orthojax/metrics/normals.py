"""Surface normals: angular error statistics and the CosReg paper's 1 - |cos|.

For a prediction p (any length) and a unit ground truth g, the per-pixel angle is
degrees(arccos(clip(<p / ||p||, g>, -1, 1))). Over the N valid pixels: angle_mean, angle_median,
within_t = #(angle < t) / N for t in :data:`NORMAL_THRESHOLDS` (strict, as MTAN) and
one_minus_abs_cos = mean(1 - |cos(p, g)|). A ground-truth normal is missing where it is all-zero
(``valid_normal_mask``; :data:`NORMAL_MASKS` names MTAN's channel-sum rule for comparisons).

Accumulator: ``init_normals() -> state``, ``update_normals(state, pred, gt, mask)`` (jitted) and
``finalize_normals(state, collector, aggregation) -> dict``. The exact pooled median needs every
valid angle of the test set: ``init_angle_collector`` / ``collect_angles`` / ``exact_median`` keep
them on the host, fed by ``normal_angles`` inside the jitted step.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from orthojax.metrics._checks import broadcast_mask, check_aggregation, check_same_shape

__all__ = [
    "NORMAL_MASKS",
    "NORMAL_THRESHOLDS",
    "AngleCollector",
    "NormalState",
    "collect_angles",
    "exact_median",
    "finalize_normals",
    "init_angle_collector",
    "init_normals",
    "normal_angles",
    "one_minus_abs_cos",
    "update_normals",
    "valid_normal_mask",
]

NORMAL_THRESHOLDS: tuple[float, float, float] = (11.25, 22.5, 30.0)
"""Angle thresholds in degrees for the "within" normal metrics (strict ``<``, as MTAN)."""

_WITHIN_KEYS = tuple(f"within_{t:g}" for t in NORMAL_THRESHOLDS)

NORMAL_MASKS: tuple[str, str] = ("all_zero", "mtan")
"""Rules for a missing ground-truth normal (``normal_mask`` argument of the normal metrics).

"all_zero" (default, the rule of the losses and the data readers): missing only when every component
is 0. "mtan": missing where the channel sum is 0, as in MTAN's (and Nash-MTL's, CAGrad's) evaluation
code; it also drops every valid normal whose components sum to 0, such as (1/sqrt2, -1/sqrt2, 0), so
its valid set is a subset of "all_zero"'s and the two give different numbers whenever such normals
occur. Kept only to compare with numbers computed by that code."""


def _check_normal_mask(normal_mask: Any) -> None:
    if not isinstance(normal_mask, str) or normal_mask not in NORMAL_MASKS:
        raise ValueError(f"normal_mask must be one of {NORMAL_MASKS}, got {normal_mask!r}")


def valid_normal_mask(gt: Any, normal_mask: str = "all_zero") -> jax.Array:
    """Where a ground-truth normal (channels last) is valid, shape ``gt.shape[:-1]``; jittable.

    "all_zero" (default): valid unless all components are 0. "mtan": valid where the channel sum is
    non-zero (MTAN's evaluation mask; it also drops valid normals whose components sum to 0). See
    ``NORMAL_MASKS``.
    """
    _check_normal_mask(normal_mask)
    g = jnp.asarray(gt)
    if g.ndim < 1:
        raise ValueError(f"gt must have a channel axis last, got shape {g.shape}")
    if normal_mask == "mtan":
        return g.sum(axis=-1) != 0
    return jnp.any(g != 0, axis=-1)


def _unit(x: jax.Array) -> jax.Array:
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.maximum(norm, jnp.finfo(x.dtype).tiny)


def _normal_inputs(pred: Any, gt: Any, mask: Any,
                   normal_mask: str = "all_zero") -> tuple[jax.Array, jax.Array, jax.Array]:
    _check_normal_mask(normal_mask)
    p, g = jnp.asarray(pred), jnp.asarray(gt)
    check_same_shape("pred", p, "gt", g)
    if p.ndim < 1 or not jnp.issubdtype(p.dtype, jnp.floating):
        raise ValueError(f"pred must be a float array with a channel axis last, got {p.dtype}{p.shape}")
    valid = valid_normal_mask(g, normal_mask) & broadcast_mask(mask, g.shape[:-1])
    return p, g, valid


@functools.partial(jax.jit, static_argnames="normal_mask")
def normal_angles(pred: Any, gt: Any, mask: Any = None,
                  normal_mask: str = "all_zero") -> tuple[jax.Array, jax.Array]:
    """Per-pixel angular error in degrees and the validity mask; jittable.

    angle = degrees(arccos(clip(<pred / ||pred||, gt>, -1, 1))), gt used as given (unit on disk).
    Valid where gt is not all-zero (``valid_normal_mask``) and ``mask`` (if given) is True. A zero
    prediction has angle 90 degrees.

    Args:
      pred: predicted normals (..., 3), channels last; need not be unit length.
      gt: ground-truth normals, same shape; all-zero = invalid.
      mask: optional boolean mask broadcastable to ``gt.shape[:-1]``.
      normal_mask: "all_zero" (default) or "mtan" (MTAN's "channel sum != 0", which also drops valid
        normals whose components sum to 0; for comparison with MTAN-family code only). Static.

    Returns:
      (angles, valid), both of shape ``gt.shape[:-1]``.
    """
    p, g, valid = _normal_inputs(pred, gt, mask, normal_mask)
    cos = jnp.clip(jnp.sum(_unit(p) * g, axis=-1), -1.0, 1.0)
    return jnp.degrees(jnp.arccos(cos)), valid


@functools.partial(jax.jit, static_argnames="normal_mask")
def one_minus_abs_cos(pred: Any, gt: Any, mask: Any = None, normal_mask: str = "all_zero") -> jax.Array:
    """The CosReg paper's normal metric: mean over valid pixels of 1 - |cos(pred, gt)|; jittable.

    Both vectors are unit-normalised; validity (and ``normal_mask``) as in ``normal_angles``. NaN if
    no pixel is valid.
    """
    p, g, valid = _normal_inputs(pred, gt, mask, normal_mask)
    d = 1.0 - jnp.abs(jnp.clip(jnp.sum(_unit(p) * _unit(g), axis=-1), -1.0, 1.0))
    return jnp.where(valid, d, 0).sum() / valid.sum()


def _masked_median(x: jax.Array, valid: jax.Array) -> jax.Array:
    """Median of x[valid] (jittable; 0 when nothing is valid)."""
    n = valid.sum()
    s = jnp.sort(jnp.where(valid, x, jnp.inf).reshape(-1))
    lo = s[jnp.maximum((n - 1) // 2, 0)]
    hi = s[jnp.maximum(n // 2, 0)]
    return jnp.where(n > 0, 0.5 * (lo + hi), 0)


class NormalState(NamedTuple):
    """Pooled sums and sums of per-batch statistics of normal errors."""

    angle_sum: jax.Array  # sum of angles (degrees)
    within: jax.Array  # (3,) int32 counts of angle < NORMAL_THRESHOLDS
    cos_sum: jax.Array  # sum of 1 - |cos|
    count: jax.Array  # valid pixels (int32)
    batch_sums: jax.Array  # (6,) sums over batches of [mean, median, 3 fractions, 1-|cos|]
    num_batches: jax.Array  # batches with at least one valid pixel


def init_normals(dtype: Any = jnp.float32) -> NormalState:
    """Empty normal accumulator with float sums of ``dtype``."""
    z = jnp.zeros((), dtype)
    n = jnp.zeros((), jnp.int32)
    return NormalState(z, jnp.zeros(len(NORMAL_THRESHOLDS), jnp.int32), z, n,
                       jnp.zeros(6, dtype), n)


@functools.partial(jax.jit, static_argnames="normal_mask")
def update_normals(state: NormalState, pred: Any, gt: Any, mask: Any = None,
                   normal_mask: str = "all_zero") -> NormalState:
    """Add one batch (see ``normal_angles`` for validity and ``normal_mask``); jittable.

    The per-batch median (for aggregation="batch") is exact within the batch. The pooled median
    needs the host-side ``collect_angles``, fed by ``normal_angles`` with the same ``normal_mask``.
    """
    angles, valid = normal_angles(pred, gt, mask, normal_mask)
    p, g, _ = _normal_inputs(pred, gt, mask, normal_mask)
    dt = state.angle_sum.dtype
    d = 1.0 - jnp.abs(jnp.clip(jnp.sum(_unit(p) * _unit(g), axis=-1), -1.0, 1.0))
    count = valid.sum(dtype=jnp.int32)
    angle_sum = jnp.where(valid, angles, 0).sum().astype(dt)
    cos_sum = jnp.where(valid, d, 0).sum().astype(dt)
    thr = jnp.asarray(NORMAL_THRESHOLDS, angles.dtype)
    within = ((angles[..., None] < thr) & valid[..., None]).reshape(-1, len(NORMAL_THRESHOLDS))
    within = within.sum(axis=0, dtype=jnp.int32)
    has = count > 0
    n = jnp.where(has, count, 1).astype(dt)
    batch = jnp.concatenate([
        (angle_sum / n)[None],
        _masked_median(angles, valid).astype(dt)[None],
        within.astype(dt) / n,
        (cos_sum / n)[None],
    ])
    return NormalState(
        angle_sum=state.angle_sum + angle_sum,
        within=state.within + within,
        cos_sum=state.cos_sum + cos_sum,
        count=state.count + count,
        batch_sums=state.batch_sums + has.astype(dt) * batch,
        num_batches=state.num_batches + has.astype(jnp.int32),
    )


class AngleCollector(NamedTuple):
    """Host-side store of the valid angles of each batch (float arrays, one per batch)."""

    chunks: tuple[np.ndarray, ...]


def init_angle_collector() -> AngleCollector:
    """Empty angle collector."""
    return AngleCollector(())


def collect_angles(collector: AngleCollector, angles: Any, valid: Any) -> AngleCollector:
    """Append the valid angles of one batch (host side, not jittable).

    Memory: one float per valid pixel of the test set (about 290 MB for the 654 NYUv2 test images at
    288 x 384 in float32). This is what keeps the pooled median exact.

    Args:
      collector: the store.
      angles, valid: the outputs of ``normal_angles`` for the batch (with the ``normal_mask`` given
        to ``update_normals``, so that the counts agree).
    """
    a, v = np.asarray(angles), np.asarray(valid)
    if a.shape != v.shape:
        raise ValueError(f"angles and valid must have the same shape, got {a.shape} and {v.shape}")
    if v.dtype != np.bool_:
        raise ValueError(f"valid must be boolean, got dtype {v.dtype}")
    return AngleCollector(collector.chunks + (a[v].copy(),))


def exact_median(collector: AngleCollector) -> float:
    """Median of all collected angles; equals ``np.median`` over their concatenation."""
    if not collector.chunks or sum(c.size for c in collector.chunks) == 0:
        raise ValueError("collector holds no angle")
    return float(np.median(np.concatenate(collector.chunks)))


def finalize_normals(state: NormalState, collector: AngleCollector | None = None,
                     aggregation: str = "pooled") -> dict[str, float]:
    """Normal metrics.

    pooled: over all N valid pixels, angle_mean = sum(angle) / N, within_t = #(angle < t) / N,
    one_minus_abs_cos = sum(1 - |cos|) / N and angle_median = the exact median (only when
    ``collector`` is given, since it needs every angle). batch: the mean over batches of the
    per-batch values, the median included.

    Returns:
      {"angle_mean", "angle_median", "within_11.25", "within_22.5", "within_30",
       "one_minus_abs_cos"} as floats ("angle_median" omitted for pooled without a collector).
    """
    check_aggregation(aggregation)
    if aggregation == "batch":
        b = int(state.num_batches)
        if b == 0:
            raise ValueError("normal accumulator holds no batch with a valid pixel")
        v = np.asarray(state.batch_sums, np.float64) / b
        out = {"angle_mean": float(v[0]), "angle_median": float(v[1])}
        out.update({k: float(x) for k, x in zip(_WITHIN_KEYS, v[2:5])})
        out["one_minus_abs_cos"] = float(v[5])
        return out
    n = int(state.count)
    if n == 0:
        raise ValueError("normal accumulator holds no valid pixel")
    out = {"angle_mean": float(state.angle_sum) / n}
    if collector is not None:
        m = sum(c.size for c in collector.chunks)
        if m != n:
            raise ValueError(f"collector holds {m} angles but the state counted {n} valid pixels")
        out["angle_median"] = exact_median(collector)
    within = np.asarray(state.within, np.float64) / n
    out.update({k: float(x) for k, x in zip(_WITHIN_KEYS, within)})
    out["one_minus_abs_cos"] = float(state.cos_sum) / n
    return out
