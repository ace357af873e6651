"""Recon (Shi et al., 2023): find the shared layers where tasks conflict, then make them task-specific.

Stage 1 trains the unmodified model with a base method and records, at every iteration, the cosine between
every pair of task gradients for every shared layer (a layer = a parameter path prefix such as
"encoder/conv1"; its leaves, e.g. weight and bias, are concatenated; a BatchNorm's scale / bias is a layer of
its own):

    C^l_ij = <g^l_i, g^l_j> / (||g^l_i|| ||g^l_j||),   g^l_t = dL_t / d theta_l.

Stage 2 scores each layer by the number of recorded (iteration, unordered task pair) cosines below S:

    score_l = #{ (s, i < j) : C^l_ij(s) < S }.

Stage 3 turns the top-K layers task-specific (the models' ``task_specific_layers``), re-initialises and
trains from scratch with any base method. :data:`RECON_PROTOCOL` runs the three stages
(:mod:`orthojax.methods.protocol`); k, S, the base method and the search's epochs are :func:`recon`'s
hyper-parameters. The per-layer cosines come from the same one-forward / T-VJP
Jacobian as CosReg (:func:`orthojax.task_jacobian`).
"""

from __future__ import annotations

import json
import numbers
import os
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from orthojax.cosreg import cosine_matrix
from orthojax.jacobian import task_jacobian
from orthojax.methods.base import Method, MethodStep, MultiTaskProblem, task_losses_and_aux
from orthojax.methods.protocol import MultiStage, Outcome, PlannedStage, Stages
from orthojax.methods.registry import RunContext, get_method, method_spec, register
from orthojax.select import Selector, leaf_paths, make_selection

PyTree = Any

__all__ = [
    "RECON_PROTOCOL",
    "ReconState",
    "conflict_counts",
    "conflict_scores",
    "layer_cosines",
    "layer_short_name",
    "load_scores_json",
    "recon",
    "save_scores_json",
    "scores_record",
    "select_conflict_layers",
    "shared_layer_prefixes",
]


def _components(path: str) -> tuple[str, ...]:
    return tuple(part for part in path.strip("/").split("/") if part)


def shared_layer_prefixes(params: PyTree, shared: Selector = "encoder") -> tuple[str, ...]:
    """The layers of a shared subtree: the distinct parent paths of its leaves, in flattening order.

    ``{"encoder": {"conv1": {"kernel"}, "bn1": {"scale", "bias"}}}`` gives ``("encoder/bn1",
    "encoder/conv1")`` (Flax dicts flatten in sorted key order; use a model's own ``shared_layer_names()``
    for the architectural order).

    Args:
      params: the parameter pytree.
      shared: selector of the shared parameters (a path or a predicate, see :mod:`orthojax.select`).

    Returns:
      A tuple of "/"-joined layer paths.
    """
    selection = make_selection(params, shared)
    paths = leaf_paths(params)
    out: list[str] = []
    for i in selection.indices:
        parts = _components(paths[i])
        prefix = "/".join(parts[:-1]) if len(parts) > 1 else parts[0]
        if prefix not in out:
            out.append(prefix)
    return tuple(out)


def layer_short_name(prefix: str) -> str:
    """The model-level name of a layer path: its first component dropped ("encoder/conv2" -> "conv2")."""
    parts = _components(prefix)
    return "/".join(parts[1:]) if len(parts) > 1 else "/".join(parts)


def _layer_groups(params: PyTree, layers: Sequence[str]) -> list[list[int]]:
    """For each layer, the indices (into the flattened leaves) of the leaves under it."""
    paths = [_components(p) for p in leaf_paths(params)]
    groups = []
    for layer in layers:
        target = _components(layer)
        members = [i for i, p in enumerate(paths) if target and p[: len(target)] == target]
        if not members:
            make_selection(params, layer)  # raises a KeyError naming the closest existing paths
        groups.append(members)
    return groups


