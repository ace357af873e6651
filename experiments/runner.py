"""Runs a benchmark's table: every row (method + model options) for every seed, through one engine.

A :class:`Benchmark` says what is specific to a dataset (model, task losses, metrics, data); this module
does the rest the same way for all of them and for every method, built-in or a user's
(``"my_pkg.my_module:my_method"``): it builds the method from the registry with the run's context
(:class:`orthojax.methods.RunContext`: the number of tasks, the learning rate, the steps per epoch, the
model's representation size and shared layers), trains it once, or, for a method with a multi-stage
protocol (:mod:`orthojax.methods.protocol`), lets the protocol drive the runs; then it writes the per-row
summaries that :mod:`experiments.report` turns into ``results.md`` / ``results.json`` and plots.

Layout of ``<workdir>``: ``<row>/seed_<s>/`` per run, ``<row>/seed_<s>/<stage>/`` per stage of a protocol
(e.g. ``task_<t>`` for single task, ``stage1`` and ``retrain`` for Recon), each an engine workdir
(config.json, metrics.jsonl, tb/, checkpoints/, history.json).

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
from orthojax.methods import MethodSpec, Outcome, RunContext, StageResult, get_method, method_spec
from orthojax.training import (
    EvalMetrics, TrainConfig, WorkdirError, check_workdir, model_variables, stop_requested, train_and_evaluate,
)
from orthojax.training.history import History

Batch = Mapping[str, Any]

__all__ = ["Benchmark", "Row", "RunInterrupted", "RunSettings", "SETTINGS_MAY_CHANGE", "check_table", "row_for",
           "run_row", "run_table"]

SETTINGS_MAY_CHANGE = tuple(f"settings.{name}" for name in (
    "resume", "progress", "checkpoint_every", "max_steps", "seeds", "vmap_seeds", "epochs"))
"""RunSettings fields that a resumed run may see changed: harmless ones (progress, checkpoint cadence,
max_steps: checked by the engine), or ones whose effect on a run is recorded elsewhere in its config
(its seeds, number of epochs)."""


class RunInterrupted(KeyboardInterrupt):
    """A signal stopped a run (at a checkpoint): no other run of the table starts."""

    def __init__(self, signum: int, workdir: str):
        super().__init__(f"signal {signum}: stopped in {workdir}")
        self.signum = signum
        self.workdir = workdir


@dataclasses.dataclass(frozen=True)
class Row:
    """One table row: a method (registry name, alias or ``"pkg.module:attr"``) with its hyper-parameters
    and model options."""

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
      latent_size: optional ``fn(model) -> int``: channels of the shared representation, for models without
        a ``latent_size()`` method (a method may take it from the run's context, e.g. RotoGrad).
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
    latent_size: Optional[Callable[[nn.Module], int]] = None
    augment: Optional[Callable[[Batch, np.random.Generator], Batch]] = None
    combine_single_task: Optional[Callable[[dict], dict]] = None
    final_eval: Optional[Callable[[nn.Module, Any, Callable], dict]] = None
    init_variables: Optional[Callable[[Any], Any]] = None


def row_for(key: str, known_rows: Mapping[str, Row], cli_kwargs: Mapping[str, Mapping[str, Any]]) -> Row:
    """The row ``key``: a benchmark-defined row, else the method of that name (or reference).

    ``cli_kwargs`` maps method names to hyper-parameters from the command line (e.g. {"cosreg":
    {"alpha": 10}}); they complete the row's own hyper-parameters, never override them.
    """
    row = known_rows[key] if key in known_rows else Row(key=key, label=key, method=key)
    kwargs = {**dict(cli_kwargs.get(row.method, {})), **dict(row.method_kwargs)}
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


def _latent_size(bench: Benchmark, model: Any) -> Optional[int]:
    """The model's representation size: its ``latent_size()``, else the benchmark's, else None."""
    if callable(getattr(model, "latent_size", None)):
        return int(model.latent_size())
    return None if bench.latent_size is None else int(bench.latent_size(model))


def _shared_path(model: Any) -> str:
    """The subtree of every shared parameter: the model's ``shared_path()``, else "encoder"."""
    path = getattr(model, "shared_path", None)
    return str(path()) if callable(path) else "encoder"


