"""Dense-prediction tasks shared by the NYUv2 and SUN RGB-D experiments: losses and exact evaluation.

Losses (CosReg paper, section 5): pixel-wise cross-entropy (void pixels, label -1, ignored); depth MSE
over valid pixels (gt != 0); normals: the prediction is unit-normalised by the model, MSE over valid
pixels (gt not all-zero). The losses and the metrics take their valid pixels from the same functions
(:func:`orthojax.metrics.valid_depth_mask`, :func:`orthojax.metrics.valid_normal_mask`); MTAN's normal
mask (channel sum != 0) is available to the evaluation only, as ``normal_mask="mtan"``. Evaluation accumulates sufficient statistics over the whole test split inside
the jitted eval step (confusion matrices, depth sums, normal-angle sums and per-batch medians) so that the
pooled metrics are exact; the pooled normal-angle median, which needs every angle, is computed on the host
after training (:func:`exact_normal_median`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from orthojax.metrics import (
    NORMAL_MASKS,
    collect_angles,
    exact_median,
    finalize_depth,
    finalize_normals,
    finalize_segmentation,
    init_angle_collector,
    init_depth,
    init_normals,
    init_segmentation,
    normal_angles,
    trivial_evaluation,
    update_depth,
    update_normals,
    update_segmentation,
    valid_depth_mask,
    valid_normal_mask,
)
from orthojax.metrics.trivial import mean_depth
from experiments.runner import Row
from orthojax.training import EvalMetrics

# the rows of the paper's dense tables (Tables 2 and 3)
DENSE_ROWS = {
    "single_task": Row("single_task", "Single task", "single_task"),
    "equal": Row("equal", "Equal weights", "equal"),
    "gradnorm": Row("gradnorm", "GradNorm", "gradnorm"),
    "uncertainty": Row("uncertainty", "Uncertainty (Kendall)", "uncertainty"),
    "cosreg": Row("cosreg", "CosReg", "cosreg"),
}

__all__ = ["DENSE_ROWS", "SEGNET_DEPTH_BIAS", "TaskSpec", "dense_benchmark", "dense_eval_metrics", "dense_task_losses",
           "depth_l1_loss", "exact_normal_median", "set_leaf", "tasks_from_info", "trivial_metrics"]

SEGNET_DEPTH_BIAS = "params/decoder_depth/out/bias"
"""The output bias of :class:`orthojax.models.SegNet`'s depth head (its last 1x1 convolution)."""


