"""``train_and_evaluate``: the training loop the experiments call.

One flat loop over steps. After each step, small pure functions of the step count
(:mod:`orthojax.training.schedule`) say whether it is time to move the step metrics to the logs, to
summarise (and evaluate) an epoch, or to checkpoint; SIGTERM / SIGINT stops the loop at a checkpoint.
Data comes from ``train_batches(epoch, start_step)``, whose order must be a pure function of (epoch,
step) (e.g. :func:`orthojax.data.loader.iterate_batches`), and every step's key is ``fold_in(base key,
step)``: a run killed at any point and resumed from its last checkpoint ends with the same parameters,
bit for bit, as an uninterrupted run.

Where things are kept: checkpoints hold the train state and the data position (verified on restore);
``metrics.jsonl`` holds every step's metrics, the epoch summaries and the run's status, and a resumed run
rebuilds its history from it (truncated to the restored step). Before it writes anything a run takes the
workdir's lock (one run per workdir) and checks the workdir (:func:`check_workdir`): an earlier run there
is resumed only when asked, and only with the settings it was started with (up to harmless ones:
:data:`RESUMABLE_CHANGES`). A damaged checkpoint is reported and skipped for the previous intact one, and
the non-finite limit is applied inside the compiled step, so a run stops exactly at the step that
reaches it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import sys
import time
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm.auto import tqdm

from orthojax.methods.base import Method
from orthojax.select import Selector
from orthojax.training.checkpoint import Checkpointer, abstract_like, position_record
from orthojax.training.config import RESUMABLE_CHANGES, TrainConfig, TrainResult, config_record
from orthojax.training.evaluate import EvalMetrics
from orthojax.training.guard import NonFiniteError, check_streak, halt_at_limit
from orthojax.training.history import History, epoch_means
from orthojax.training.logging import MetricWriter, epoch_summary, scan_metrics, to_jsonable, write_config
from orthojax.training.restore import (
    Evaluation, StateParts, evaluate_checkpoint, initial_state, make_evaluate, restore_run, state_layout, state_step,
)
from orthojax.training.schedule import is_epoch_end, is_time, should_evaluate
from orthojax.training.seeds import vmap_train_step
from orthojax.training.sharding import compile_train_step, make_mesh, shard_batch
from orthojax.training.signals import StopRequest, stop_requested
from orthojax.training.state import TrainState
from orthojax.training.step import make_train_step
from orthojax.training.workdir import WorkdirLock, check_workdir

Batch = Mapping[str, Any]

__all__ = [
    "Evaluation", "RESUMABLE_CHANGES", "StopRequest", "TrainConfig", "TrainResult", "check_workdir",
    "evaluate_checkpoint", "stop_requested", "train_and_evaluate",
]


# ----------------------------------------------------------------------------- building blocks
def _step_batches(train_batches: Callable[[int, int], Iterator[Batch]], start: int, total: int,
                  steps_per_epoch: int) -> Iterator[tuple[int, int, Batch]]:
    """``(step, epoch, batch)`` for steps ``start + 1 .. total`` (steps completed once the batch is
    trained), chaining ``train_batches(epoch, position)`` over epochs; no batch is drawn beyond ``total``.

    Raises:
      ValueError: ``train_batches`` ended before its epoch did.
    """
    step = start
    while step < total:
        epoch, first = divmod(step, steps_per_epoch)
        for batch in train_batches(epoch, first):
            step += 1
            yield step, epoch, batch
            if step >= total or is_epoch_end(step, steps_per_epoch):
                break
        else:
            raise ValueError(
                f"train_batches({epoch}, {first}) ended after step {step}; expected {steps_per_epoch - first} "
                f"batches (steps_per_epoch={steps_per_epoch})")


def _until_limit(records: list, limit: int) -> tuple[list, int]:
    """The records up to the first whose "nonfinite_streak" reaches ``limit`` (0: all of them; the steps
    after it left the state unchanged), and the streak at the last one kept."""
    streak = 0
    for i, record in enumerate(records):
        streak = int(np.max(record.get("nonfinite_streak", 0)))
        if limit and streak >= limit:
            return records[: i + 1], streak
    return records, streak


class _Meter(NamedTuple):
    """Throughput: images since ``since`` (the last flush), and over the epoch's flushed intervals."""

    since: float
    images: int = 0
    epoch_images: int = 0
    epoch_time: float = 0.0

    def lap(self) -> tuple["_Meter", float]:
        """(meter restarted now, images per second since the last lap)."""
        now = time.perf_counter()
        elapsed = now - self.since
        rate = self.images / elapsed if elapsed > 0 else float("nan")
        return _Meter(now, 0, self.epoch_images + self.images, self.epoch_time + elapsed), rate

    def end_epoch(self) -> tuple["_Meter", Optional[float]]:
        """(meter with the epoch totals reset, images per second over the epoch or None)."""
        rate = self.epoch_images / self.epoch_time if self.epoch_time > 0 else None
        return self._replace(epoch_images=0, epoch_time=0.0), rate


