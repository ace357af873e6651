"""The Cityscapes experiment (MTAN layout and synthetic default) and the comparison table of every experiment:
mean rank, Delta_m%, the trivial predictor row, the finding rule, ``--methods all``."""

import json
import math
import os

import numpy as np
import pytest

from experiments import cityscapes, pipeline
from experiments.cli import parse_command
from experiments.report import comparison, finding, mean_ranks, reference_check, row_label, training_lines
from experiments.runner import Row
from orthojax.methods.registry import method_names


def _results(workdir):
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)


def _write_mtan_cityscapes(root, counts=(4, 2), size=(32, 64)):
    """{train,val}/{image,label_7,depth}/<i>.npy as MTAN's preprocessed release stores them."""
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), counts):
        for key in ("image", "label_7", "depth"):
            (root / split / key).mkdir(parents=True)
        for i in range(n):
            np.save(root / split / "image" / f"{i}.npy", rng.random(size + (3,)).astype(np.float32))
            np.save(root / split / "label_7" / f"{i}.npy", rng.integers(-1, 7, size).astype(np.float32))
            depth = rng.uniform(0.01, 0.45, size + (1,)).astype(np.float32)
            depth[:2] = 0  # invalid pixels
            np.save(root / split / "depth" / f"{i}.npy", depth)
    return root


def test_cityscapes_quick_on_the_mtan_layout_lists_recon_as_not_run(tmp_path):
    data_dir = _write_mtan_cityscapes(tmp_path / "cs")
    workdir = str(tmp_path / "run")
    cityscapes.main(["--methods", "single_task,equal,recon", "--max-steps", "2", "--batch-size", "2",
                     "--data-dir", str(data_dir), "--workdir", workdir, "--no-progress"])
    results = _results(workdir)
    assert results["data"]["synthetic"] is False and results["data"]["image_size"] == [32, 64]
    rows = {r["row"]: r for r in results["rows"]}
    assert set(rows) == {"single_task", "equal"}
    for row in rows.values():
        for key in cityscapes.DIRECTIONS:
            assert row["columns"][key]["mean"] is not None
    assert "task_specific_layers" in results["not_run"]["Recon"]
    assert set(results["trivial"]["columns"]) >= set(cityscapes.DIRECTIONS)
    compared = results["comparison"]
    assert compared["rows"]["equal"]["step_time"]["steps"] >= 1
    # Delta_m is reported exactly when the single-task row beats the trivial predictor on every metric
    assert compared["delta_m_reported"] == (compared["delta_m_reason"] == "")
    assert (compared["rows"]["equal"]["delta_m"] is None) == (not compared["delta_m_reported"])
    text = open(os.path.join(workdir, "results.md")).read()
    assert "Trivial predictor" in text and "Recon: not run" in text and "--max-steps 2 cut training" in text
    assert "mIoU = mean over the 7 classes" in text


