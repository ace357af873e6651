"""Tests for experiments.plots: the figures of a table's workdir, from each run's metrics.jsonl and the row
results, and the notes for the figures that cannot be drawn."""

import os
import types

import matplotlib.image
import numpy as np
import pytest

from experiments.plots import read_run, row_runs, smoothing, write_plots
from orthojax.training.logging import MetricWriter, write_config

TASKS = ("left", "right")
COLUMNS = (("left_err", "left error", 3), ("right_err", "right error", 3))


def bench():
    def table_metrics(evaluation):
        return {"left_err": 1 - evaluation["left/acc"], "right_err": 1 - evaluation["right/acc"]}

    def single_task_metrics(t, evaluation):
        key = ("left", "right")[t]
        return {f"{key}_err": 1 - evaluation[f"{key}/acc"]}

    return types.SimpleNamespace(task_names=TASKS, table_metrics=table_metrics,
                                 single_task_metrics=single_task_metrics)


def write_engine_run(run_dir, steps, *, weights=None, grad_norms=False, num_seeds=1, nonfinite=(), epochs=2):
    """A run's config.json and metrics.jsonl as the engine writes them (step metrics, epoch summaries)."""
    write_config(run_dir, {"train": {"num_seeds": num_seeds}})
    writer = MetricWriter(run_dir, tensorboard=False)
    rng = np.random.default_rng(len(run_dir))
    per_epoch = steps // epochs
    for step in range(1, steps + 1):
        c = rng.uniform(-0.2, 0.2)
        metrics = {"loss": 1.0, "task_losses": [1.0 / step, 2.0 / step], "finite": step not in nonfinite,
                   "cosine": [[1.0, c], [c, 1.0]]}
        if weights is not None:
            metrics["task_weights"] = weights
        if grad_norms:
            metrics["grad_norms"] = [0.5, 0.25]
        if num_seeds > 1:
            metrics = {k: [v] * num_seeds for k, v in metrics.items()}
        writer.write({"kind": "train", "step": step, "epoch": (step - 1) // per_epoch, **metrics})
        if step % per_epoch == 0:
            evaluation = {"eval/left/acc": 0.5 + 0.1 * step / steps, "eval/right/acc": 0.4}
            if num_seeds > 1:
                evaluation = {k: [v] * num_seeds for k, v in evaluation.items()}
            writer.write({"kind": "epoch", "step": step, "epoch": step // per_epoch - 1, **evaluation})
    writer.close()


def table(tmp_path, steps=40):
    """A table workdir: a one-run row, a row of vmapped seeds with grad norms, a row of one run per task."""
    wd = str(tmp_path)
    write_engine_run(os.path.join(wd, "equal", "seed_0"), steps, nonfinite=(3,))
    write_engine_run(os.path.join(wd, "gradnorm", "seeds_0-1"), steps, grad_norms=True, num_seeds=2)
    write_engine_run(os.path.join(wd, "single_task", "seed_0", "task_0"), steps, weights=[1.0, 0.0])
    write_engine_run(os.path.join(wd, "single_task", "seed_0", "task_1"), steps, weights=[0.0, 1.0])
    cos = np.random.default_rng(0).uniform(-0.3, 0.3, size=(steps, 1)).tolist()
    rows = [{"row": "equal", "label": "Equal weights", "per_seed": [{"seed": 0, "cosines": cos}]},
            {"row": "gradnorm", "label": "GradNorm", "per_seed": [{"seed": 0, "cosines": cos[: steps // 2]},
                                                                   {"seed": 1, "cosines": cos}]},
            {"row": "single_task", "label": "Single task", "per_seed": [{"seed": 0, "cosines": []}]},
            {"row": "cosreg", "label": "CosReg", "per_seed": [{"seed": 0, "cosines": [], "status": "failed"}]}]
    return wd, rows


def check_png(path):
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert 200 <= img.shape[0] < 3000 and 300 <= img.shape[1] < 4000 and img.std() > 0


def test_every_figure_is_written(tmp_path):
    wd, rows = table(tmp_path)
    written, notes = write_plots(wd, rows, "Toy", bench=bench(), columns=COLUMNS)
    names = [os.path.basename(p) for p in written]
    assert names == ["task_losses.png", "eval_metrics.png", "task_grad_norms.png", "cosine_distributions.png",
                     "rolling_sigma.png"]
    for path in written:
        assert os.path.dirname(path) == os.path.join(wd, "plots")
        check_png(path)
    assert notes == ["Plots: no training records for CosReg (failed or not run); not in the figures."]


def test_read_run_and_the_rows_runs(tmp_path):
    wd, rows = table(tmp_path)
    equal = read_run(os.path.join(wd, "equal", "seed_0"))
    np.testing.assert_allclose(equal["task_losses"][:, 1][[0, 3]], [2.0, 0.5])
    assert np.isnan(equal["task_losses"][2]).all()  # the skipped step is a gap
    assert equal["trained"] == [0, 1] and equal["grad_norms"] is None
    assert [step for step, _ in equal["evals"]] == [20, 40]
    vmapped = row_runs(wd, rows[1])[0]  # seeds_0-1: the first seed of the leading axis
    assert vmapped["task_losses"].shape == (40, 2) and vmapped["grad_norms"].shape == (40, 2)
    assert vmapped["evals"][0][1]["left/acc"] == pytest.approx(0.55)
    stages = row_runs(wd, rows[2])
    assert [(r["stage"], r["trained"]) for r in stages] == [("task_0", [0]), ("task_1", [1])]
    assert row_runs(wd, rows[3]) == []


def test_short_run_says_why_there_is_no_rolling_sigma(tmp_path):
    wd, rows = table(tmp_path, steps=16)
    written, notes = write_plots(wd, rows, "Toy", task_names=TASKS)
    assert not any(p.endswith("rolling_sigma.png") for p in written)
    assert any("rolling σ not drawn" in n and "logged 8 cosines" in n for n in notes)  # GradNorm's seed 0: 8
    assert any(p.endswith("cosine_distributions.png") for p in written)


def test_notes_when_nothing_reports_grad_norms_or_cosines(tmp_path):
    wd = str(tmp_path)
    write_engine_run(os.path.join(wd, "equal", "seed_0"), 8)
    rows = [{"row": "equal", "label": "Equal weights", "per_seed": [{"seed": 0, "cosines": []}]}]
    written, notes = write_plots(wd, rows, "Toy")
    assert [os.path.basename(p) for p in written] == ["task_losses.png", "eval_metrics.png"]
    assert any("gradient norms not drawn" in n for n in notes)
    assert any("cosine distributions not drawn" in n for n in notes)
    with pytest.raises(ValueError, match="task_names has 3 names"):
        write_plots(wd, rows, "Toy", task_names=("a", "b", "c"))


def test_smoothing():
    assert smoothing(30) == 1 and smoothing(100) == 1 and smoothing(101) == 2 and smoothing(10_000) == 200


def test_bad_metrics_file_is_named(tmp_path):
    run = tmp_path / "r"
    write_engine_run(str(run), 4)
    (run / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        read_run(str(run))