class TaskSpec(NamedTuple):
    """One dense task: its batch key, its kind ("seg", "depth", "normal") and classes (seg only)."""

    key: str
    kind: str
    num_classes: int = 0


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def seg_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy over labelled pixels (label >= 0)."""
    valid = labels >= 0
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
    return _masked_mean(ce, valid)


def depth_loss(pred: jax.Array, gt: jax.Array) -> jax.Array:
    """MSE over valid pixels (gt != 0, :func:`orthojax.metrics.valid_depth_mask`)."""
    return _masked_mean((pred - gt) ** 2, valid_depth_mask(gt))


def depth_l1_loss(pred: jax.Array, gt: jax.Array) -> jax.Array:
    """Mean absolute error over valid pixels (gt != 0): MTAN's depth / disparity loss
    (lorenmt/mtan, ``model_segnet_mtan.py``, ``model_fit``)."""
    return _masked_mean(jnp.abs(pred - gt), valid_depth_mask(gt))


def normal_loss(pred: jax.Array, gt: jax.Array) -> jax.Array:
    """MSE between unit normals over valid pixels (gt not all-zero, :func:`orthojax.metrics.valid_normal_mask`),
    summed over the 3 channels."""
    return _masked_mean(jnp.sum((pred - gt) ** 2, axis=-1), valid_normal_mask(gt))


_LOSSES = {"seg": seg_loss, "depth": depth_loss, "normal": normal_loss}


def dense_task_losses(tasks: Sequence[TaskSpec], losses: Optional[Mapping[str, Callable]] = None
                      ) -> Callable[[tuple, Mapping[str, Any]], jax.Array]:
    """``fn(outputs, batch) -> (T,)`` for the given tasks, in model output order.

    ``losses``: kind -> ``fn(pred, gt) -> scalar`` replacing the default of that kind (e.g.
    ``{"depth": depth_l1_loss}`` for MTAN's L1 depth loss).

    Raises:
      ValueError: a task of an unknown kind, or a replacement for one.
    """
    table = {**_LOSSES, **dict(losses or {})}
    unknown = sorted(set(table) - set(_LOSSES))
    if unknown:
        raise ValueError(f"losses: unknown task kind(s) {unknown}; expected some of {sorted(_LOSSES)}")
    for task in tasks:
        if task.kind not in _LOSSES:
            raise ValueError(f"task {task.key!r}: unknown kind {task.kind!r}; expected one of {sorted(_LOSSES)}")

    def task_losses(outputs: tuple, batch: Mapping[str, Any]) -> jax.Array:
        return jnp.stack([table[t.kind](out, batch[t.key]) for t, out in zip(tasks, outputs)])

    return task_losses


def _check_normal_mask(normal_mask: str) -> None:
    if not isinstance(normal_mask, str) or normal_mask not in NORMAL_MASKS:
        raise ValueError(f"normal_mask must be one of {NORMAL_MASKS}, got {normal_mask!r}")


def dense_eval_metrics(tasks: Sequence[TaskSpec], normal_mask: str = "all_zero") -> EvalMetrics:
    """Exact accumulators for every task; finalize gives "<key>/<metric>" (pooled) and
    "<key>/batch/<metric>" (MTAN-style per-batch averages) entries.

    ``normal_mask``: which gt normals count as missing, "all_zero" (default, the losses' rule) or "mtan"
    (MTAN's channel sum == 0, which also drops valid normals whose components sum to 0); see
    :data:`orthojax.metrics.NORMAL_MASKS`."""
    _check_normal_mask(normal_mask)

    def init():
        out = []
        for t in tasks:
            if t.kind == "seg":
                out.append(init_segmentation(t.num_classes))
            elif t.kind == "depth":
                out.append(init_depth())
            else:
                out.append(init_normals())
        return tuple(out)

    def update(acc, outputs, batch):
        new = []
        for t, state, out in zip(tasks, acc, outputs):
            if t.kind == "seg":
                new.append(update_segmentation(state, out, batch[t.key]))
            elif t.kind == "depth":
                new.append(update_depth(state, out[..., 0], batch[t.key][..., 0]))
            else:
                new.append(update_normals(state, out, batch[t.key], normal_mask=normal_mask))
        return tuple(new)

    def finalize(acc):
        out: dict = {}
        for t, state in zip(tasks, acc):
            if t.kind == "seg":
                scores = finalize_segmentation(state)
                out[f"{t.key}/miou"] = scores["miou"]
                out[f"{t.key}/pixel_acc"] = scores["pixel_acc"]
                continue
            finalize = finalize_depth if t.kind == "depth" else finalize_normals
            out.update({f"{t.key}/{k}": v for k, v in finalize(state, aggregation="pooled").items()})
            out.update({f"{t.key}/batch/{k}": v for k, v in finalize(state, aggregation="batch").items()})
        return out

    return EvalMetrics(init=init, update=update, finalize=finalize)


def exact_normal_median(apply_fn: Callable, variables: Any, batches: Callable, normal_index: int,
                        key: str = "normal", normal_mask: str = "all_zero") -> float:
    """The pooled median normal angle (degrees) over every valid test pixel, exactly (host side).

    Args:
      apply_fn: ``fn(variables, images) -> outputs`` (inference mode), jitted by the caller.
      variables: the model variables.
      batches: ``fn() -> iterator`` of evaluation batches.
      normal_index: the position of the normals head in the outputs.
      key: the batch key of the ground-truth normals.
      normal_mask: "all_zero" (default) or "mtan"; as in :func:`dense_eval_metrics`.
    """
    _check_normal_mask(normal_mask)
    collector = init_angle_collector()
    for batch in batches():
        outputs = apply_fn(variables, batch["image"])
        angles, valid = normal_angles(outputs[normal_index], batch[key], normal_mask=normal_mask)
        collector = collect_angles(collector, np.asarray(angles), np.asarray(valid))
    return float(exact_median(collector))


def tasks_from_info(info: Mapping[str, Any]) -> tuple[TaskSpec, ...]:
    """The dense tasks a loaded dataset carries, from its info record (seg* keys are segmentations)."""
    out = []
    for key in info["tasks"]:
        if key.startswith("seg"):
            out.append(TaskSpec(key, "seg", int(info["num_classes"][key])))
        elif key == "depth":
            out.append(TaskSpec(key, "depth"))
        elif key == "normal":
            out.append(TaskSpec(key, "normal"))
        else:
            raise ValueError(f"unknown dense task {key!r} in the data's info (expected seg*, depth, normal)")
    return tuple(out)


def set_leaf(variables: Mapping[str, Any], path: str, value: float) -> dict:
    """A copy of ``variables`` with the array at ``path`` ("params/decoder_depth/out/bias") filled with
    ``value``, in that array's dtype; host-side NumPy (no device computation, nothing compiled).

    Only the dictionaries along ``path`` are copied; every other leaf is shared with the input.

    Raises:
      KeyError: ``path`` is not in ``variables`` (the message names the missing part and what is there).
    """
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise KeyError(f"set_leaf: empty path {path!r}")

    def go(node: Any, depth: int) -> Any:
        if not isinstance(node, Mapping) or parts[depth] not in node:
            here = "/".join(parts[:depth]) or "the variables"
            there = sorted(node) if isinstance(node, Mapping) else type(node).__name__
            raise KeyError(f"{path!r}: {here} has no {parts[depth]!r} (it has {there})")
        out = dict(node)
        if depth + 1 == len(parts):
            leaf = np.asarray(node[parts[depth]])
            out[parts[depth]] = np.full(leaf.shape, value, dtype=leaf.dtype)
        else:
            out[parts[depth]] = go(node[parts[depth]], depth + 1)
        return out

    return go(variables, 0)


def _compose(*fns: Optional[Callable]) -> Optional[Callable]:
    """``x -> f_n(...f_1(x))`` over the given functions (None ones skipped); None when there is none."""
    present = [f for f in fns if f is not None]
    if not present:
        return None

    def composed(x):
        for f in present:
            x = f(x)
        return x

    return composed


def dense_benchmark(name: str, splits: Mapping[str, Mapping[str, np.ndarray]], info: Mapping[str, Any], *,
                    width: float, model_options: Mapping[str, Any], table_metrics: Callable[[Mapping], dict],
                    task_columns: Mapping[str, str], augment: Optional[Callable] = None,
                    vgg16_weights: Optional[str] = None, normal_mask: str = "all_zero",
                    model: Optional[Callable[..., Any]] = None, losses: Optional[Mapping[str, Callable]] = None,
                    latent_channels: int = 512, depth_bias_path: Optional[str] = None):
    """A SegNet benchmark for the dense tasks in ``info`` (see :class:`experiments.runner.Benchmark`).

    Args:
      name: benchmark name.
      splits: {"train", "test"} dicts of arrays.
      info: the data's info record (tasks, classes, target size).
      width: SegNet channel multiplier.
      model_options: SegNet fields every row shares (e.g. use_batchnorm).
      table_metrics: ``fn(finalized eval) -> columns``.
      task_columns: task key -> the table column that belongs to it (single-task rows keep only those,
        plus the task's own "<key>/..." field metrics).
      augment: training-batch transform.
      vgg16_weights: ImageNet VGG16 weights loaded into the encoder at initialisation.
      normal_mask: which gt normals the evaluation counts as missing: "all_zero" (default, as the loss)
        or "mtan" (MTAN's channel-sum rule, for comparison with MTAN-family numbers).
      model: ``fn(heads=..., width=..., output_size=..., **options) -> nn.Module`` (default
        :class:`orthojax.models.SegNet`; e.g. :class:`orthojax.models.SegNetMTAN`).
      losses: per-kind loss replacements (see :func:`dense_task_losses`).
      latent_channels: channels of the representation at width 1 (512 for SegNet's encoder output; 64 for
        SegNet-MTAN's attended features), scaled by ``width`` for the runs' context.
      depth_bias_path: where the depth head's output bias lives in the model's variables. At
        initialisation (after the VGG16 weights, on the host) it is set to the mean valid training depth
        (:func:`orthojax.metrics.trivial.mean_depth`: gt != 0), so that the depth head starts at the trivial
        predictor instead of near 0 m (the usual output-bias initialisation for a regression head). None:
        :data:`SEGNET_DEPTH_BIAS` for the default SegNet; no initialisation for a ``model`` given (pass its
        path to have one). Without a "depth" task nothing is set.

    Raises:
      ValueError: ``normal_mask`` unknown; the training depths hold no valid value.
      KeyError (at initialisation): ``depth_bias_path`` is not in the model's variables.
    """
    _check_normal_mask(normal_mask)
    from experiments.runner import Benchmark
    from orthojax.models import SegNet, load_vgg16_weights

    tasks = tasks_from_info(info)
    heads = tuple((t.key, t.num_classes if t.kind == "seg" else (1 if t.kind == "depth" else 3)) for t in tasks)
    output = tuple(info["target_size"]) if info.get("target_size") else None
    keys = [t.key for t in tasks]

    factory = SegNet if model is None else model

    def build(options: Mapping[str, Any]):
        return factory(heads=heads, width=width, output_size=output, **{**dict(model_options), **dict(options)})

    def single_task_metrics(t: int, evaluation: Mapping[str, Any]) -> dict:
        key = keys[t]
        return {k: v for k, v in table_metrics(evaluation).items()
                if k == task_columns.get(key) or k.startswith(f"{key}/")}

    def final_eval(model, variables, batches) -> dict:
        if "normal" not in keys:
            return {}
        apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
        return {"normal/angle_median": exact_normal_median(apply, variables, batches, keys.index("normal"),
                                                           normal_mask=normal_mask)}

    load_vgg = None if vgg16_weights is None else (lambda variables: load_vgg16_weights(variables, vgg16_weights))
    bias_path = depth_bias_path
    if bias_path is None and model is None:
        bias_path = SEGNET_DEPTH_BIAS
    set_depth_bias = None
    if bias_path is not None and "depth" in keys:
        depth0 = mean_depth(splits["train"]["depth"])
        set_depth_bias = lambda variables: set_leaf(variables, bias_path, depth0)  # noqa: E731
    init_variables = _compose(load_vgg, set_depth_bias)

    return Benchmark(
        name=name, task_names=tuple(keys), train=splits["train"], eval=splits["test"], build_model=build,
        task_losses=dense_task_losses(tasks, losses), eval_metrics=dense_eval_metrics(tasks, normal_mask),
        table_metrics=table_metrics,
        single_task_metrics=single_task_metrics, latent_size=lambda model: max(1, round(latent_channels * width)),
        augment=augment, final_eval=final_eval, init_variables=init_variables,
    )


def trivial_metrics(splits: Mapping[str, Mapping[str, np.ndarray]], info: Mapping[str, Any],
                    table_metrics: Callable[[Mapping], dict], *, eval_batch_size: Optional[int] = None,
                    normal_mask: str = "all_zero") -> dict:
    """The table columns of the trivial predictor (:func:`orthojax.metrics.trivial_evaluation`): each task's
    training-split constant (majority class, mean depth, mean normal direction) scored on the test split
    with the evaluation's metrics, per-batch entries at ``eval_batch_size``."""
    return trivial_evaluation(tasks_from_info(info), splits["train"], splits["test"], normal_mask=normal_mask,
                              eval_batch_size=eval_batch_size, table_metrics=table_metrics)
