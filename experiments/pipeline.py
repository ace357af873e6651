"""The flow every experiment shares: set up devices, run the table, write results and plots."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import traceback
import types
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional, Sequence

import jax
import numpy as np

from experiments.cli import Command, Distributed, Experiment, parse_command, row_key
from experiments.configs import ExperimentConfig, config_changes, method_key, save_config
from experiments.report import (
    Column, comparison, failed_runs, row_label, step_time, summarize, training_lines, write_plots, write_results,
)
from experiments.runner import Benchmark, Row, RunInterrupted, RunSettings, check_table, run_context, run_table
from experiments.runner import _eval_batches, _optimizer, _steps_per_epoch  # as the runs were trained
from orthojax.data import steps_per_epoch
from orthojax.diagnostics import pairwise_cosines, phi_stats
from orthojax.methods.protocol import StageResult
from orthojax.methods.registry import RunContext, build_method, method_names, method_spec, resolve_method_name
from orthojax.training import (
    CheckpointsMissingError, ConfigChangedError, History, StopRequest, TrainConfig, WorkdirError, WorkdirLock,
    evaluate_checkpoint, initialize_distributed, read_config,
)

__all__ = ["EXIT_FAILED_RUNS", "Table", "average_last_epochs", "check_config", "check_rows", "command_scope",
           "compilation_cache_dir", "evaluate_table", "missing_hyperparameters", "protocol_lines", "run_benchmark",
           "run_command", "run_experiment",
           "run_parsed", "run_settings", "setup_runtime", "split_unsupported", "table_rows"]

EXIT_FAILED_RUNS = 1
"""Exit status of a command that finished with failed runs (they are listed in results.md); a command
stopped by a signal exits with 128 + the signal number (143 for SIGTERM)."""


def compilation_cache_dir(flag: Optional[str]) -> Optional[str]:
    """The persistent compilation cache's directory: ``flag`` (``--compilation-cache``), else
    ``$ORTHOJAX_COMPILATION_CACHE``, else ``~/.cache/orthojax/xla``; None when it is "off"."""
    value = flag or os.environ.get("ORTHOJAX_COMPILATION_CACHE") or os.path.join("~", ".cache", "orthojax", "xla")
    return None if value.strip().lower() == "off" else os.path.expanduser(value)


def setup_runtime(distributed: Optional[Distributed], compilation_cache: Optional[str] = None) -> None:
    """Multi-host initialisation, the persistent compilation cache (see :func:`compilation_cache_dir`) and a
    line saying which devices run the job.

    ``distributed`` (None: one process) goes to :func:`jax.distributed.initialize`: its coordinator
    address, number of processes and process id where given, what JAX detects (SLURM, Open MPI, Cloud TPU)
    for the others. CPU processes exchange their collectives through gloo.
    """
    if distributed is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        initialize_distributed(True, **distributed.kwargs())
    cache = compilation_cache_dir(compilation_cache)
    if cache is not None:
        jax.config.update("jax_compilation_cache_dir", cache)
        # every program, however quickly it compiled: a table's runs (single-task rows, seeds, a resumed or
        # repeated command) then share them whatever the machine's speed (JAX's default skips those < 1 s)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if jax.process_index() == 0:
        devices = jax.devices()
        print(f"devices: {len(devices)} x {devices[0].platform} ({jax.process_count()} process(es))",
              file=sys.stderr)


def table_rows(config: ExperimentConfig, paper_rows: Mapping[str, Row]) -> list[Row]:
    """The rows of ``config.rows``: a row of the paper's table (``paper_rows``), else a row named after the
    method (a registry name or a user reference "pkg.module:attr").

    Each row's hyper-parameters are ``config.methods[<its method>]`` completed by the row's own (a paper
    row's fixed values win); a label with ``{name}`` fields is formatted with them ("CosReg (alpha={alpha:g})").
    """
    rows = []
    for name in config.rows:
        row = paper_rows[name] if name in paper_rows else Row(key=row_key(name), label=row_label(name), method=name)
        hyperparameters = {**dict(config.methods.get(method_key(row.method), {})), **dict(row.method_kwargs)}
        label = row.label.format(**hyperparameters) if "{" in row.label else row.label
        rows.append(dataclasses.replace(row, label=label, method_kwargs=hyperparameters))
    return rows


def run_settings(config: ExperimentConfig, command: Command) -> RunSettings:
    """The runner's settings for the table: ``config.train`` with the command's resume and progress."""
    train = config.train
    return RunSettings(
        epochs=train.epochs, batch_size=train.batch_size, learning_rate=train.lr, seeds=tuple(train.seeds),
        lr_decay_every_epochs=train.lr_decay_every_epochs, lr_decay_factor=train.lr_decay_factor,
        eval_batch_size=train.eval_batch_size, max_steps=train.max_steps, checkpoint_every=train.checkpoint_every,
        vmap_seeds=train.vmap_seeds, resume=command.resume or command.eval_only, progress=command.progress)


def check_config(command: Command) -> None:
    """A resumed or evaluated table keeps its saved configuration, but for the fields that may change
    (:data:`experiments.configs.RESUMABLE_FIELDS`).

    Raises:
      ConfigChangedError: every other change, named (saved -> new).
    """
    if command.saved is None:
        return
    changes = config_changes(command.saved, command.config)
    if changes:
        listed = "; ".join(f"{name}: {old!r} -> {new!r}" for name, old, new in changes)
        raise ConfigChangedError(
            f"{command.workdir}: {'--eval-only' if command.eval_only else '--resume'} with settings that change "
            f"the table ({listed}); only the rows, seeds, epochs, --max-steps and the checkpoint cadence may "
            f"change. Rerun with the saved settings ({os.path.join(command.workdir, 'config.json')}) or use a new "
            f"workdir")


def check_rows(rows: Sequence[Row], settings: RunSettings) -> tuple[list, RunSettings]:
    """All of ``rows`` checked before any of them trains: each row's method resolved to its registry name
    (``"EW"`` -> ``"equal"``; user references unchanged), the row keys distinct.

    Returns:
      ``(rows, settings)`` with the registry names filled in.

    Raises:
      KeyError: rows whose method is unknown (all of them, in one message, with the valid names).
      ValueError: two rows with the same key (they would write the same run directories).
    """
    checked, unknown = [], []
    for row in rows:
        try:
            checked.append(dataclasses.replace(row, method=resolve_method_name(row.method)))
        except KeyError as error:
            unknown.append((row, error.args[0]))
    if unknown:
        if len(unknown) == 1:
            raise KeyError(f"row {unknown[0][0].key!r}: {unknown[0][1]}")
        names = ", ".join(f"{row.key!r} (method {row.method!r})" for row, _ in unknown)
        raise KeyError(f"unknown method in rows {names}; known methods: {', '.join(method_names())}")
    keys = [row.key for row in checked]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"rows given more than once: {repeated}")
    return checked, settings


@contextlib.contextmanager
def command_scope(workdir: str) -> Iterator[StopRequest]:
    """The scope of one command on ``workdir``: its lock (one command per workdir; process 0 takes it)
    and a :class:`~orthojax.training.StopRequest` that every run inside shares, so that SIGTERM / SIGINT
    stops the current run at a checkpoint and starts no other. A run stopped that way ends the command
    with ``SystemExit(128 + signal)``, after a line saying how to resume.
    """
    lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
    with StopRequest() as stop:
        if lock is not None:
            lock.acquire()
        try:
            yield stop
        except RunInterrupted as interrupted:
            where = (f"stopped at a checkpoint in {interrupted.workdir}" if os.path.isdir(interrupted.workdir)
                     else f"stopped before the run in {interrupted.workdir} started")
            print(f"signal {interrupted.signum}: {where}; no other run was started. Continue with the same "
                  f"command and --resume.", file=sys.stderr, flush=True)
            raise SystemExit(128 + int(interrupted.signum)) from None
        finally:
            if lock is not None:
                lock.release()


def missing_hyperparameters(bench: Benchmark, settings: RunSettings, row: Row) -> Optional[str]:
    """Why ``row`` cannot be built, when its method has required hyper-parameters that neither the row nor
    the run gives (e.g. a trimmed mean's ``trim_number``); None when it has them all."""
    spec = method_spec(row.method)
    if spec.protocol is not None:
        return None  # a protocol gives its stages their hyper-parameters (checked with its plan)
    try:
        context = run_context(bench, settings, bench.build_model(dict(row.model_kwargs)), row.model_kwargs)
    except (TypeError, ValueError):
        return None  # the model's own error is raised, with its message, by the table's check
    given = spec.complete(row.method_kwargs, context)
    missing = [hp.name for hp in spec.hyperparameters if hp.required and hp.name not in given]
    if not missing:
        return None
    return (f"{spec.name} needs {', '.join(missing)} (no default); give "
            + " ".join(f"--set methods.{spec.name}.{name}=VALUE" for name in missing))


def split_unsupported(rows: Sequence[Row], unsupported: Optional[Callable[[Row], Optional[str]]]
                      ) -> tuple[list[Row], dict[str, str]]:
    """The rows that can run, and {label: reason} for those that cannot (``unsupported(row)``: the reason,
    or None).

    Raises:
      ValueError: no row can run (the message gives every reason).
    """
    if unsupported is None:
        return list(rows), {}
    runnable, refused = [], {}
    for row in rows:
        reason = unsupported(row)
        if reason:
            refused[row.label] = reason
        else:
            runnable.append(row)
    if not runnable:
        raise ValueError("no row of the table can run on this model: "
                         + "; ".join(f"{label}: {why}" for label, why in refused.items()))
    return runnable, refused


def run_benchmark(bench: Benchmark, rows: Sequence[Row], settings: RunSettings, workdir: str, *, title: str,
                  columns: Sequence[Column], paper: Mapping[str, Mapping[str, float]], data_info: Mapping,
                  protocol: Mapping[str, Any], notes: Sequence[str] = (),
                  extra: Optional[Callable[[list, list], tuple[list, dict]]] = None,
                  config: Optional[ExperimentConfig] = None, eval_only: bool = False,
                  trivial: Optional[Mapping[str, float]] = None, directions: Mapping[str, bool] = {},
                  metric_labels: Mapping[str, str] = {}, definitions: Mapping[str, str] = {},
                  protocol_steps: Optional[int] = None, preset: str = "paper",
                  unsupported: Optional[Callable[[Row], Optional[str]]] = None, last_epochs: int = 1) -> list:
    """Runs ``rows`` and writes ``results.md``, ``results.json`` and ``plots/`` in ``workdir``.

    ``config``: the table's configuration, saved as ``<workdir>/config.json`` before the first run starts.
    ``eval_only``: evaluate the runs' latest checkpoints instead of training (:func:`evaluate_table`).

    ``extra(row_results, summary) -> (sections, json)`` adds benchmark-specific sections (e.g. the
    field's nine NYUv2 metrics and Delta_m).

    What a reader needs to trust the table (see :mod:`experiments.report`): ``trivial`` (the trivial
    predictor's columns, a reference row), ``directions`` (metric -> higher is better: the comparison of the
    rows with Delta_m%, mean rank and measured step time, labelled by ``metric_labels``), ``definitions``
    (column label -> definition), ``protocol_steps`` and ``preset`` (the training-length statement),
    ``unsupported(row) -> reason or None`` (rows the model cannot run: listed with the reason, not run) and
    ``last_epochs`` (> 1: the numbers are the mean of the last that many epochs' evaluations of each run,
    read from its ``metrics.jsonl``).

    Every row and every run is checked before the first one trains, and before anything is written
    (:func:`check_rows`, :func:`experiments.runner.check_table`); the command then holds the workdir
    (:func:`command_scope`). A run that fails is reported in results.md while the other rows run.

    Raises:
      KeyError, ValueError, TypeError, WorkdirError: a row or a run that cannot start (nothing was run).
      SystemExit: :data:`EXIT_FAILED_RUNS` after writing the results when runs failed; 128 + the signal
        when a signal stopped the command (no results written; ``--resume`` continues it).
    """
    try:
        rows, settings = check_rows(rows, settings)  # every row, before the first one trains
        rows, not_run = split_unsupported(
            rows,
            lambda row: (unsupported(row) if unsupported else None) or missing_hyperparameters(bench, settings, row))
        WorkdirLock(workdir).check()  # another command on this workdir: said first
        check_table(bench, settings, rows, workdir)  # every run's settings and workdir, changing nothing
    except (KeyError, ValueError, TypeError) as error:
        error.refused_before_training = True  # nothing ran or was written: run_command says it in one line
        raise
    primary = jax.process_index() == 0
    with command_scope(workdir) as stop:
        if config is not None and primary and not eval_only:
            save_config(config, workdir)
        row_results = (evaluate_table if eval_only else run_table)(bench, settings, rows, workdir)
        if stop.signum is not None:
            raise RunInterrupted(stop.signum, workdir)
        evaluated = "the final-epoch evaluation"
        if last_epochs > 1 and not eval_only:
            row_results = average_last_epochs(bench, settings, rows, row_results, workdir, last_epochs)
            evaluated = f"the mean of the last {last_epochs} epochs' evaluations of each run"
        summary = summarize(row_results, columns)
        sections, extra_json = [], {}
        if extra:
            try:
                sections, extra_json = extra(row_results, summary)
            except Exception as error:  # the table is still written
                traceback.print_exc()
                sections = [("Benchmark-specific section", f"Not written: {type(error).__name__}: {error}")]
        if directions:
            times = {row.key: step_time(os.path.join(workdir, row.key), settings.batch_size) for row in rows}
            text, payload = comparison(summary, directions, metric_labels, trivial=trivial, step_times=times,
                                       not_run=not_run)
            sections = [("Comparison of the methods", text), *sections]
            extra_json = {**extra_json, "comparison": payload}
        elif not_run:
            notes = [*notes, *(f"{label}: not run: {why}" for label, why in not_run.items())]
        extra_json = {**extra_json, "not_run": not_run}
        training = training_lines(summary, preset=preset, planned_steps=settings.epochs * _steps_per_epoch(bench, settings),
                                  max_steps=settings.max_steps, protocol_steps=protocol_steps)
        if primary:
            try:
                plots, plot_notes = write_plots(workdir, row_results, title, bench=bench, columns=columns)
                notes = [*notes, *plot_notes]
            except Exception as error:
                traceback.print_exc()
                plots, notes = [], [*notes, f"Plots not written: {type(error).__name__}: {error}"]
            write_results(workdir, title=title, data_info=data_info, protocol=protocol, summary=summary,
                          columns=columns, paper=paper, notes=notes, extra_sections=sections,
                          extra_json={**extra_json, "plots": plots}, trivial=trivial, definitions=definitions,
                          training=training, evaluated=evaluated)
            print(open(os.path.join(workdir, "results.md")).read())
            print(f"results: {os.path.join(workdir, 'results.md')}", file=sys.stderr)
    failed = failed_runs(summary)
    if failed:
        print(f"{len(failed)} run(s) failed (listed in {os.path.join(workdir, 'results.md')}):", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(EXIT_FAILED_RUNS)
    return summary


def run_command(main: Callable[[], Any]) -> None:
    """Runs an experiment's ``main()`` as a command: a refusal found before training (a workdir in use, an
    existing run, changed settings, missing or damaged checkpoints: :class:`~orthojax.training.WorkdirError`;
    a row or a method's hyper-parameter that cannot run, found by :func:`run_benchmark`'s checks) is one line
    on stderr and exit status 1, instead of a traceback; anything else propagates."""
    try:
        main()
    except WorkdirError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except (KeyError, ValueError, TypeError) as error:
        if not getattr(error, "refused_before_training", False):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


@dataclasses.dataclass(frozen=True)
class Table:
    """What an experiment makes of its configuration: the benchmark and how its results are reported.

    Attributes:
      bench: the benchmark (data, model, losses, metrics).
      title: the results' title.
      columns: the table's columns ``(key, label, digits)``.
      paper: the paper's numbers by row.
      data_info: the data's description (name, source, synthetic, ...).
      protocol: the protocol lines of ``results.md``.
      notes: lines added under the table.
      extra: ``fn(row_results, summary) -> (sections, json)``: benchmark-specific sections.
      trivial: the trivial predictor's columns (:func:`experiments.dense.trivial_metrics`), or None.
      directions: metric key -> higher is better: the metrics of the comparison (Delta_m%, mean rank).
      metric_labels: metric key -> its label in the comparison.
      definitions: column label -> its definition, written under the table.
      protocol_steps: steps per run under the paper protocol on the full training split (None: unknown).
      unsupported: ``fn(row) -> reason`` for rows the model cannot run (None: every row can).
      last_epochs: > 1: report the mean of the last that many epochs' evaluations (MTAN's protocol).
    """

    bench: Benchmark
    title: str
    columns: Sequence[Column]
    paper: Mapping[str, Mapping[str, float]]
    data_info: Mapping[str, Any]
    protocol: Mapping[str, Any]
    notes: Sequence[str] = ()
    extra: Optional[Callable[[list, list], tuple[list, dict]]] = None
    trivial: Optional[Mapping[str, float]] = None
    directions: Mapping[str, bool] = dataclasses.field(default_factory=dict)
    metric_labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    definitions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    protocol_steps: Optional[int] = None
    unsupported: Optional[Callable[[Row], Optional[str]]] = None
    last_epochs: int = 1


def protocol_lines(config: ExperimentConfig) -> dict:
    """The protocol lines every experiment reports: preset, epochs, batch size, optimiser, seeds, and the
    hyper-parameters set for the methods."""
    train = config.train
    schedule = (f"x{train.lr_decay_factor:g} every {train.lr_decay_every_epochs} epochs"
                if train.lr_decay_every_epochs else "constant")
    lines = {"preset": config.preset, "epochs": train.epochs, "batch size": train.batch_size,
             "optimiser": f"Adam lr {train.lr:g} ({schedule})", "seeds": list(train.seeds)}
    if train.max_steps is not None:
        lines["max steps"] = train.max_steps
    for name, values in config.methods.items():
        if values:
            lines[f"{name} hyper-parameters"] = ", ".join(f"{k} {v}" for k, v in values.items())
    return lines


def run_experiment(experiment: Experiment, build: Callable[[ExperimentConfig], Table],
                   argv: Optional[Sequence[str]] = None) -> list:
    """The whole command: parse (:func:`experiments.cli.parse_command`), then :func:`run_parsed`."""
    return run_parsed(parse_command(experiment, argv), build, experiment.rows)


def run_parsed(command: Command, build: Callable[[ExperimentConfig], Table], paper_rows: Mapping[str, Row]) -> list:
    """Checks a resumed or evaluated table's configuration against the saved one, sets up the runtime, builds
    the table and runs it (or, with ``--eval-only``, evaluates it); see :func:`run_benchmark`.

    Raises:
      ConfigChangedError: ``--resume`` / ``--eval-only`` with settings that change the table (nothing runs).
    """
    check_config(command)
    setup_runtime(command.distributed, command.compilation_cache)
    table = build(command.config)
    rows = table_rows(command.config, paper_rows)
    return run_benchmark(table.bench, rows, run_settings(command.config, command), command.workdir,
                         title=table.title, columns=table.columns, paper=table.paper, data_info=table.data_info,
                         protocol=table.protocol, notes=table.notes, extra=table.extra, config=command.config,
                         eval_only=command.eval_only, trivial=table.trivial, directions=table.directions,
                         metric_labels=table.metric_labels, definitions=table.definitions,
                         protocol_steps=table.protocol_steps, preset=command.config.preset,
                         unsupported=table.unsupported, last_epochs=table.last_epochs)


# ------------------------------------------------------------------------------------------------------------
# --eval-only: the table's checkpoints evaluated, nothing trained
# ------------------------------------------------------------------------------------------------------------

class _Evaluated(NamedTuple):
    """One evaluated run: its stage result and its per-seed rows for the report."""

    result: StageResult
    per_seed: list


def _run_context(bench: Benchmark, settings: RunSettings, model: Any, model_kwargs: Mapping, n_steps: int) -> RunContext:
    latent = getattr(model, "latent_size", None)
    latent = latent() if callable(latent) else getattr(bench, "latent_size", lambda m: None)(model)
    names = getattr(model, "shared_layer_names", None)
    return RunContext(num_tasks=len(bench.task_names), learning_rate=settings.learning_rate, steps_per_epoch=n_steps,
                      latent_size=latent, model_kwargs=dict(model_kwargs),
                      shared_layer_names=tuple(names()) if callable(names) else ())


def _per_seed_history(history: History, name: str, num_seeds: int) -> np.ndarray:
    """``history.metric(name)`` as (S, steps, ...)."""
    values = np.asarray(history.metric(name))
    if values.size == 0:
        return np.zeros((num_seeds, 0))
    return values[None] if num_seeds == 1 else np.swapaxes(values, 0, 1)


def evaluate_run(bench: Benchmark, settings: RunSettings, workdir: str) -> _Evaluated:
    """Evaluates the newest intact checkpoint of the engine run in ``workdir`` with the method, model and
    seeds its own ``config.json`` records (:func:`orthojax.training.evaluate_checkpoint`); trains nothing
    and writes nothing.

    Raises:
      CheckpointsMissingError: the run never started or holds no checkpoint.
      CheckpointError: its checkpoints are damaged.
    """
    saved = read_config(workdir)
    if saved is None:
        raise CheckpointsMissingError(f"{workdir}: the run never started (no config.json); nothing to evaluate")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in saved["train"].items() if k in known})
    model_kwargs = dict(saved.get("model_kwargs") or {})
    model = bench.build_model(model_kwargs)
    n_steps = steps_per_epoch(len(next(iter(bench.train.values()))), settings.batch_size)
    context = _run_context(bench, settings, model, model_kwargs, n_steps)
    method = build_method(saved["method"], context, **dict(saved.get("method_kwargs") or {}))
    sample = {k: v[: min(2, len(v))] for k, v in bench.train.items()}
    evaluation = evaluate_checkpoint(
        config, workdir, model=model, method=method, optimizer=_optimizer(settings, n_steps), sample_batch=sample,
        eval_batches=_eval_batches(bench, settings), eval_metrics=bench.eval_metrics, steps_per_epoch=n_steps)
    seeds = [int(s) for s in saved.get("seeds") or range(config.seed, config.seed + config.num_seeds)]
    metrics = evaluation.metrics
    evaluations = ([dict(metrics)] if len(seeds) == 1 else
                   [{k: v[i] for k, v in metrics.items()} for i in range(len(seeds))])
    history = History.from_metrics(workdir, up_to=evaluation.step)
    status = "completed" if evaluation.step >= config.total_steps(n_steps) else "incomplete"
    cosines = _per_seed_history(history, "cosine", len(seeds))
    losses = _per_seed_history(history, "loss", len(seeds))
    skipped = history.skipped_steps(len(seeds))
    per_seed = []
    for i, seed in enumerate(seeds):
        pairs = cosines[i][np.all(np.isfinite(cosines[i]), axis=tuple(range(1, cosines[i].ndim)))] \
            if cosines[i].size else cosines[i]
        flat = pairwise_cosines(pairs)[0] if pairs.size and pairs.ndim == 3 else np.zeros((0,))
        stats = phi_stats(flat) if flat.size else None
        per_seed.append({
            "seed": seed, "metrics": bench.table_metrics(evaluations[i]), "eval": evaluations[i],
            "sigma": float(np.mean(stats.sigma)) if stats is not None else None,
            "mu": float(np.mean(stats.mu)) if stats is not None else None, "cosines": flat.tolist(),
            "loss": losses[i].tolist(), "status": status, "nonfinite_steps": int(skipped[i]),
            "steps": int(evaluation.step)})
    result = StageResult(workdir=workdir, evaluations=tuple(evaluations), status=status,
                         metric=lambda name: _per_seed_history(history, name, len(seeds)))
    return _Evaluated(result, per_seed)


class _CheckpointStages:
    """The :class:`~orthojax.methods.protocol.Stages` of a row whose stages are evaluated from their
    checkpoints: a multi-stage protocol runs unchanged and says which stages make the row."""

    def __init__(self, bench: Benchmark, settings: RunSettings, row: Row, base: str, num_seeds: int):
        self.bench, self.settings, self.row, self.base = bench, settings, row, base
        self.num_tasks = len(bench.task_names)
        self.num_seeds = num_seeds
        self.evaluated: dict[str, _Evaluated] = {}

    def shared_layer_names(self, model_kwargs: Mapping[str, Any] = types.MappingProxyType({})) -> tuple:
        return tuple(self.bench.build_model({**dict(self.row.model_kwargs), **dict(model_kwargs)}).shared_layer_names())

    def train(self, stage: str, method: str, hyperparameters: Mapping[str, Any], *,
              model_kwargs: Mapping[str, Any] = types.MappingProxyType({}), epochs: Optional[int] = None) -> StageResult:
        self.evaluated[stage] = evaluate_run(self.bench, self.settings, os.path.join(self.base, stage))
        return self.evaluated[stage].result

    def write_json(self, name: str, obj: Any) -> str:
        return os.path.join(self.base, name)  # evaluation writes nothing in the runs' directories


def _not_evaluated(seeds: Sequence[int], error: BaseException) -> list:
    return [{"seed": s, "metrics": {}, "eval": None, "sigma": None, "mu": None, "cosines": [], "loss": [],
             "status": "not evaluated", "error": f"{type(error).__name__}: {error}", "nonfinite_steps": None,
             "steps": None} for s in seeds]


def _evaluate_row(bench: Benchmark, settings: RunSettings, row: Row, workdir: str) -> dict:
    per_seed: list = []
    groups = [list(settings.seeds)] if settings.vmap_seeds else [[s] for s in settings.seeds]
    for seeds in groups:
        base = os.path.join(workdir, row.key, f"seed_{seeds[0]}" if len(seeds) == 1 else f"seeds_{seeds[0]}-{seeds[-1]}")
        spec = method_spec(row.method)
        try:
            if spec.protocol is None:
                per_seed.extend(evaluate_run(bench, settings, base).per_seed)
                continue
            stages = _CheckpointStages(bench, settings, row, base, len(seeds))
            outcome = spec.protocol.run(stages, dict(row.method_kwargs))
            if outcome.stage is not None:
                rows = [dict(r) for r in stages.evaluated[outcome.stage].per_seed]
            else:
                rows = []
                for i, seed in enumerate(seeds):
                    metrics: dict = {}
                    for t, stage in enumerate(outcome.task_stages):
                        metrics.update(bench.single_task_metrics(t, stages.evaluated[stage].result.evaluations[i]))
                    if bench.combine_single_task is not None and metrics:
                        metrics = bench.combine_single_task(metrics)
                    done = all(stages.evaluated[s].result.status == "completed" for s in outcome.task_stages)
                    rows.append({"seed": seed, "metrics": metrics, "eval": None, "sigma": None, "mu": None,
                                 "cosines": [], "loss": [], "status": "completed" if done else "incomplete",
                                 "nonfinite_steps": 0, "steps": None})
            for name, values in outcome.extra.items():
                for r, value in zip(rows, values):
                    r[name] = value
            per_seed.extend(rows)
        except (WorkdirError, KeyError, ValueError, TypeError) as error:
            print(f"row {row.key!r}, seeds {seeds}: not evaluated: {error}", file=sys.stderr)
            per_seed.extend(_not_evaluated(seeds, error))
    return {"row": row.key, "label": row.label, "method": row.method, "method_kwargs": dict(row.method_kwargs),
            "model_kwargs": dict(row.model_kwargs), "per_seed": per_seed}


def evaluate_table(bench: Benchmark, settings: RunSettings, rows: Sequence[Row], workdir: str) -> list:
    """``--eval-only``: every row's runs evaluated from their newest intact checkpoints (finished or
    interrupted), nothing trained; returns row results as :func:`experiments.runner.run_table` does.

    A multi-stage method's protocol runs as in training, each stage evaluated instead of trained, and says
    which stages make the row. A run that never started (or has no checkpoint) leaves its seeds "not
    evaluated", with the reason, in the results.
    """
    return [_evaluate_row(bench, settings, row, workdir) for row in rows]


# ------------------------------------------------------------------------------------------------------------
# The mean of the last epochs' evaluations (MTAN's protocol), from the runs' metrics.jsonl
# ------------------------------------------------------------------------------------------------------------

def _mean_evaluations(evaluations: Sequence[Mapping[str, Any]]) -> dict:
    """Element-wise mean of the numeric entries every one of ``evaluations`` holds."""
    keys = [k for k in evaluations[0] if all(k in e for e in evaluations)]
    out = {}
    for key in keys:
        try:
            values = np.asarray([e[key] for e in evaluations], dtype=np.float64)
        except (TypeError, ValueError):
            continue
        mean = values.mean(axis=0)
        out[key] = mean.tolist() if mean.ndim else float(mean)
    return out


def _last_evaluations(run_dir: str, num_seeds: int, n: int) -> tuple[list, int]:
    """Per seed, the mean of the last ``n`` evaluations in ``<run_dir>/metrics.jsonl``, and how many there were."""
    epochs = [e["eval"] for e in History.from_metrics(run_dir).epochs if e.get("eval")]
    if not epochs:
        raise ValueError(f"{os.path.join(run_dir, 'metrics.jsonl')} holds no evaluation")
    last = epochs[-n:]
    per_seed = [last] if num_seeds == 1 else [[{k: v[i] for k, v in e.items()} for e in last] for i in range(num_seeds)]
    return [_mean_evaluations(evals) for evals in per_seed], len(last)


class _HistoryStages:
    """The :class:`~orthojax.methods.protocol.Stages` of a trained row read back from its runs' histories: a
    multi-stage protocol runs unchanged (its choices from the recorded metrics) and says which stages make
    the row; each stage's evaluations are the mean of its last ``n``."""

    def __init__(self, bench: Benchmark, row: Row, base: str, num_seeds: int, n: int):
        self.bench, self.row, self.base, self.n = bench, row, base, n
        self.num_tasks, self.num_seeds = len(bench.task_names), num_seeds
        self.evaluations: dict[str, list] = {}
        self.counts: dict[str, int] = {}

    def shared_layer_names(self, model_kwargs: Mapping[str, Any] = types.MappingProxyType({})) -> tuple:
        names = getattr(self.bench.build_model({**dict(self.row.model_kwargs), **dict(model_kwargs)}),
                        "shared_layer_names", None)
        return tuple(names()) if callable(names) else ()

    def train(self, stage: str, method: str, hyperparameters: Mapping[str, Any], *,
              model_kwargs: Mapping[str, Any] = types.MappingProxyType({}), epochs: Optional[int] = None) -> StageResult:
        run_dir = os.path.join(self.base, stage)
        self.evaluations[stage], self.counts[stage] = _last_evaluations(run_dir, self.num_seeds, self.n)
        history = History.from_metrics(run_dir)
        return StageResult(workdir=run_dir, evaluations=tuple(self.evaluations[stage]), status=history.status,
                           metric=lambda name: _per_seed_history(history, name, self.num_seeds))

    def write_json(self, name: str, obj: Any) -> str:
        return os.path.join(self.base, name)  # reading back writes nothing


def _row_last_epochs(bench: Benchmark, settings: RunSettings, row: Row, workdir: str, n: int) -> list:
    """Per seed: (metrics, evaluations averaged) of ``row`` over its runs' last ``n`` evaluations."""
    out = []
    groups = [list(settings.seeds)] if settings.vmap_seeds else [[s] for s in settings.seeds]
    for seeds in groups:
        base = os.path.join(workdir, row.key, f"seed_{seeds[0]}" if len(seeds) == 1 else f"seeds_{seeds[0]}-{seeds[-1]}")
        spec = method_spec(row.method)
        if spec.protocol is None:
            evaluations, count = _last_evaluations(base, len(seeds), n)
            out.extend((bench.table_metrics(e), count) for e in evaluations)
            continue
        stages = _HistoryStages(bench, row, base, len(seeds), n)
        outcome = spec.protocol.run(stages, dict(row.method_kwargs))
        for i in range(len(seeds)):
            if outcome.stage is not None:
                out.append((bench.table_metrics(stages.evaluations[outcome.stage][i]), stages.counts[outcome.stage]))
                continue
            metrics: dict = {}
            for t, stage in enumerate(outcome.task_stages):
                metrics.update(bench.single_task_metrics(t, stages.evaluations[stage][i]))
            if bench.combine_single_task is not None and metrics:
                metrics = bench.combine_single_task(metrics)
            out.append((metrics, min(stages.counts[s] for s in outcome.task_stages)))
    return out


def average_last_epochs(bench: Benchmark, settings: RunSettings, rows: Sequence[Row], row_results: Sequence[Mapping],
                        workdir: str, n: int) -> list:
    """``row_results`` with every run's metrics replaced by the mean of its last ``n`` epochs' evaluations
    (MTAN, Nash-MTL, FAMO report the mean of the last 10 epochs), read from each run's ``metrics.jsonl``;
    each seed's "evaluations_averaged" says how many there were (fewer than ``n`` when the run had fewer
    epochs). Failed runs, and rows whose histories cannot be read (the reason on stderr), keep their
    final-epoch numbers.
    """
    out = []
    for row, result in zip(rows, row_results):
        per_seed = [dict(s) for s in result["per_seed"]]
        if all(s["status"] != "failed" for s in per_seed):
            try:
                averaged = _row_last_epochs(bench, settings, row, workdir, n)
            except (ValueError, KeyError, TypeError, OSError) as error:
                print(f"row {row.key!r}: final-epoch numbers kept; the last {n} evaluations could not be read: "
                      f"{error}", file=sys.stderr)
                averaged = None
            if averaged is not None and len(averaged) == len(per_seed):
                for entry, (metrics, count) in zip(per_seed, averaged):
                    entry["metrics"] = metrics
                    entry["evaluations_averaged"] = count
        out.append({**result, "per_seed": per_seed})
    return out
