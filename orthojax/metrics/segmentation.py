"""Semantic segmentation: confusion matrix, mean IoU and pixel accuracy.

IoU_c = M_cc / (sum_j M_cj + sum_i M_ic - M_cc) and pixel accuracy = trace(M) / sum(M) for the
confusion matrix M accumulated over the whole test set (the "pooled" protocol of LibMTL; mIoU is
a ratio of sums, so it does not depend on the batch size). Void pixels (``ignore_index``, -1 by
default) are excluded.

Accumulator: ``init_segmentation(C) -> state``, ``update_segmentation(state, pred, target)``
(jitted) and ``finalize_segmentation(state) -> dict`` (host side, float64).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from orthojax.metrics._checks import check_positive_int, check_same_shape, labels_from_scores

__all__ = [
    "SegmentationState",
    "confusion_matrix",
    "finalize_segmentation",
    "init_segmentation",
    "segmentation_scores",
    "update_segmentation",
]


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
    check_positive_int("num_classes", num_classes)
    p, t = jnp.asarray(pred_labels), jnp.asarray(target)
    check_same_shape("pred_labels", p, "target", t)
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
    check_positive_int("num_classes", num_classes)
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
    labels = labels_from_scores(pred, t.shape, c, "pred")
    return SegmentationState(state.confusion + confusion_matrix(labels, t, c, ignore_index))


def finalize_segmentation(state: SegmentationState) -> dict[str, Any]:
    """Scores of the accumulated confusion matrix; see ``segmentation_scores``."""
    return segmentation_scores(state.confusion)