def test_cityscapes_synthetic_default_averages_the_last_epochs(tmp_path):
    """4 training scenes at batch 2: 2 steps an epoch; 3 steps give 2 evaluated epochs, averaged. (The shapes
    of the MTAN-layout test above: its compiled programs are reused from the session's compilation cache.)"""
    workdir = tmp_path / "syn"
    cityscapes.main(["--methods", "equal", "--max-steps", "3", "--last-epochs", "2", "--batch-size", "2", "--set",
                     "data.synthetic_sizes=4,2", "--workdir", str(workdir), "--no-progress"])
    results = _results(str(workdir))
    assert results["data"]["synthetic"] is True and "last 2 epochs" in results["evaluated"]
    records = [json.loads(line) for line in (workdir / "equal" / "seed_0" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("kind") == "epoch" and "eval/seg/miou" in r]
    assert len(evals) == 2
    for key in cityscapes.DIRECTIONS:
        expected = np.mean([r[f"eval/{key}"] for r in evals])
        assert results["rows"][0]["columns"][key]["mean"] == pytest.approx(expected, rel=1e-6)
    assert "SYNTHETIC" in (workdir / "results.md").read_text()


def test_mean_rank_against_hand_computed_ranks_with_ties_and_missing_values():
    means = {"a": {"m1": 0.5, "e1": 1.0}, "b": {"m1": 0.7, "e1": 1.0}, "c": {"m1": 0.6, "e1": 3.0},
             "d": {"m1": None, "e1": 0.5}}
    ranks = mean_ranks(means, {"m1": True, "e1": False})
    # m1 (higher better): b 1, c 2, a 3; e1 (lower better): d 1, a and b tie at 2.5, c 4
    assert ranks == {"a": pytest.approx((3 + 2.5) / 2), "b": pytest.approx((1 + 2.5) / 2),
                     "c": pytest.approx((2 + 4) / 2), "d": pytest.approx(1.0)}
    with pytest.raises(ValueError, match="directions"):
        mean_ranks(means, {})


def _entry(row, values, n=1):
    return {"row": row, "label": row.title(), "seeds": list(range(n)),
            "columns": {k: {"mean": v, "std": 0.0, "n": n} for k, v in values.items()}}


def test_comparison_delta_m_and_ranks_against_hand_computation():
    directions = {"miou": True, "abs_err": False}
    summary = [_entry("single_task", {"miou": 0.5, "abs_err": 0.2}), _entry("equal", {"miou": 0.55, "abs_err": 0.22}),
               _entry("cosreg", {"miou": 0.45, "abs_err": 0.18})]
    trivial = {"miou": 0.1, "abs_err": 0.4}
    text, payload = comparison(summary, directions, {"miou": "mIoU", "abs_err": "Abs."}, trivial=trivial,
                               not_run={"Recon": "no task_specific_layers"})
    # equal: miou +10 % (better: -10), abs_err +10 % (worse: +10) -> 0; cosreg: -10 % miou (+10), -10 % err (-10)
    assert payload["rows"]["equal"]["delta_m"] == pytest.approx(0.0, abs=1e-12)
    assert payload["rows"]["cosreg"]["delta_m"] == pytest.approx(0.0, abs=1e-12)
    assert payload["rows"]["single_task"]["delta_m"] == 0.0 and payload["rows"]["single_task"]["mean_rank"] is None
    summary[1] = _entry("equal", {"miou": 0.6, "abs_err": 0.2})  # +20 % miou only: Delta_m = -10
    text, payload = comparison(summary, directions, {}, trivial=trivial)
    assert payload["rows"]["equal"]["delta_m"] == pytest.approx(-10.0)
    assert payload["rows"]["equal"]["mean_rank"] == pytest.approx(1.5)  # miou 1st, abs_err 2nd of the two
    assert payload["rows"]["cosreg"]["mean_rank"] == pytest.approx(1.5)
    assert "Trivial predictor" in text


def test_delta_m_withheld_when_the_single_task_row_does_not_beat_the_trivial_predictor():
    directions = {"miou": True, "abs_err": False}
    summary = [_entry("single_task", {"miou": 0.05, "abs_err": 0.2}), _entry("equal", {"miou": 0.06, "abs_err": 0.2})]
    text, payload = comparison(summary, directions, {}, trivial={"miou": 0.1, "abs_err": 0.4})
    assert payload["delta_m_reported"] is False and payload["rows"]["equal"]["delta_m"] is None
    assert "Δm% is not reported" in text and "miou 0.05 vs 0.1" in text
    assert reference_check(None, None, directions)[0] is False
    assert reference_check({"miou": 0.5, "abs_err": 0.1}, {"miou": 0.1, "abs_err": 0.4}, directions) == (True, "")


def test_finding_needs_three_seeds_and_a_stated_comparison():
    one = finding("CosReg lowers σ", {"mean": 0.1, "std": 0.0, "n": 1}, {"mean": 0.2, "std": 0.0, "n": 1}, lower=True,
                  steps=40)
    assert "on this run (1 seed, 40 steps): yes" in one and "**" not in one and "not a finding" in one
    a, b = np.array([0.10, 0.12, 0.11]), np.array([0.20, 0.22, 0.19])
    stat = lambda x: {"mean": float(x.mean()), "std": float(x.std()), "n": len(x)}  # noqa: E731
    pooled = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    three = finding("CosReg lowers σ", stat(a), stat(b), lower=True)
    assert "**yes**" in three and f"{pooled:.3f}" in three and "3 and 3 seeds" in three
    assert "**no**" in finding("x", stat(b), stat(a), lower=True)
    assert "**not resolved**" in finding("x", stat(a), stat(a + 0.001), lower=True)
    assert finding("x", None, stat(a), lower=True) == "- x: not run"


def test_training_lines_say_what_cut_training():
    summary = [{"steps": [2]}, {"steps": [4]}]
    (line,) = training_lines(summary, preset="quick", planned_steps=8, max_steps=2, protocol_steps=1000)
    assert "--max-steps 2 cut training" in line and "2-4 steps per run" in line and "1000" in line
    (line,) = training_lines([{"steps": [8]}], preset="quick", planned_steps=8, max_steps=None, protocol_steps=1000)
    assert "quick preset is shorter" in line
    assert training_lines([{"steps": [1000]}], preset="paper", planned_steps=1000, max_steps=None,
                          protocol_steps=1000) == []


def test_recon_and_missing_model_options_cannot_run_on_segnet_mtan():
    assert "task_specific_layers" in cityscapes.unsupported_row("mtan", Row("recon", "Recon", "recon"))
    assert cityscapes.unsupported_row("segnet", Row("recon", "Recon", "recon")) is None
    dropout = Row("dropout", "Dropout", "equal", model_kwargs={"dropout_rate": 0.1})
    assert "dropout_rate" in cityscapes.unsupported_row("mtan", dropout)
    with pytest.raises(ValueError, match="no row of the table can run"):
        pipeline.split_unsupported([Row("recon", "Recon", "recon")], lambda row: "no")


def test_methods_all_lists_every_registered_method(tmp_path, monkeypatch):
    """``--methods all``: every registered name is a row that runs or is listed as not run (a fake runner)."""
    command = parse_command(cityscapes.EXPERIMENT, ["--methods", "all"])
    assert list(command.config.rows) == method_names()

    def fake_run_table(bench, settings, rows, workdir):
        rng = np.random.default_rng(0)
        return [{"row": r.key, "label": r.label, "method": r.method, "method_kwargs": {}, "model_kwargs": {},
                 "per_seed": [{"seed": 0, "metrics": {k: float(rng.uniform(0.1, 1)) for k in cityscapes.DIRECTIONS},
                               "eval": None, "sigma": None, "mu": None, "cosines": [], "loss": [],
                               "status": "completed", "nonfinite_steps": 0, "steps": 1}]} for r in rows]

    monkeypatch.setattr(pipeline, "run_table", fake_run_table)
    workdir = str(tmp_path / "all")
    cityscapes.main(["--methods", "all", "--set", "data.synthetic_sizes=8,4", "--workdir", workdir, "--no-progress"])
    results = _results(workdir)
    ran = {r["method"] for r in results["rows"]}
    listed = {name for name in method_names() if row_label(name) in results["not_run"]}
    assert ran | listed == set(method_names()) and not ran & listed
    assert "recon" in listed and "task_specific_layers" in results["not_run"][row_label("recon")]
    assert "single_task" in ran  # a protocol gives its stages their hyper-parameters
    text = open(os.path.join(workdir, "results.md")).read()
    assert all(row_label(name) in text for name in method_names())
    assert set(results["comparison"]["rows"]) == {r["row"] for r in results["rows"]}
    ranks = [v["mean_rank"] for k, v in results["comparison"]["rows"].items() if k != "single_task"]
    assert None not in ranks and min(ranks) >= 1.0
