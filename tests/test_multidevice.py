"""Multi-device equivalence on 4 fake CPU devices (run in a subprocess: XLA_FLAGS must be set before JAX starts).

Each check (see ``_multidevice_worker.py``) compares, on the same global batch of 8, a multi-device run with the
single-device run: total value, penalty, cosine matrix and the final (user-averaged) gradient, in float64.

- jit with the batch sharded by ``NamedSharding`` on a 1-D mesh "data" (params replicated), Explicit and Auto axes;
- ``jax.shard_map`` with ``axis_name``: the gradient of the axis-averaged total (default ``check_vma=True``: JAX
  itself sums the cotangents of the replicated params), the gradient taken outside ``shard_map``, and the
  pmap-style recipe ``g = grad(total); g = pmean(g)`` with ``check_vma=False``;
- ``jax.pmap`` with ``axis_name``: ``g = grad(total); g = pmean(g)``; each device's total holds its local task
  losses plus the global penalty;
- ``task_gradients(..., axis_name=...)`` returns the global-batch per-task gradients under pmap and shard_map.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_multidevice_worker.py")
VARIANTS = ("fast", "reference", "split")  # loss_with_cosreg's two implementations, loss_with_cosreg_split
CHECKS = [
    "jit_sharded_explicit_mesh",
    "jit_sharded_auto_mesh",
    "shard_map_grad_of_pmean_total",
    "shard_map_grad_outside",
    "shard_map_no_vma_grad_then_pmean",
    "shard_map_task_gradients",
    "pmap_grad_then_pmean",
    "pmap_task_gradients",
]


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, WORKER], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", CHECKS)
def test_multidevice_equals_single_device(results, variant, name):
    key = f"{variant}:{name}"
    assert key in results, sorted(results)
    assert results[key]["ok"], results[key]["detail"]
