"""Recon (Shi et al., 2023): find the shared layers where tasks conflict, then make them task-specific.

Stage 1 trains the unmodified model with a base method and records, at every iteration, the cosine between
every pair of task gradients for every shared layer (a layer = a parameter path prefix such as
"encoder/conv1"; its leaves, e.g. weight and bias, are concatenated; a BatchNorm's scale / bias is a layer of
its own):

    C^l_ij = <g^l_i, g^l_j> / (||g^l_i|| ||g^l_j||),   g^l_t = dL_t / d theta_l.

Stage 2 scores each layer by the number of recorded (iteration, unordered task pair) cosines below S:

    score_l = #{ (s, i < j) : C^l_ij(s) < S }.

Stage 3 turns the top-K layers task-specific (the models' ``task_specific_layers``), re-initialises and
trains from scratch with any base method. The per-layer cosines come from the same one-forward / T-VJP
Jacobian as CosReg (:func:`orthojax.task_jacobian`).
"""

from __future__ import annotations

import json
import numbers
import os
from typing import Any, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from orthojax.cosreg import cosine_matrix
from orthojax.jacobian import task_jacobian
from orthojax.methods.base import Method, MethodStep, MultiTaskProblem, task_losses_and_aux
from orthojax.select import Selector, leaf_paths, make_selection

PyTree = Any

__all__ = [
    "ReconState",
    "conflict_counts",
    "conflict_scores",
    "layer_cosines",
    "layer_short_name",
    "load_scores_json",
    "recon",
    "save_scores_json",
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
    """State of :func:`recon`: the base method's state."""

    base: PyTree


def recon(layers: Sequence[str], base: Union[Method, str, None] = None) -> Method:
    """Recon stage 1: trains like ``base`` and reports the per-layer task-gradient cosines every step.

    The step's gradient, loss and state are the base method's; metrics add "layer_cosines" (L, T, T) for
    the layers fixed here (accumulate them, or their :func:`conflict_counts`, to score the layers).

    Args:
      layers: the L shared layer paths to monitor, e.g. ``model.shared_layer_names()``.
      base: the base method: a Method, a registry name (built with its defaults), or None for "equal".

    Returns:
      A :class:`~orthojax.methods.base.Method` named "recon".

    Example:
      >>> method = recon(layers=("encoder/conv1", "encoder/conv2"), base=equal())

    References:
      Shi, Ren, Zhang, Chen & Cao, "Recon: Reducing Conflicting Gradients from the Root for Multi-Task
      Learning", ICLR 2023.
    """
    layers = _check_layers(layers)
    if base is None or isinstance(base, str):
        from orthojax.methods.registry import get_method  # the registry imports this module

        base = get_method(base or "equal")
    if not isinstance(base, Method):
        raise TypeError(f"recon: base must be a Method, a registry name or None; got {base!r}")
    if base.name == "recon":
        raise ValueError("recon: the base method cannot itself be recon")

    def init(params: PyTree, num_tasks: int) -> ReconState:
        if num_tasks < 2:
            raise ValueError(f"recon needs at least 2 tasks; got {num_tasks}")
        _layer_groups(params, layers)
        return ReconState(base.init(params, num_tasks))

    def step(problem: MultiTaskProblem, params: PyTree, state: ReconState, batch: Any, rng: jax.Array) -> MethodStep:
        out = base.step(problem, params, state.base, batch, rng)
        metrics = dict(out.metrics)
        metrics["layer_cosines"] = layer_cosines(problem, params, batch, rng, layers)
        return out._replace(state=ReconState(out.state), metrics=metrics)

    return Method(name="recon", init=init, step=step)


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


def save_scores_json(
    path: Union[str, os.PathLike],
    layer_names: Sequence[str],
    scores: Any,
    *,
    threshold: float,
    num_steps: Optional[int] = None,
    k: Optional[int] = None,
) -> dict:
    """Writes the stage-2 result as JSON: layers, scores, S, the number of recorded steps and the top K.

    Args:
      path: the file to write (e.g. ``<workdir>/recon_scores.json``).
      layer_names: the L layer paths.
      scores: (L,) S-conflict scores.
      threshold: the S they were counted with.
      num_steps: how many iterations were recorded.
      k: when given, the top-K layers (model names) are stored under "selected".

    Returns:
      The dictionary written.
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
