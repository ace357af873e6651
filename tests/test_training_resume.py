"""A run killed with SIGKILL (not asked to stop) at a random step, or in the middle of writing a
checkpoint, and then resumed ends with the same final state, bit for bit, as an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _training_common import CACHE_ENV, FAST_COMPILE  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "_training_run.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 24  # SETTINGS in the worker: 3 epochs of 8 steps, a checkpoint every 2 steps


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = dict(os.environ, **CACHE_ENV)
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "training_jax_cache")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["XLA_FLAGS"] = FAST_COMPILE
    return env


def _start(workdir, env, *args):
    return subprocess.Popen([sys.executable, WORKER, str(workdir), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def _finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{out}\n{err[-3000:]}"
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    workdir = tmp_path_factory.mktemp("reference")
    out = _finish(_start(workdir, env))
    assert f"done completed {STEPS}" in out
    return dict(np.load(workdir / "final_params.npz"))


def _assert_bit_equal(workdir, reference):
    final = dict(np.load(workdir / "final_params.npz"))
    assert final.keys() == reference.keys()
    for key in final:
        np.testing.assert_array_equal(final[key], reference[key], err_msg=key)


def test_sigkill_at_a_random_step_then_resume_is_bit_exact(tmp_path, env, reference):
    target = random.Random().randrange(3, STEPS - 6)
    proc = _start(tmp_path, env)
    for line in proc.stdout:
        epoch, step = map(int, line.split()[1:3]) if line.startswith("batch") else (0, -1)
        if epoch * 8 + step >= target:
            proc.send_signal(signal.SIGKILL)
            break
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed (target step {target})"
    assert not (tmp_path / "final_params.npz").exists()
    out = _finish(_start(tmp_path, env, "--resume"))
    assert f"done completed {STEPS}" in out, out
    _assert_bit_equal(tmp_path, reference)


def test_kill_during_a_save_leaves_the_previous_checkpoint_usable(tmp_path, env, reference):
    proc = _start(tmp_path, env, "--kill-in-save", "6")
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL and "killed while saving 6" in out, out
    names = os.listdir(tmp_path / "checkpoints")
    assert any(name.startswith("6.") and "tmp" in name for name in names), names  # the torn save
    assert {"2", "4"} <= set(names) and "6" not in names
    out = _finish(_start(tmp_path, env, "--resume"))
    assert "batch 0 4" in out and "batch 0 3" not in out  # resumed from step 4
    assert f"done completed {STEPS}" in out
    _assert_bit_equal(tmp_path, reference)
