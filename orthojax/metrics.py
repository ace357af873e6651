"""The field's multi-task metrics, accumulated exactly over a whole test set.

Segmentation (mIoU, pixel accuracy), depth (abs / rel error, RMSE), surface normals (angle mean,
median, fraction within 11.25 / 22.5 / 30 degrees, and the CosReg paper's 1 - |cos|),
classification accuracy with the harmonic mean of task accuracies, and the relative-improvement
summaries Delta_m (Nash-MTL, CAGrad) and Delta_p (LibMTL).

Every metric has a functional accumulator: ``init_*() -> state``, ``update_*(state, ...) -> state``
(pure, wrapped in ``jax.jit``, usable inside a jitted eval step; states are NamedTuples of arrays)
and ``finalize_*(state) -> dict`` (host side, float64). The one exception is the exact pooled median of normal angles, which needs every valid
angle of the test set: ``init_angle_collector`` / ``collect_angles`` / ``exact_median`` keep them on
the host (``normal_angles`` computes them inside the jitted step).

Aggregation: "pooled" (LibMTL; default) pools all valid pixels of the test set, so it does not
depend on the batch size. "batch" (MTAN, Nash-MTL, CAGrad) computes the statistic on each test batch
and averages over batches; batches without a valid pixel are skipped. Which epoch to report is the
caller's choice: the MTAN family reports the mean over the last 10 epochs, LibMTL the best epoch.

Valid pixels (one rule, shared with the dense-task losses of ``experiments.dense`` and the data
readers): a depth pixel is valid where ``gt != 0``; a surface normal is valid unless it is all-zero
(``valid_depth_mask``, ``valid_normal_mask``). MTAN's evaluation code keeps a normal where its
channel sum is non-zero instead, which also drops valid normals whose components sum to 0, e.g.
(1/sqrt2, -1/sqrt2, 0); pass ``normal_mask="mtan"`` to the normal functions to reproduce it.

Sums are accumulated in the state's float dtype (float32 unless ``jax_enable_x64``) and counts in
int32 (exact up to 2**31 - 1 pixels, e.g. 10**4 NYUv2 test sets at 288 x 384).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

NORMAL_THRESHOLDS: tuple[float, float, float] = (11.25, 22.5, 30.0)
"""Angle thresholds in degrees for the "within" normal metrics (strict ``<``, as MTAN)."""

_WITHIN_KEYS = tuple(f"within_{t:g}" for t in NORMAL_THRESHOLDS)
_AGGREGATIONS = ("pooled", "batch")

NORMAL_MASKS: tuple[str, str] = ("all_zero", "mtan")
"""Rules for a missing ground-truth normal (``normal_mask`` argument of the normal metrics).