def _check_layers(layers: Any) -> tuple[str, ...]:
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise ValueError(f"layers must be a non-empty sequence of layer paths; got {layers!r}")
    if not all(isinstance(name, str) and _components(name) for name in layers):
        raise ValueError(f"layers must be non-empty '/'-separated path strings; got {layers!r}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers must be distinct; got {layers!r}")
    return tuple(layers)


def layer_cosines(
    problem: MultiTaskProblem, params: PyTree, batch: Any, rng: jax.Array, layers: Sequence[str]
) -> jax.Array:
    """(L, T, T) cosines between the task gradients of each layer, without second-order terms.

    One forward pass and T vector-Jacobian products (:func:`orthojax.task_jacobian`) over the leaves of
    ``layers``, which must lie inside ``problem.shared``.

    Args:
      problem: the multi-task problem.
      params: parameters.
      batch: the batch.
      rng: the RNG handed to the task losses.
      layers: L layer paths ("encoder/conv1", "encoder/bn1", ...).

    Returns:
      (L, T, T) array; a layer whose gradient is zero for a task gets cosine 0 for that task.
    """
    layers = _check_layers(layers)
    groups = _layer_groups(params, layers)
    shared = set(make_selection(params, problem.shared).indices)
    paths = leaf_paths(params)
    for layer, members in zip(layers, groups):
        outside = [paths[i] for i in members if i not in shared]
        if outside:
            raise ValueError(f"layer {layer!r} is not inside problem.shared: {outside[:3]}")
    chosen = sorted({i for members in groups for i in members})
    position = {leaf: k for k, leaf in enumerate(chosen)}
    chosen_paths = {paths[i] for i in chosen}

    def losses_fn(p):
        return task_losses_and_aux(problem, p, batch, rng)

    _, jacobian, _, selection = task_jacobian(
        losses_fn, params, wrt=lambda path, leaf: path in chosen_paths, has_aux=True
    )
    if list(selection.indices) != chosen:
        raise ValueError("layer_cosines: duplicate parameter paths; cannot group leaves by layer")
    cosines = [cosine_matrix([jacobian[position[i]] for i in members]) for members in groups]
    return jax.lax.stop_gradient(jnp.stack(cosines))


class ReconState(NamedTuple):
    """State of :func:`recon`: the state of the method trained during the search."""

    base: PyTree


def _check_epochs(value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"recon: stage1_epochs must be None or an integer >= 1; got {value!r}")
    return int(value)


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
        raise ValueError(f"recon: k must be an integer >= 0; got {k!r}")
    return int(k)


def _retrain_spec(base: Any, base_hyperparameters: Optional[Mapping[str, Any]]):
    """The registry entry of the retraining method and its hyper-parameters (strings parsed), checked."""
    if not isinstance(base, str):
        raise TypeError(f"recon: base must be a method name (the method that retrains the network); got {base!r}")
    if base_hyperparameters is not None and not isinstance(base_hyperparameters, Mapping):
        raise TypeError(f"recon: base_hyperparameters must be a mapping; got {base_hyperparameters!r}")
    spec = method_spec(base)
    if spec.name == "recon" or spec.protocol is not None:
        raise ValueError(f"recon: base must be a method trained in one run; {spec.name!r} is a protocol")
    return spec, spec.parse_strings(dict(base_hyperparameters or {}))


