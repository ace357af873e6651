"""Turns row results into the paper-style table (``results.md`` / ``results.json``) and the plots.

What a reader can trust, written with every table:

* the **trivial predictor** row (:mod:`orthojax.metrics.trivial`: each task's training-split constant scored
  like a model), so a number is read against the best input-independent prediction;
* how much training the numbers had: the steps each run took against the protocol's
  (:func:`training_lines`);
* the **comparison** of the rows (:func:`comparison`): every metric, Delta_m% against the single-task row
  (only when that row beats the trivial predictor on every metric, :func:`reference_check`), the mean rank
  over the metrics (:func:`mean_ranks`) and each method's measured mean step time (:func:`step_time`);
* a claim is stated as a **finding** only with at least :data:`MIN_FINDING_SEEDS` seeds per side and a stated
  comparison (mean difference against the pooled standard deviation); otherwise as what happened "on this
  run" (:func:`finding`).
"""

from __future__ import annotations

import glob
import json
import math
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from orthojax.methods import method_spec

__all__ = ["Column", "MIN_FINDING_SEEDS", "TRIVIAL_LABEL", "comparison", "failed_runs", "finding",
           "mean_ranks", "mean_std", "reference_check", "row_label", "step_time", "summarize", "training_lines",
           "write_plots", "write_results"]

Column = tuple  # (key, label, digits)

TRIVIAL_LABEL = "Trivial predictor"
"""The label of the trivial predictor's reference row, in every table."""

MIN_FINDING_SEEDS = 3
"""Seeds each side of a comparison needs before it is stated as a finding."""

def row_label(method: str) -> str:
    """The table label of a row running ``method``: the method's own label (its registry entry's
    ``label``, e.g. "Nash-MTL"), so that a method has one name in every experiment's tables; names the
    registry does not know are shown as given."""
    try:
        return method_spec(method).label
    except (KeyError, TypeError):
        return method


def mean_std(values: Sequence[Optional[float]]) -> tuple[Optional[float], Optional[float], int]:
    """Mean and (population) standard deviation of the non-missing values, and their count."""
    vals = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if vals.size == 0:
        return None, None, 0
    return float(vals.mean()), float(vals.std()), int(vals.size)


def summarize(row_results: Sequence[Mapping], columns: Sequence[Column]) -> list[dict]:
    """Per row: mean, std and count over seeds of every column and of sigma (the cosine std)."""
    out = []
    for row in row_results:
        seeds = row["per_seed"]
        entry = {"row": row["row"], "label": row["label"], "method": row["method"],
                 "method_kwargs": row["method_kwargs"], "model_kwargs": row["model_kwargs"],
                 "seeds": [s["seed"] for s in seeds], "columns": {}}
        keys = list(dict.fromkeys([c[0] for c in columns] + [k for s in seeds for k in s["metrics"]]))
        for key in keys:
            mean, std, n = mean_std([s["metrics"].get(key) for s in seeds])
            entry["columns"][key] = {"mean": mean, "std": std, "n": n}
        mean, std, n = mean_std([s["sigma"] for s in seeds])
        entry["sigma"] = {"mean": mean, "std": std, "n": n}
        mean, std, n = mean_std([s["mu"] for s in seeds])
        entry["mu"] = {"mean": mean, "std": std, "n": n}
        if any("recon_layers" in s for s in seeds):
            entry["recon_layers"] = [s.get("recon_layers") for s in seeds]
        entry["incomplete"] = [s["seed"] for s in seeds if s["status"] not in ("completed", "failed")]
        entry["failed"] = [{"seed": s["seed"], "error": s.get("error", "")} for s in seeds if s["status"] == "failed"]
        entry["nonfinite_steps"] = [s.get("nonfinite_steps") for s in seeds]
        entry["steps"] = [s.get("steps") for s in seeds]
        out.append(entry)
    return out


def failed_runs(summary: Sequence[Mapping]) -> list[str]:
    """"<label>: seed <s>: <error>" for every failed run of the summary."""
    return [f"{e['label']}: seed {f['seed']}: {f['error']}" for e in summary for f in e.get("failed", [])]


