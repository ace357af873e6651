"""The trivial predictor of each task: a constant fitted on the training split, scored on the evaluation split.

A learned model is worth reporting only when it beats the best input-independent prediction. For each task
family the constant is the one that is optimal for the task's training loss (or its accuracy) over the
valid training targets, and it is scored with the same accumulators as a model
(:mod:`orthojax.metrics`), so the two rows of a table are directly comparable:

* segmentation: the majority class of the valid training pixels (``0 <= label < C`` and
  ``label != ignore_index``, the pixels the confusion matrix counts); it maximises pixel accuracy;
* depth: the mean of the valid training depths (``gt != 0``, :func:`~orthojax.metrics.valid_depth_mask`);
  it minimises the training MSE and so the RMSE on the training split;
* surface normals: the normalised mean of the valid training normals (not all-zero,
  :func:`~orthojax.metrics.valid_normal_mask`'s "all_zero" rule, the losses' rule, whatever ``normal_mask``
  the evaluation uses); among unit vectors it minimises the training MSE sum_i ||n - g_i||^2 = sum_i
  (2 - 2 <n, g_i>), i.e. maximises the summed cosine;
* classification: the majority label of each task over the training examples.

:func:`trivial_evaluation` returns, for a list of tasks, the finalized-evaluation dict that the
experiments' evaluation gives for a trained model ("<key>/<metric>" for dense tasks, with the exact pooled
normal-angle median; ``"accuracy"`` / ``"harmonic_mean"`` for classification), so an experiment's own
``table_metrics`` turns it into the table's columns.

References: the "mean" and "majority" baselines are the usual sanity floor of dense prediction
(e.g. Eigen et al., 2014, report the training-mean depth predictor on NYUv2).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from orthojax.metrics._checks import check_positive_int
from orthojax.metrics.classification import finalize_classification, init_classification, update_classification
from orthojax.metrics.depth import finalize_depth, init_depth, update_depth
from orthojax.metrics.normals import (NORMAL_MASKS, collect_angles, finalize_normals, init_angle_collector,
                                      init_normals, normal_angles, update_normals)
from orthojax.metrics.segmentation import finalize_segmentation, init_segmentation, update_segmentation

__all__ = [
    "TASK_KINDS",
    "majority_class",
    "majority_labels",
    "mean_depth",
    "mean_normal",
    "trivial_classification",
    "trivial_depth",
    "trivial_evaluation",
    "trivial_normals",
    "trivial_segmentation",
]

TASK_KINDS = ("seg", "depth", "normal", "classification")
"""Task kinds :func:`trivial_evaluation` knows (the dense kinds of ``experiments.dense.TaskSpec``)."""


# ----------------------------------------------------------------------------- argument checks

def _array(name: str, x: Any, *, integer: bool = False, min_ndim: int = 1) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim < min_ndim or a.size == 0:
        raise ValueError(f"{name} must be a non-empty array with at least {min_ndim} axes, got shape {a.shape}")
    if integer and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer labels, got dtype {a.dtype}")
    if not integer and not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must be a float array, got dtype {a.dtype}")
    if not integer and not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds non-finite values")
    return a


def _check_batch_size(batch_size: Optional[int]) -> None:
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)


def _check_normal_mask(normal_mask: Any) -> None:
    if not isinstance(normal_mask, str) or normal_mask not in NORMAL_MASKS:
        raise ValueError(f"normal_mask must be one of {NORMAL_MASKS}, got {normal_mask!r}")


def _batches(n: int, batch_size: Optional[int]):
    """Consecutive index ranges of ``batch_size`` (the last one shorter), as the evaluation iterates; one
    range when ``batch_size`` is None (pooled metrics do not depend on the batching)."""
    size = n if batch_size is None else int(batch_size)
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


# ----------------------------------------------------------------------------- the constants

def majority_class(labels: Any, num_classes: int, ignore_index: int = -1) -> int:
    """The most frequent valid label (ties: the smallest label).

    Args:
      labels: integer labels, any shape, e.g. (N, H, W).
      num_classes: C > 0; a label is valid when ``0 <= label < C`` and ``label != ignore_index`` (the
        pixels :func:`~orthojax.metrics.confusion_matrix` counts).
      ignore_index: the void label.

    Returns:
      The majority class, a Python int in [0, C).

    Raises:
      ValueError: non-integer or empty ``labels``, a bad ``num_classes``, or no valid label.
    """
    check_positive_int("num_classes", num_classes)
    y = _array("labels", labels, integer=True, min_ndim=0 if np.ndim(labels) == 0 else 1).reshape(-1)
    valid = (y != ignore_index) & (y >= 0) & (y < num_classes)
    if not valid.any():
        raise ValueError(f"labels holds no valid label in [0, {num_classes}) other than ignore_index={ignore_index}")
    return int(np.argmax(np.bincount(y[valid], minlength=num_classes)))


def majority_labels(labels: Any) -> np.ndarray:
    """The most frequent label of each task column (ties: the smallest label).

    Args:
      labels: (N,) or (N, T) non-negative integer labels, examples first.

    Returns:
      (T,) int64 (T = 1 for (N,) labels).

    Raises:
      ValueError: not 1-D / 2-D, empty, non-integer or negative labels.
    """
    y = _array("labels", labels, integer=True)
    if y.ndim > 2:
        raise ValueError(f"labels must have shape (N,) or (N, T), got {y.shape}")
    if np.any(y < 0):
        raise ValueError("labels must be non-negative class ids")
    y = y.reshape(len(y), -1)
    return np.array([np.argmax(np.bincount(y[:, t])) for t in range(y.shape[1])], dtype=np.int64)


def mean_depth(depth: Any) -> float:
    """Mean of the valid depths (``gt != 0``), in float64.

    Args:
      depth: ground-truth depths, any shape (e.g. (N, H, W, 1)); 0 marks a missing measurement.

    Raises:
      ValueError: not a finite float array, or no valid depth.
    """
    d = _array("depth", depth).astype(np.float64)
    valid = d != 0
    if not valid.any():
        raise ValueError("depth holds no valid (non-zero) value")
    return float(d[valid].mean())


def mean_normal(normals: Any) -> np.ndarray:
    """The normalised mean of the valid normals (not all-zero), in float64.

    Args:
      normals: ground-truth normals (..., 3), channels last; all-zero marks a missing normal.

    Returns:
      (3,) float64 unit vector.

    Raises:
      ValueError: not a finite float array with channels last, no valid normal, or valid normals whose mean
        is (numerically) zero, so that no direction is preferred.
    """
    g = _array("normals", normals).astype(np.float64)
    g = g.reshape(-1, g.shape[-1])
    valid = np.any(g != 0, axis=-1)
    if not valid.any():
        raise ValueError("normals holds no valid (not all-zero) normal")
    m = g[valid].mean(axis=0)
    norm = np.linalg.norm(m)
    if not norm > 1e-12:
        raise ValueError("the valid normals average to the zero vector: no mean direction")
    return m / norm


# ----------------------------------------------------------------------------- one task family each

def trivial_segmentation(train_labels: Any, eval_labels: Any, num_classes: int,
                         ignore_index: int = -1) -> dict[str, Any]:
    """Scores of predicting the training majority class at every evaluation pixel.

    Args:
      train_labels: integer training labels, any shape (e.g. (N, H, W)).
      eval_labels: integer evaluation labels, any shape.
      num_classes: C > 0.
      ignore_index: the void label, left out of the majority and of the scores.

    Returns:
      :func:`~orthojax.metrics.finalize_segmentation`'s dict: {"miou", "pixel_acc", "iou"}. With one
      predicted class c, pixel_acc is the share of class c among the valid evaluation pixels and mIoU is
      IoU_c / (number of classes present in the evaluation targets or predicted).

    Raises:
      ValueError: see :func:`majority_class`; no valid evaluation pixel.
    """
    c = majority_class(train_labels, num_classes, ignore_index)
    y = _array("eval_labels", eval_labels, integer=True)
    state = update_segmentation(init_segmentation(num_classes), jnp.full(y.shape, c, jnp.int32), jnp.asarray(y),
                                ignore_index)
    return finalize_segmentation(state)


def trivial_depth(train_depth: Any, eval_depth: Any, batch_size: Optional[int] = None) -> dict[str, float]:
    """Errors of predicting the mean valid training depth at every evaluation pixel.

    Args:
      train_depth: training depths, any shape; 0 = missing.
      eval_depth: evaluation depths, examples first (e.g. (N, H, W, 1)); 0 = missing.
      batch_size: also the per-batch ("MTAN-style") errors over consecutive evaluation batches of this
        size, under "batch/<metric>" (None: pooled only).

    Returns:
      {"abs_err", "rel_err", "rmse"} over all valid evaluation pixels (:func:`~orthojax.metrics.finalize_depth`,
      "pooled"), plus {"batch/abs_err", "batch/rel_err", "batch/rmse"} when ``batch_size`` is given.

    Raises:
      ValueError: see :func:`mean_depth`; no valid evaluation pixel; a bad ``batch_size``.
    """
    _check_batch_size(batch_size)
    mean = mean_depth(train_depth)
    gt = _array("eval_depth", eval_depth)
    state = init_depth()
    for part in _batches(len(gt), batch_size):
        g = jnp.asarray(gt[part])
        state = update_depth(state, jnp.full(g.shape, mean, g.dtype), g)
    out = finalize_depth(state, "pooled")
    if batch_size is not None:
        out.update({f"batch/{k}": v for k, v in finalize_depth(state, "batch").items()})
    return out


def trivial_normals(train_normals: Any, eval_normals: Any, normal_mask: str = "all_zero",
                    batch_size: Optional[int] = None) -> dict[str, float]:
    """Errors of predicting the normalised mean valid training normal at every evaluation pixel.

    The mean is taken over the training normals that are not all-zero (the losses' rule) whatever
    ``normal_mask`` is; ``normal_mask`` chooses the evaluation pixels only, as in the experiments.

    Args:
      train_normals: training normals (..., 3); all-zero = missing.
      eval_normals: evaluation normals, examples first, channels last (e.g. (N, H, W, 3)).
      normal_mask: "all_zero" or "mtan" (:data:`~orthojax.metrics.NORMAL_MASKS`).
      batch_size: also the per-batch errors over consecutive evaluation batches of this size, under
        "batch/<metric>" (None: pooled only).

    Returns:
      :func:`~orthojax.metrics.finalize_normals`' pooled dict with the exact median: {"angle_mean",
      "angle_median", "within_11.25", "within_22.5", "within_30", "one_minus_abs_cos"}, plus the same under
      "batch/" when ``batch_size`` is given.

    Raises:
      ValueError: see :func:`mean_normal`; no valid evaluation pixel; a bad ``normal_mask`` or ``batch_size``.
    """
    _check_normal_mask(normal_mask)
    _check_batch_size(batch_size)
    direction = mean_normal(train_normals)
    gt = _array("eval_normals", eval_normals, min_ndim=2)
    if gt.shape[-1] != direction.shape[0]:
        raise ValueError(f"eval_normals must have {direction.shape[0]} channels like train_normals, got shape "
                         f"{gt.shape}")
    state, collector = init_normals(), init_angle_collector()
    for part in _batches(len(gt), batch_size):
        g = jnp.asarray(gt[part])
        pred = jnp.broadcast_to(jnp.asarray(direction, g.dtype), g.shape)
        state = update_normals(state, pred, g, normal_mask=normal_mask)
        angles, valid = normal_angles(pred, g, normal_mask=normal_mask)
        collector = collect_angles(collector, np.asarray(angles), np.asarray(valid))
    out = finalize_normals(state, collector, "pooled")
    if batch_size is not None:
        out.update({f"batch/{k}": v for k, v in finalize_normals(state, aggregation="batch").items()})
    return out


def trivial_classification(train_labels: Any, eval_labels: Any) -> dict[str, Any]:
    """Accuracies of predicting each task's training majority label for every evaluation example.

    Args:
      train_labels: (N, T) or (N,) non-negative integer labels, examples first.
      eval_labels: (M, T) or (M,) labels, the same number of tasks.

    Returns:
      :func:`~orthojax.metrics.finalize_classification`'s dict: {"accuracy": list of T floats,
      "harmonic_mean": float}.

    Raises:
      ValueError: see :func:`majority_labels`; task counts that differ.
    """
    majority = majority_labels(train_labels)
    y = _array("eval_labels", eval_labels, integer=True)
    if y.ndim > 2:
        raise ValueError(f"eval_labels must have shape (M,) or (M, T), got {y.shape}")
    y = y.reshape(len(y), -1)
    if y.shape[1] != len(majority):
        raise ValueError(f"eval_labels has {y.shape[1]} task(s) but train_labels has {len(majority)}")
    pred = np.broadcast_to(majority[:, None], (len(majority), len(y)))
    state = update_classification(init_classification(len(majority)), jnp.asarray(pred, jnp.int32),
                                  jnp.asarray(y.T, jnp.int32))
    return finalize_classification(state)


# ----------------------------------------------------------------------------- a list of tasks

def _task_fields(task: Any) -> tuple[str, str, int]:
    """(key, kind, num_classes) of a task given as an object with those attributes (e.g.
    ``experiments.dense.TaskSpec``) or a tuple ``(key, kind[, num_classes])``."""
    if all(hasattr(task, a) for a in ("key", "kind")):
        key, kind, c = task.key, task.kind, getattr(task, "num_classes", 0)
    elif isinstance(task, (tuple, list)) and len(task) in (2, 3):
        key, kind, c = task[0], task[1], (task[2] if len(task) == 3 else 0)
    else:
        raise ValueError(f"a task must be (key, kind[, num_classes]) or have .key and .kind, got {task!r}")
    if kind not in TASK_KINDS:
        raise ValueError(f"task {key!r}: unknown kind {kind!r}; expected one of {TASK_KINDS}")
    if kind == "seg":
        check_positive_int(f"num_classes of task {key!r}", c)
    return str(key), str(kind), int(c)


def _split_array(split: Mapping[str, Any], name: str, key: str) -> Any:
    if key not in split:
        raise ValueError(f"the {name} split has no {key!r} array (it has {sorted(split)})")
    return split[key]


def trivial_evaluation(tasks: Sequence[Any], train: Mapping[str, Any], evaluation: Mapping[str, Any], *,
                       normal_mask: str = "all_zero", eval_batch_size: Optional[int] = None,
                       ignore_index: int = -1,
                       table_metrics: Optional[Callable[[Mapping[str, Any]], dict]] = None) -> dict[str, Any]:
    """The trivial predictor of every task, as an experiment's finalized evaluation (or table columns).

    Args:
      tasks: ``(key, kind[, num_classes])`` tuples or objects with ``.key``, ``.kind``, ``.num_classes``
        (``experiments.dense.TaskSpec``); kind in :data:`TASK_KINDS`. A "classification" task's array
        holds every classification task as (N, T) labels (MultiDigitMNIST's "label").
      train: the training split, key -> array (examples first).
      evaluation: the evaluated split, key -> array.
      normal_mask: the evaluation's rule for missing normals ("all_zero" or "mtan").
      eval_batch_size: the evaluation's batch size, for the per-batch ("<key>/batch/<metric>") depth and
        normal entries (None: pooled entries only).
      ignore_index: the void segmentation label.
      table_metrics: an experiment's ``fn(finalized evaluation) -> columns`` (e.g.
        ``experiments.nyuv2.table_metrics``); when given, its columns are returned instead.

    Returns:
      seg: "<key>/miou", "<key>/pixel_acc"; depth: "<key>/abs_err", "<key>/rel_err", "<key>/rmse"; normals:
      "<key>/angle_mean", "<key>/angle_median" (exact), "<key>/within_11.25", "<key>/within_22.5",
      "<key>/within_30", "<key>/one_minus_abs_cos"; per-batch ones as "<key>/batch/<metric>"; classification:
      "accuracy" (list per task) and "harmonic_mean". The keys of ``experiments.dense.dense_eval_metrics``
      and of the MultiDigitMNIST evaluation, so ``table_metrics`` applies unchanged.

    Raises:
      ValueError: an unknown task kind, a key missing from a split, or any error of the per-task functions.
    """
    if not tasks:
        raise ValueError("tasks is empty")
    out: dict[str, Any] = {}
    for task in tasks:
        key, kind, c = _task_fields(task)
        tr, ev = _split_array(train, "train", key), _split_array(evaluation, "evaluation", key)
        if kind == "classification":
            out.update(trivial_classification(tr, ev))
            continue
        if kind == "seg":
            scores = trivial_segmentation(tr, ev, c, ignore_index)
            scores = {"miou": scores["miou"], "pixel_acc": scores["pixel_acc"]}
        elif kind == "depth":
            scores = trivial_depth(tr, ev, eval_batch_size)
        else:
            scores = trivial_normals(tr, ev, normal_mask, eval_batch_size)
        out.update({f"{key}/{name}": value for name, value in scores.items()})
    return dict(table_metrics(out)) if table_metrics is not None else out
