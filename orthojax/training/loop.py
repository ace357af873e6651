"""``train_and_evaluate``: the training loop the experiments call.

Epochs of jitted, data-parallel steps; evaluation every epoch; orbax checkpoints every N steps, at every
epoch end, at the end and on SIGTERM / SIGINT; resume from the workdir; the non-finite guard; logging to
``metrics.jsonl``, TensorBoard and a tqdm bar. Data comes from ``train_batches(epoch, start_step)``, whose
order must be a pure function of (epoch, step) (e.g. :func:`orthojax.data.loader.iterate_batches`), and
every step's key is ``fold_in(base key, step)``: a run killed at any point and resumed from its last
checkpoint ends with the same parameters, bit for bit, as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm.auto import tqdm

from orthojax.methods.base import Method
from orthojax.select import Selector
from orthojax.training.checkpoint import Checkpointer, abstract_like
from orthojax.training.evaluate import EvalMetrics, make_eval_step
from orthojax.training.guard import NonFiniteError, check_streak
from orthojax.training.history import History, epoch_means
from orthojax.training.logging import MetricWriter, epoch_summary, to_jsonable, write_config
from orthojax.training.seeds import run_keys, vmap_eval_step, vmap_init, vmap_train_step
from orthojax.training.sharding import compile_train_step, make_mesh, replicated, run_once, shard_batch
from orthojax.training.state import TrainState, init_train_state
from orthojax.training.step import make_train_step

Batch = Mapping[str, Any]

__all__ = ["TrainConfig", "TrainResult", "train_and_evaluate"]


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
      max_steps: stop after this many steps in total (None: ``num_epochs`` full epochs).
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


class TrainResult(NamedTuple):
    """What :func:`train_and_evaluate` returns: the final train state and the run's history."""

    state: TrainState
    history: History


class _StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop checks after each step (main thread only); a second
    signal raises KeyboardInterrupt."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


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
) -> TrainResult:
    """Trains, evaluates, checkpoints and logs one run (or S vmapped seeds) in ``workdir``.

    Args:
      config: loop settings.
      workdir: run directory: ``config.json``, ``metrics.jsonl``, ``tb/``, ``checkpoints/``,
        ``history.json``.
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
      run_config: the experiment's settings, written to ``config.json`` with ``config``.
      init_variables: ``fn(variables) -> variables`` applied (on the host, per seed) to a fresh run's
        initial ``{"params", "batch_stats"}``, e.g. to load pretrained encoder weights; the optimiser
        state is re-initialised from the result. Not applied when resuming.

    Returns:
      :class:`TrainResult` (final state, history). ``history.status`` is "interrupted" after SIGTERM /
      SIGINT (a checkpoint was written first).

    Raises:
      NonFiniteError: ``max_nonfinite`` consecutive non-finite steps (a checkpoint of the last finite
        parameters was written first).
      FileExistsError: the workdir has checkpoints and ``config.resume`` is False.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1; got {steps_per_epoch}")
    if (eval_batches is None) != (eval_metrics is None):
        raise ValueError("eval_batches and eval_metrics go together")
    workdir = os.fspath(workdir)
    mesh = make_mesh() if mesh is None else mesh
    primary = jax.process_index() == 0
    num_seeds = config.num_seeds
    if primary:
        write_config(workdir, {"train": dataclasses.asdict(config), **dict(run_config or {})})

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
    writer = MetricWriter(workdir, tensorboard=config.tensorboard, enabled=primary)
    latest = checkpointer.latest_step()
    if latest is not None and not config.resume:
        raise FileExistsError(
            f"{checkpointer.directory} already holds checkpoint {latest}; resume it (--resume) or use a "
            f"new workdir"
        )
    if latest is not None:
        state, saved = checkpointer.restore(abstract_like(abstract, state_sharding))
        history = History.from_json(saved).truncate(latest)
        history.status = "running"
        writer.truncate_after(latest)
    else:
        state = run_once(init, state_sharding, keys)
        if init_variables is not None:
            state = jax.device_put(
                _with_initial_variables(state, init_variables, optimizer, num_seeds), state_sharding
            )
        history = History()

    train_step = compile_train_step(
        vmap_train_step(
            make_train_step(
                model, task_losses, method, optimizer,
                last_shared=last_shared, shared=shared, input_key=input_key, cosine=config.cosine,
                cosine_every=config.cosine_every,
            ),
            num_seeds,
        ),
        mesh, state_sharding,
    )
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

    total_steps = config.num_epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    step = int(jax.device_get(state.step).reshape(-1)[0])
    streak = np.asarray(jax.device_get(state.nonfinite_streak)).reshape(-1)
    pending: list = []
    clock = {"time": time.perf_counter(), "images": 0, "epoch_images": 0, "epoch_time": 0.0}
    bar = tqdm(total=total_steps, initial=step, disable=not (config.progress and primary),
               dynamic_ncols=True, desc="train")

    def flush() -> None:
        """Moves pending step metrics to the history and the logs; applies the guard."""
        nonlocal streak
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
        for record in records:
            history.train.append(record)
            writer.write({"kind": "train", **record})
            finite = np.asarray(record["finite"]).reshape(-1)
            streak = np.where(finite, 0, streak + 1)
            if not finite.all():
                history.nonfinite_steps.append(record["step"])
                if primary:
                    tqdm.write(f"step {record['step']}: non-finite loss or gradient; step skipped "
                               f"({len(history.nonfinite_steps)} so far)")
        writer.flush()
        bar.update(len(records))
        bar.set_postfix(loss=f"{np.mean(records[-1]['loss']):.4g}", img_s=f"{images_per_sec:.0f}")
        check_streak(int(streak.max()), config.max_nonfinite, records[-1]["step"])

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

    try:
        with _StopRequest() as stop:
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
                        flush()
                        history.status = "interrupted"
                        save(step)
                        if primary:
                            tqdm.write(f"signal {stop.signum}: checkpoint saved at step {step}; resume with "
                                       f"--resume")
                        return TrainResult(state, history)
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
        checkpointer.close()
        writer.close()
        if primary and history.status != "running":
            with open(os.path.join(workdir, "history.json"), "w") as f:
                json.dump(history.to_json(), f)
    return TrainResult(state, history)