def _shared_layer_names(model: Any) -> tuple:
    names = getattr(model, "shared_layer_names", None)
    return tuple(names()) if callable(names) else ()


def run_context(bench: Benchmark, settings: RunSettings, model: Any, model_kwargs: Mapping) -> RunContext:
    """What a method may take from the run when its user leaves a hyper-parameter unset."""
    return RunContext(num_tasks=len(bench.task_names), learning_rate=settings.learning_rate,
                      steps_per_epoch=_steps_per_epoch(bench, settings), latent_size=_latent_size(bench, model),
                      model_kwargs=dict(model_kwargs), shared_layer_names=_shared_layer_names(model))


def _spec(bench: Benchmark, settings: RunSettings, workdir: str, method_name: str, method_kwargs: Mapping,
          model_kwargs: Mapping, seeds: Sequence[int], epochs: Optional[int] = None) -> _RunSpec:
    model = bench.build_model(dict(model_kwargs))
    method = method_spec(method_name)
    # the hyper-parameters the user set, and those the method takes from the run (not the defaults)
    kwargs = method.complete(method_kwargs, run_context(bench, settings, model, model_kwargs))
    method_name = method.name
    n_steps = _steps_per_epoch(bench, settings)
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
    """One engine run (S vmapped seeds when ``len(seeds) > 1``); returns the run summary (its "history":
    the run's :class:`~orthojax.training.history.History`, or None for a finished run that was reused).

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
            return {**summary, "history": None}
    method = get_method(method_name, **spec.method_kwargs)
    model = spec.model
    sample = {k: v[: min(2, len(v))] for k, v in bench.train.items()}
    result = train_and_evaluate(
        spec.config, workdir, model=model, task_losses=bench.task_losses, method=method,
        optimizer=_optimizer(settings, spec.steps_per_epoch),
        train_batches=_batches(bench, settings, int(seeds[0])), steps_per_epoch=spec.steps_per_epoch,
        sample_batch=sample, last_shared=model.last_shared_layer(), shared=_shared_path(model),
        eval_batches=_eval_batches(bench, settings),
        eval_metrics=bench.eval_metrics, init_variables=bench.init_variables, run_config=spec.run_config,
        may_change=SETTINGS_MAY_CHANGE, task_names=bench.task_names,
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
    }
    if history.status == "completed":
        with open(done, "w") as f:
            json.dump(summary, f)
    return {**summary, "history": history}


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
            spec = method_spec(row.method)
            if spec.protocol is None:
                summary = _train(bench, settings, base, row.method, row.method_kwargs, row.model_kwargs, seeds)
                per_seed.extend(_seed_results(bench, summary))
            else:
                stages = RowStages(bench, settings, row, base, seeds)
                outcome = spec.protocol.run(stages, _protocol_hyperparameters(spec, row))
                per_seed.extend(_outcome_results(bench, stages, outcome))
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


def _protocol_hyperparameters(spec: MethodSpec, row: Row) -> dict:
    """A protocol's hyper-parameters: the row's, checked against the method's names (no defaults added)."""
    return spec.complete(row.method_kwargs)


def _metric_per_seed(summary: Mapping, num_seeds: int) -> Callable[[str], np.ndarray]:
    """``fn(name) -> (S, steps, ...)``: a step metric of a run, from its history (rebuilt from its
    ``metrics.jsonl`` when the run was reused)."""
    def metric(name: str) -> np.ndarray:
        history = summary.get("history") or History.from_metrics(summary["workdir"])
        values = np.asarray(history.metric(name))
        return values[None] if num_seeds == 1 else np.moveaxis(values, 1, 0)
    return metric


