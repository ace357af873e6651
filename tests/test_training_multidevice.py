"""Data parallelism: 4 fake CPU devices equal 1 device on the same global batches (BatchNorm and dropout
included), a batch that does not divide the devices is refused, and two processes on localhost
(jax.distributed) equal one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _training_common import CACHE_ENV, FAST_COMPILE, compilation_cache, flat_params, make_data, run  # noqa: E402

HERE = os.path.dirname(__file__)
REPO = os.path.dirname(os.path.abspath(HERE))


def _env(tmp_path_factory, **extra):
    env = dict(os.environ, **CACHE_ENV, **extra)
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "training_jax_cache")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_four_devices_equal_one_device(tmp_path_factory):
    env = _env(tmp_path_factory, XLA_FLAGS=f"--xla_force_host_platform_device_count=4 {FAST_COMPILE}")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "_training_multidevice.py")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("REPORT ", 1)[1])
    assert report["params_moved"] > 1e-3  # the comparison is not between two untrained models
    for key in ("params", "batch_stats", "opt_state", "cosine", "loss"):
        assert report[key] < 1e-4, (key, report)
    assert report["eval4"] == report["eval1"] and report["eval4"]["count"] == 23
    assert report["param_sharding_replicated"]
    assert "global batch size 6 is not divisible by the 4 devices" in report["indivisible_error"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_on_localhost_equal_one_process(tmp_path_factory, tmp_path):
    env = _env(tmp_path_factory, XLA_FLAGS=FAST_COMPILE)
    workdir, port = tmp_path / "two", _free_port()
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "_training_distributed.py"), str(i), str(port),
                               str(workdir)], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, f"{out}\n{err[-3000:]}"
        assert "completed 4" in out
    two = dict(np.load(workdir / "distributed_params.npz"))
    with compilation_cache(env["JAX_COMPILATION_CACHE_DIR"]):
        one = flat_params(run(str(tmp_path / "one"), train=make_data(32), num_epochs=1, checkpoint_every=2,
                              dropout=0.3, use_bn=True).state.params)
    assert two.keys() == one.keys()
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-6, err_msg=key)
    assert {"2", "4"} <= set(os.listdir(workdir / "checkpoints"))