# ----------------------------------------------------------------------------- one run's loop
@dataclasses.dataclass(frozen=True)
class _Run:
    """What stays fixed while a run trains, passed explicitly to the loop's helpers."""

    config: TrainConfig
    workdir: str
    primary: bool
    mesh: Mesh
    steps_per_epoch: int
    total_steps: int
    train_step: Callable
    evaluate: Optional[Callable[[TrainState], dict]]
    writer: MetricWriter
    checkpointer: Checkpointer
    bar: Any  # tqdm


def _write(run: _Run, history: History, records: Sequence[Mapping[str, Any]]) -> None:
    """Adds JSON-ready ``records`` to the history and to ``metrics.jsonl`` (the one code path for both,
    so a history rebuilt from the file equals the one built live)."""
    for record in records:
        history.add(record)
        run.writer.write(record)


def _flush(run: _Run, history: History, pending: list, meter: _Meter) -> _Meter:
    """Moves the pending steps' metrics (one device transfer) to the history and the logs, up to the step
    whose state reached the non-finite limit; returns the meter restarted.

    Raises:
      NonFiniteError: that limit was reached (its ``step`` is the step that reached it).
    """
    fetched = jax.device_get([m for _, _, m in pending])
    records = [to_jsonable({"kind": "train", "step": s, "epoch": e, **m}) for (s, e, _), m in zip(pending, fetched)]
    meter, rate = meter.lap()
    records, streak = _until_limit(records, run.config.max_nonfinite)
    _write(run, history, records)
    run.writer.flush()
    for record in records:
        if run.primary and not np.all(record["finite"]):
            tqdm.write(f"step {record['step']}: non-finite loss or gradient; step skipped "
                       f"({len(history.nonfinite_steps)} so far)")
    run.bar.update(len(records))
    run.bar.set_postfix(loss=f"{np.mean(records[-1]['loss']):.4g}", img_s=f"{rate:.0f}")
    check_streak(streak, run.config.max_nonfinite, records[-1]["step"])
    return meter


def _end_epoch(run: _Run, state: TrainState, history: History, epoch: int, step: int, meter: _Meter) -> _Meter:
    """Writes the summary of ``epoch`` (ended, or stopped at the run's last step): the means of its step
    metrics and, when due, an evaluation."""
    records = list(itertools.takewhile(lambda r: r["epoch"] == epoch, reversed(history.train)))
    last = step == run.total_steps
    evaluation = None
    if run.evaluate is not None and should_evaluate(epoch, eval_every=run.config.eval_every,
                                                    num_epochs=run.config.num_epochs, last=last):
        evaluation = run.evaluate(state)
    meter, rate = meter.end_epoch()
    train = epoch_means(records[::-1])
    record = {"kind": "epoch", "step": step, "epoch": epoch, "images_per_sec": rate,
              **{f"train/{k}": v for k, v in train.items()}, **{f"eval/{k}": v for k, v in (evaluation or {}).items()}}
    _write(run, history, [to_jsonable(record)])
    run.writer.flush()
    if run.primary and run.config.progress:
        tqdm.write(epoch_summary(epoch, train, evaluation, rate))
    return meter


def _save(run: _Run, state: TrainState) -> int:
    """Checkpoints the state with its data position (after syncing ``metrics.jsonl`` to disk, which holds
    the history up to it); returns the step."""
    step = state_step(state)
    run.writer.flush(sync=True)
    run.checkpointer.save(step, state, position_record(step, run.steps_per_epoch))
    return step


def _finish(run: _Run, state: TrainState, history: History, status: str) -> TrainResult:
    """Ends the run with ``status``: a checkpoint of the state, then a "status" record."""
    step = _save(run, state)
    _write(run, history, [{"kind": "status", "step": step, "status": status}])
    run.writer.flush()
    return TrainResult(state, history)


def _interrupt(run: _Run, state: TrainState, history: History, signum: int) -> TrainResult:
    """Ends the run after a signal: a checkpoint, the "interrupted" status and a message."""
    result = _finish(run, state, history, "interrupted")
    if run.primary:
        tqdm.write(f"signal {signum}: checkpoint saved at step {state_step(state)}; resume with --resume")
    return result