def _skipped_lines(summary: Sequence[Mapping]) -> list[str]:
    out = []
    for e in summary:
        parts = [f"seed {seed}: {n} of {steps} steps" for seed, n, steps in
                 zip(e["seeds"], e.get("nonfinite_steps", []), e.get("steps", [])) if n]
        if parts:
            out.append(f"{e['label']}: " + ", ".join(parts))
    return out


def _fmt(stat: Mapping, digits: int) -> str:
    if stat["mean"] is None:
        return "-"
    text = f"{stat['mean']:.{digits}f}"
    if stat["n"] > 1:
        text += f" ± {stat['std']:.{digits}f}"
    return text


def _paper_cell(paper: Optional[Mapping], key: str, digits: int) -> str:
    value = None if paper is None else paper.get(key)
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(summary: Sequence[Mapping], columns: Sequence[Column],
                   paper: Mapping[str, Mapping[str, float]], sigma_digits: int = 3,
                   trivial: Optional[Mapping[str, float]] = None) -> str:
    """Ours (mean ± std over seeds) beside the paper's published value, one row per method; the trivial
    predictor's row (``trivial``: column -> value) last."""
    head = ["Method"] + [f"{label} (ours)" for _, label, _ in columns] + [f"{label} (paper)" for _, label, _ in columns]
    head = [cell.replace("|", "\\|") for cell in head]  # e.g. "normal 1-|cos|": a literal bar in a table cell
    head += ["σ cos (ours)", "σ cos (paper)", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry in summary:
        ref = paper.get(entry["row"])
        cells = [entry["label"]]
        cells += [_fmt(entry["columns"][key], digits) for key, _, digits in columns]
        cells += [_paper_cell(ref, key, digits) for key, _, digits in columns]
        n_failed = len(entry.get("failed", []))
        seeds = str(len(entry["seeds"])) if not n_failed else f"{len(entry['seeds']) - n_failed}/{len(entry['seeds'])}"
        cells += [_fmt(entry["sigma"], sigma_digits), _paper_cell(ref, "sigma", 2), seeds]
        lines.append("| " + " | ".join(cells) + " |")
    if trivial is not None:
        cells = [TRIVIAL_LABEL] + [_paper_cell(trivial, key, digits) for key, _, digits in columns]
        cells += ["-"] * len(columns) + ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(workdir: str, *, title: str, data_info: Mapping, protocol: Mapping, summary: Sequence[Mapping],
                  columns: Sequence[Column], paper: Mapping[str, Mapping[str, float]], notes: Sequence[str] = (),
                  extra_sections: Sequence[tuple[str, str]] = (), extra_json: Optional[Mapping[str, Any]] = None,
                  trivial: Optional[Mapping[str, float]] = None, definitions: Mapping[str, str] = {},
                  training: Sequence[str] = (), evaluated: str = "the final-epoch evaluation") -> None:
    """Writes ``results.json`` and ``results.md`` in ``workdir``.

    Args:
      trivial: the trivial predictor's columns (:mod:`orthojax.metrics.trivial`), a reference row of the
        table and ``results.json``'s "trivial".
      definitions: column label -> its definition, written under the table.
      training: lines saying how much training the numbers had (:func:`training_lines`).
      evaluated: what the numbers are ("the final-epoch evaluation", "the mean of the last 10 epochs'
        evaluations").
    """
    os.makedirs(workdir, exist_ok=True)
    payload = {"title": title, "data": dict(data_info), "protocol": dict(protocol), "columns": [list(c) for c in columns],
               "rows": list(summary), "paper": {k: dict(v) for k, v in paper.items()}, "notes": list(notes),
               "trivial": None if trivial is None else {"label": TRIVIAL_LABEL, "columns": dict(trivial)},
               "training": list(training), "evaluated": evaluated, **dict(extra_json or {})}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(payload, f, indent=2)
    synthetic = bool(data_info.get("synthetic"))
    lines = [f"# {title}", ""]
    lines.append(f"- Data: **{'SYNTHETIC (procedural scenes, not the real dataset)' if synthetic else 'real'}** — "
                 f"{data_info.get('name', '')} ({data_info.get('source', '')})")
    for key, value in protocol.items():
        lines.append(f"- {key}: {value}")
    for line in training:
        lines.append(f"- **Training**: {line}")
    lines += ["", markdown_table(summary, columns, paper, trivial=trivial), ""]
    lines.append(f"Ours: mean ± std (population) over seeds of {evaluated}; σ cos: standard deviation of the "
                 "task-gradient cosines of the last shared layer over all training iterations (mean over seeds "
                 "and task pairs).")
    if trivial is not None:
        lines.append(f"{TRIVIAL_LABEL}: every task's constant fitted on the training split (majority class, mean "
                     "depth, mean normal direction, majority label), scored on the evaluated split with the same "
                     "metrics; a model is worth reporting where it beats this row.")
    for label, text in definitions.items():
        lines.append(f"- {label} = {text}")
    for note in notes:
        lines.append(f"- {note}")
    for heading, body in extra_sections:
        lines += ["", f"## {heading}", "", body]
    skipped = _skipped_lines(summary)
    if skipped:
        lines += ["", "**Skipped steps** (a non-finite loss or gradient: the step left the parameters, optimiser "
                      "and method states unchanged; their cosines are left out of σ): " + "; ".join(skipped)]
    incomplete = [f"{e['label']}: seeds {e['incomplete']}" for e in summary if e.get("incomplete")]
    if incomplete:
        lines += ["", "**Incomplete runs** (interrupted; their numbers are from the last finished epoch): "
                  + "; ".join(incomplete)]
    failed = failed_runs(summary)
    if failed:
        lines += ["", "**Failed runs** (no numbers in the table; the other rows ran; seeds column: runs that "
                      "finished / runs):"] + [f"- {line}" for line in failed]
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def write_plots(workdir: str, row_results: Sequence[Mapping], title: str, *, bench: Any = None,
                columns: Optional[Sequence[Column]] = None, window: Optional[int] = None
                ) -> tuple[list[str], list[str]]:
    """The run's figures in ``workdir/plots`` and the notes results.md prints for those not drawn
    (:func:`experiments.plots.write_plots`: per-task losses, evaluation per epoch, per-task gradient norms,
    cosine distributions, rolling sigma)."""
    from experiments import plots  # the figures read each run's metrics.jsonl

    return plots.write_plots(workdir, row_results, title, bench=bench, columns=columns, window=window)


# ------------------------------------------------------------------------------------------------------------
# What a reader can trust: training length, the comparison of the rows, findings
# ------------------------------------------------------------------------------------------------------------

def training_lines(summary: Sequence[Mapping], *, preset: str, planned_steps: int, max_steps: Optional[int],
                   protocol_steps: Optional[int], protocol_name: str = "paper") -> list[str]:
    """Lines saying how much training the table's numbers had: the steps the runs took against the
    protocol's, and what cut them (``--max-steps``, a short preset). [] when the runs had the protocol's.

    Args:
      summary: :func:`summarize`'s rows (their per-seed "steps": a multi-stage row counts every stage).
      preset: the preset the table ran ("quick", "paper").
      planned_steps: steps per run under this table's epochs and data (before ``max_steps``).
      max_steps: ``--max-steps`` (None when not given).
      protocol_steps: steps per run under the ``protocol_name`` preset on the dataset's full training split
        (None when unknown).
    """
    ran = sorted({int(s) for e in summary for s in e.get("steps", []) if s is not None})
    took = ("no run finished a step" if not ran else
            f"{ran[0]} steps per run" if len(ran) == 1 else f"{ran[0]}-{ran[-1]} steps per run (multi-stage rows "
            f"count every stage)")
    out = []
    if max_steps is not None and max_steps < planned_steps:
        out.append(f"--max-steps {max_steps} cut training: {took}, of the {planned_steps} this table's epochs "
                   f"give" + (f" ({protocol_steps} under the {protocol_name} protocol)" if protocol_steps else "") + ".")
    elif preset != protocol_name and protocol_steps is not None and planned_steps < protocol_steps:
        out.append(f"the {preset} preset is shorter than the {protocol_name} protocol: {took}, against "
                   f"{protocol_steps} under the {protocol_name} protocol. The numbers exercise the pipeline; they "
                   f"are not the protocol's.")
    return out


def mean_ranks(means: Mapping[str, Mapping[str, Optional[float]]],
               directions: Mapping[str, bool]) -> dict[str, Optional[float]]:
    """The mean rank of every row over the metrics, as the field's tables report it (MR, e.g. Nash-MTL,
    FAMO): each metric ranks the rows that have it (1 = best; ties share the mean of their ranks), and a
    row's mean rank is the mean of its ranks over the metrics it has.

    Args:
      means: row -> metric -> value (None or non-finite: missing).
      directions: metric -> True when higher is better; only these metrics are ranked.

    Returns:
      row -> mean rank (None for a row without any ranked metric).

    Raises:
      ValueError: ``directions`` is empty.
    """
    if not directions:
        raise ValueError("directions is empty: no metric to rank the rows by")
    ranks: dict[str, list[float]] = {row: [] for row in means}
    for metric, higher in directions.items():
        values = {row: float(v[metric]) for row, v in means.items()
                  if v.get(metric) is not None and math.isfinite(float(v[metric]))}
        ordered = sorted(values.items(), key=lambda kv: -kv[1] if higher else kv[1])
        i = 0
        while i < len(ordered):  # ties: the mean of the ranks they span
            j = i
            while j + 1 < len(ordered) and ordered[j + 1][1] == ordered[i][1]:
                j += 1
            for row, _ in ordered[i:j + 1]:
                ranks[row].append((i + j) / 2 + 1)
            i = j + 1
    return {row: (float(np.mean(r)) if r else None) for row, r in ranks.items()}


def _better(value: float, reference: float, higher: bool) -> bool:
    return value > reference if higher else value < reference


def reference_check(reference: Optional[Mapping[str, Optional[float]]], trivial: Optional[Mapping[str, float]],
                    directions: Mapping[str, bool]) -> tuple[bool, str]:
    """Whether the single-task row is a meaningful Delta_m reference: present, and better than the trivial
    predictor on every metric.

    Returns:
      (usable, reason): the reason names the metrics where it is not better (value vs trivial), or says
      that no trivial predictor was given to check against ("" when usable and checked).
    """
    if reference is None:
        return False, "the table has no single-task row"
    missing = [m for m in directions if reference.get(m) is None]
    if missing:
        return False, f"the single-task row has no value for {', '.join(missing)}"
    if trivial is None:
        return True, "no trivial predictor to check the single-task row against"
    worse = [f"{m} {reference[m]:.4g} vs {trivial[m]:.4g}" for m, higher in directions.items()
             if trivial.get(m) is not None and not _better(reference[m], trivial[m], higher)]
    if worse:
        return False, ("the single-task row is not better than the trivial predictor on every metric ("
                       + "; ".join(worse) + "), so relative changes to it mean nothing")
    return True, ""


def step_time(row_dir: str, batch_size: int) -> dict[str, Any]:
    """The measured mean training-step time of every run under ``row_dir`` (each ``metrics.jsonl`` below
    it: every seed group and every stage of a multi-stage row), from the engine's per-epoch throughput.

    An epoch's time is ``steps / images_per_sec * batch_size`` (the engine's images per second over the
    epoch's steps, host synchronisation included, evaluation and checkpoints not). The first epoch of a run,
    which holds the compilation, is left out when the run has later epochs; "with_compilation" says when
    some run had only that one.

    Returns:
      {"mean_s": seconds per step or None, "steps": steps timed, "runs": runs read,
      "with_compilation": bool}.
    """
    from orthojax.training.history import History  # the report reads what the engine wrote

    total_time, total_steps, runs, compiled = 0.0, 0, 0, False
    for path in sorted(glob.glob(os.path.join(glob.escape(row_dir), "**", "metrics.jsonl"), recursive=True)):
        history = History.from_metrics(os.path.dirname(path))
        per_epoch: dict[int, int] = {}
        for record in history.train:
            per_epoch[record["epoch"]] = per_epoch.get(record["epoch"], 0) + 1
        timed = [(per_epoch.get(e["epoch"], 0), e["images_per_sec"]) for e in history.epochs
                 if e.get("images_per_sec") and per_epoch.get(e["epoch"])]
        if not timed:
            continue
        runs += 1
        if len(timed) > 1:
            timed = timed[1:]
        else:
            compiled = True
        total_steps += sum(n for n, _ in timed)
        total_time += sum(n * batch_size / rate for n, rate in timed)
    return {"mean_s": total_time / total_steps if total_steps else None, "steps": total_steps, "runs": runs,
            "with_compilation": compiled}


def _sample_var(stat: Mapping) -> float:
    """The unbiased variance of a :func:`mean_std` entry (population std over n values)."""
    n = stat["n"]
    return float(stat["std"]) ** 2 * n / (n - 1) if n > 1 else 0.0


def finding(claim: str, a: Optional[Mapping], b: Optional[Mapping], *, lower: bool, steps: Optional[int] = None,
            digits: int = 3) -> str:
    """One claim "a is lower (or higher) than b", stated as a finding only when the evidence allows.

    With at least :data:`MIN_FINDING_SEEDS` seeds on each side the claim is a finding: "yes" when the mean
    difference is in the claimed direction and larger than the pooled standard deviation
    ``s_p = sqrt(((n_a - 1) s_a^2 + (n_b - 1) s_b^2) / (n_a + n_b - 2))`` (an effect size |d| > 1), "no"
    when it is that large the other way, "not resolved" otherwise. With fewer seeds it is what happened
    "on this run (n seeds, m steps)", not a finding.

    Args:
      claim: the claim's text.
      a, b: :func:`mean_std` entries ({"mean", "std" (population), "n"}) of the two sides, or None.
      lower: the claim is that a's mean is lower than b's (else higher).
      steps: the steps per run, for the "on this run" wording.

    Returns:
      One markdown list line.
    """
    if a is None or b is None or a.get("mean") is None or b.get("mean") is None:
        return f"- {claim}: not run"
    diff = float(a["mean"]) - float(b["mean"])
    holds = diff < 0 if lower else diff > 0
    values = f"{a['mean']:.{digits}f} vs {b['mean']:.{digits}f}"
    n = min(int(a["n"]), int(b["n"]))
    if n < MIN_FINDING_SEEDS:
        where = f"{n} seed{'s' if n != 1 else ''}" + (f", {steps} steps" if steps is not None else "")
        return (f"- {claim}: on this run ({where}): {'yes' if holds else 'no'} ({values}); not a finding (fewer "
                f"than {MIN_FINDING_SEEDS} seeds)")
    pooled = math.sqrt(((a["n"] - 1) * _sample_var(a) + (b["n"] - 1) * _sample_var(b)) / (a["n"] + b["n"] - 2))
    if abs(diff) > pooled:
        verdict = "yes" if holds else "no"
    else:
        verdict = "not resolved"
    return (f"- {claim}: **{verdict}** ({values}; mean difference {diff:+.{digits}f} against the pooled std "
            f"{pooled:.{digits}f}, {a['n']} and {b['n']} seeds)")


def comparison(summary: Sequence[Mapping], directions: Mapping[str, bool], labels: Mapping[str, str], *,
               baseline: str = "single_task", trivial: Optional[Mapping[str, float]] = None,
               step_times: Optional[Mapping[str, Mapping]] = None, not_run: Mapping[str, str] = {},
               digits: int = 4) -> tuple[str, dict]:
    """The field's comparison table: every metric (mean over seeds), Delta_m% against the single-task row,
    the mean rank over the metrics and the measured mean step time, one row per method; the trivial
    predictor as a reference row; the methods that could not run, with the reason.

    Delta_m% (:func:`orthojax.metrics.delta_m`) = 100/K sum_k (-1)^{h_k} (M_k - S_k) / S_k over the K metrics
    (h_k = 1 when higher is better; lower is better); reported only when the single-task row is meaningful
    (:func:`reference_check`). The mean rank (:func:`mean_ranks`) ranks the multi-task rows (the single-task
    reference and the trivial predictor are not ranked).

    Args:
      summary: :func:`summarize`'s rows.
      directions: metric key -> higher is better (the compared metrics, in order).
      labels: metric key -> column label.
      baseline: the key of the single-task row.
      trivial: the trivial predictor's metrics.
      step_times: row key -> :func:`step_time`'s record.
      not_run: row label -> why it could not run.

    Returns:
      (markdown, json record).
    """
    from orthojax.metrics import delta_m

    means = {e["row"]: {m: e["columns"].get(m, {}).get("mean") for m in directions} for e in summary}
    by = {e["row"]: e for e in summary}
    reference = means.get(baseline)
    usable, reason = reference_check(reference, trivial, directions)
    ranked = mean_ranks({r: v for r, v in means.items() if r != baseline}, directions)
    head = ["Method"] + [labels.get(m, m) + (" ↑" if h else " ↓") for m, h in directions.items()]
    head += ["Δm% ↓", "mean rank ↓", "step time (ms)", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    payload: dict = {"metrics": list(directions), "baseline": baseline, "delta_m_reported": usable,
                     "delta_m_reason": reason, "rows": {}, "not_run": dict(not_run),
                     "trivial": None if trivial is None else {m: trivial.get(m) for m in directions}}
    for row, values in means.items():
        present = {m: v for m, v in values.items() if v is not None}
        dm = None
        if usable and row != baseline and len(present) == len(directions):
            dm = delta_m(present, {m: reference[m] for m in present}, {m: directions[m] for m in present})
        elif usable and row == baseline:
            dm = 0.0
        timing = (step_times or {}).get(row) or {}
        ms = timing.get("mean_s")
        cells = [by[row]["label"]] + ["-" if values[m] is None else f"{values[m]:.{digits}f}" for m in directions]
        cells += ["-" if dm is None else f"{dm + 0.0:+.2f}",
                  "-" if ranked.get(row) is None else f"{ranked[row]:.2f}",
                  "-" if ms is None else f"{1000 * ms:.1f}" + ("*" if timing.get("with_compilation") else ""),
                  str(len(by[row]["seeds"]))]
        lines.append("| " + " | ".join(cells) + " |")
        payload["rows"][row] = {"label": by[row]["label"], "metrics": values, "delta_m": dm,
                                "mean_rank": ranked.get(row), "step_time": dict(timing) or None}
    if trivial is not None:
        cells = [TRIVIAL_LABEL] + ["-" if trivial.get(m) is None else f"{trivial[m]:.{digits}f}" for m in directions]
        lines.append("| " + " | ".join(cells + ["-", "-", "-", "-"]) + " |")
    for label, why in not_run.items():
        lines.append("| " + " | ".join([label] + ["not run"] * len(directions) + ["-", "-", "-", "0"]) + " |")
    lines.append("")
    lines.append("Metric values: mean over seeds. Δm% = 100/K Σ_k (-1)^h_k (M_k - S_k) / S_k over the K metrics "
                 "(h_k = 1 when higher is better; S: the single-task row of this table; lower is better). Mean "
                 "rank: each metric ranks the multi-task rows (1 = best, ties share their mean rank), averaged "
                 "over the metrics. Step time: measured mean wall time of a training step over every run of the "
                 "row (first epoch, with the compilation, left out" + (
                     "; * : a run of one epoch, compilation included)." if any(
                         (t or {}).get("with_compilation") for t in (step_times or {}).values()) else ")."))
    if not usable:
        lines.append(f"Δm% is not reported: {reason}.")
    elif reason:
        lines.append(f"Δm% is reported with {reason}.")
    for label, why in not_run.items():
        lines.append(f"- {label}: not run: {why}")
    return "\n".join(lines), payload
