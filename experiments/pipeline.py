"""The flow every experiment shares: set up devices, run the table, write results and plots."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import traceback
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import jax

from experiments.report import Column, failed_runs, summarize, write_plots, write_results
from experiments.runner import Benchmark, Row, RunInterrupted, RunSettings, check_table, run_table
from orthojax.methods.registry import method_names, resolve_method_name
from orthojax.training import StopRequest, WorkdirError, WorkdirLock, initialize_distributed

__all__ = ["EXIT_FAILED_RUNS", "check_rows", "command_scope", "compilation_cache_dir", "default_workdir",
           "run_benchmark", "run_command", "setup_runtime"]

EXIT_FAILED_RUNS = 1
"""Exit status of a command that finished with failed runs (they are listed in results.md); a command
stopped by a signal exits with 128 + the signal number (143 for SIGTERM)."""


def default_workdir(name: str, preset: str) -> str:
    """``runs/<experiment>-<preset>``."""
    return os.path.join("runs", f"{name}-{preset}")


def compilation_cache_dir(flag: Optional[str]) -> Optional[str]:
    """The persistent compilation cache's directory: ``flag`` (``--compilation-cache``), else
    ``$ORTHOJAX_COMPILATION_CACHE``, else ``~/.cache/orthojax/xla``; None when it is "off"."""
    value = flag or os.environ.get("ORTHOJAX_COMPILATION_CACHE") or os.path.join("~", ".cache", "orthojax", "xla")
    return None if value.strip().lower() == "off" else os.path.expanduser(value)


def setup_runtime(distributed: bool, compilation_cache: Optional[str] = None) -> None:
    """Multi-host initialisation (``--distributed``), the persistent compilation cache (see
    :func:`compilation_cache_dir`) and a line saying which devices run the job."""
    initialize_distributed(distributed)
    cache = compilation_cache_dir(compilation_cache)
    if cache is not None:
        jax.config.update("jax_compilation_cache_dir", cache)
    if jax.process_index() == 0:
        devices = jax.devices()
        print(f"devices: {len(devices)} x {devices[0].platform} ({jax.process_count()} process(es))",
              file=sys.stderr)


def check_rows(rows: Sequence[Row], settings: RunSettings) -> tuple[list, RunSettings]:
    """All of ``rows`` checked before any of them trains: each row's method (and Recon's ``recon_base``)
    resolved to its registry name (``"EW"`` -> ``"equal"``), the row keys distinct.

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
    if any(row.method == "recon" for row in checked):
        try:
            settings = dataclasses.replace(settings, recon_base=resolve_method_name(settings.recon_base))
        except KeyError as error:
            raise KeyError(f"recon_base: {error.args[0]}") from None
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


def run_benchmark(bench: Benchmark, rows: Sequence[Row], settings: RunSettings, workdir: str, *, title: str,
                  columns: Sequence[Column], paper: Mapping[str, Mapping[str, float]], data_info: Mapping,
                  protocol: Mapping[str, Any], notes: Sequence[str] = (),
                  extra: Optional[Callable[[list, list], tuple[list, dict]]] = None) -> list:
    """Runs ``rows`` and writes ``results.md``, ``results.json`` and ``plots/`` in ``workdir``.

    ``extra(row_results, summary) -> (sections, json)`` adds benchmark-specific sections (e.g. the
    field's nine NYUv2 metrics and Delta_m).

    Every row and every run is checked before the first one trains, and before anything is written
    (:func:`check_rows`, :func:`experiments.runner.check_table`); the command then holds the workdir
    (:func:`command_scope`). A run that fails is reported in results.md while the other rows run.

    Raises:
      KeyError, ValueError, TypeError, WorkdirError: a row or a run that cannot start (nothing was run).
      SystemExit: :data:`EXIT_FAILED_RUNS` after writing the results when runs failed; 128 + the signal
        when a signal stopped the command (no results written; ``--resume`` continues it).
    """
    rows, settings = check_rows(rows, settings)  # every row, before the first one trains
    WorkdirLock(workdir).check()  # another command on this workdir: said first
    check_table(bench, settings, rows, workdir)  # every run's settings and workdir, changing nothing
    primary = jax.process_index() == 0
    with command_scope(workdir) as stop:
        row_results = run_table(bench, settings, rows, workdir)
        if stop.signum is not None:
            raise RunInterrupted(stop.signum, workdir)
        summary = summarize(row_results, columns)
        sections, extra_json = [], {}
        if extra:
            try:
                sections, extra_json = extra(row_results, summary)
            except Exception as error:  # the table is still written
                traceback.print_exc()
                sections = [("Benchmark-specific section", f"Not written: {type(error).__name__}: {error}")]
        if primary:
            try:
                plots = write_plots(workdir, row_results, title)
            except Exception as error:
                traceback.print_exc()
                plots, notes = [], [*notes, f"Plots not written: {type(error).__name__}: {error}"]
            write_results(workdir, title=title, data_info=data_info, protocol=protocol, summary=summary,
                          columns=columns, paper=paper, notes=notes, extra_sections=sections,
                          extra_json={**extra_json, "plots": plots})
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
    existing run, changed settings, missing or damaged checkpoints: :class:`~orthojax.training.WorkdirError`)
    is one line on stderr and exit status 1, instead of a traceback; anything else propagates."""
    try:
        main()
    except WorkdirError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
