"""How a run starts from its workdir: the train state's layout, a fresh initialisation or a verified
restore (with the history rebuilt from ``metrics.jsonl``), the evaluation function, and
:func:`evaluate_checkpoint` (restore and evaluate only, e.g. for an ``--eval-only`` command)."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from orthojax.methods.base import Method
from orthojax.training.checkpoint import Checkpointer, abstract_like, check_position, checkpoint_steps
from orthojax.training.config import TrainConfig
from orthojax.training.errors import CheckpointsMissingError, HistoryMissingError
from orthojax.training.evaluate import EvalMetrics, make_eval_step
from orthojax.training.guard import NonFiniteError
from orthojax.training.history import History
from orthojax.training.logging import to_jsonable
from orthojax.training.seeds import run_keys, vmap_eval_step, vmap_init
from orthojax.training.sharding import make_mesh, replicated, run_once, shard_batch
from orthojax.training.state import TrainState, init_train_state

Batch = Mapping[str, Any]

__all__ = ["Evaluation", "StateParts", "evaluate_checkpoint", "initial_state", "make_evaluate", "restore_run",
           "state_layout", "state_step"]


class Evaluation(NamedTuple):
    """What :func:`evaluate_checkpoint` returns: the checkpoint's step and the finalized metrics (one
    dict of per-seed lists for a vmapped run)."""

    step: int
    metrics: dict


class StateParts(NamedTuple):
    """The pieces that define the train state's shapes and its initialisation."""

    model: nn.Module
    method: Method
    optimizer: optax.GradientTransformation
    sample_batch: Batch
    input_key: str


def state_layout(config: TrainConfig, parts: StateParts, mesh: Mesh) -> tuple[Callable, jax.Array, Any, Any]:
    """``(init, keys, abstract state, state sharding)``: ``init(keys)`` builds the (vmapped) state;
    shapes come from ``jax.eval_shape``, the state is replicated over ``mesh``."""
    init = vmap_init(lambda key: init_train_state(key, parts.model, parts.method, parts.optimizer,
                                                  parts.sample_batch[parts.input_key]), config.num_seeds)
    keys = run_keys(config.seed, config.num_seeds)
    abstract = jax.eval_shape(init, keys)
    return init, keys, abstract, jax.tree.map(lambda _: replicated(mesh), abstract)


def make_evaluate(parts: StateParts, eval_metrics: EvalMetrics, num_seeds: int, mesh: Mesh,
                  eval_batches: Callable[[], Iterator[Batch]]) -> Callable[[TrainState], dict]:
    """``evaluate(state) -> dict``: the finalized metrics over ``eval_batches()`` (per-seed lists for
    S > 1 seeds), computed by one compiled, vmapped evaluation step; the outputs come from the method's
    own evaluation when it has one (see :func:`orthojax.training.make_eval_step`)."""
    eval_step = jax.jit(
        vmap_eval_step(make_eval_step(parts.model, eval_metrics, input_key=parts.input_key, method=parts.method),
                       num_seeds),
        out_shardings=replicated(mesh), donate_argnums=1,
    )

    def evaluate(state: TrainState) -> dict:
        acc = eval_metrics.init()
        if num_seeds > 1:
            acc = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_seeds, *jnp.shape(x))), acc)
        # host copies: an accumulator may hold one array under several names, and the eval step donates it
        acc = jax.device_put(jax.tree.map(np.array, acc), replicated(mesh))
        for batch in eval_batches():
            acc = eval_step(state, acc, shard_batch(batch, mesh, allow_replicate=True))
        acc = jax.device_get(acc)
        if num_seeds == 1:
            return to_jsonable(eval_metrics.finalize(acc))
        results = [eval_metrics.finalize(jax.tree.map(lambda x, i=i: x[i], acc)) for i in range(num_seeds)]
        return to_jsonable({k: [r[k] for r in results] for k in results[0]})

    return evaluate


def state_step(state: TrainState) -> int:
    """The state's step count (the first seed's when vmapped: all seeds step together)."""
    return int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])


def _with_initial_variables(state: TrainState, fn: Callable[[dict], dict], optimizer, num_seeds: int) -> TrainState:
    """Applies ``fn`` to each seed's initial variables and re-initialises the optimiser state."""
    host = jax.device_get((state.params, state.batch_stats))

    def one(params, stats):
        variables = fn({"params": params, "batch_stats": stats})
        return variables["params"], variables.get("batch_stats", stats)

    if num_seeds == 1:
        params, stats = one(*host)
        opt_state = optimizer.init(params)
    else:
        outs = [one(*jax.tree.map(lambda x, i=i: x[i], host)) for i in range(num_seeds)]
        params = jax.tree.map(lambda *xs: np.stack(xs), *[o[0] for o in outs])
        stats = jax.tree.map(lambda *xs: np.stack(xs), *[o[1] for o in outs])
        opt_state = jax.vmap(optimizer.init)(params)
    return state.replace(params=params, batch_stats=stats, opt_state=opt_state)


