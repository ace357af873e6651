"""Several hosts without a cluster manager: two local processes started through the command line
(``--coordinator-address 127.0.0.1:<port> --num-processes 2 --process-id i``) train the same table as one
process, each feeding its half of every global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--methods", "equal", "--max-steps", "2", "--batch-size", "32", "--no-progress", "--filters", "4",
        "--set", "data.sizes=128,32,64", "--set", "train.eval_batch_size=32", "--compilation-cache", "off"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workdir, *extra):
    # no fake devices; fast compilation keeps the two processes' start-up within gloo's 30 s rendezvous
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0", "PYTHONPATH": ROOT}
    return subprocess.Popen([sys.executable, "-m", "experiments.multidigit_mnist", *TINY, "--workdir", str(workdir),
                             *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process) -> str:
    try:
        out, _ = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    assert process.returncode == 0, out[-3000:]
    return out


def _row(workdir):
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)["rows"][0]


def test_two_processes_on_one_host_match_one_process(tmp_path):
    outputs = [_finish(_start(tmp_path / "one"))]  # alone first: the pair's collectives wait on both processes
    port = _free_port()
    pair = [_start(tmp_path / "two", "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2",
                   "--process-id", str(i)) for i in range(2)]
    outputs += [_finish(process) for process in pair]
    assert "2 process(es)" in outputs[1] and "1 process(es)" in outputs[0]
    one, two = _row(tmp_path / "one"), _row(tmp_path / "two")
    for key in ("accuracy", "acc_left", "acc_right"):
        assert two["columns"][key]["mean"] == pytest.approx(one["columns"][key]["mean"], abs=1e-9), key
    assert two["sigma"]["mean"] == pytest.approx(one["sigma"]["mean"], rel=1e-4, abs=1e-6)
    assert json.load(open(tmp_path / "two" / "config.json")) == json.load(open(tmp_path / "one" / "config.json"))