def recon(
    layers: Sequence[str],
    base: str = "equal",
    *,
    k: int = 1,
    s: float = 0.0,
    stage1_epochs: Optional[int] = None,
    stage1_base: Union[str, Method] = "equal",
    base_hyperparameters: Optional[Mapping[str, Any]] = None,
) -> Method:
    """Recon: the search stage's method, which trains like ``stage1_base`` and records per-layer cosines.

    The returned Method is stage 1: its gradient, loss and state are ``stage1_base``'s; its metrics add
    "layer_cosines" (L, T, T) for ``layers`` (accumulate them, or their :func:`conflict_counts`, to score
    the layers). The whole protocol (:data:`RECON_PROTOCOL`, run by the experiments' runner) then scores the
    layers, turns the top ``k`` task-specific and retrains the network with ``base``.

    Args:
      layers: the L shared layer paths to monitor (default in a run: the model's ``shared_layer_names()``).
      base: the method (a registry name) that retrains the network with the selected layers task-specific.
      k: how many of the highest-scoring layers become task-specific, >= 0 (capped at L).
      s: the conflict threshold S in [-1, 1]: a layer scores one per (step, task pair) with cosine < S.
      stage1_epochs: epochs of the search stage (None: the table's).
      stage1_base: the method trained during the search (a Method or a registry name).
      base_hyperparameters: hyper-parameters of ``base`` (command-line strings are parsed).

    Returns:
      A :class:`~orthojax.methods.base.Method` named "recon".

    Raises:
      ValueError: bad layers, k, s or stage1_epochs; a base that is itself a protocol.
      KeyError: an unknown base. TypeError: a hyper-parameter ``base`` does not take.

    Example:
      >>> method = recon(layers=("encoder/conv1", "encoder/conv2"), base="cosreg", k=1, s=-0.02)
      >>> method.name
      'recon'

    References:
      Shi, Ren, Zhang, Chen & Cao, "Recon: Reducing Conflicting Gradients from the Root for Multi-Task
      Learning", ICLR 2023.
    """
    layers = _check_layers(layers)
    _check_k(k)
    _check_threshold(s)
    _check_epochs(stage1_epochs)
    _retrain_spec(base, base_hyperparameters)
    searcher = get_method(stage1_base) if isinstance(stage1_base, str) else stage1_base
    if not isinstance(searcher, Method):
        raise TypeError(f"recon: stage1_base must be a Method or a registry name; got {stage1_base!r}")
    if searcher.name == "recon":
        raise ValueError("recon: stage1_base cannot itself be recon")

    def init(params: PyTree, num_tasks: int) -> ReconState:
        if num_tasks < 2:
            raise ValueError(f"recon needs at least 2 tasks; got {num_tasks}")
        _layer_groups(params, layers)
        return ReconState(searcher.init(params, num_tasks))

    def step(problem: MultiTaskProblem, params: PyTree, state: ReconState, batch: Any, rng: jax.Array) -> MethodStep:
        out = searcher.step(problem, params, state.base, batch, rng)
        metrics = dict(out.metrics)
        metrics["layer_cosines"] = layer_cosines(problem, params, batch, rng, layers)
        return out._replace(state=ReconState(out.state), metrics=metrics)

    return Method(name="recon", init=init, step=step, evaluate=searcher.evaluate)


def _check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold S must be a real number in [-1, 1]; got {threshold!r}")
    return float(threshold)


def conflict_counts(cosines: jax.Array, threshold: float) -> jax.Array:
    """Per-layer number of unordered task pairs i < j with cosine below S, for one step.

    Args:
      cosines: (L, T, T) per-layer cosine matrices (the "layer_cosines" metric).
      threshold: S in [-1, 1] (-0.02 NYUv2, 0.0 Cityscapes, -0.1 MultiFashion+MNIST in the paper).

    Returns:
      (L,) int32 counts; jittable, so it can be accumulated inside a training loop.
    """
    threshold = _check_threshold(threshold)
    cosines = jnp.asarray(cosines)
    if cosines.ndim != 3 or cosines.shape[1] != cosines.shape[2]:
        raise ValueError(f"cosines must have shape (L, T, T); got {cosines.shape}")
    upper = jnp.triu(jnp.ones(cosines.shape[1:], bool), k=1)
    return jnp.sum((cosines < threshold) & upper, axis=(1, 2), dtype=jnp.int32)