def restore_run(checkpointer: Checkpointer, abstract: Any, config: TrainConfig, workdir: str, steps_per_epoch: int,
                primary: bool) -> tuple[TrainState, History]:
    """The newest intact checkpoint's state (its data position verified; damaged newer ones moved
    aside) and the history rebuilt from ``metrics.jsonl`` up to its step.

    Raises:
      CheckpointError / ConfigChangedError: see :func:`orthojax.training.checkpoint.check_position`.
      NonFiniteError: the run had stopped at the non-finite limit (resuming would stop again).
      HistoryMissingError: ``metrics.jsonl`` lacks some of the steps up to the checkpoint.
    """
    restored = checkpointer.restore_latest(abstract)
    if restored.skipped:
        moved = checkpointer.quarantine([s for s, _ in restored.skipped])
        if primary:
            print(f"{workdir}: resuming from checkpoint {restored.step}; the damaged newer checkpoint(s) moved to "
                  f"{', '.join(moved)}", file=sys.stderr, flush=True)
    state, step = restored.state, restored.step
    check_position(restored.position, step=step, state_step=state_step(state), steps_per_epoch=steps_per_epoch,
                   where=checkpointer.step_directory(step))
    streak = int(np.max(jax.device_get(state.nonfinite_streak)))
    if config.max_nonfinite and streak >= config.max_nonfinite:
        raise NonFiniteError(
            f"{workdir}: the run stopped at step {step} after {streak} consecutive non-finite steps (limit "
            f"max_nonfinite={config.max_nonfinite}); resuming it would stop again. Lower the learning rate or "
            f"check the inputs, in a new workdir.", step=step)
    history = History.from_metrics(workdir, up_to=step)
    logged = [r["step"] for r in history.train]
    if logged != list(range(1, step + 1)):
        missing = sorted(set(range(1, step + 1)) - set(logged))
        raise HistoryMissingError(
            f"{os.path.join(workdir, 'metrics.jsonl')} lacks {len(missing)} of the train steps 1..{step} that "
            f"checkpoint {step} continues (first missing: {missing[:5]}), so the run's history cannot be rebuilt; "
            f"restore the file, or start over in a new workdir")
    history.status = "running"
    return state, history


def initial_state(init: Callable, keys: jax.Array, sharding: Any, init_variables: Optional[Callable],
                   optimizer, num_seeds: int) -> TrainState:
    """A fresh run's state, replicated; ``init_variables`` applied to each seed's variables."""
    state = run_once(init, sharding, keys)
    if init_variables is None:
        return state
    return jax.device_put(_with_initial_variables(state, init_variables, optimizer, num_seeds), sharding)


def evaluate_checkpoint(
    config: TrainConfig,
    workdir: str | os.PathLike,
    *,
    model: nn.Module,
    method: Method,
    optimizer: optax.GradientTransformation,
    sample_batch: Batch,
    eval_batches: Callable[[], Iterator[Batch]],
    eval_metrics: EvalMetrics,
    input_key: str = "image",
    mesh: Optional[Mesh] = None,
    step: Optional[int] = None,
    steps_per_epoch: Optional[int] = None,
) -> Evaluation:
    """Evaluates a run's checkpoint (default: the newest intact one) without training; changes nothing in
    ``workdir`` (no lock: the run may still be training there).

    The train state's layout comes from the same arguments that :func:`train_and_evaluate` was given
    (``config.num_seeds``, the model, the method and the optimiser); the evaluation is the one the loop
    runs at an epoch's end.

    Args:
      config: the run's loop settings (``num_seeds`` and ``seed`` shape the state).
      workdir: the run's directory.
      model, method, optimizer, sample_batch, input_key, mesh: as for :func:`train_and_evaluate`.
      eval_batches, eval_metrics: the evaluation.
      step: the checkpoint to evaluate (None: the newest whose files match its manifest; damaged newer
        ones are reported with a RuntimeWarning and skipped).
      steps_per_epoch: when given, also checked against the checkpoint's data position.

    Returns:
      :class:`Evaluation` ``(step, metrics)``.

    Raises:
      CheckpointsMissingError: ``workdir`` holds no checkpoint.
      CheckpointError: the checkpoint (or every one) is damaged, of the earlier layout, or its data
        position disagrees with its state.
      ConfigChangedError: ``steps_per_epoch`` differs from the checkpoint's.
    """
    directory = os.path.join(os.fspath(workdir), "checkpoints")
    if not checkpoint_steps(directory):
        raise CheckpointsMissingError(f"{workdir}: no checkpoint in {directory} to evaluate; train the run first")
    mesh = make_mesh() if mesh is None else mesh
    parts = StateParts(model, method, optimizer, sample_batch, input_key)
    _, _, abstract, sharding = state_layout(config, parts, mesh)
    checkpointer = Checkpointer(directory, read_only=True)
    try:
        if step is None:
            restored = checkpointer.restore_latest(abstract_like(abstract, sharding))
            step, state, position = restored.step, restored.state, restored.position
        else:
            state, position = checkpointer.restore(abstract_like(abstract, sharding), step)
    finally:
        checkpointer.close()
    check_position(position, step=step, state_step=state_step(state), steps_per_epoch=steps_per_epoch,
                   where=checkpointer.step_directory(step))
    evaluate = make_evaluate(parts, eval_metrics, config.num_seeds, mesh, eval_batches)
    return Evaluation(step, evaluate(state))
