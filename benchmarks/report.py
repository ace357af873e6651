"""Turns a suite JSON (:mod:`benchmarks.suite`) into BENCHMARKS.md tables and plots.

    python -m benchmarks.report benchmarks/results/suite-quick.json

The tables replace what lies between ``<!-- <name>:begin -->`` and ``<!-- <name>:end -->`` in BENCHMARKS.md
(``<name>`` is the JSON's file name without ``.json``; the markers are appended when missing). Plots (step
time against T and against the batch size, CNN, both threading modes) go next to the JSON.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, Optional

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = (
    # (label, numerator row, denominator row): one line per group at the paper's shape
    ("CosReg / equal (target: CNN <= 1.8, SegNet 3 heads <= 2.3)", "cosreg", "equal"),
    ("JAX CosReg / PyTorch CosReg (target <= 1)", "cosreg", "torch cosreg"),
    ("JAX equal / PyTorch equal (target <= 1.1)", "equal", "torch equal"),
)


def _median(group: dict, row: str) -> Optional[float]:
    r = group["results"].get(row)
    return None if r is None or "median_ms" not in r else r["median_ms"]


def _group(run: dict, name: str) -> Optional[dict]:
    for g in run["groups"]:
        if g["name"] == name:
            return g
    return None


def _fmt(x: Optional[float], digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def group_table(group: dict) -> list[str]:
    """Markdown rows: median (IQR), ratio to the same framework's equal step, compile, memory."""
    equal = {"jax": _median(group, "equal"), "torch": _median(group, "torch equal")}
    lines = ["| step | median ms (IQR) | / its equal | compile s | XLA memory MB |", "|---|---|---|---|---|"]
    for row, r in group["results"].items():
        if "error" in r:
            lines.append(f"| {row} | failed: {r['error']} | | | |")
            continue
        base = equal["torch" if row.startswith("torch") else "jax"]
        ratio = r["median_ms"] / base if base else None
        lines.append(f"| {row} | {r['median_ms']:.1f} ({r['q1_ms']:.1f}-{r['q3_ms']:.1f}) | {_fmt(ratio, 2)} | "
                     f"{r['compile_s']:.1f} | {_fmt(r.get('memory_mb'))} |")
    return lines


def _ratio(group: dict, num: str, den: str) -> Optional[float]:
    a, b = _median(group, num), _median(group, den)
    return a / b if a and b else None


def t_slope(run: dict, row: str) -> Optional[tuple[float, float]]:
    """Least-squares (ms per extra task, intercept) of ``row`` over the CNN groups with batch 64."""
    points = [(g["num_tasks"], _median(g, row)) for g in run["groups"]
              if g["model"] == "cnn" and g["batch_size"] == 64 and _median(g, row)]
    if len({t for t, _ in points}) < 2:
        return None
    t, ms = np.asarray(points, dtype=float).T
    slope, intercept = np.polyfit(t, ms, 1)
    return float(slope), float(intercept)


def markdown(document: dict) -> str:
    lines = [f"Command: `{document['command']}`; run {document['date']}."]
    for run in document["runs"]:
        env = run["environment"]
        lines += ["", f"#### Threads: {env['threads']} ({env['device']}, {env['cpu_count']} cores, jax {env['jax']}, "
                  f"torch {env.get('torch')}{', XLA_FLAGS=' + repr(env['xla_flags']) if env['xla_flags'] else ''})", ""]
        lines += ["| ratio of median step times | group | measured |", "|---|---|---|"]
        for label, num, den in TARGETS:
            for group in run["groups"]:
                paper_shape = (2, 64) if group["model"] == "cnn" else (3, group["batch_size"])
                if (group["num_tasks"], group["batch_size"]) != paper_shape:
                    continue
                ratio = _ratio(group, num, den)
                if ratio is not None:
                    lines.append(f"| {label} | {group['name']} | {ratio:.2f} |")
        for row in ("equal", "cosreg", "cosreg[fast]", "torch cosreg"):
            fit = t_slope(run, row)
            if fit:
                lines.append(f"| {row}: cost per extra task, CNN batch 64 (linear fit over T) | cnn T=2..8 | "
                             f"{fit[0]:.1f} ms/task (intercept {fit[1]:.1f} ms) |")
        for group in run["groups"]:
            lines += ["", f"**{group['name']}** ({group['model']}, batch {group['batch_size']}, T = "
                      f"{group['num_tasks']}" + (f", width {group['width']}, {group['image_size']}px -> "
                                                  f"{group['output_size']}px" if group["model"] == "segnet" else "")
                      + f", {group['rounds']} interleaved rounds)", ""]
            lines += group_table(group)
    return "\n".join(lines) + "\n"


def _series(run: dict, row: str, key: str, fixed: dict) -> tuple[list, list]:
    xs, ys = [], []
    for g in run["groups"]:
        if g["model"] != "cnn" or any(g[k] != v for k, v in fixed.items()):
            continue
        m = _median(g, row)
        if m:
            xs.append(g[key])
            ys.append(m)
    order = np.argsort(xs)
    return [xs[i] for i in order], [ys[i] for i in order]


def plots(document: dict, directory: str, stem: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key, fixed, label in (("num_tasks", {"batch_size": 64}, "T (tasks)"),
                              ("batch_size", {"num_tasks": 2}, "batch size")):
        fig, axes = plt.subplots(1, len(document["runs"]), figsize=(5.5 * len(document["runs"]), 4), squeeze=False)
        drawn = False
        for ax, run in zip(axes[0], document["runs"]):
            for row in ("equal", "cosreg", "cosreg[fast]", "torch equal", "torch cosreg"):
                xs, ys = _series(run, row, key, fixed)
                if len(xs) >= 2:
                    ax.plot(xs, ys, marker="o", label=row, linestyle="--" if row.startswith("torch") else "-")
                    drawn = True
            ax.set_xlabel(label)
            ax.set_ylabel("median step time (ms)")
            if key == "batch_size":
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
            ax.set_title(f"MultiDigitCNN, threads: {run['environment']['threads']}")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
        if drawn:
            path = os.path.join(directory, f"{stem}-step_time_vs_{'T' if key == 'num_tasks' else 'batch'}.png")
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            written.append(path)
        plt.close(fig)
    return written


def update(json_path: str, benchmarks_md: str = os.path.join(ROOT, "BENCHMARKS.md")) -> list[str]:
    """Rewrites the marked section of BENCHMARKS.md and the plots from ``json_path``; returns the paths."""
    import json

    with open(json_path) as f:
        document = json.load(f)
    stem = os.path.splitext(os.path.basename(json_path))[0]
    begin, end = f"<!-- {stem}:begin -->", f"<!-- {stem}:end -->"
    text = open(benchmarks_md).read() if os.path.exists(benchmarks_md) else "# Benchmarks\n"
    body = f"{begin}\n{markdown(document)}{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + body + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    with open(benchmarks_md, "w") as f:
        f.write(text)
    return [benchmarks_md] + plots(document, os.path.dirname(os.path.abspath(json_path)), stem)


def main(argv: Optional[Iterable[str]] = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        raise SystemExit("usage: python -m benchmarks.report <suite json>")
    for path in update(args[0]):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
