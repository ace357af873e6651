"""A table of runs (the experiments' command) never loses or misreports work: skipped
non-finite steps counted and reported, a failing row reported while the others run, SIGTERM stopping the
whole command at a checkpoint, the command line and every run's workdir checked before anything trains or
is written, resume only with the saved settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _training_common import (  # noqa: E402
    CACHE_ENV, FAST_COMPILE, compilation_cache, logged_train_steps, make_data, run_tiny_table, tiny_benchmark,
    workdir_snapshot,
)

from experiments import multidigit_mnist  # noqa: E402
from experiments.runner import Row  # noqa: E402
from orthojax import training  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(os.path.dirname(__file__), "_training_run.py")


@pytest.fixture(scope="module", autouse=True)
def _shared_compilation_cache(tmp_path_factory):
    with compilation_cache(str(tmp_path_factory.getbasetemp() / "training_jax_cache")):
        yield


def _results(workdir):
    return json.load(open(os.path.join(workdir, "results.json"))), open(os.path.join(workdir, "results.md")).read()


# ----------------------------------------------------------------------------- item 1
def test_skipped_nonfinite_steps_are_counted_reported_and_resumable(tmp_path):
    train = make_data(48)
    train["image"][5, 0, 0, 0] = np.nan  # one example: one batch per epoch is non-finite
    bench = tiny_benchmark(train=train)
    workdir = str(tmp_path / "wd")
    run_tiny_table(workdir, ["equal"], bench=bench, epochs=2)
    results, text = _results(workdir)
    row = results["rows"][0]
    assert row["nonfinite_steps"] == [2] and row["steps"] == [12] and not row["failed"]
    assert row["sigma"]["mean"] is not None and np.isfinite(row["sigma"]["mean"])  # NaN cosines left out
    assert "**Skipped steps**" in text and "equal: seed 0: 2 of 12 steps" in text
    assert any(p.endswith("task_losses.png") for p in results["plots"])
    summary = json.load(open(os.path.join(workdir, "equal", "seed_0", "summary.json")))
    assert summary["skipped"] == [2] and summary["status"] == "completed"
    run_tiny_table(workdir, ["equal"], bench=bench, epochs=2, resume=True)
    again, again_text = _results(workdir)
    assert again["rows"] == results["rows"] and again_text == text


def test_skipped_steps_are_counted_per_seed():
    history = training.History(train=[{"step": 1, "finite": [True, False]}, {"step": 2, "finite": [False, False]},
                                      {"step": 3, "finite": [True, True]}])
    assert history.skipped_steps(2) == [1, 2]
    assert training.History(train=[{"step": 1, "finite": False}]).skipped_steps() == [1]


# ----------------------------------------------------------------------------- item 3
def test_a_failing_row_is_reported_while_the_other_rows_run(tmp_path, capsys):
    rows = [Row("poisoned", "Poisoned", "equal", model_kwargs={"poison": True}), Row("equal", "No reg", "equal")]
    workdir = str(tmp_path / "wd")
    with pytest.raises(SystemExit) as exit_info:
        run_tiny_table(workdir, rows, epochs=4)  # 24 steps: the guard's limit of 20 stops the poisoned row
    assert exit_info.value.code == 1
    results, text = _results(workdir)
    by = {r["row"]: r for r in results["rows"]}
    assert by["poisoned"]["failed"][0]["error"].startswith("NonFiniteError: 20 consecutive steps")
    assert by["poisoned"]["columns"]["accuracy"]["mean"] is None
    assert by["equal"]["columns"]["accuracy"]["mean"] is not None and not by["equal"]["failed"]
    assert "**Failed runs**" in text and "- Poisoned: seed 0: NonFiniteError: 20 consecutive steps" in text
    assert "| Poisoned |" in text and "| 0/1 |" in text
    assert "1 run(s) failed" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # resumed: the finished row is reused, the failed one fails again at once
        run_tiny_table(workdir, rows, epochs=4, resume=True)
    again, _ = _results(workdir)
    assert {r["row"]: r["columns"] for r in again["rows"]} == {r["row"]: r["columns"] for r in results["rows"]}
    assert "resuming it would stop again" in {r["row"]: r for r in again["rows"]}["poisoned"]["failed"][0]["error"]


# ----------------------------------------------------------------------------- item 4
@pytest.fixture(scope="module")
def worker_env(tmp_path_factory):
    env = dict(os.environ, **CACHE_ENV)
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "worker_jax_cache")
    env["PYTHONPATH"] = REPO + os.pathsep + os.path.dirname(__file__) + os.pathsep + env.get("PYTHONPATH", "")
    env["XLA_FLAGS"] = FAST_COMPILE
    return env


def test_sigterm_stops_the_whole_command_at_a_checkpoint_then_resume_finishes_it(tmp_path, worker_env):
    workdir = tmp_path / "wd"
    proc = subprocess.Popen([sys.executable, WORKER, str(workdir), "--table", "equal,cosreg"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=worker_env, cwd=REPO)
    seen = 0
    for line in proc.stdout:
        seen += line.startswith("batch")
        if seen == 3:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped at a checkpoint" in err and "--resume" in err
    steps = training.checkpoint_steps(workdir / "equal" / "seed_0" / "checkpoints")
    assert steps and steps[-1] < 12  # the first row stopped at a checkpoint, mid-run
    assert not (workdir / "cosreg").exists() and not (workdir / "results.md").exists()  # no other row started
    assert not (workdir / training.LOCK_FILE).exists()
    run_tiny_table(str(workdir), ["equal", "cosreg"], epochs=2, resume=True)  # the same command, --resume
    results, _ = _results(str(workdir))
    assert [r["row"] for r in results["rows"]] == ["equal", "cosreg"]
    assert all(not r["failed"] and not r["incomplete"] for r in results["rows"])
    assert logged_train_steps(workdir / "equal" / "seed_0") == list(range(1, 13))


# ----------------------------------------------------------------------------- items 5, 11: the command line
@pytest.mark.parametrize("flags, message", [
    (["--max-steps", "0"], "--max-steps: train.max_steps must be an integer >= 1"),
    (["--max-steps", "-1"], "--max-steps: train.max_steps must be an integer >= 1"),
    (["--epochs", "0"], "--epochs: train.epochs must be an integer >= 1"),
    (["--batch-size", "0"], "--batch-size: train.batch_size must be an integer >= 1"),
    (["--lr", "0"], "--lr: train.lr must be a finite number > 0"),
    (["--lr", "nan"], "expected a finite number; got 'nan'"),
    (["--checkpoint-every", "-1"], "--checkpoint-every: train.checkpoint_every must be an integer >= 0"),
    (["--seeds", "0,0"], "--seeds"),
    (["--data-dir", "/nonexistent/orthojax"], "does not exist"),
    (["--methods", "equal,bogus"], "unknown row 'bogus'"),
    (["--sweep-filters", "4,0"], "--sweep-filters: sweep.filters must be a non-empty list of integers >= 1"),
])
def test_bad_command_lines_fail_at_parsing_before_anything_is_written(tmp_path, capsys, flags, message):
    workdir = tmp_path / "wd"
    with pytest.raises(SystemExit) as exit_info:
        multidigit_mnist.main(["--methods", "equal", "--workdir", str(workdir), "--no-progress", *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not workdir.exists()


def test_a_bad_method_hyperparameter_is_refused_before_anything_is_written(tmp_path):
    workdir = tmp_path / "wd"
    with pytest.raises(ValueError, match=r"threshold S must be a real number in \[-1, 1\]; got 2.0"):
        multidigit_mnist.main(["--methods", "recon", "--workdir", str(workdir), "--no-progress",
                               "--set", "methods.recon.s=2"])
    assert not workdir.exists()


def test_workdir_that_is_a_file_is_an_argparse_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        multidigit_mnist.main(["--methods", "equal", "--workdir", str(tmp_path / "file" / "wd")])
    assert exit_info.value.code == 2 and "is a file, not a directory" in capsys.readouterr().err


# ----------------------------------------------------------------------------- items 6, 7, 8: every run checked first
def test_table_resume_refuses_changed_settings_before_any_row_runs(tmp_path):
    workdir = str(tmp_path / "wd")
    run_tiny_table(workdir, ["equal", "cosreg"], max_steps=2)
    first, first_text = _results(workdir)
    before = workdir_snapshot(workdir)
    with pytest.raises(training.WorkdirError, match=r"2 runs cannot start") as error:
        run_tiny_table(workdir, ["equal", "cosreg"], max_steps=2, learning_rate=2e-2, resume=True)
    assert str(error.value).count("settings.learning_rate: 0.01 -> 0.02") == 2
    with pytest.raises(training.ConfigChangedError, match="settings.batch_size: 8 -> 4"):  # a finished run too
        run_tiny_table(workdir, ["equal"], max_steps=2, batch_size=4, resume=True)
    with pytest.raises(training.RunExistsError, match="resume it"):  # a rerun without --resume
        run_tiny_table(workdir, ["gradnorm", "equal"], max_steps=2)
    assert workdir_snapshot(workdir) == before and not os.path.exists(os.path.join(workdir, "gradnorm"))
    # harmless: progress bars, checkpoint cadence, a larger max_steps (the finished runs continue)
    run_tiny_table(workdir, ["equal", "cosreg"], max_steps=3, progress=True, checkpoint_every=1, resume=True)
    results, _ = _results(workdir)
    assert [r["steps"] for r in results["rows"]] == [[3], [3]]
    assert logged_train_steps(os.path.join(workdir, "equal", "seed_0")) == [1, 2, 3]
    with pytest.raises(training.WorkdirError, match="below step 3"):
        run_tiny_table(workdir, ["equal", "cosreg"], max_steps=2, resume=True)
    run_tiny_table(workdir, ["equal", "cosreg"], max_steps=3, resume=True)  # the same settings: reused as is
    assert _results(workdir)[0]["rows"] == results["rows"]


def test_a_command_on_a_workdir_in_use_is_refused(tmp_path):
    workdir = tmp_path / "wd"
    holder = training.WorkdirLock(workdir / "equal" / "seed_0").acquire()  # a run of another command
    try:
        with pytest.raises(training.WorkdirLocked, match="in use by another run"):
            run_tiny_table(str(workdir), ["cosreg", "equal"], max_steps=1)
        assert sorted(os.listdir(workdir)) == ["equal"]  # nothing else written, the cosreg row never trained
    finally:
        holder.release()
    with training.WorkdirLock(workdir):  # the whole command's lock
        with pytest.raises(training.WorkdirLocked, match=f"^{workdir} is in use by another run"):
            run_tiny_table(str(workdir), ["equal"], max_steps=1)
    run_tiny_table(str(workdir), ["equal"], max_steps=1)
    assert not (workdir / training.LOCK_FILE).exists()


def test_a_refusal_on_the_command_line_is_one_line_and_exit_1(capsys):
    from experiments.pipeline import run_command
    from orthojax.training import RunExistsError

    def main():
        raise RunExistsError("/tmp/wd holds a run (checkpoint 20): resume it with --resume")

    with pytest.raises(SystemExit) as exit_info:
        run_command(main)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: /tmp/wd holds a run (checkpoint 20): resume it with --resume"

    def bug():
        raise ZeroDivisionError("a bug keeps its traceback")

    with pytest.raises(ZeroDivisionError):
        run_command(bug)
