"""Worker (run with XLA_FLAGS=--xla_force_host_platform_device_count=4): data-parallel steps on 4 devices
against 1 device on the same global batches, BatchNorm and dropout included; prints a JSON report."""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from _training_common import LAST_SHARED, TinyMTL, accuracy_metrics, make_data, task_losses  # noqa: E402
from orthojax import training  # noqa: E402
from orthojax.data.loader import iterate_batches  # noqa: E402
from orthojax.methods import get_method  # noqa: E402


def train(mesh, train_data, test_data, steps: int):
    model, method, optimizer = TinyMTL(use_bn=True, dropout=0.3), get_method("cosreg", alpha=1.0), optax.adam(1e-2)
    init = lambda key: training.init_train_state(key, model, method, optimizer, train_data["image"][:2])  # noqa: E731
    state, sharding = training.init_sharded(init, mesh, jax.random.key(0))
    step = training.compile_train_step(
        training.make_train_step(model, task_losses, method, optimizer, last_shared=LAST_SHARED), mesh, sharding)
    metrics = []
    for i, batch in enumerate(iterate_batches(train_data, 8, 0, 0)):
        if i == steps:
            break
        state, m = step(state, training.shard_batch(batch, mesh))
        metrics.append(jax.device_get(m))
    accumulator = accuracy_metrics()
    eval_step = jax.jit(training.make_eval_step(model, accumulator), out_shardings=training.replicated(mesh))
    acc = jax.device_put(accumulator.init(), training.replicated(mesh))
    for batch in iterate_batches(test_data, 8, 0, 0, drop_last=False, shuffle=False):  # 8, 8, 7
        acc = eval_step(state, acc, training.shard_batch(batch, mesh, allow_replicate=True))
    return jax.device_get(state), metrics, accumulator.finalize(jax.device_get(acc)), state


def max_rel_diff(a, b) -> float:
    diffs = [float(np.max(np.abs(x - y)) / (np.max(np.abs(y)) + 1e-12)) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return max(diffs)


def max_abs_diff(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main() -> None:
    assert jax.device_count() == 4, jax.devices()
    train_data, test_data = make_data(32), make_data(23, seed=1)
    s4, m4, e4, live4 = train(training.make_mesh(), train_data, test_data, steps=3)
    s1, m1, e1, _ = train(training.make_mesh(jax.devices()[:1]), train_data, test_data, steps=3)
    report = {
        "params": max_rel_diff(s4.params, s1.params),
        "batch_stats": max_rel_diff(s4.batch_stats, s1.batch_stats),
        "opt_state": max_rel_diff(s4.opt_state, s1.opt_state),
        "cosine": max_rel_diff([m["cosine"] for m in m4], [m["cosine"] for m in m1]),
        "loss": max_rel_diff([m["loss"] for m in m4], [m["loss"] for m in m1]),
        "params_moved": max_abs_diff(s1.params, jax.device_get(
            training.init_train_state(jax.random.key(0), TinyMTL(use_bn=True, dropout=0.3),
                                      get_method("cosreg"), optax.adam(1e-2), train_data["image"][:2]).params)),
        "eval4": e4, "eval1": e1,
        "param_sharding_replicated": all(
            x.sharding.is_fully_replicated and len(x.sharding.device_set) == 4 for x in jax.tree.leaves(live4.params)),
    }
    try:
        training.shard_batch({k: v[:6] for k, v in train_data.items()}, training.make_mesh())
        report["indivisible_error"] = None
    except ValueError as e:
        report["indivisible_error"] = str(e)
    print("REPORT " + json.dumps(report))


if __name__ == "__main__":
    main()