def _train(run: _Run, state: TrainState, history: History, train_batches: Callable, stop: StopRequest
           ) -> TrainResult:
    """The loop: one iteration per step, from the state's step to the run's last.

    Raises:
      NonFiniteError: the non-finite limit was reached (after a checkpoint and a "nonfinite" status).
    """
    config, spe = run.config, run.steps_per_epoch
    pending, meter = [], _Meter(time.perf_counter())
    try:
        if stop.signum is not None:  # received while the run was being set up
            return _interrupt(run, state, history, stop.signum)
        for step, epoch, batch in _step_batches(train_batches, state_step(state), run.total_steps, spe):
            global_batch = shard_batch(batch, run.mesh)
            state, metrics = run.train_step(state, global_batch)
            pending.append((step, epoch, metrics))
            meter = meter._replace(images=meter.images + next(iter(global_batch.values())).shape[0])
            epoch_end = is_epoch_end(step, spe) or step == run.total_steps
            save = epoch_end or is_time(step, config.checkpoint_every)
            stopping = stop.signum is not None
            if save or stopping or is_time(step, config.log_every):
                meter, pending = _flush(run, history, pending, meter), []
            if epoch_end:
                meter = _end_epoch(run, state, history, epoch, step, meter)
            if save:
                _save(run, state)
            if stopping:
                return _interrupt(run, state, history, stop.signum)
        return _finish(run, state, history, "completed")
    except NonFiniteError:
        _finish(run, state, history, "nonfinite")
        raise


# ----------------------------------------------------------------------------- set-up
def _open_writer(config: TrainConfig, workdir: str, primary: bool, latest: Optional[int], restart: bool,
                 run_config: Optional[Mapping[str, Any]],
                 task_names: Optional[Sequence[str]] = None) -> MetricWriter:
    """Writes ``config.json`` and opens ``metrics.jsonl`` truncated to the restored step (to step 0 when
    an earlier run stopped before its first checkpoint)."""
    if primary:
        write_config(workdir, config_record(config, run_config))
    writer = MetricWriter(workdir, tensorboard=config.tensorboard, enabled=primary, task_names=task_names,
                          num_seeds=config.num_seeds, hparams=config_record(config, run_config))
    if latest is not None or restart:
        writer.truncate_after(latest or 0)
    if restart and primary:
        print(f"{workdir}: no checkpoint yet (the earlier run stopped before its first one): starting again from "
              f"step 0", file=sys.stderr, flush=True)
    return writer


def _train_step(config: TrainConfig, train_step: Callable) -> Callable:
    """One seed's ``train_step`` vmapped over ``config.num_seeds`` and halted at the non-finite limit."""
    train_step = vmap_train_step(train_step, config.num_seeds)
    return halt_at_limit(train_step, config.max_nonfinite) if config.max_nonfinite else train_step


def _check_arguments(steps_per_epoch: int, eval_batches: Any, eval_metrics: Any) -> None:
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1; got {steps_per_epoch}")
    if (eval_batches is None) != (eval_metrics is None):
        raise ValueError("eval_batches and eval_metrics go together (give both or neither)")


