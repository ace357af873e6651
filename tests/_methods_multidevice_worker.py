"""Worker (run by test_methods_multidevice.py with 4 fake CPU devices): each method's compiled step with the
batch sharded over 4 devices against the same step on one device, two steps with the state threaded through.

Usage: ``python _methods_multidevice_worker.py ENTRY [ENTRY ...]`` (entries of test_methods_common.METHOD_TABLE).
Prints one line ``REPORT {entry: {"violation": v, "devices": n} or {"error": message}}``, v <= 1 when every
output (gradients, state, loss, task losses, metrics, and the parameters after the steps) agrees to
|four - one| <= 1e-6 + 1e-5 max|one| leaf by leaf (float32).
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import json  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_methods_common import build, make_toy  # noqa: E402

STEPS = 2
LEARNING_RATE = 0.05
RTOL, ATOL = 1e-5, 1e-6  # float32


def _violation(a, b) -> float:
    """max over the leaves of max |a - b| / (ATOL + RTOL max |b|): <= 1 where the two agree to float32 rounding
    (one scale per leaf: a solver residual of 1e-7 differs by its own size, a gradient by 1e-5 of its own)."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    if ta != tb:
        raise AssertionError(f"tree structures differ: {ta} vs {tb}")
    worst = 0.0
    for x, y in zip(la, lb):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            raise AssertionError(f"shapes differ: {x.shape} vs {y.shape}")
        if not np.array_equal(np.isfinite(x), np.isfinite(y)):
            raise AssertionError("non-finite entries differ")
        fin = np.isfinite(y)
        if fin.any():
            scale = ATOL + RTOL * np.max(np.abs(y[fin]))
            worst = max(worst, float(np.max(np.abs(x[fin] - y[fin])) / scale))
    return worst


def _run(step, params, state, batch):
    """STEPS steps of plain SGD on the method's gradient; returns every step's output and the final params."""
    outs = []
    for i in range(STEPS):
        out = step(params, state, batch, jax.random.key(10 + i))
        params = jax.tree.map(lambda p, g: p - LEARNING_RATE * g, params, out.grads)
        state = out.state
        outs.append((out.grads, out.state, out.loss, out.task_losses, out.metrics))
    return outs, params, out


def check(entry: str, mesh: Mesh) -> dict:
    params, problem, batch = make_toy(jax.random.key(0), batch=8)
    method = build(entry)
    state = method.init(params, 2)
    step = jax.jit(lambda p, s, b, r: method.step(problem, p, s, b, r))
    one, one_params, _ = _run(step, params, state, batch)
    replicated, by_example = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    p4, s4 = jax.device_put((params, state), replicated)
    b4 = jax.device_put(batch, by_example)  # x (B, d_in), ys (B, T, 1): batch first
    four, four_params, last = _run(step, p4, s4, b4)
    devices = len(last.loss.sharding.device_set)
    return {"violation": max(_violation(four, one), _violation(four_params, one_params)), "devices": devices}


def main(entries: list[str]) -> None:
    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    report = {}
    for entry in entries:
        try:
            report[entry] = check(entry, mesh)
        except Exception as error:  # report every method, not only the first failure
            report[entry] = {"error": f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=3)}"}
    print("REPORT " + json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