def conflict_scores(cosine_history: jax.Array, threshold: float) -> jax.Array:
    """Recon's S-conflict scores: per layer, the number of (iteration, unordered pair) cosines below S.

    score_l = sum_s #{ i < j : C^l_ij(s) < S }.

    Args:
      cosine_history: (steps, L, T, T) recorded per-layer cosines.
      threshold: S in [-1, 1].

    Returns:
      (L,) int32 scores.
    """
    history = jnp.asarray(cosine_history)
    if history.ndim != 4:
        raise ValueError(f"cosine_history must have shape (steps, L, T, T); got {history.shape}")
    per_step = jax.vmap(lambda c: conflict_counts(c, threshold))(history)
    return jnp.sum(per_step, axis=0, dtype=jnp.int32)


def select_conflict_layers(
    scores: Any, layer_names: Sequence[str], k: int, *, short_names: bool = True
) -> tuple[str, ...]:
    """The K layers with the highest S-conflict scores (ties: earlier in ``layer_names`` first).

    Args:
      scores: (L,) scores.
      layer_names: the L layer paths the scores belong to.
      k: how many layers to turn task-specific (15 on NYUv2 in the paper), 0 <= k <= L.
      short_names: return the models' names ("encoder/conv2" -> "conv2", see :func:`layer_short_name`)
        instead of the paths.

    Returns:
      The selected names, highest score first; pass them as a model's ``task_specific_layers``.
    """
    scores = np.asarray(scores)
    names = tuple(layer_names)
    if scores.ndim != 1 or scores.shape[0] != len(names):
        raise ValueError(f"scores must have shape ({len(names)},) to match layer_names; got {scores.shape}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k <= len(names):
        raise ValueError(f"k must be an integer in [0, {len(names)}]; got {k!r}")
    order = np.argsort(-scores, kind="stable")[: int(k)]
    chosen = tuple(names[i] for i in order)
    return tuple(layer_short_name(n) for n in chosen) if short_names else chosen


def scores_record(
    layer_names: Sequence[str],
    scores: Any,
    *,
    threshold: float,
    num_steps: Optional[int] = None,
    k: Optional[int] = None,
) -> dict:
    """The stage-2 result as a JSON-ready dict: layers, scores, S, the number of recorded steps, the top K.

    Args:
      layer_names: the L layer paths.
      scores: (L,) S-conflict scores.
      threshold: the S they were counted with.
      num_steps: how many iterations were recorded.
      k: when given, the top-K layers (model names) are stored under "selected".

    Raises:
      ValueError: scores not of shape (L,), a bad threshold or k.
    """
    scores = np.asarray(scores)
    names = list(layer_names)
    if scores.shape != (len(names),):
        raise ValueError(f"scores must have shape ({len(names)},); got {scores.shape}")
    record = {
        "threshold": _check_threshold(threshold),
        "num_steps": None if num_steps is None else int(num_steps),
        "layers": names,
        "scores": [int(s) for s in scores],
    }
    if k is not None:
        record["k"] = int(k)
        record["selected"] = list(select_conflict_layers(scores, names, k))
    return record


def save_scores_json(
    path: Union[str, os.PathLike],
    layer_names: Sequence[str],
    scores: Any,
    *,
    threshold: float,
    num_steps: Optional[int] = None,
    k: Optional[int] = None,
) -> dict:
    """Writes :func:`scores_record` as JSON to ``path`` (e.g. ``<workdir>/recon_scores.json``); returns it."""
    record = scores_record(layer_names, scores, threshold=threshold, num_steps=num_steps, k=k)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    return record


def load_scores_json(path: Union[str, os.PathLike]) -> dict:
    """Reads a file written by :func:`save_scores_json`; "scores" comes back as an int64 NumPy array.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file lacks "layers" or "scores", or their lengths differ.
    """
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    if not isinstance(record, dict) or "layers" not in record or "scores" not in record:
        raise ValueError(f"{os.fspath(path)}: not a Recon scores file (needs 'layers' and 'scores')")
    if len(record["layers"]) != len(record["scores"]):
        raise ValueError(f"{os.fspath(path)}: {len(record['layers'])} layers but {len(record['scores'])} scores")
    record["scores"] = np.asarray(record["scores"], dtype=np.int64)
    return record


# -------------------------------------------------------------------------------------------------------------
# The protocol: search, score, make the top-K layers task-specific, retrain
# -------------------------------------------------------------------------------------------------------------


def _stage1(stages: Stages, hyperparameters: Mapping[str, Any]) -> PlannedStage:
    layers = hyperparameters.get("layers") or tuple(stages.shared_layer_names())
    searched = {"layers": tuple(layers)}
    if "stage1_base" in hyperparameters:
        searched["stage1_base"] = hyperparameters["stage1_base"]
    return PlannedStage("stage1", "recon", searched, epochs=_check_epochs(hyperparameters.get("stage1_epochs")))


def _retrain(hyperparameters: Mapping[str, Any], selected: Optional[tuple] = None) -> PlannedStage:
    """The retraining stage; its model options (the selected layers) are known once stage 1 has run."""
    spec, base_hps = _retrain_spec(hyperparameters.get("base", "equal"), hyperparameters.get("base_hyperparameters"))
    model_kwargs = {"task_specific_layers": tuple(selected)} if selected else {}
    return PlannedStage("retrain", spec.name, base_hps, model_kwargs=model_kwargs, settled=False)


def _recon_plan(stages: Stages, hyperparameters: Mapping[str, Any]) -> list[PlannedStage]:
    _check_k(hyperparameters.get("k", 1))
    _check_threshold(hyperparameters.get("s", 0.0))
    return [_stage1(stages, hyperparameters), _retrain(hyperparameters)]


def _recon_run(stages: Stages, hyperparameters: Mapping[str, Any]) -> Outcome:
    stage1, _ = _recon_plan(stages, hyperparameters)
    layers = stage1.hyperparameters["layers"]
    threshold = _check_threshold(hyperparameters.get("s", 0.0))
    recorded = stages.train(stage1.stage, stage1.method, stage1.hyperparameters, epochs=stage1.epochs)
    history = np.asarray(recorded.metric("layer_cosines"), dtype=np.float64)  # (S, steps, L, T, T)
    history = history.reshape(-1, *history.shape[-3:])  # the seeds' iterations pooled
    scores = np.asarray(conflict_scores(history, threshold))
    k = min(_check_k(hyperparameters.get("k", 1)), len(layers))
    selected = select_conflict_layers(scores, layers, k)
    stages.write_json("recon_scores.json", scores_record(layers, scores, threshold=threshold,
                                                         num_steps=int(history.shape[0]), k=k))
    retrain = _retrain(hyperparameters, selected)
    stages.train(retrain.stage, retrain.method, retrain.hyperparameters, model_kwargs=retrain.model_kwargs)
    return Outcome(stage=retrain.stage, extra={"recon_layers": [list(selected)] * stages.num_seeds})


RECON_PROTOCOL = MultiStage(plan=_recon_plan, run=_recon_run)
"""Recon as a table row: stage "stage1" (:func:`recon`: train with ``stage1_base``, record the per-layer
cosines), the S-conflict scores written to ``recon_scores.json``, and stage "retrain": ``base`` on the model
with the top-``k`` layers task-specific (the models' ``task_specific_layers``). The row is the retrained
run's; each seed's result carries "recon_layers"."""


def _model_layers(context: RunContext) -> Optional[tuple]:
    """The model's shared layers (all of them are monitored)."""
    return tuple(context.shared_layer_names) or None


register("recon", recon, label="Recon", context={"layers": _model_layers}, protocol=RECON_PROTOCOL,
         model_options=("task_specific_layers",))
