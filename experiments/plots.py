"""The figures of a table's run, in ``<workdir>/plots``: what each method did to each task.

* ``task_losses.png``: the training loss of every task, one panel per task, one line per method (the
  methods' objectives are not comparable: CosReg's holds its penalty, Uncertainty's its log-variances;
  a task's loss is the same quantity under every method);
* ``eval_metrics.png``: the evaluation after every epoch, one panel per table column;
* ``task_grad_norms.png``: per-task gradient norms ||g_t|| of the methods that report them ("grad_norms");
* ``cosine_distributions.png``: the histogram of the task-gradient cosines of every task pair (Figures 2, 4
  of the CosReg paper), its x axis fitted to the data;
* ``rolling_sigma.png``: sigma of the cosines over a sliding window (Figure 5), the window fitted to the
  run (:func:`orthojax.plots.rolling_window`).

Every figure shows the first seed of each row (the title says which). The curves come from each run's
``metrics.jsonl`` (:class:`orthojax.training.History`), the cosines from the row results. A run whose
"task_weights" are 0 for a task at every step does not train that task (e.g. a single-task run): its
curves and columns of that task are left out. A row of several runs (a multi-stage protocol) draws one
line per run that trains the task, labelled with its stage when there are several.

:func:`write_plots` returns the written paths and the notes that ``results.md`` prints: a figure that
could not be drawn says why instead.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from orthojax.plots import (
    method_colours, plot_cosine_distributions, plot_rolling_sigma, plot_training_curves, rolling_window,
)
from orthojax.training.history import History
from orthojax.training.logging import read_config

__all__ = ["RunCurves", "read_run", "row_runs", "smoothing", "write_plots"]

Column = tuple  # (key, label, digits)


class RunCurves(dict):
    """One run's curves (a dict): "stage" (its directory under the seed's, "" for a one-run row),
    "steps" (steps,), "task_losses" (steps, T) with NaN at skipped steps, "grad_norms" (steps, T) or None,
    "trained" (the tasks it trains), "evals" [(step, evaluation dict)] of its epochs."""


def _first_seed(values: Any, num_seeds: int) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    return a[:, 0] if num_seeds > 1 and a.ndim >= 2 else a


def read_run(run_dir: str, stage: str = "") -> Optional[RunCurves]:
    """The first seed's curves of the engine run in ``run_dir`` (from its ``metrics.jsonl`` and
    ``config.json``); None when it logged no training step.

    Raises:
      ValueError: an unreadable ``config.json`` (named), or "task_losses" that are not (steps, T).
    """
    history = History.from_metrics(run_dir)
    records = [r for r in history.train if "task_losses" in r]
    if not records:
        return None
    config = read_config(run_dir) or {}
    num_seeds = int(config.get("train", {}).get("num_seeds", 1))
    losses = _first_seed([r["task_losses"] for r in records], num_seeds)
    if losses.ndim != 2:
        raise ValueError(f"{run_dir}/metrics.jsonl: task_losses must be (steps, T) per seed, got {losses.shape}")
    finite = np.asarray([np.all(r.get("finite", True)) if num_seeds == 1 else
                         np.asarray(r.get("finite", True)).reshape(-1)[0] for r in records], bool)
    losses[~finite] = np.nan
    grad_norms = None
    if all("grad_norms" in r for r in records):
        grad_norms = _first_seed([r["grad_norms"] for r in records], num_seeds)
        grad_norms[~finite] = np.nan
    trained = list(range(losses.shape[1]))
    if all("task_weights" in r for r in records):
        weights = np.abs(_first_seed([r["task_weights"] for r in records], num_seeds))
        trained = [t for t in trained if np.any(weights[:, t] > 0)] or trained
    evals = []
    for epoch in history.epochs:
        evaluation = epoch.get("eval")
        if evaluation:
            if num_seeds > 1:
                evaluation = {k: v[0] for k, v in evaluation.items() if isinstance(v, list) and len(v) == num_seeds}
            evals.append((int(epoch["step"]), evaluation))
    return RunCurves(stage=stage, steps=np.asarray([r["step"] for r in records], np.float64), task_losses=losses,
                     grad_norms=grad_norms, trained=trained, evals=evals)


def row_runs(workdir: str, row: Mapping[str, Any]) -> list[RunCurves]:
    """The runs of ``row``'s first seed (group): ``<workdir>/<row>/seed_<s>`` (``seeds_<s>-<e>`` when
    vmapped), or each of its stages (the directories below it holding a ``metrics.jsonl``), in name order."""
    seeds = [s["seed"] for s in row.get("per_seed", [])]
    if not seeds:
        return []
    base = os.path.join(glob.escape(workdir), glob.escape(str(row["row"])))
    found = (glob.glob(os.path.join(base, f"seed_{seeds[0]}"))
             or sorted(glob.glob(os.path.join(base, f"seeds_{seeds[0]}-*"))))
    if not found:
        return []
    seed_dir = found[0]
    if os.path.exists(os.path.join(seed_dir, "metrics.jsonl")):
        dirs = [(seed_dir, "")]
    else:
        paths = sorted(glob.glob(os.path.join(glob.escape(seed_dir), "**", "metrics.jsonl"), recursive=True))
        dirs = [(os.path.dirname(p), os.path.relpath(os.path.dirname(p), seed_dir)) for p in paths]
    runs = [read_run(d, stage) for d, stage in dirs]
    return [r for r in runs if r is not None]


def smoothing(steps: int) -> int:
    """Points in the trailing mean of a step curve: 1 (raw) up to 100 steps, then steps // 50 (so a curve
    has ~50 independent points)."""
    return 1 if steps <= 100 else steps // 50


def _line_label(label: str, run: RunCurves, runs_drawn: int) -> str:
    return f"{label} [{run['stage']}]" if runs_drawn > 1 and run["stage"] else label


def _task_curves(rows: Sequence[tuple[str, list]], task_names: Sequence[str], key: str) -> dict:
    """label -> {task name -> {"step", "value"}} of the step metric ``key`` ((steps, T)), for the tasks
    each run trains."""
    curves: dict = {}
    for label, runs in rows:
        for t, task in enumerate(task_names):
            drawn = [r for r in runs if r[key] is not None and t in r["trained"] and t < r[key].shape[1]]
            for run in drawn:
                values = run[key][:, t]
                if np.isfinite(values).any():
                    curves.setdefault(_line_label(label, run, len(drawn)), {})[task] = {
                        "step": run["steps"].tolist(), "value": values.tolist()}
    return curves


def _eval_columns(run: RunCurves, evaluation: Mapping, bench: Any, columns: Optional[Sequence[Column]],
                  task_names: Sequence[str]) -> dict:
    """column label -> value of one evaluation: the table's columns (a run that trains a subset of the
    tasks: only theirs, from ``bench.single_task_metrics``), else every scalar evaluation key (keys
    "<task>/..." of the tasks the run trains)."""
    if bench is None or columns is None:
        trained = {task_names[t] for t in run["trained"]}
        return {k: float(v) for k, v in evaluation.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
                and (k.split("/")[0] not in task_names or k.split("/")[0] in trained)}
    if len(run["trained"]) == len(task_names):
        values = bench.table_metrics(evaluation)
    else:
        values = {}
        for t in run["trained"]:
            values.update(bench.single_task_metrics(t, evaluation))
    return {label: float(values[key]) for key, label, _ in columns if values.get(key) is not None}


def _eval_curves(rows: Sequence[tuple[str, list]], bench: Any, columns: Optional[Sequence[Column]],
                 task_names: Sequence[str]) -> dict:
    curves: dict = {}
    for label, runs in rows:
        per_run = []
        for run in runs:
            points: dict = {}
            for step, evaluation in run["evals"]:
                for name, value in _eval_columns(run, evaluation, bench, columns, task_names).items():
                    points.setdefault(name, ([], []))
                    points[name][0].append(step)
                    points[name][1].append(value)
            per_run.append((run, points))
        for name in dict.fromkeys(n for _, points in per_run for n in points):
            drawn = [(run, points[name]) for run, points in per_run if name in points]
            for run, (steps, values) in drawn:
                curves.setdefault(_line_label(label, run, len(drawn)), {})[name] = {"step": steps, "value": values}
    return curves


def _ordered(curves: dict, panels: Sequence[str]) -> dict:
    """Every method's quantities in the panel order ``panels`` (plot_training_curves draws panels in the
    order it first sees them)."""
    order = {p: i for i, p in enumerate(panels)}
    return {m: dict(sorted(q.items(), key=lambda kv: order.get(kv[0], len(order)))) for m, q in curves.items()}


def _cosines(row_results: Sequence[Mapping]) -> tuple[dict, Optional[int]]:
    """label -> (steps, P) finite cosines of the first seed that has them; and that seed."""
    out, seed = {}, None
    for row in row_results:
        for s in row.get("per_seed", []):
            c = np.asarray(s.get("cosines") or [], dtype=np.float64)
            if c.size:
                c = c.reshape(c.shape[0], -1)
                c = c[np.all(np.isfinite(c), axis=1)]
                if c.size:
                    out[row["label"]] = c
                    seed = s["seed"] if seed is None else seed
                    break
    return out, seed


def _pair_names(task_names: Sequence[str], n_pairs: int) -> Optional[list[str]]:
    i, j = np.triu_indices(len(task_names), k=1)
    if len(i) != n_pairs:
        return None
    return [f"{task_names[a]} / {task_names[b]}" for a, b in zip(i, j)]


def write_plots(workdir: str, row_results: Sequence[Mapping], title: str, *, bench: Any = None,
                task_names: Optional[Sequence[str]] = None, columns: Optional[Sequence[Column]] = None,
                window: Optional[int] = None) -> tuple[list[str], list[str]]:
    """Writes the table's figures in ``<workdir>/plots`` (see the module's docstring).

    Args:
      workdir: the table's workdir (runs under ``<row>/seed_<s>/...``).
      row_results: :func:`experiments.runner.run_table`'s rows ("row", "label", "per_seed" with "seed" and
        "cosines").
      title: the table's title, heading every figure.
      bench: the :class:`~experiments.runner.Benchmark` (task names; with ``columns``, its
        ``table_metrics`` / ``single_task_metrics`` turn each epoch's evaluation into the table's columns).
      task_names: the T task names (default ``bench.task_names``, else "task 0", ...).
      columns: the table's (key, label, digits) columns for the evaluation panels (default: every scalar
        evaluation key).
      window: the rolling-sigma window (default :func:`orthojax.plots.rolling_window` of the shortest run).

    Returns:
      (written paths, notes): a note per figure not drawn (or drawn without some rows), for results.md.
    """
    plots = os.path.join(workdir, "plots")
    written: list[str] = []
    notes: list[str] = []
    rows = [(row["label"], row_runs(workdir, row)) for row in row_results]
    seeds = [row["per_seed"][0]["seed"] for row in row_results if row.get("per_seed")]
    which = f"seed {seeds[0]}" if len(set(seeds)) == 1 else "first seed of each row"
    num_tasks = max([r["task_losses"].shape[1] for _, runs in rows for r in runs], default=0)
    if task_names is None:
        task_names = getattr(bench, "task_names", None) or [f"task {t}" for t in range(num_tasks)]
    task_names = [str(n) for n in task_names]
    if num_tasks and len(task_names) != num_tasks:
        raise ValueError(f"task_names has {len(task_names)} names for runs of {num_tasks} tasks: {task_names}")
    missing = [label for label, runs in rows if not runs]
    if missing:
        notes.append(f"Plots: no training records for {', '.join(missing)} (failed or not run); not in the figures.")
    drawn = [(label, runs) for label, runs in rows if runs]
    colours = method_colours([row["label"] for row in row_results])  # one colour per row in every figure
    longest = max([r["steps"].size for _, runs in drawn for r in runs], default=0)

    losses = _task_curves(drawn, task_names, "task_losses")
    if losses:
        written.append(str(plot_training_curves(
            _ordered(losses, task_names), os.path.join(plots, "task_losses.png"),
            title=f"{title}: training loss per task ({which})", ylabel="task loss", smooth=smoothing(longest),
            note="each line: the task's loss on the training batches (skipped steps are gaps)", colours=colours)))

    evals = _eval_curves(drawn, bench, columns, task_names)
    if evals:
        panels = [label for _, label, _ in columns] if bench is not None and columns else []
        written.append(str(plot_training_curves(
            _ordered(evals, panels), os.path.join(plots, "eval_metrics.png"),
            title=f"{title}: evaluation after each epoch ({which})", xlabel="step (end of epoch)",
            colours=colours)))
    elif drawn:
        notes.append("Plots: evaluation per epoch not drawn: no run recorded an evaluation.")

    norms = _task_curves(drawn, task_names, "grad_norms")
    without = [label for label, runs in drawn if all(r["grad_norms"] is None for r in runs)]
    if norms:
        written.append(str(plot_training_curves(
            _ordered(norms, task_names), os.path.join(plots, "task_grad_norms.png"),
            title=f"{title}: per-task gradient norms ||g_t|| ({which})", ylabel="||g_t||", log_y=True,
            smooth=smoothing(longest),
            note=(f"not reported by {', '.join(without)}" if without else None), colours=colours)))
    elif drawn:
        notes.append("Plots: per-task gradient norms not drawn: no method of this table reports them "
                     "(a method's \"grad_norms\" metric).")

    cosines, cos_seed = _cosines(row_results)
    if cosines:
        n_pairs = next(iter(cosines.values())).shape[1]
        pairs = _pair_names(task_names, n_pairs)
        written.append(str(plot_cosine_distributions(
            cosines, os.path.join(plots, "cosine_distributions.png"), pair_names=pairs, colours=colours,
            title=f"{title}: task-gradient cosines of the last shared layer (seed {cos_seed}, every step)")))
        steps = min(c.shape[0] for c in cosines.values())
        w = window if window is not None else rolling_window(steps)
        if w is None or w > steps:
            notes.append(f"Plots: rolling σ not drawn: the shortest run logged {steps} cosines; a window of at "
                         f"least 5 iterations needs 20 (the window is min(50, steps // 4)).")
        else:
            written.append(str(plot_rolling_sigma(
                cosines, os.path.join(plots, "rolling_sigma.png"), window=w, pair_names=pairs, colours=colours,
                title=f"{title}: rolling σ of the cosines over {w} iterations (seed {cos_seed})")))
    elif drawn:
        notes.append("Plots: cosine distributions not drawn: no run recorded task-gradient cosines.")
    return written, notes
