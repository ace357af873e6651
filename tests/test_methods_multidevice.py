"""Every gradient-aggregation method (the rep_grad variants included) in the multi-device compiled step: the
batch sharded over 4 fake CPU devices under jit gives the gradients, state, losses and metrics of one device,
over two steps with the state threaded through (GradVac's targets, Nash-MTL's weights)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from orthojax.methods.aggregation import AGGREGATORS

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from test_methods_common import METHOD_TABLE, _VARIANTS  # noqa: E402

# the aggregation methods' entries of the method table (variants such as "mgda_rep_grad" included)
ENTRIES = sorted(entry for entry in METHOD_TABLE if _VARIANTS.get(entry, entry) in AGGREGATORS)


def test_table_covers_every_aggregation_method():
    assert {_VARIANTS.get(entry, entry) for entry in ENTRIES} == set(AGGREGATORS)
    assert any(METHOD_TABLE[entry].get("rep_grad") for entry in ENTRIES)


def test_four_devices_equal_one_device():
    """One subprocess (JAX starts once) with XLA_FLAGS set before JAX starts; every entry reported."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "_methods_multidevice_worker.py"), *ENTRIES],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "REPORT " in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("REPORT ", 1)[1])
    assert sorted(report) == ENTRIES
    failed = {entry: r for entry, r in report.items() if "error" in r or r["violation"] > 1 or r["devices"] != 4}
    assert not failed, failed
