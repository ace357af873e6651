"""Turns row results into the paper-style table (``results.md`` / ``results.json``) and the plots."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from orthojax.plots import plot_cosine_distributions, plot_rolling_sigma, plot_training_curves

__all__ = ["Column", "failed_runs", "mean_std", "summarize", "write_plots", "write_results"]

Column = tuple  # (key, label, digits)


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
                   paper: Mapping[str, Mapping[str, float]], sigma_digits: int = 3) -> str:
    """Ours (mean ± std over seeds) beside the paper's published value, one row per method."""
    head = ["Method"] + [f"{label} (ours)" for _, label, _ in columns] + [f"{label} (paper)" for _, label, _ in columns]
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
    return "\n".join(lines)


def write_results(workdir: str, *, title: str, data_info: Mapping, protocol: Mapping, summary: Sequence[Mapping],
                  columns: Sequence[Column], paper: Mapping[str, Mapping[str, float]], notes: Sequence[str] = (),
                  extra_sections: Sequence[tuple[str, str]] = (), extra_json: Optional[Mapping[str, Any]] = None) -> None:
    """Writes ``results.json`` and ``results.md`` in ``workdir``."""
    os.makedirs(workdir, exist_ok=True)
    payload = {"title": title, "data": dict(data_info), "protocol": dict(protocol), "columns": [list(c) for c in columns],
               "rows": list(summary), "paper": {k: dict(v) for k, v in paper.items()}, "notes": list(notes),
               **dict(extra_json or {})}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(payload, f, indent=2)
    synthetic = bool(data_info.get("synthetic"))
    lines = [f"# {title}", ""]
    lines.append(f"- Data: **{'SYNTHETIC (procedural scenes, not the real dataset)' if synthetic else 'real'}** — "
                 f"{data_info.get('name', '')} ({data_info.get('source', '')})")
    for key, value in protocol.items():
        lines.append(f"- {key}: {value}")
    lines += ["", markdown_table(summary, columns, paper), ""]
    lines.append("Ours: mean ± std over seeds of the final-epoch evaluation; σ cos: standard deviation of the "
                 "task-gradient cosines of the last shared layer over all training iterations (mean over seeds "
                 "and task pairs).")
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


def write_plots(workdir: str, row_results: Sequence[Mapping], title: str, window: int = 50) -> list[str]:
    """Figures 2/4 (cosine distributions), 5 (rolling sigma) and training curves, in ``workdir/plots``."""
    plots = os.path.join(workdir, "plots")
    cosines = {}
    curves = {}
    for row in row_results:
        pooled = [np.asarray(s["cosines"], dtype=np.float64) for s in row["per_seed"] if len(s["cosines"])]
        if pooled:
            first = pooled[0]
            first = first[:, 0] if first.ndim == 2 else first
            first = first[np.isfinite(first)]
            if first.size:
                cosines[row["label"]] = first
        runs = [s for s in row["per_seed"] if s["loss"]]
        if runs:
            # skipped (non-finite) steps are gaps in the curve, and counted in its label
            loss = np.asarray(runs[0]["loss"], dtype=np.float64)
            loss = loss.reshape(len(loss), -1).mean(axis=1)
            skipped = int(np.sum(~np.isfinite(loss)))
            if np.isfinite(loss).any():
                label = row["label"] + (f" ({skipped} non-finite steps skipped)" if skipped else "")
                curves[label] = {"loss": loss.tolist()}
    written = []
    if cosines:
        written.append(str(plot_cosine_distributions(cosines, os.path.join(plots, "cosine_distributions.png"),
                                                     title=f"{title}\ntask-gradient cosines (first task pair, seed 0)")))
        if min(len(v) for v in cosines.values()) >= window:
            written.append(str(plot_rolling_sigma(cosines, os.path.join(plots, "rolling_sigma.png"), window=window,
                                                  title=f"{title}\nrolling σ of cosines ({window} iterations)")))
    if curves:
        written.append(str(plot_training_curves(curves, os.path.join(plots, "training_curves.png"),
                                                title=f"{title}: training loss")))
    return written
