"""Runs a benchmark's table: every row (method + model options) for every seed, through one engine.

A :class:`Benchmark` says what is specific to a dataset (model, task losses, metrics, data); this module
does the rest the same way for all of them: single-task rows (one run per task), Recon's two stages, the
runs' workdirs and resumption, and the per-row summaries that :mod:`experiments.report` turns into
``results.md`` / ``results.json`` and plots.

Layout of ``<workdir>``: ``<row>/seed_<s>/`` per run (``<row>/seed_<s>/task_<t>/`` for single task,
``recon/seed_<s>/stage1`` and ``.../retrain`` for Recon), each an engine workdir (config.json,
metrics.jsonl, tb/, checkpoints/, history.json).

Reliability: :func:`check_table` checks every run of a table before the first one trains (batch size,
method hyper-parameters, and each run's workdir: not held by another run, resumed only when asked and
only with its saved settings); a run that fails (e.g. stopped by the non-finite guard) is recorded in its
row and the other rows still run; a signal (SIGTERM / SIGINT) stops the current run at a checkpoint and
raises :class:`RunInterrupted`, so that no other run starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import traceback
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax

from orthojax.data import iterate_batches, prefetch, steps_per_epoch
from orthojax.diagnostics import pairwise_cosines, phi_stats
from orthojax.methods import get_method
from orthojax.methods.recon import conflict_scores, save_scores_json, select_conflict_layers
from orthojax.training import (
    EvalMetrics, TrainConfig, WorkdirError, check_workdir, model_variables, stop_requested, train_and_evaluate,
)

Batch = Mapping[str, Any]

__all__ = ["Benchmark", "Row", "RunInterrupted", "RunSettings", "SETTINGS_MAY_CHANGE", "check_table", "row_for",
           "run_row", "run_table"]

SETTINGS_MAY_CHANGE = tuple(f"settings.{name}" for name in (
    "resume", "progress", "checkpoint_every", "max_steps", "seeds", "vmap_seeds", "epochs", "recon_k", "recon_s",
    "recon_base", "recon_stage1_epochs"))
"""RunSettings fields that a resumed run may see changed: harmless ones (progress, checkpoint cadence,
max_steps: checked by the engine), or ones whose effect on a run is recorded elsewhere in its config
(its seeds, number of epochs, Recon's layers and base method)."""


class RunInterrupted(KeyboardInterrupt):
    """A signal stopped a run (at a checkpoint): no other run of the table starts."""

    def __init__(self, signum: int, workdir: str):
        super().__init__(f"signal {signum}: stopped in {workdir}")
        self.signum = signum
        self.workdir = workdir


@dataclasses.dataclass(frozen=True)
class Row:
    """One table row: a method with its hyper-parameters and model options."""

    key: str
    label: str
    method: str
    method_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The protocol of one table: optimisation, seeds and loop settings."""

    epochs: int
    batch_size: int
    learning_rate: float
    seeds: Sequence[int]
    lr_decay_every_epochs: int = 0  # 0: constant learning rate; else x lr_decay_factor every N epochs
    lr_decay_factor: float = 0.5
    eval_batch_size: int = 64
    max_steps: Optional[int] = None
    checkpoint_every: int = 0
    vmap_seeds: bool = False
    resume: bool = False
    progress: bool = True
    recon_k: int = 1
    recon_s: float = 0.0
    recon_base: str = "equal"
    recon_stage1_epochs: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """What is specific to a dataset.

    Attributes:
      name: e.g. "multidigit_mnist".
      task_names: the T task names, in model output order.
      train: training split (dict of NumPy arrays); eval: the split evaluated every epoch.
      build_model: ``fn(model_kwargs) -> nn.Module``.
      task_losses: ``fn(outputs, batch) -> (T,)``.
      eval_metrics: the accumulator; its finalize returns a flat dict of floats / lists.
      table_metrics: ``fn(finalized eval) -> {column: value}`` for a multi-task run.
      single_task_metrics: ``fn(task t, finalized eval) -> {column: value}`` (task t's columns only).
      latent_size: ``fn(model) -> int`` channels of the shared representation (RotoGrad).
      augment: optional ``transform(batch, rng) -> batch`` for training batches.
      combine_single_task: optional ``fn(columns) -> columns`` completing a single-task row once every
        task's columns are in (e.g. the harmonic mean of the task accuracies).
      final_eval: optional ``fn(model, variables, eval_batches) -> dict`` run on the host once a run has
        finished, merged into its final evaluation (for metrics a jitted accumulator cannot give exactly,
        such as a pooled median).
      init_variables: optional ``fn(variables) -> variables`` applied after initialisation (e.g. loading
        pretrained encoder weights).
    """

    name: str
    task_names: tuple[str, ...]
    train: Mapping[str, np.ndarray]
    eval: Mapping[str, np.ndarray]
    build_model: Callable[[Mapping[str, Any]], nn.Module]
    task_losses: Callable[[tuple, Batch], jax.Array]
    eval_metrics: EvalMetrics
    table_metrics: Callable[[Mapping[str, Any]], dict]
    single_task_metrics: Callable[[int, Mapping[str, Any]], dict]
    latent_size: Callable[[nn.Module], int]
    augment: Optional[Callable[[Batch, np.random.Generator], Batch]] = None
    combine_single_task: Optional[Callable[[dict], dict]] = None
    final_eval: Optional[Callable[[nn.Module, Any, Callable], dict]] = None
    init_variables: Optional[Callable[[Any], Any]] = None


def row_for(key: str, known_rows: Mapping[str, Row], cli_kwargs: Mapping[str, Mapping[str, Any]],
            recon_base: str = "equal") -> Row:
    """The row ``key``: a benchmark-defined row, else the registry method of that name.

    ``cli_kwargs`` maps method names to hyper-parameters from the command line (e.g. {"cosreg":
    {"alpha": 10}}); they complete the row's own hyper-parameters, never override them. A Recon row
    carries the hyper-parameters of the method that retrains its network (``recon_base``).
    """
    row = known_rows[key] if key in known_rows else Row(key=key, label=key, method=key)
    source = recon_base if row.method == "recon" else row.method
    kwargs = {**dict(cli_kwargs.get(source, {})), **dict(row.method_kwargs)}
    return dataclasses.replace(row, method_kwargs=kwargs)


def _optimizer(settings: RunSettings, steps_per_epoch_: int) -> optax.GradientTransformation:
    if settings.lr_decay_every_epochs:
        schedule = optax.exponential_decay(
            settings.learning_rate, transition_steps=settings.lr_decay_every_epochs * steps_per_epoch_,
            decay_rate=settings.lr_decay_factor, staircase=True,
        )
        return optax.adam(schedule)
    return optax.adam(settings.learning_rate)


def _batches(bench: Benchmark, settings: RunSettings, seed: int) -> Callable:
    def train_batches(epoch: int, start: int):
        return prefetch(iterate_batches(
            bench.train, settings.batch_size, seed, epoch, start_step=start,
            process_index=jax.process_index(), process_count=jax.process_count(), transform=bench.augment,
        ))
    return train_batches


def _eval_batches(bench: Benchmark, settings: RunSettings) -> Callable:
    def eval_batches():
        return iterate_batches(
            bench.eval, settings.eval_batch_size, 0, 0, drop_last=False, shuffle=False,
            process_index=jax.process_index(), process_count=jax.process_count(),
        )
    return eval_batches


@dataclasses.dataclass(frozen=True)
class _RunSpec:
    """One engine run of a table, as planned before anything trains."""

    workdir: str
    model: nn.Module
    method_name: str
    method_kwargs: Mapping[str, Any]
    config: TrainConfig
    run_config: Mapping[str, Any]
    steps_per_epoch: int
    seeds: tuple


def _spec(bench: Benchmark, settings: RunSettings, workdir: str, method_name: str, method_kwargs: Mapping,
          model_kwargs: Mapping, seeds: Sequence[int], epochs: Optional[int] = None) -> _RunSpec:
    model = bench.build_model(dict(model_kwargs))
    kwargs = dict(method_kwargs)
    if method_name in ("rotate_only", "rotograd", "rotograd_norm"):
        kwargs.setdefault("latent_size", bench.latent_size(model))
        kwargs.setdefault("learning_rate", settings.learning_rate / 2)
    n_steps = _steps_per_epoch(bench, settings)
    if method_name == "dwa":  # DWA averages the task losses over epochs (MTAN), not single steps
        kwargs.setdefault("period", n_steps)
    config = TrainConfig(
        num_epochs=epochs or settings.epochs, seed=int(seeds[0]), num_seeds=len(seeds),
        checkpoint_every=settings.checkpoint_every, resume=settings.resume, max_steps=settings.max_steps,
        progress=settings.progress, log_every=max(1, min(50, n_steps)),
    )
    run_config = {"benchmark": bench.name, "method": method_name, "method_kwargs": kwargs,
                  "model_kwargs": dict(model_kwargs), "seeds": list(seeds), "settings": dataclasses.asdict(settings)}
    return _RunSpec(workdir, model, method_name, kwargs, config, run_config, n_steps, tuple(int(s) for s in seeds))


def _check_stop(workdir: str) -> None:
    signum = stop_requested()
    if signum is not None:
        raise RunInterrupted(signum, workdir)


def _train(bench: Benchmark, settings: RunSettings, workdir: str, method_name: str, method_kwargs: Mapping,
           model_kwargs: Mapping, seeds: Sequence[int], epochs: Optional[int] = None) -> dict:
    """One engine run (S vmapped seeds when ``len(seeds) > 1``); returns the run summary.

    Raises:
      RunInterrupted: a signal stopped the run (or arrived before it started).
    """
    _check_stop(workdir)
    spec = _spec(bench, settings, workdir, method_name, method_kwargs, model_kwargs, seeds, epochs)
    done = os.path.join(workdir, "summary.json")
    if settings.resume and os.path.exists(done):
        # the settings are checked first: a finished run is reused only for the run it was
        check_workdir(spec.config, workdir, steps_per_epoch=spec.steps_per_epoch, run_config=spec.run_config,
                      may_change=SETTINGS_MAY_CHANGE)
        with open(done) as f:
            summary = json.load(f)
        if summary.get("steps") == spec.config.total_steps(spec.steps_per_epoch):
            return summary
    method = get_method(method_name, **spec.method_kwargs)
    model = spec.model
    sample = {k: v[: min(2, len(v))] for k, v in bench.train.items()}
    result = train_and_evaluate(
        spec.config, workdir, model=model, task_losses=bench.task_losses, method=method,
        optimizer=_optimizer(settings, spec.steps_per_epoch),
        train_batches=_batches(bench, settings, int(seeds[0])), steps_per_epoch=spec.steps_per_epoch,
        sample_batch=sample, last_shared=model.last_shared_layer(), eval_batches=_eval_batches(bench, settings),
        eval_metrics=bench.eval_metrics, init_variables=bench.init_variables, run_config=spec.run_config,
        may_change=SETTINGS_MAY_CHANGE,
    )
    history = result.history
    if history.status == "interrupted":
        raise RunInterrupted(stop_requested() or signal.SIGTERM, workdir)
    final_eval = history.epochs[-1]["eval"] if history.epochs else None
    per_seed_eval = _per_seed(final_eval, len(seeds))
    if bench.final_eval is not None and history.status == "completed":
        for i, evaluation in enumerate(per_seed_eval):
            state = result.state if len(seeds) == 1 else jax.tree.map(lambda x, i=i: x[i], result.state)
            variables = model_variables(state.params, state.batch_stats)
            extra = bench.final_eval(model, variables, _eval_batches(bench, settings))
            per_seed_eval[i] = {**(evaluation or {}), **extra}
    summary = {
        "status": history.status,
        "seeds": list(seeds),
        "eval": per_seed_eval,
        "cosine": _cosine_history(history, len(seeds)),
        "loss": _per_seed_steps(history, "loss", len(seeds)),
        "steps": len(history.train),
        "nonfinite_steps": len(history.nonfinite_steps),
        "skipped": history.skipped_steps(len(seeds)),
        "layer_cosines": history.metric("layer_cosines").tolist() if method_name == "recon" else None,
    }
    if history.status == "completed":
        with open(done, "w") as f:
            json.dump(summary, f)
    return summary


def _per_seed(evaluation: Optional[Mapping], num_seeds: int) -> list:
    """The finalized eval of each seed (the engine stacks per-seed lists when vmapped)."""
    if evaluation is None:
        return [None] * num_seeds
    if num_seeds == 1:
        return [dict(evaluation)]
    return [{k: v[i] for k, v in evaluation.items()} for i in range(num_seeds)]


def _cosine_history(history, num_seeds: int) -> list:
    """Per seed, the (steps, P) pairwise cosines of the last shared layer."""
    cos = history.metric("cosine")
    if cos.size == 0:
        return [[] for _ in range(num_seeds)]
    if num_seeds == 1:
        cos = cos[:, None]
    per_seed = []
    for s in range(num_seeds):
        matrices = cos[:, s]
        # steps without a cosine (skipped by the non-finite guard, or not computed) hold NaN: left out
        matrices = matrices[np.all(np.isfinite(matrices), axis=(1, 2))]
        per_seed.append(pairwise_cosines(matrices)[0].tolist() if len(matrices) else [])
    return per_seed


def _per_seed_steps(history, name: str, num_seeds: int) -> list:
    values = history.metric(name)
    if num_seeds == 1:
        values = values[:, None]
    return [values[:, s].tolist() for s in range(num_seeds)] if values.size else [[] for _ in range(num_seeds)]


def _seed_groups(settings: RunSettings) -> list[list[int]]:
    return [list(settings.seeds)] if settings.vmap_seeds else [[s] for s in settings.seeds]


def _failed(seeds: Sequence[int], error: BaseException) -> list:
    message = f"{type(error).__name__}: {error}"
    return [{"seed": seed, "metrics": {}, "eval": None, "sigma": None, "mu": None, "cosines": [], "loss": [],
             "status": "failed", "error": message, "nonfinite_steps": None, "steps": None} for seed in seeds]


def _report_failure(what: str, error: BaseException) -> None:
    print(f"{what} failed; the other rows go on:", file=sys.stderr)
    traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)


def _run_tag(seeds: Sequence[int]) -> str:
    return f"seed_{seeds[0]}" if len(seeds) == 1 else f"seeds_{seeds[0]}-{seeds[-1]}"


def run_row(bench: Benchmark, settings: RunSettings, row: Row, workdir: str) -> dict:
    """Runs one row for every seed; returns {"row", "label", "per_seed": [{"metrics", "sigma", ...}]}.

    A run that fails (an exception: e.g. stopped by the non-finite guard) gives its seeds the status
    "failed" and the error; the row's other seeds still run.

    Raises:
      RunInterrupted: a signal stopped a run.
    """
    per_seed: list = []
    for seeds in _seed_groups(settings):
        base = os.path.join(workdir, row.key, _run_tag(seeds))
        try:
            if row.method == "single_task":
                per_seed.extend(_single_task(bench, settings, row, base, seeds))
            elif row.method == "recon":
                per_seed.extend(_recon(bench, settings, row, base, seeds))
            else:
                summary = _train(bench, settings, base, row.method, row.method_kwargs, row.model_kwargs, seeds)
                per_seed.extend(_seed_results(bench, summary))
        except Exception as error:  # RunInterrupted is not an Exception: it stops the table
            _report_failure(f"row {row.key!r}, seeds {list(seeds)} ({base})", error)
            per_seed.extend(_failed(seeds, error))
    return {"row": row.key, "label": row.label, "method": row.method, "method_kwargs": dict(row.method_kwargs),
            "model_kwargs": dict(row.model_kwargs), "per_seed": per_seed}


def _seed_results(bench: Benchmark, summary: Mapping) -> list:
    out = []
    skipped = summary.get("skipped") or [summary.get("nonfinite_steps", 0)] * len(summary["seeds"])
    for i, seed in enumerate(summary["seeds"]):
        cosines = np.asarray(summary["cosine"][i], dtype=np.float64)
        stats = phi_stats(cosines) if cosines.size else None
        out.append({
            "seed": seed,
            "metrics": bench.table_metrics(summary["eval"][i]) if summary["eval"][i] else {},
            "eval": summary["eval"][i],
            "sigma": float(np.mean(stats.sigma)) if stats is not None else None,
            "mu": float(np.mean(stats.mu)) if stats is not None else None,
            "cosines": cosines.tolist(),
            "loss": summary["loss"][i],
            "status": summary["status"],
            "nonfinite_steps": int(skipped[i]),
            "steps": int(summary["steps"]),
        })
    return out


def _single_task(bench: Benchmark, settings: RunSettings, row: Row, base: str, seeds: list) -> list:
    """One run per task; each seed's metrics take task t's columns from run t."""
    summaries = [
        _train(bench, settings, os.path.join(base, f"task_{t}"), "single_task", {"task": t}, row.model_kwargs, seeds)
        for t in range(len(bench.task_names))
    ]
    out = []
    for i, seed in enumerate(seeds):
        metrics: dict = {}
        for t, summary in enumerate(summaries):
            if summary["eval"][i]:
                metrics.update(bench.single_task_metrics(t, summary["eval"][i]))
        if bench.combine_single_task is not None and len(metrics):
            metrics = bench.combine_single_task(metrics)
        out.append({"seed": seed, "metrics": metrics, "eval": [s["eval"][i] for s in summaries],
                    "sigma": None, "mu": None, "cosines": [], "loss": summaries[0]["loss"][i],
                    "status": "completed" if all(s["status"] == "completed" for s in summaries) else "incomplete",
                    "nonfinite_steps": sum(int(_skipped(s)[i]) for s in summaries),
                    "steps": sum(int(s["steps"]) for s in summaries)})
    return out


def _recon(bench: Benchmark, settings: RunSettings, row: Row, base: str, seeds: list) -> list:
    """Recon: record per-layer cosines (stage 1), score, make the top-K layers task-specific, retrain."""
    layers = tuple(bench.build_model(dict(row.model_kwargs)).shared_layer_names())
    stage1 = _train(bench, settings, os.path.join(base, "stage1"), "recon",
                    {"layers": layers, "base": "equal"}, row.model_kwargs, seeds,
                    epochs=settings.recon_stage1_epochs)
    history = np.asarray(stage1["layer_cosines"], dtype=np.float64)
    if len(seeds) > 1:  # (steps, S, L, T, T): pool the seeds' iterations
        history = history.reshape(-1, *history.shape[2:])
    scores = np.asarray(conflict_scores(history, settings.recon_s))
    k = min(settings.recon_k, len(layers))
    selected = select_conflict_layers(scores, layers, k)
    save_scores_json(os.path.join(base, "recon_scores.json"), layers, scores, threshold=settings.recon_s,
                     num_steps=int(history.shape[0]), k=k)
    model_kwargs = {**dict(row.model_kwargs), "task_specific_layers": tuple(selected)}
    retrain = _train(bench, settings, os.path.join(base, "retrain"), settings.recon_base,
                     dict(row.method_kwargs), model_kwargs, seeds)
    results = _seed_results(bench, retrain)
    for i, r in enumerate(results):  # the recording run's skipped steps count too
        r["recon_layers"] = list(selected)
        r["nonfinite_steps"] += int(_skipped(stage1)[i])
        r["steps"] += int(stage1["steps"])
    return results


def _skipped(summary: Mapping) -> list:
    """Per seed, the steps a run's non-finite guard skipped (older summaries: the count for all)."""
    return summary.get("skipped") or [summary.get("nonfinite_steps", 0)] * len(summary["seeds"])


def _steps_per_epoch(bench: Benchmark, settings: RunSettings) -> int:
    """Full training batches per epoch; a training split smaller than one batch is an error that says so,
    raised before the run writes anything."""
    n = len(next(iter(bench.train.values())))
    n_steps = steps_per_epoch(n, settings.batch_size)
    if n_steps < 1:
        raise ValueError(f"{bench.name}: the training split holds {n} examples, fewer than one batch of "
                         f"{settings.batch_size}; give --batch-size {n} or less, or more training data")
    return n_steps


def _planned(bench: Benchmark, settings: RunSettings, row: Row, base: str, seeds: list) -> list:
    """The runs of one row and seed group, as (workdir, spec or None: settings known only later)."""
    if row.method == "single_task":
        return [(os.path.join(base, f"task_{t}"),
                 _spec(bench, settings, os.path.join(base, f"task_{t}"), "single_task", {"task": t}, row.model_kwargs,
                       seeds)) for t in range(len(bench.task_names))]
    if row.method == "recon":
        layers = tuple(bench.build_model(dict(row.model_kwargs)).shared_layer_names())
        stage1 = _spec(bench, settings, os.path.join(base, "stage1"), "recon", {"layers": layers, "base": "equal"},
                       row.model_kwargs, seeds, epochs=settings.recon_stage1_epochs)
        # the retrained network's layers come from stage 1: its settings are compared when it starts
        retrain = _spec(bench, settings, os.path.join(base, "retrain"), settings.recon_base, dict(row.method_kwargs),
                        row.model_kwargs, seeds)
        return [(stage1.workdir, stage1), (retrain.workdir, dataclasses.replace(retrain, run_config=None))]
    return [(base, _spec(bench, settings, base, row.method, row.method_kwargs, row.model_kwargs, seeds))]


def check_table(bench: Benchmark, settings: RunSettings, rows: Sequence[Row], workdir: str) -> None:
    """Checks every run of ``rows`` before any trains, changing nothing: the batch fits the training
    split, each method accepts its hyper-parameters, and each run's workdir can be used as asked (see
    :func:`orthojax.training.check_workdir`: no other live run in it; an earlier run only with
    ``resume``, with the same settings, its checkpoints present). Finished runs are checked too, so that
    ``resume`` never reuses results under changed settings.

    Raises:
      ValueError, TypeError, KeyError, WorkdirError: the first problem when there is one; when there are
        several, a WorkdirError (all workdir problems) or a ValueError listing each, by run.
    """
    _steps_per_epoch(bench, settings)  # the batch fits (one message, not one per run)
    problems: list[tuple[str, Exception]] = []
    for row in rows:
        for seeds in _seed_groups(settings):
            base = os.path.join(workdir, row.key, _run_tag(seeds))
            try:
                planned = _planned(bench, settings, row, base, seeds)
            except (ValueError, TypeError, KeyError) as error:
                problems.append((f"row {row.key!r}", error))
                continue
            for run_dir, spec in planned:
                try:
                    get_method(spec.method_name, **spec.method_kwargs)
                    check_workdir(spec.config, run_dir, steps_per_epoch=spec.steps_per_epoch,
                                  run_config=spec.run_config, may_change=SETTINGS_MAY_CHANGE,
                                  compare_config=spec.run_config is not None)
                except (WorkdirError, ValueError, TypeError, KeyError) as error:
                    problems.append((f"row {row.key!r} ({run_dir})", error))
    if not problems:
        return
    if len(problems) == 1:
        raise problems[0][1]
    listed = "\n".join(f"- {where}: {type(error).__name__}: {error}" for where, error in problems)
    kind = WorkdirError if all(isinstance(e, WorkdirError) for _, e in problems) else ValueError
    raise kind(f"{len(problems)} runs cannot start (nothing was run or written):\n{listed}")


def _failed_row(row: Row, settings: RunSettings, error: BaseException) -> dict:
    return {"row": row.key, "label": row.label, "method": row.method, "method_kwargs": dict(row.method_kwargs),
            "model_kwargs": dict(row.model_kwargs), "per_seed": _failed(list(settings.seeds), error)}


def run_table(bench: Benchmark, settings: RunSettings, rows: Sequence[Row], workdir: str) -> list:
    """Runs every row; returns the list of row results (see :func:`run_row`). A row that fails is
    recorded (its seeds' status "failed", with the error) and the next row runs.

    Raises:
      RunInterrupted: a signal stopped a run; no further run was started.
    """
    results = []
    for row in rows:
        _check_stop(os.path.join(workdir, row.key))
        try:
            results.append(run_row(bench, settings, row, workdir))
        except Exception as error:
            _report_failure(f"row {row.key!r}", error)
            results.append(_failed_row(row, settings, error))
    return results