def train_and_evaluate(
    config: TrainConfig,
    workdir: str | os.PathLike,
    *,
    model: nn.Module,
    task_losses: Callable[[tuple, Batch], jax.Array],
    method: Method,
    optimizer: optax.GradientTransformation,
    train_batches: Callable[[int, int], Iterator[Batch]],
    steps_per_epoch: int,
    sample_batch: Batch,
    last_shared: Selector,
    shared: Selector = "encoder",
    input_key: str = "image",
    eval_batches: Optional[Callable[[], Iterator[Batch]]] = None,
    eval_metrics: Optional[EvalMetrics] = None,
    mesh: Optional[Mesh] = None,
    run_config: Optional[Mapping[str, Any]] = None,
    init_variables: Optional[Callable[[dict], dict]] = None,
    may_change: Sequence[str] = (),
    task_names: Optional[Sequence[str]] = None,
) -> TrainResult:
    """Trains, evaluates, checkpoints and logs one run (or S vmapped seeds) in ``workdir``.

    The set-up (lock, checks, restore or init, compilation, outputs) is longer than ~60 lines because
    every resource it opens must be closed on any error: one ``ExitStack`` keeps that visible.

    Args:
      config: loop settings.
      workdir: run directory: ``config.json``, ``metrics.jsonl``, ``tb/``, ``checkpoints/`` and, while
        the run runs, ``run.lock``.
      model: Flax Linen module (``__call__(x, train)`` -> tuple of T outputs; BatchNorm in
        "batch_stats", dropout on the "dropout" RNG).
      task_losses: ``fn(outputs, batch) -> (T,)`` losses.
      method: the multi-task method.
      optimizer: the optax optimiser.
      train_batches: ``fn(epoch, start_step) -> iterator`` of this process's slices of the global
        batches ``start_step, ..., steps_per_epoch - 1`` of ``epoch`` (dicts of NumPy arrays).
      steps_per_epoch: global batches per epoch.
      sample_batch: a batch (any size) giving the input shape for initialisation.
      last_shared, shared, input_key: see :func:`orthojax.training.make_problem`.
      eval_batches: ``fn() -> iterator`` of evaluation batches (this process's slices).
      eval_metrics: accumulator for evaluation (required with ``eval_batches``).
      mesh: the data mesh (default: every device).
      run_config: the experiment's settings, written to ``config.json`` with ``config``; a resumed run
        must give the same (see :func:`check_workdir`).
      init_variables: ``fn(variables) -> variables`` applied (on the host, per seed) to a fresh run's
        initial ``{"params", "batch_stats"}``, e.g. to load pretrained encoder weights; the optimiser
        state is re-initialised from the result. Not applied when resuming.
      may_change: names in ``config.json`` (e.g. "settings.progress") that may differ on resume besides
        :data:`RESUMABLE_CHANGES`.
      task_names: the T task names, in output order, for the TensorBoard tags ("train/loss/<name>",
        "eval/<name>/..."); default: the task indices.

    Returns:
      :class:`TrainResult` (final state, history of the whole run). ``history.status`` is "interrupted"
      after SIGTERM / SIGINT (a checkpoint was written first).

    Raises:
      ValueError: ``steps_per_epoch`` < 1, or only one of ``eval_batches`` / ``eval_metrics``.
      NonFiniteError: ``max_nonfinite`` consecutive non-finite steps (a checkpoint of the state at the
        step that reached the limit, whose parameters are the last finite ones, was written first).
      WorkdirError: raised before anything in the workdir is written: another live run holds it
        (WorkdirLocked); it holds an earlier run and ``config.resume`` is False (RunExistsError, also a
        FileExistsError); a resume with changed settings (ConfigChangedError) or whose checkpoints are
        gone (CheckpointsMissingError), all damaged or of the earlier layout (CheckpointError), or whose
        ``metrics.jsonl`` lacks steps (HistoryMissingError).
    """
    _check_arguments(steps_per_epoch, eval_batches, eval_metrics)
    workdir = os.fspath(workdir)
    primary = jax.process_index() == 0
    with contextlib.ExitStack() as stack:
        if primary:
            stack.enter_context(WorkdirLock(workdir))
        # Nothing is written before these checks pass (the lock file aside).
        latest = check_workdir(config, workdir, steps_per_epoch=steps_per_epoch, run_config=run_config,
                               may_change=may_change, check_lock=False)
        restart = config.resume and latest is None and scan_metrics(workdir)["train_steps"] > 0
        mesh = make_mesh() if mesh is None else mesh
        parts = StateParts(model, method, optimizer, sample_batch, input_key)
        init, keys, abstract, sharding = state_layout(config, parts, mesh)
        checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints,
                                    async_save=config.async_checkpoint)
        stack.callback(checkpointer.close)
        if latest is not None:  # the newest intact checkpoint may be older than the newest one
            state, history = restore_run(checkpointer, abstract_like(abstract, sharding), config, workdir,
                                         steps_per_epoch, primary)
            latest = state_step(state)
        else:
            state = initial_state(init, keys, sharding, init_variables, optimizer, config.num_seeds)
            history = History()
        writer = _open_writer(config, workdir, primary, latest, restart, run_config, task_names)
        stack.callback(writer.close)
        stack.callback(checkpointer.close)  # first: its last saves log "checkpoint" records to the writer
        checkpointer.on_saved = lambda step: (writer.write({"kind": "checkpoint", "step": step}), writer.flush())
        train_step = _train_step(config, make_train_step(
            model, task_losses, method, optimizer, last_shared=last_shared, shared=shared, input_key=input_key,
            cosine=config.cosine, cosine_every=config.cosine_every))
        total = config.total_steps(steps_per_epoch)
        bar = stack.enter_context(tqdm(total=total, initial=state_step(state), dynamic_ncols=True, desc="train",
                                       disable=not (config.progress and primary)))
        run = _Run(
            config, workdir, primary, mesh, steps_per_epoch, total,
            train_step=compile_train_step(train_step, mesh, sharding),
            evaluate=None if eval_metrics is None else make_evaluate(parts, eval_metrics, config.num_seeds, mesh,
                                                                      eval_batches),
            writer=writer, checkpointer=checkpointer, bar=bar,
        )
        with StopRequest() as stop:
            return _train(run, state, history, train_batches, stop)


