"""``train_and_evaluate``: the training loop the experiments call.

Epochs of jitted, data-parallel steps; evaluation every epoch; orbax checkpoints every N steps, at every
epoch end, at the end and on SIGTERM / SIGINT; resume from the workdir; the non-finite guard; logging to
``metrics.jsonl``, TensorBoard and a tqdm bar. Data comes from ``train_batches(epoch, start_step)``, whose
order must be a pure function of (epoch, step) (e.g. :func:`orthojax.data.loader.iterate_batches`), and
every step's key is ``fold_in(base key, step)``: a run killed at any point and resumed from its last
checkpoint ends with the same parameters, bit for bit, as an uninterrupted run.

Before it writes anything a run takes the workdir's lock (one run per workdir) and checks the workdir
(:func:`check_workdir`): an earlier run there is resumed only when asked, and only with the settings it
was started with (up to harmless ones: :data:`RESUMABLE_CHANGES`). Checkpoints are verified on restore
(a damaged one is reported and skipped for the previous intact one), and the non-finite limit is applied
inside the compiled step, so a run stops exactly at the step that reaches it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
import sys
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm.auto import tqdm

from orthojax.methods.base import Method
from orthojax.select import Selector
from orthojax.training.checkpoint import (
    Checkpointer, CheckpointsMissingError, ConfigChangedError, RunExistsError, WorkdirLock, abstract_like,
    checkpoint_steps,
)
from orthojax.training.evaluate import EvalMetrics, make_eval_step
from orthojax.training.guard import NonFiniteError, check_streak
from orthojax.training.history import History, epoch_means
from orthojax.training.logging import (
    MetricWriter, config_changes, epoch_summary, read_config, scan_metrics, to_jsonable, write_config,
)
from orthojax.training.seeds import run_keys, vmap_eval_step, vmap_init, vmap_train_step
from orthojax.training.sharding import compile_train_step, make_mesh, replicated, run_once, shard_batch
from orthojax.training.state import TrainState, init_train_state
from orthojax.training.step import make_train_step

Batch = Mapping[str, Any]

__all__ = [
    "RESUMABLE_CHANGES", "StopRequest", "TrainConfig", "TrainResult", "check_workdir", "stop_requested",
    "train_and_evaluate",
]

RESUMABLE_CHANGES = ("train.progress", "train.tensorboard", "train.log_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.async_checkpoint", "train.resume", "train.max_steps")
"""The settings (in ``config.json``'s names) that a resumed run may change: they change neither the
trained parameters nor the logged metrics. ``max_steps`` may not go below the step the run reached."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to run the loop (the experiment's own settings go to ``run_config``).

    Attributes:
      num_epochs: epochs to train.
      seed: base seed (initialisation and dropout keys; the data order is the data factory's business).
      num_seeds: S > 1 trains seeds ``seed .. seed + S - 1`` in one program (``jax.vmap``).
      log_every: steps between host synchronisations (metrics are still recorded for every step).
      checkpoint_every: also checkpoint every this many steps (0: only at epoch ends and the end).
      keep_checkpoints: how many checkpoints to keep.
      async_checkpoint: write checkpoints in the background.
      resume: continue from the latest checkpoint in the workdir (a workdir with checkpoints and
        ``resume=False`` is an error).
      max_nonfinite: stop after this many consecutive non-finite steps (0: never).
      eval_every: evaluate every this many epochs (0: never); the last epoch is always evaluated.
      cosine: record the last shared layer's (T, T) cosine matrix for every method.
      cosine_every: methods that do not compute those cosines themselves pay one extra Jacobian for
        them; compute it only every this many steps (NaN on the others; see
        :func:`orthojax.training.make_train_step`). 1: every step, the paper's protocol.
      progress: show a tqdm progress bar and the epoch summaries.
      tensorboard: write TensorBoard event files.
      max_steps: stop after this many steps in total, >= 1 (None: ``num_epochs`` full epochs).
    """

    num_epochs: int = 1
    seed: int = 0
    num_seeds: int = 1
    log_every: int = 10
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    async_checkpoint: bool = False
    resume: bool = False
    max_nonfinite: int = 20
    eval_every: int = 1
    cosine: bool = True
    cosine_every: int = 1
    progress: bool = True
    tensorboard: bool = True
    max_steps: Optional[int] = None

    def __post_init__(self):
        for name in ("num_epochs", "num_seeds", "log_every", "keep_checkpoints", "cosine_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1; got {getattr(self, name)}")
        for name in ("checkpoint_every", "max_nonfinite", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0; got {getattr(self, name)}")
        if self.max_steps is not None and (isinstance(self.max_steps, bool) or self.max_steps < 1):
            raise ValueError(f"TrainConfig.max_steps must be >= 1 or None; got {self.max_steps}")

    def total_steps(self, steps_per_epoch: int) -> int:
        """The steps this run takes: ``num_epochs`` epochs, at most ``max_steps``."""
        total = self.num_epochs * steps_per_epoch
        return total if self.max_steps is None else min(total, self.max_steps)


class TrainResult(NamedTuple):
    """What :func:`train_and_evaluate` returns: the final train state and the run's history."""

    state: TrainState
    history: History


class StopRequest:
    """Turns SIGTERM / SIGINT into a flag (``signum``) that the loop checks before each step (main thread
    only); a second signal raises KeyboardInterrupt.

    Nested: entered while another StopRequest is installed (e.g. one around a whole table of runs), it
    shares that one's flag, so a signal stops the current run and tells the caller to start no other.
    """

    def __init__(self):
        self._signum: Optional[int] = None
        self._outer: Optional["StopRequest"] = None
        self._previous: dict = {}

    @property
    def signum(self) -> Optional[int]:
        """The signal received (None: none yet)."""
        return self._outer.signum if self._outer is not None else self._signum

    def _handle(self, signum, frame):
        if self._signum is not None:
            raise KeyboardInterrupt
        self._signum = signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            outer = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
            if isinstance(outer, StopRequest):
                self._outer = outer
                return self
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


_StopRequest = StopRequest  # the former private name


def stop_requested() -> Optional[int]:
    """The signal that the installed :class:`StopRequest` received (None: none, or none installed)."""
    handler = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return handler.signum if isinstance(handler, StopRequest) else None


def _halt_at_limit(train_step: Callable, limit: int) -> Callable:
    """``train_step`` that leaves the whole state unchanged (step counter included) once any seed's
    ``nonfinite_streak`` has reached ``limit``, and reports the streak after each step as the metric
    "nonfinite_streak": the device may run ahead of the host, but the state stops exactly at the step
    that reached the limit."""

    def step(state: TrainState, batch):
        new_state, metrics = train_step(state, batch)
        halted = jnp.any(state.nonfinite_streak >= limit)
        new_state = jax.tree.map(lambda new, old: jnp.where(halted, old, new), new_state, state)
        return new_state, dict(metrics, nonfinite_streak=new_state.nonfinite_streak)

    return step


def _config_record(config: "TrainConfig", run_config: Optional[Mapping[str, Any]]) -> dict:
    return {"train": dataclasses.asdict(config), **dict(run_config or {})}


def check_workdir(config: "TrainConfig", workdir: str | os.PathLike, *, steps_per_epoch: int,
                  run_config: Optional[Mapping[str, Any]] = None, may_change: Sequence[str] = (),
                  check_lock: bool = True, compare_config: bool = True) -> Optional[int]:
    """What :func:`train_and_evaluate` checks before it writes anything in ``workdir``; changes nothing.

    Args:
      config, steps_per_epoch, run_config: as for :func:`train_and_evaluate`.
      may_change: names in ``config.json`` (dotted, e.g. "settings.progress") that may differ on resume
        besides :data:`RESUMABLE_CHANGES`.
      check_lock: also check that no other live run holds the workdir.
      compare_config: compare ``run_config`` and ``config`` with the saved ``config.json`` on resume.

    Returns:
      The newest checkpoint's step (None: the run starts from step 0).

    Raises:
      WorkdirLocked: another live run holds the workdir.
      RunExistsError: checkpoints, or logged steps, of an earlier run and ``config.resume`` is False.
      ConfigChangedError: ``config.resume`` with settings that change the run (each one named: saved ->
        new), or a ``max_steps`` below the step the run has reached.
      CheckpointsMissingError: ``config.resume`` where ``metrics.jsonl`` logs checkpoints but none is
        left.
    """
    workdir = os.path.abspath(os.fspath(workdir))
    if check_lock:
        WorkdirLock(workdir).check()
    checkpoints = os.path.join(workdir, "checkpoints")
    steps = checkpoint_steps(checkpoints)
    logged = scan_metrics(workdir)
    if not config.resume:
        if steps:
            raise RunExistsError(
                f"{checkpoints} already holds checkpoint {steps[-1]}; resume it (--resume) or use a new workdir "
                f"(nothing in {workdir} was changed)"
            )
        if logged["train_steps"]:
            raise RunExistsError(
                f"{workdir} holds the metrics.jsonl of an earlier run (up to step {logged['train_steps']}) and no "
                f"checkpoint; use a new workdir, or "
                + ("remove it to start over (its checkpoints are gone)" if logged["checkpoints"] else
                   "resume it (--resume), which starts it again from step 0 (it stopped before its first "
                   "checkpoint)")
            )
        return None
    if steps or logged["train_steps"]:
        saved = read_config(workdir)
        if saved is not None and compare_config:
            changes = config_changes(saved, _config_record(config, run_config),
                                     tuple(RESUMABLE_CHANGES) + tuple(may_change))
            if changes:
                listed = "; ".join(f"{name}: {old!r} -> {new!r}" for name, old, new in changes)
                raise ConfigChangedError(
                    f"{workdir}: --resume with settings that change this run ({listed}). Only progress bars, "
                    f"TensorBoard, checkpoint cadence and a --max-steps beyond the step reached may change on "
                    f"resume; rerun with the saved settings (config.json) or use a new workdir"
                )
    if steps:
        total = config.total_steps(steps_per_epoch)
        if total < steps[-1]:
            raise ConfigChangedError(
                f"{workdir}: --resume with max_steps {config.max_steps} (a run of {total} steps), below step "
                f"{steps[-1]} that this run already reached; give --max-steps {steps[-1]} or more"
            )
        return steps[-1]
    if logged["checkpoints"]:
        raise CheckpointsMissingError(
            f"{workdir}: metrics.jsonl logs checkpoints up to step {max(logged['checkpoints'])}, but {checkpoints} "
            f"holds none (removed?), so --resume cannot continue this run; restore them, or start over in a new "
            f"workdir (or after removing {workdir})"
        )
    return None


def _host_records(pending: list) -> list:
    """Device metrics of the pending steps to JSON-ready records (one transfer)."""
    fetched = jax.device_get([m for _, _, m in pending])
    return [{"step": s, "epoch": e, **to_jsonable(m)} for (s, e, _), m in zip(pending, fetched)]


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


def _stack_seed_results(results: list) -> dict:
    return {k: [r[k] for r in results] for k in results[0]}


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
) -> TrainResult:
    """Trains, evaluates, checkpoints and logs one run (or S vmapped seeds) in ``workdir``.

    Args:
      config: loop settings.
      workdir: run directory: ``config.json``, ``metrics.jsonl``, ``tb/``, ``checkpoints/``,
        ``history.json`` and, while the run runs, ``run.lock``.
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

    Returns:
      :class:`TrainResult` (final state, history). ``history.status`` is "interrupted" after SIGTERM /
      SIGINT (a checkpoint was written first).

    Raises:
      NonFiniteError: ``max_nonfinite`` consecutive non-finite steps (a checkpoint of the state at the
        step that reached the limit, whose parameters are the last finite ones, was written first).
      WorkdirError: raised before anything in the workdir is written: another live run holds it
        (WorkdirLocked); it holds an earlier run and ``config.resume`` is False (RunExistsError, also a
        FileExistsError); a resume with changed settings (ConfigChangedError) or whose checkpoints are
        gone (CheckpointsMissingError) or all damaged (CheckpointError).
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1; got {steps_per_epoch}")
    if (eval_batches is None) != (eval_metrics is None):
        raise ValueError("eval_batches and eval_metrics go together")
    workdir = os.fspath(workdir)
    primary = jax.process_index() == 0
    lock = WorkdirLock(workdir) if primary else None
    if lock is not None:
        lock.acquire()
    try:
        return _train_and_evaluate(
            config, workdir, primary=primary, model=model, task_losses=task_losses, method=method,
            optimizer=optimizer, train_batches=train_batches, steps_per_epoch=steps_per_epoch,
            sample_batch=sample_batch, last_shared=last_shared, shared=shared, input_key=input_key,
            eval_batches=eval_batches, eval_metrics=eval_metrics, mesh=mesh, run_config=run_config,
            init_variables=init_variables, may_change=may_change,
        )
    finally:
        if lock is not None:
            lock.release()


def _train_and_evaluate(config, workdir, *, primary, model, task_losses, method, optimizer, train_batches,
                        steps_per_epoch, sample_batch, last_shared, shared, input_key, eval_batches,
                        eval_metrics, mesh, run_config, init_variables, may_change) -> TrainResult:
    # Nothing is written before these checks pass (the lock file aside).
    latest = check_workdir(config, workdir, steps_per_epoch=steps_per_epoch, run_config=run_config,
                           may_change=may_change, check_lock=False)
    restart = config.resume and latest is None and scan_metrics(workdir)["train_steps"] > 0
    mesh = make_mesh() if mesh is None else mesh
    num_seeds = config.num_seeds

    # State: shapes first, then a restore or a replicated init.
    init = vmap_init(
        lambda key: init_train_state(key, model, method, optimizer, sample_batch[input_key]), num_seeds
    )
    keys = run_keys(config.seed, num_seeds)
    abstract = jax.eval_shape(init, keys)
    state_sharding = jax.tree.map(lambda _: replicated(mesh), abstract)
    checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=config.keep_checkpoints, async_save=config.async_checkpoint,
    )
    writer = None
    try:
        if latest is not None:
            restored = checkpointer.restore_latest(abstract_like(abstract, state_sharding))
            if restored.skipped:
                moved = checkpointer.quarantine([s for s, _ in restored.skipped])
            if restored.skipped and primary:
                print(f"{workdir}: resuming from checkpoint {restored.step}; the damaged newer checkpoint(s) "
                      f"moved to {', '.join(moved)}", file=sys.stderr, flush=True)
            state, latest = restored.state, restored.step
            history = History.from_json(restored.history).truncate(latest)
            streak = int(np.max(jax.device_get(state.nonfinite_streak)))
            if config.max_nonfinite and streak >= config.max_nonfinite:
                raise NonFiniteError(
                    f"{workdir}: the run stopped at step {latest} after {streak} consecutive non-finite steps "
                    f"(limit max_nonfinite={config.max_nonfinite}); resuming it would stop again. Lower the "
                    f"learning rate or check the inputs, in a new workdir."
                )
            history.status = "running"
        else:
            state = run_once(init, state_sharding, keys)
            if init_variables is not None:
                state = jax.device_put(
                    _with_initial_variables(state, init_variables, optimizer, num_seeds), state_sharding
                )
            history = History()
        if primary:
            write_config(workdir, _config_record(config, run_config))
        writer = MetricWriter(workdir, tensorboard=config.tensorboard, enabled=primary)
        if latest is not None:
            writer.truncate_after(latest)
        elif restart:
            writer.truncate_after(0)
            if primary:
                print(f"{workdir}: no checkpoint yet (the earlier run stopped before its first one): starting "
                      f"again from step 0", file=sys.stderr, flush=True)
    except BaseException:
        checkpointer.close()
        if writer is not None:
            writer.close()
        raise

    def on_saved(step: int) -> None:
        writer.write({"kind": "checkpoint", "step": step})
        writer.flush()

    checkpointer.on_saved = on_saved

    train_step_fn = vmap_train_step(
        make_train_step(
            model, task_losses, method, optimizer,
            last_shared=last_shared, shared=shared, input_key=input_key, cosine=config.cosine,
            cosine_every=config.cosine_every,
        ),
        num_seeds,
    )
    if config.max_nonfinite:
        train_step_fn = _halt_at_limit(train_step_fn, config.max_nonfinite)
    train_step = compile_train_step(train_step_fn, mesh, state_sharding)
    eval_step = None
    if eval_metrics is not None:
        eval_step = jax.jit(
            vmap_eval_step(make_eval_step(model, eval_metrics, input_key=input_key), num_seeds),
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
        return to_jsonable(_stack_seed_results(results))

    def save(step: int) -> None:
        checkpointer.save(step, state, history.to_json())

    total_steps = config.total_steps(steps_per_epoch)
    step = int(jax.device_get(state.step).reshape(-1)[0])
    pending: list = []
    clock = {"time": time.perf_counter(), "images": 0, "epoch_images": 0, "epoch_time": 0.0}
    bar = tqdm(total=total_steps, initial=step, disable=not (config.progress and primary),
               dynamic_ncols=True, desc="train")

    def flush() -> None:
        """Moves pending step metrics to the history and the logs; stops at the step whose state reached
        the non-finite limit (the steps after it left the state unchanged and are dropped)."""
        nonlocal step
        if not pending:
            return
        records = _host_records(pending)
        pending.clear()
        now = time.perf_counter()
        elapsed = now - clock["time"]
        images_per_sec = clock["images"] / elapsed if elapsed > 0 else float("nan")
        clock["epoch_images"] += clock["images"]
        clock["epoch_time"] += elapsed
        clock.update(time=now, images=0)
        streak = 0
        for record in records:
            history.train.append(record)
            writer.write({"kind": "train", **record})
            finite = np.asarray(record["finite"]).reshape(-1)
            if not finite.all():
                history.nonfinite_steps.append(record["step"])
                if primary:
                    tqdm.write(f"step {record['step']}: non-finite loss or gradient; step skipped "
                               f"({len(history.nonfinite_steps)} so far)")
            streak = int(np.max(record.get("nonfinite_streak", 0)))
            if config.max_nonfinite and streak >= config.max_nonfinite:
                step = record["step"]  # the state stopped here
                break
        writer.flush()
        bar.update(len(records))
        bar.set_postfix(loss=f"{np.mean(records[-1]['loss']):.4g}", img_s=f"{images_per_sec:.0f}")
        check_streak(streak, config.max_nonfinite, step)

    def end_epoch(epoch: int, force_eval: bool = False) -> None:
        flush()
        records = [r for r in history.train if r["epoch"] == epoch]
        evaluation = None
        last = epoch == config.num_epochs - 1 or force_eval
        if eval_step is not None and config.eval_every and ((epoch + 1) % config.eval_every == 0 or last):
            evaluation = evaluate(state)
        images_per_sec = clock["epoch_images"] / clock["epoch_time"] if clock["epoch_time"] > 0 else None
        clock.update(epoch_images=0, epoch_time=0.0)
        summary = {"epoch": epoch, "step": step, "train": epoch_means(records), "eval": evaluation,
                   "images_per_sec": images_per_sec}
        history.epochs.append(summary)
        flat = {f"train/{k}": v for k, v in summary["train"].items()}
        flat.update({f"eval/{k}": v for k, v in (evaluation or {}).items()})
        writer.write({"kind": "epoch", "step": step, "epoch": epoch, "images_per_sec": images_per_sec, **flat})
        writer.flush()
        if primary and config.progress:
            tqdm.write(epoch_summary(epoch, summary["train"], evaluation, images_per_sec))
        save(step)

    def interrupted(stop: StopRequest) -> TrainResult:
        flush()
        history.status = "interrupted"
        save(step)
        if primary:
            tqdm.write(f"signal {stop.signum}: checkpoint saved at step {step}; resume with --resume")
        return TrainResult(state, history)

    try:
        with StopRequest() as stop:
            if stop.signum is not None:  # received while the run was being set up
                return interrupted(stop)
            for epoch in range(step // steps_per_epoch, config.num_epochs):
                if step >= total_steps:
                    break
                start = step - epoch * steps_per_epoch
                for batch in train_batches(epoch, start):
                    global_batch = shard_batch(batch, mesh)
                    state, metrics = train_step(state, global_batch)
                    step += 1
                    pending.append((step, epoch, metrics))
                    clock["images"] += next(iter(global_batch.values())).shape[0]
                    if step % config.log_every == 0:
                        flush()
                    if config.checkpoint_every and step % config.checkpoint_every == 0:
                        flush()
                        save(step)
                    if stop.signum is not None:
                        return interrupted(stop)
                    if step >= total_steps or step == (epoch + 1) * steps_per_epoch:
                        break
                if step == (epoch + 1) * steps_per_epoch:
                    end_epoch(epoch)
                elif step < total_steps:
                    raise ValueError(
                        f"train_batches({epoch}, {start}) ended after step {step}; expected "
                        f"{steps_per_epoch - start} batches (steps_per_epoch={steps_per_epoch})"
                    )
            flush()
            if step > 0 and (not history.epochs or history.epochs[-1]["step"] != step):
                # stopped by max_steps inside an epoch: evaluate what was trained
                end_epoch((step - 1) // steps_per_epoch, force_eval=True)
            history.status = "completed"
            save(step)
    except NonFiniteError:
        history.status = "nonfinite"
        save(step)
        raise
    finally:
        bar.close()
        try:
            checkpointer.close()
        finally:
            if primary and history.status != "running":
                with open(os.path.join(workdir, "history.json"), "w") as f:
                    json.dump(history.to_json(), f)
            writer.close()
    return TrainResult(state, history)