class RowStages:
    """The :class:`orthojax.methods.Stages` of one row and group of seeds: each stage is an engine run in
    ``<row workdir>/<stage>``, with the row's model options (plus the stage's) and the table's settings."""

    def __init__(self, bench: Benchmark, settings: RunSettings, row: Row, base: str, seeds: Sequence[int]):
        self.bench, self.settings, self.row, self.base, self.seeds = bench, settings, row, base, list(seeds)
        self.num_tasks = len(bench.task_names)
        self.num_seeds = len(self.seeds)
        self.summaries: dict[str, dict] = {}

    def _model_kwargs(self, model_kwargs: Mapping) -> dict:
        return {**dict(self.row.model_kwargs), **dict(model_kwargs)}

    def shared_layer_names(self, model_kwargs: Mapping[str, Any] = {}) -> tuple:
        return _shared_layer_names(self.bench.build_model(self._model_kwargs(model_kwargs)))

    def train(self, stage: str, method: str, hyperparameters: Mapping[str, Any], *,
              model_kwargs: Mapping[str, Any] = {}, epochs: Optional[int] = None) -> StageResult:
        workdir = self.stage_dir(stage)
        summary = _train(self.bench, self.settings, workdir, method, hyperparameters,
                         self._model_kwargs(model_kwargs), self.seeds, epochs)
        summary = {**summary, "workdir": workdir}
        self.summaries[stage] = summary
        return StageResult(workdir=workdir, evaluations=tuple(summary["eval"]),
                           metric=_metric_per_seed(summary, self.num_seeds), status=summary["status"])

    def write_json(self, name: str, obj: Any) -> str:
        path = self.stage_dir(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
        return path

    def stage_dir(self, stage: str) -> str:
        if not isinstance(stage, str) or not stage or os.path.isabs(stage) or ".." in stage.split("/"):
            raise ValueError(f"a stage name must be a relative path inside the row's workdir; got {stage!r}")
        return os.path.join(self.base, stage)


def _outcome_results(bench: Benchmark, stages: RowStages, outcome: Outcome) -> list:
    """Per-seed results of a protocol's row: the outcome's stage (or one stage per task); every stage's
    steps and skipped steps counted; the outcome's extra fields added."""
    named = [outcome.stage] if outcome.stage is not None else list(outcome.task_stages)
    missing = [name for name in named if name not in stages.summaries]
    if missing:
        raise ValueError(f"the protocol's outcome names stages it did not train: {missing} (trained: "
                         f"{sorted(stages.summaries)})")
    if outcome.stage is not None:
        results = _seed_results(bench, stages.summaries[outcome.stage])
        others = [s for name, s in stages.summaries.items() if name != outcome.stage]
        for i, r in enumerate(results):
            r["nonfinite_steps"] += sum(int(_skipped(s)[i]) for s in others)
            r["steps"] += sum(int(s["steps"]) for s in others)
    else:
        results = _task_results(bench, [stages.summaries[name] for name in named], stages.seeds)
    for key, values in outcome.extra.items():
        if len(values) != len(results):
            raise ValueError(f"the protocol's outcome field {key!r} has {len(values)} values for "
                             f"{len(results)} seeds")
        for r, value in zip(results, values):
            r[key] = value
    return results


def _task_results(bench: Benchmark, summaries: Sequence[Mapping], seeds: Sequence[int]) -> list:
    """One run per task: each seed's metrics take task t's columns from run t."""
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
    """The runs of one row and seed group, as (workdir, spec); a spec's run_config is None for a stage
    whose settings depend on earlier stages (compared when it starts)."""
    spec = method_spec(row.method)
    if spec.protocol is None:
        return [(base, _spec(bench, settings, base, row.method, row.method_kwargs, row.model_kwargs, seeds))]
    stages = RowStages(bench, settings, row, base, seeds)
    out = []
    for planned in spec.protocol.plan(stages, _protocol_hyperparameters(spec, row)):
        run_dir = stages.stage_dir(planned.stage)
        run = _spec(bench, settings, run_dir, planned.method, planned.hyperparameters,
                    {**dict(row.model_kwargs), **dict(planned.model_kwargs)}, seeds, epochs=planned.epochs)
        out.append((run_dir, run if planned.settled else dataclasses.replace(run, run_config=None)))
    return out


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
