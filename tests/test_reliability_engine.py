"""The training engine never loses or misreports work: a workdir held by one run at a time, a
rerun refused before anything is rewritten, resume only with the run's own settings, checkpoints verified
on restore (a damaged one skipped for the previous intact one), a workdir whose checkpoints are gone
refused, and the non-finite limit exact."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _training_common import (  # noqa: E402
    compilation_cache, flat_params, logged_train_steps, make_data, run, workdir_snapshot,
)

from orthojax import training  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _shared_compilation_cache(tmp_path_factory):
    with compilation_cache(str(tmp_path_factory.getbasetemp() / "training_jax_cache")):
        yield


TRAIN = make_data(48)  # 6 steps per epoch at batch 8
COMMON = dict(train=TRAIN, method="equal", use_bn=False, cosine=False)


def _assert_same_params(a, b):
    fa, fb = flat_params(a), flat_params(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


# ----------------------------------------------------------------------------- item 7: refused before writing
def test_rerun_without_resume_is_refused_before_anything_is_rewritten(tmp_path):
    workdir = str(tmp_path / "run")
    run(workdir, max_steps=2, **COMMON)
    before = workdir_snapshot(workdir)
    with pytest.raises(training.RunExistsError, match="resume it") as error:
        run(workdir, max_steps=3, lr=1e-3, **COMMON)  # other settings too: config.json must stay as it was
    assert isinstance(error.value, FileExistsError)
    assert workdir_snapshot(workdir) == before  # no rewritten config.json, no new TensorBoard file
    assert not os.path.exists(os.path.join(workdir, training.LOCK_FILE))


# ----------------------------------------------------------------------------- item 6: settings on resume
def test_resume_refuses_changed_settings_by_name_and_allows_harmless_ones(tmp_path):
    workdir = str(tmp_path / "run")
    run(workdir, max_steps=2, **COMMON)
    before = workdir_snapshot(workdir)
    with pytest.raises(training.ConfigChangedError, match=r"batch_size: 8 -> 4.*train.num_epochs: 1 -> 2"):
        run(workdir, resume=True, max_steps=2, batch_size=4, num_epochs=2, **COMMON)
    with pytest.raises(training.ConfigChangedError, match="train.seed: 0 -> 1"):
        run(workdir, resume=True, max_steps=2, seed=1, **COMMON)
    assert workdir_snapshot(workdir) == before
    # progress bars, TensorBoard, checkpoint cadence, log cadence and a larger max_steps may change
    result = run(workdir, resume=True, max_steps=4, checkpoint_every=1, log_every=1, tensorboard=False,
                 progress=True, **COMMON)
    assert result.history.status == "completed" and int(result.state.step) == 4
    assert logged_train_steps(workdir) == [1, 2, 3, 4]
    assert json.load(open(os.path.join(workdir, "config.json")))["train"]["max_steps"] == 4
    with pytest.raises(training.ConfigChangedError, match="below step 4"):
        run(workdir, resume=True, max_steps=3, **COMMON)


def test_max_steps_must_be_positive():
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_steps must be >= 1"):
            training.TrainConfig(max_steps=bad)


# ----------------------------------------------------------------------------- item 8: one run per workdir
HOLDER = """
import sys, time
from orthojax.training import WorkdirLock
lock = WorkdirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_one_run_per_workdir_and_a_killed_owner_does_not_leave_it_stuck(tmp_path):
    workdir = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, workdir], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(training.WorkdirLocked, match=f"in use by another run \\(pid {holder.pid} on "):
            run(workdir, max_steps=2, **COMMON)
        with pytest.raises(training.WorkdirLocked):
            training.check_workdir(training.TrainConfig(), workdir, steps_per_epoch=6)
        assert os.listdir(workdir) == [training.LOCK_FILE]  # nothing written by the refused run
        owner = json.load(open(os.path.join(workdir, training.LOCK_FILE)))
        assert owner["pid"] == holder.pid and owner["host"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert os.path.exists(os.path.join(workdir, training.LOCK_FILE))  # left behind by the killed owner
    result = run(workdir, max_steps=2, **COMMON)  # stale: taken over
    assert result.history.status == "completed"
    assert not os.path.exists(os.path.join(workdir, training.LOCK_FILE))


def test_lock_is_exclusive_within_a_process_and_released(tmp_path):
    lock = training.WorkdirLock(tmp_path)
    with lock:
        with pytest.raises(training.WorkdirLocked, match=f"pid {os.getpid()}"):
            training.WorkdirLock(tmp_path).acquire()
    assert not (tmp_path / training.LOCK_FILE).exists()
    (tmp_path / training.LOCK_FILE).write_text("")  # torn or foreign: not held by anyone
    with training.WorkdirLock(tmp_path) as again:
        assert again.held and json.loads((tmp_path / training.LOCK_FILE).read_text())["pid"] == os.getpid()


# ----------------------------------------------------------------------------- item 9: checkpoints removed
def test_workdir_whose_checkpoints_were_removed_is_refused(tmp_path):
    workdir = str(tmp_path / "run")
    run(workdir, max_steps=4, checkpoint_every=2, **COMMON)
    shutil.rmtree(os.path.join(workdir, "checkpoints"))
    before = workdir_snapshot(workdir)
    with pytest.raises(training.CheckpointsMissingError, match="logs checkpoints up to step 4"):
        run(workdir, resume=True, max_steps=4, checkpoint_every=2, **COMMON)
    with pytest.raises(training.RunExistsError, match="its checkpoints are gone"):
        run(workdir, max_steps=4, checkpoint_every=2, **COMMON)
    assert workdir_snapshot(workdir) == before


def test_resume_whose_metrics_lack_steps_is_refused_before_anything_is_rewritten(tmp_path):
    workdir = str(tmp_path / "run")
    run(workdir, max_steps=4, checkpoint_every=2, **COMMON)
    path = os.path.join(workdir, "metrics.jsonl")
    lines = [line for line in open(path) if '"kind": "train", "step": 2,' not in line]
    with open(path, "w") as f:
        f.writelines(lines)
    before = workdir_snapshot(workdir)
    with pytest.raises(training.HistoryMissingError, match=r"metrics.jsonl lacks 1 of the train steps 1..4 .*\[2\]"):
        run(workdir, resume=True, max_steps=6, checkpoint_every=2, **COMMON)
    assert workdir_snapshot(workdir) == before


def test_run_stopped_before_its_first_checkpoint_restarts_from_zero_on_resume(tmp_path, capsys):
    workdir = str(tmp_path / "run")

    def crash_at_step_3(epoch, step, batch):
        if step == 2:
            raise RuntimeError("crash")
        return batch

    with pytest.raises(RuntimeError, match="crash"):
        run(workdir, log_every=1, on_batch=crash_at_step_3, **COMMON)
    assert logged_train_steps(workdir) == [1, 2] and not training.checkpoint_steps(os.path.join(workdir, "checkpoints"))
    with pytest.raises(training.RunExistsError, match="starts it again from step 0"):
        run(workdir, log_every=1, **COMMON)
    result = run(workdir, resume=True, log_every=1, **COMMON)
    assert "starting again from step 0" in capsys.readouterr().err
    assert result.history.status == "completed" and logged_train_steps(workdir) == list(range(1, 7))


# ----------------------------------------------------------------------------- item 10: verified checkpoints
def _largest_data_file(step_dir):
    files = [os.path.join(r, n) for r, _, ns in os.walk(os.path.join(step_dir, "state")) for n in ns]
    return max((f for f in files if "/d/" in f), key=os.path.getsize)


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _flip_bit(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)[0]
        f.seek(-1, 1)
        f.write(bytes([byte ^ 0x10]))


DAMAGE = {
    "truncated data file": lambda d: _truncate(_largest_data_file(d)),
    "flipped bit": lambda d: _flip_bit(_largest_data_file(d)),
    "missing orbax manifest": lambda d: os.remove(os.path.join(d, "state", "manifest.ocdbt")),
    "missing checksum manifest": lambda d: os.remove(os.path.join(d, training.MANIFEST)),
    "truncated metadata": lambda d: _truncate(os.path.join(d, "_CHECKPOINT_METADATA")),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Checkpoints 2, 4, 6 of a 6-step run (to copy), and the final parameters of an 8-step run."""
    base = tmp_path_factory.mktemp("damage")
    common = dict(num_epochs=2, checkpoint_every=2, keep_checkpoints=3, dropout=0.3, **COMMON)
    run(str(base / "six"), max_steps=6, **common)
    reference = run(str(base / "eight"), max_steps=8, **common)
    return base / "six", reference, common


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_latest_checkpoint_is_named_and_skipped_for_the_previous_one(tmp_path, saved, kind):
    six, _, _ = saved
    shutil.copytree(six / "checkpoints", tmp_path / "checkpoints")
    step6 = str(tmp_path / "checkpoints" / "6")
    assert training.verify_checkpoint(step6) is None
    DAMAGE[kind](step6)
    checkpointer = training.Checkpointer(tmp_path / "checkpoints")
    try:
        problem = checkpointer.verify(6)
        assert problem is not None and (step6 in problem or "no " + training.MANIFEST in problem), problem
        with pytest.raises(training.CheckpointError, match=f"checkpoint {step6} is damaged"):
            checkpointer.restore({"unused": np.zeros(())}, step=6)
        abstract = training.abstract_like(_restore_any(checkpointer, 4))
        with pytest.warns(RuntimeWarning, match=f"checkpoint {step6} is damaged, skipped"):
            restored = checkpointer.restore_latest(abstract)
        assert restored.step == 4 and [s for s, _ in restored.skipped] == [6]
        assert restored.position == {"step": 4, "epoch": 0, "position": 4, "steps_per_epoch": 6}
    finally:
        checkpointer.close()


def _restore_any(checkpointer, step):
    import orbax.checkpoint as ocp

    return checkpointer._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state


def test_resume_past_a_flipped_bit_is_bit_exact(tmp_path, saved, capsys):
    six, reference, common = saved
    workdir = tmp_path / "run"
    shutil.copytree(six, workdir)
    _flip_bit(_largest_data_file(str(workdir / "checkpoints" / "6")))
    with pytest.warns(RuntimeWarning, match="SHA-256 differs"):
        resumed = run(str(workdir), resume=True, max_steps=8, **common)
    assert "resuming from checkpoint 4" in capsys.readouterr().err
    _assert_same_params(resumed.state.params, reference.state.params)
    assert resumed.history.train == reference.history.train
    assert [n.split("-")[0] for n in os.listdir(workdir / "checkpoints.damaged")] == ["6"]
    assert training.Checkpointer(workdir / "checkpoints").all_steps() == [4, 6, 8]
    for step in (4, 6, 8):
        assert training.verify_checkpoint(str(workdir / "checkpoints" / str(step))) is None
    assert logged_train_steps(workdir) == list(range(1, 9))


def test_every_checkpoint_damaged_is_refused_naming_each(tmp_path, saved):
    six, _, common = saved
    workdir = tmp_path / "run"
    shutil.copytree(six, workdir)
    for step in (2, 4, 6):
        _truncate(_largest_data_file(str(workdir / "checkpoints" / str(step))))
    with pytest.raises(training.CheckpointError, match=r"no intact checkpoint .*/6/.*/4/.*/2/"):
        with pytest.warns(RuntimeWarning):
            run(str(workdir), resume=True, max_steps=8, **common)


# ----------------------------------------------------------------------------- item 12: exact limit
def test_nonfinite_limit_is_exact_between_metric_flushes(tmp_path):
    def nan_from_step_2(epoch, step, batch):
        return dict(batch, image=batch["image"] * np.nan) if epoch > 0 or step >= 1 else batch

    workdir = str(tmp_path / "run")
    with pytest.raises(training.NonFiniteError, match=r"3 consecutive steps \(up to step 4\)"):
        run(workdir, num_epochs=2, on_batch=nan_from_step_2, max_nonfinite=3, log_every=10, **COMMON)
    saved = training.History.from_metrics(workdir)
    assert saved.status == "nonfinite" and saved.nonfinite_steps == [2, 3, 4]
    assert [r["step"] for r in saved.train] == [1, 2, 3, 4] and logged_train_steps(workdir) == [1, 2, 3, 4]
    clean = run(str(tmp_path / "clean"), max_steps=1, **COMMON)
    checkpointer = training.Checkpointer(os.path.join(workdir, "checkpoints"))
    assert checkpointer.all_steps() == [4]
    state, _ = checkpointer.restore(training.abstract_like(clean.state))
    checkpointer.close()
    assert int(state.step) == 4 and int(state.nonfinite_streak) == 3
    _assert_same_params(state.params, clean.state.params)  # the last finite parameters: step 1's
    with pytest.raises(training.NonFiniteError, match="resuming it would stop again"):
        run(workdir, resume=True, num_epochs=2, max_nonfinite=3, log_every=10, **COMMON)
