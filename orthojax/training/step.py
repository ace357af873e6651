"""The training step: model + task losses -> method gradient -> optax update -> step metrics.

An experiment supplies a Flax model, ``task_losses(outputs, batch) -> (T,)``, a method and an optimiser;
:func:`make_problem` adapts the model and that function to the task-loss contract
(:mod:`orthojax.task_losses`: ``fn(params, batch, rng) -> (losses (T,), aux)``, through its adapter
``from_outputs``), and :func:`make_train_step` turns them into one pure ``train_step(state, batch) ->
(state, metrics)`` to be compiled with ``jax.jit`` (see :mod:`orthojax.training.sharding`) and optionally ``jax.vmap``-ed over seeds
(see :mod:`orthojax.training.seeds`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from orthojax.methods.base import Method, MultiTaskProblem, last_shared_cosine
from orthojax.select import Selector
from orthojax.task_losses import OutputLossFn, from_outputs
from orthojax.training.guard import all_finite, keep_if_finite
from orthojax.training.state import TrainState, model_variables, step_key

PyTree = Any
Batch = Mapping[str, Any]

__all__ = ["make_problem", "make_train_step"]


def make_problem(
    model: nn.Module,
    task_losses: OutputLossFn,
    batch_stats: PyTree,
    *,
    last_shared: Selector,
    shared: Selector = "encoder",
    input_key: str = "image",
) -> MultiTaskProblem:
    """The :class:`MultiTaskProblem` of a Flax model in training mode: the adapter from a model and
    ``task_losses(outputs, batch) -> (T,)`` to the task-loss contract (``problem.task_losses(params, batch,
    rng) -> (losses (T,), aux)``, built by :func:`orthojax.task_losses.from_outputs`).

    ``rng`` drives dropout. The aux of ``task_losses`` / ``decode`` is the updated BatchNorm statistics;
    ``encode`` carries them (updated by the encoder) to ``decode`` inside its extras.

    Args:
      model: Flax module with ``__call__(x, train)``, and optionally ``encode(x, train)`` and
        ``decode(zs, extras, train)`` (without them the problem has no encode / decode: methods that
        need the split, such as RotoGrad, say so; CosReg uses its generic exact path).
      task_losses: ``fn(outputs: tuple, batch) -> (T,)`` losses.
      batch_stats: BatchNorm statistics the forward pass starts from ({} when none).
      last_shared, shared: selectors of the last shared layer and of all shared parameters.
      input_key: the batch entry fed to the model.
    """
    has_bn = bool(jax.tree.leaves(batch_stats))

    def apply(params, stats, rng, *args, method=None):
        kwargs = dict(train=True, rngs={"dropout": rng}, method=method)
        variables = model_variables(params, stats)
        if not has_bn:
            return model.apply(variables, *args, **kwargs), stats
        out, updates = model.apply(variables, *args, mutable=["batch_stats"], **kwargs)
        return out, updates["batch_stats"]

    def forward(params, batch, rng):
        return apply(params, batch_stats, rng, batch[input_key])

    split = callable(getattr(model, "encode", None)) and callable(getattr(model, "decode", None))

    def encode(params, batch, rng):
        (zs, extras), stats = apply(params, batch_stats, rng, batch[input_key], method="encode")
        return zs, (extras, stats)

    def decode(params, zs, extras_and_stats, batch, rng):
        extras, stats = extras_and_stats
        outputs, stats = apply(params, stats, rng, zs, extras, method="decode")
        return task_losses(tuple(outputs), batch), stats

    return MultiTaskProblem(
        task_losses=from_outputs(forward, task_losses), last_shared=last_shared, shared=shared,
        # representation-level methods (and CosReg's split path) only where the model has the split
        encode=encode if split else None, decode=decode if split else None
    )


def _diagnostic_cosine(problem, state, batch, rng, losses, every: int) -> jax.Array:
    """The last shared layer's cosine matrix, every ``every`` steps (NaN on the others)."""
    compute = lambda: last_shared_cosine(problem, state.params, batch, rng).astype(losses.dtype)
    if every == 1:
        return compute()
    num_tasks = losses.shape[0]
    skip = lambda: jnp.full((num_tasks, num_tasks), jnp.nan, losses.dtype)
    return jax.lax.cond(state.step % every == 0, compute, skip)


def make_train_step(
    model: nn.Module,
    task_losses: OutputLossFn,
    method: Method,
    optimizer: optax.GradientTransformation,
    *,
    last_shared: Selector,
    shared: Selector = "encoder",
    input_key: str = "image",
    cosine: bool = True,
    cosine_every: int = 1,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """Builds ``train_step(state, batch) -> (state, metrics)`` (pure; compile it with ``jax.jit``).

    One step: forward in training mode, per-task losses, the method's gradient, the optax update, and a
    non-finite guard (a step whose loss or gradient is not finite changes neither the parameters, the
    optimiser, the method state nor the BatchNorm statistics; it is counted in the state).

    Args:
      model, task_losses: see :func:`make_problem`.
      method: any :class:`~orthojax.methods.Method` (e.g. from :func:`orthojax.methods.build_method`).
      optimizer: the optax optimiser.
      last_shared, shared, input_key: see :func:`make_problem`.
      cosine: report the (T, T) cosine matrix of the last shared layer's task gradients for every method
        (from the method's own metrics when it provides "cosine", else one extra Jacobian).
      cosine_every: compute that extra Jacobian only at steps whose ``state.step`` is a multiple of this
        (inside ``lax.cond``: the other steps skip the work and report a (T, T) matrix of NaN). 1 (the
        default) is every step, the paper's protocol for the sigma diagnostics.

    Raises:
      ValueError: ``cosine_every`` < 1.

    Returns:
      ``train_step``. Its metrics: "loss" (the method's objective), "task_losses" (T,), "grad_norm"
      (global norm of the gradient given to the optimiser), "update_norm", "finite" (bool), "cosine"
      (T, T) when ``cosine``, and the method's metrics (e.g. "penalty", "task_weights").
    """
    if isinstance(cosine_every, bool) or not isinstance(cosine_every, int) or cosine_every < 1:
        raise ValueError(f"cosine_every must be an int >= 1; got {cosine_every!r}")

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        rng = step_key(state)
        problem = make_problem(
            model, task_losses, state.batch_stats,
            last_shared=last_shared, shared=shared, input_key=input_key,
        )
        out = method.step(problem, state.params, state.method_state, batch, rng)
        updates, opt_state = optimizer.update(out.grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        ok = all_finite(out.loss, out.task_losses, out.grads)
        new, old = (params, opt_state, out.state, out.aux), (
            state.params, state.opt_state, state.method_state, state.batch_stats)
        params, opt_state, method_state, batch_stats = keep_if_finite(ok, new, old)
        bad = jnp.logical_not(ok).astype(jnp.int32)
        next_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            method_state=method_state,
            nonfinite_total=state.nonfinite_total + bad,
            nonfinite_streak=(state.nonfinite_streak + 1) * bad,
        )

        metrics = dict(out.metrics)
        metrics.update(
            loss=out.loss,
            task_losses=out.task_losses,
            grad_norm=optax.tree.norm(out.grads),
            update_norm=optax.tree.norm(updates),
            finite=ok,
        )
        if cosine and "cosine" not in metrics:
            metrics["cosine"] = _diagnostic_cosine(problem, state, batch, rng, out.task_losses, cosine_every)
        return next_state, metrics

    return train_step