"all_zero" (default, the rule of the losses and the data readers): missing only when every component
is 0. "mtan": missing where the channel sum is 0, as in MTAN's (and Nash-MTL's, CAGrad's) evaluation
code; it also drops every valid normal whose components sum to 0, such as (1/sqrt2, -1/sqrt2, 0), so
its valid set is a subset of "all_zero"'s and the two give different numbers whenever such normals
occur. Kept only to compare with numbers computed by that code."""

# Published single-task SegNet baseline on NYUv2 (MTAN preprocessing), used by Nash-MTL and CAGrad
# for Delta_m. Names match the keys returned by the finalize functions of this module.
SEGNET_NYUV2_STL_BY_TASK: dict[str, dict[str, float]] = {
    "segmentation": {"miou": 0.3830, "pixel_acc": 0.6376},
    "depth": {"abs_err": 0.6754, "rel_err": 0.2780},
    "normal": {
        "angle_mean": 25.01,
        "angle_median": 19.21,
        "within_11.25": 0.3014,
        "within_22.5": 0.5720,
        "within_30": 0.6915,
    },
}
NYUV2_HIGHER_IS_BETTER_BY_TASK: dict[str, dict[str, bool]] = {
    "segmentation": {"miou": True, "pixel_acc": True},
    "depth": {"abs_err": False, "rel_err": False},
    "normal": {
        "angle_mean": False,
        "angle_median": False,
        "within_11.25": True,
        "within_22.5": True,
        "within_30": True,
    },
}
SEGNET_NYUV2_STL: dict[str, float] = {
    k: v for task in SEGNET_NYUV2_STL_BY_TASK.values() for k, v in task.items()
}
NYUV2_HIGHER_IS_BETTER: dict[str, bool] = {
    k: v for task in NYUV2_HIGHER_IS_BETTER_BY_TASK.values() for k, v in task.items()
}

# The CosReg paper's NYUv2 metrics (Table 2, all lower is better) and its single-task row.
PAPER_NYUV2_HIGHER_IS_BETTER: dict[str, bool] = {
    "one_minus_miou": False,
    "rmse": False,
    "one_minus_abs_cos": False,
}
PAPER_NYUV2_SINGLE_TASK: dict[str, float] = {
    "one_minus_miou": 0.663,
    "rmse": 0.775,
    "one_minus_abs_cos": 0.051,
}


# ----------------------------------------------------------------------------------- helpers


def _check_aggregation(aggregation: str) -> None:
    if aggregation not in _AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {_AGGREGATIONS}, got {aggregation!r}")


def _check_same_shape(name_a: str, a: jax.Array, name_b: str, b: jax.Array) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {a.shape} and {b.shape}")


def _valid_mask(mask: Any, shape: tuple[int, ...], name: str = "mask") -> jax.Array:
    """Broadcast an optional boolean mask to ``shape`` (all True when ``mask`` is None)."""
    if mask is None:
        return jnp.ones(shape, dtype=bool)
    m = jnp.asarray(mask)
    if m.dtype != jnp.bool_:
        raise ValueError(f"{name} must be boolean, got dtype {m.dtype}")
    try:
        return jnp.broadcast_to(m, shape)
    except ValueError as e:
        raise ValueError(f"{name} of shape {m.shape} does not broadcast to {shape}") from e


def _check_normal_mask(normal_mask: Any) -> None:
    if not isinstance(normal_mask, str) or normal_mask not in NORMAL_MASKS:
        raise ValueError(f"normal_mask must be one of {NORMAL_MASKS}, got {normal_mask!r}")


def valid_depth_mask(gt: Any) -> jax.Array:
    """Where a ground-truth depth is valid: ``gt != 0`` (0 marks a missing measurement); jittable.

    Elementwise, so (..., 1) depth gives a (..., 1) mask. The losses of ``experiments.dense`` and
    ``depth_statistics`` use this rule.
    """
    return jnp.asarray(gt) != 0


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


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den where den > 0, else 0 (keeps jitted accumulators finite)."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), 0)


def _scores_or_labels(pred: Any, target_shape: tuple[int, ...], num_classes: int | None,
                      name: str) -> jax.Array:
    """Integer labels from labels (same shape as the target) or scores (target shape + (K,))."""
    p = jnp.asarray(pred)
    if p.shape == target_shape:
        if not jnp.issubdtype(p.dtype, jnp.integer):
            raise ValueError(f"{name} with the target's shape must hold integer labels, got {p.dtype}")
        return p
    if p.shape[:-1] == target_shape and (num_classes is None or p.shape[-1] == num_classes):
        return jnp.argmax(p, axis=-1)
    want = "" if num_classes is None else f" with K={num_classes}"
    raise ValueError(
        f"{name} must be labels of shape {target_shape} or scores of shape {target_shape} + (K,)"
        f"{want}, got {p.shape}"
    )


# ------------------------------------------------------------------------------ segmentation


@functools.partial(jax.jit, static_argnames="num_classes")
def confusion_matrix(pred_labels: Any, target: Any, num_classes: int,
                     ignore_index: int = -1) -> jax.Array:
    """Confusion matrix of integer label maps; jittable (``num_classes`` static).

    ``M[i, j]`` = number of pixels with target ``i`` predicted as ``j``. Pixels whose target equals
    ``ignore_index`` or lies outside ``[0, C)`` are excluded, as are predictions outside ``[0, C)``
    (``argmax`` never produces them).

    Args:
      pred_labels: integer predictions, any shape.
      target: integer targets, same shape.
      num_classes: C > 0.
      ignore_index: target value to exclude.

    Returns:
      (C, C) int32 counts.
    """
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    p, t = jnp.asarray(pred_labels), jnp.asarray(target)
    _check_same_shape("pred_labels", p, "target", t)
    for name, x in (("pred_labels", p), ("target", t)):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"{name} must have an integer dtype, got {x.dtype}")
    c = int(num_classes)
    p, t = p.reshape(-1).astype(jnp.int32), t.reshape(-1).astype(jnp.int32)
    valid = (t != ignore_index) & (t >= 0) & (t < c) & (p >= 0) & (p < c)
    index = jnp.where(valid, t * c + p, 0)
    counts = jnp.zeros(c * c, jnp.int32).at[index].add(valid.astype(jnp.int32))
    return counts.reshape(c, c)


def segmentation_scores(confusion: Any) -> dict[str, Any]:
    """mIoU, pixel accuracy and per-class IoU from a confusion matrix (host side, float64).

    IoU_c = M_cc / (sum_j M_cj + sum_i M_ic - M_cc); pixel_acc = trace(M) / sum(M).
    mIoU averages IoU over the classes with a non-zero denominator, i.e. classes present in the
    target or the prediction; a class absent from both has IoU NaN and is left out of the mean.
    (MTAN and LibMTL take a plain mean, which equals this whenever every class occurs and is NaN
    otherwise.)

    Args:
      confusion: (C, C) non-negative counts, rows = target, columns = prediction.

    Returns:
      {"miou": float, "pixel_acc": float, "iou": list of C floats (NaN for absent classes)}.
    """
    h = np.asarray(confusion, dtype=np.float64)
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise ValueError(f"confusion must be a square (C, C) matrix, got shape {h.shape}")
    if np.any(h < 0) or not np.all(np.isfinite(h)):
        raise ValueError("confusion must hold finite non-negative counts")
    total = h.sum()
    if total == 0:
        raise ValueError("confusion is empty: no valid pixel was accumulated")
    diag = np.diag(h)
    denom = h.sum(axis=0) + h.sum(axis=1) - diag
    present = denom > 0
    iou = np.full(h.shape[0], np.nan)
    iou[present] = diag[present] / denom[present]
    return {
        "miou": float(iou[present].mean()),
        "pixel_acc": float(diag.sum() / total),
        "iou": [float(v) for v in iou],
    }


class SegmentationState(NamedTuple):
    """Running confusion matrix, (C, C) int32."""

    confusion: jax.Array


def init_segmentation(num_classes: int) -> SegmentationState:
    """Empty segmentation accumulator for ``num_classes`` classes."""
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return SegmentationState(jnp.zeros((num_classes, num_classes), jnp.int32))


@jax.jit
def update_segmentation(state: SegmentationState, pred: Any, target: Any,
                        ignore_index: int = -1) -> SegmentationState:
    """Add one batch; jittable.

    Args:
      state: accumulator.
      pred: integer labels with the target's shape, or class scores of shape target.shape + (C,)
        (argmax over the last axis).
      target: integer labels, ``ignore_index`` for void.
      ignore_index: target value to exclude.

    Returns:
      The updated state.
    """
    c = state.confusion.shape[0]
    t = jnp.asarray(target)
    labels = _scores_or_labels(pred, t.shape, c, "pred")
    return SegmentationState(state.confusion + confusion_matrix(labels, t, c, ignore_index))


def finalize_segmentation(state: SegmentationState) -> dict[str, Any]:
    """Scores of the accumulated confusion matrix; see ``segmentation_scores``."""
    return segmentation_scores(state.confusion)


# ------------------------------------------------------------------------------------- depth


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
    _check_same_shape("pred", p, "gt", g)
    valid = valid_depth_mask(g) & _valid_mask(mask, g.shape)
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
    _check_aggregation(aggregation)
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


# ----------------------------------------------------------------------------------- normals


def _unit(x: jax.Array) -> jax.Array:
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.maximum(norm, jnp.finfo(x.dtype).tiny)


def _normal_inputs(pred: Any, gt: Any, mask: Any,
                   normal_mask: str = "all_zero") -> tuple[jax.Array, jax.Array, jax.Array]:
    _check_normal_mask(normal_mask)
    p, g = jnp.asarray(pred), jnp.asarray(gt)
    _check_same_shape("pred", p, "gt", g)
    if p.ndim < 1 or not jnp.issubdtype(p.dtype, jnp.floating):
        raise ValueError(f"pred must be a float array with a channel axis last, got {p.dtype}{p.shape}")
    valid = valid_normal_mask(g, normal_mask) & _valid_mask(mask, g.shape[:-1])
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
    _check_aggregation(aggregation)
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


# ---------------------------------------------------------------------------- classification


@jax.jit
def accuracy(pred: Any, labels: Any) -> jax.Array:
    """Fraction of correct predictions; jittable.

    Args:
      pred: integer labels of ``labels``' shape, or scores of shape labels.shape + (K,).
      labels: integer targets.
    """
    y = jnp.asarray(labels)
    p = _scores_or_labels(pred, y.shape, None, "pred")
    if y.size == 0:
        raise ValueError("labels is empty")
    return jnp.mean(p == y)


def harmonic_mean(values: Any) -> float:
    """Harmonic mean T / sum_t (1 / a_t) of non-negative values (0 if any value is 0).

    The MultiDigitMNIST score is the harmonic mean of the task accuracies.
    """
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size == 0 or np.any(v < 0) or not np.all(np.isfinite(v)):
        raise ValueError(f"values must be a non-empty sequence of finite non-negative numbers, got {values!r}")
    if np.any(v == 0):
        return 0.0
    return float(v.size / np.sum(1.0 / v))


class ClassificationState(NamedTuple):
    """Correct predictions per task and examples seen (same for every task)."""

    correct: jax.Array  # (T,) int32
    count: jax.Array  # int32


def init_classification(num_tasks: int) -> ClassificationState:
    """Empty accumulator for ``num_tasks`` classification tasks."""
    if not isinstance(num_tasks, (int, np.integer)) or isinstance(num_tasks, bool) or num_tasks < 1:
        raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}")
    return ClassificationState(jnp.zeros(num_tasks, jnp.int32), jnp.zeros((), jnp.int32))


@jax.jit
def update_classification(state: ClassificationState, pred: Any, labels: Any) -> ClassificationState:
    """Add one batch; jittable.

    Args:
      state: accumulator for T tasks.
      pred: (T, B) integer labels or (T, B, K) scores.
      labels: (T, B) integer targets.
    """
    y = jnp.asarray(labels)
    t = state.correct.shape[0]
    if y.ndim != 2 or y.shape[0] != t:
        raise ValueError(f"labels must have shape (T={t}, B), got {y.shape}")
    p = _scores_or_labels(pred, y.shape, None, "pred")
    return ClassificationState(state.correct + (p == y).sum(axis=1, dtype=jnp.int32),
                               state.count + y.shape[1])


def finalize_classification(state: ClassificationState) -> dict[str, Any]:
    """{"accuracy": list of T per-task accuracies, "harmonic_mean": float}."""
    n = int(state.count)
    if n == 0:
        raise ValueError("classification accumulator holds no example")
    acc = [float(c) / n for c in np.asarray(state.correct)]
    return {"accuracy": acc, "harmonic_mean": harmonic_mean(acc)}


# ------------------------------------------------------------------------------------ paper


def paper_nyuv2_metrics(segmentation: Mapping[str, Any], depth: Mapping[str, float],
                        normal: Mapping[str, float]) -> dict[str, float]:
    """The CosReg paper's NYUv2 metrics (all lower is better) from the finalized dicts.

    Returns:
      {"one_minus_miou": 1 - mIoU, "rmse": depth RMSE, "one_minus_abs_cos": mean 1 - |cos|}.
    """
    for name, d, key in (("segmentation", segmentation, "miou"), ("depth", depth, "rmse"),
                         ("normal", normal, "one_minus_abs_cos")):
        if key not in d:
            raise ValueError(f"{name} must contain {key!r}, got keys {sorted(d)}")
    return {
        "one_minus_miou": 1.0 - float(segmentation["miou"]),
        "rmse": float(depth["rmse"]),
        "one_minus_abs_cos": float(normal["one_minus_abs_cos"]),
    }


# ---------------------------------------------------------------------------- Delta_m / Delta_p


def _relative_changes(metrics: Mapping[str, Any], baseline: Mapping[str, Any],
                      higher_is_better: Mapping[str, bool], where: str) -> np.ndarray:
    """s_k (M_k - B_k) / B_k for every metric of ``baseline``, s_k = +1 if higher is better."""
    if not baseline:
        raise ValueError(f"baseline{where} must name at least one metric")
    out = []
    for k, b in baseline.items():
        if k not in metrics:
            raise ValueError(f"metrics{where} lack {k!r} (baseline has {sorted(baseline)})")
        if k not in higher_is_better:
            raise ValueError(f"higher_is_better{where} lacks {k!r}")
        m, b = float(metrics[k]), float(b)
        if b == 0 or not math.isfinite(b):
            raise ValueError(f"baseline{where}[{k!r}] must be finite and non-zero, got {b}")
        if not math.isfinite(m):
            raise ValueError(f"metrics{where}[{k!r}] must be finite, got {m}")
        sign = 1.0 if bool(higher_is_better[k]) else -1.0
        out.append(sign * (m - b) / b)
    return np.asarray(out)


def delta_m(metrics: Mapping[str, float], baseline: Mapping[str, float],
            higher_is_better: Mapping[str, bool]) -> float:
    """Delta_m% (Nash-MTL, CAGrad): relative change to a baseline, lower is better.

        Delta_m = 100/K sum_k (-1)^{d_k} (M_k - B_k) / B_k,   d_k = 1 if higher is better else 0,

    over the K metrics named by ``baseline`` (extra keys in ``metrics`` are ignored).

    Example: ``delta_m(scores, SEGNET_NYUV2_STL, NYUV2_HIGHER_IS_BETTER)``; equal weighting's
    published NYUv2 scores give +5.59.

    Args:
      metrics: metric name -> value.
      baseline: metric name -> baseline value (non-zero), e.g. the single-task model.
      higher_is_better: metric name -> direction.

    Returns:
      Delta_m in percent.
    """
    return float(-100.0 * _relative_changes(metrics, baseline, higher_is_better, "").mean())


def delta_p(metrics_by_task: Mapping[str, Mapping[str, float]],
            baseline_by_task: Mapping[str, Mapping[str, float]],
            higher_is_better_by_task: Mapping[str, Mapping[str, bool]]) -> float:
    """Delta_p% (LibMTL ``count_improvement``): averaged within each task, then over tasks.

        Delta_p = 100/T sum_t 1/K_t sum_k (-1)^{w_tk} (B_tk - M_tk) / B_tk,
        w_tk = 1 if higher is better else 0,

    so higher is better (the opposite sign convention to Delta_m), and each task counts equally
    whatever its number of metrics. LibMTL returns the fraction; this returns percent.

    Args:
      metrics_by_task: task -> metric name -> value.
      baseline_by_task: task -> metric name -> baseline value; its tasks and metrics are used.
      higher_is_better_by_task: task -> metric name -> direction.

    Returns:
      Delta_p in percent.
    """
    if not baseline_by_task:
        raise ValueError("baseline_by_task must name at least one task")
    per_task = []
    for task, base in baseline_by_task.items():
        if task not in metrics_by_task:
            raise ValueError(f"metrics_by_task lacks task {task!r}")
        if task not in higher_is_better_by_task:
            raise ValueError(f"higher_is_better_by_task lacks task {task!r}")
        r = _relative_changes(metrics_by_task[task], base, higher_is_better_by_task[task],
                              f"[{task!r}]")
        per_task.append(r.mean())
    return float(100.0 * np.mean(per_task))
