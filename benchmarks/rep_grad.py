"""Step time of the Gramian methods with the Jacobian w.r.t. the shared parameters or w.r.t. the shared
representation (``rep_grad=True``), timed side by side in one run.

    python -m benchmarks.rep_grad                     # CNN (paper config) and quick SegNet, --threads one
    python -m benchmarks.rep_grad --threads default
    python -m benchmarks.rep_grad --tiny              # seconds: checks that every row compiles and runs

The parameter-space step takes T vector-Jacobian products through the encoder; the representation-space
step one (the T rows dL_t / dz_t come from one pullback of the decoders), so the ratio rep_grad / params
should fall towards 1/T of the encoder's share of the step. Rows: ``equal`` (one backward pass, the floor),
and ``mgda``, ``upgrad`` each with and without ``rep_grad``; the same engine step as
:mod:`benchmarks.suite` (donated, Adam 1e-3, no cosine diagnostic), timed in interleaved rounds with the
median kept (its timing helpers and models). Prints a table of medians and ratios; ``--out`` also writes
JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Callable, Optional

from benchmarks.suite import THREAD_FLAGS, Group, _environment, _jax_setup, _memory_mb, time_interleaved

METHODS = ("mgda", "upgrad")
ROWS = ("equal",) + tuple(f"{m}{suffix}" for m in METHODS for suffix in ("", " rep_grad"))


def grid(tiny: bool) -> list[Group]:
    """The CNN at the paper's config (batch 64, T = 2) and the quick SegNet (batch 4, T = 3); ``tiny``: both
    at batch 2 and two rounds, to check that every row runs."""
    if tiny:
        return [Group("cnn tiny", "cnn", 2, 2, ROWS, rounds=2),
                Group("segnet tiny", "segnet", 2, 3, ROWS, rounds=2, width=0.0625, image_size=32, output_size=8)]
    return [Group("cnn paper config", "cnn", 64, 2, ROWS, rounds=15),
            Group("segnet quick", "segnet", 4, 3, ROWS, rounds=8)]


def _step(row: str, setup) -> tuple[Callable[[], None], float, Optional[float]]:
    """The compiled, donated engine step of ``row`` ("equal", "<method>" or "<method> rep_grad")."""
    import jax
    import optax

    from orthojax.methods import get_method
    from orthojax.training import init_train_state, make_train_step

    model, losses, batch, _ = setup
    name, _, variant = row.partition(" ")
    method = get_method(name, **({"rep_grad": True} if variant == "rep_grad" else {}))
    optimizer = optax.adam(1e-3)
    state = init_train_state(jax.random.key(0), model, method, optimizer, batch["image"][:2])
    step = make_train_step(model, losses, method, optimizer, last_shared=model.last_shared_layer(), cosine=False)
    device_batch = jax.device_put(batch)
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state, device_batch).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def run() -> None:
        holder["state"], metrics = compiled(holder["state"], device_batch)
        jax.block_until_ready(metrics["loss"])

    return run, compile_s, _memory_mb(compiled)


def time_group(group: Group, log) -> dict:
    """Compile and warm every row, then time them in ``group.rounds`` interleaved rounds: median and quartiles."""
    setup = _jax_setup(group)
    runners, results = {}, {}
    for row in group.rows:
        run, compile_s, memory = _step(row, setup)
        run()  # warm-up
        run()
        runners[row] = run
        results[row] = {"compile_s": compile_s, "memory_mb": memory, "times_ms": []}
    return time_interleaved(runners, results, group.rounds, log, width=16)


def table(groups: list[dict]) -> str:
    """Markdown: per group and method, the median step (ms) in parameter and representation space and their
    ratio, and each against ``equal``."""
    lines = ["| group | method | params (ms) | rep_grad (ms) | rep_grad / params | params / equal | "
             "rep_grad / equal |", "|---|---|---|---|---|---|---|"]
    for g in groups:
        res = g["results"]
        equal = res["equal"]["median_ms"]
        for m in METHODS:
            p, r = res[m]["median_ms"], res[f"{m} rep_grad"]["median_ms"]
            lines.append(f"| {g['name']} (B={g['batch_size']}, T={g['num_tasks']}) | {m} | {p:.1f} | {r:.1f} | "
                         f"{r / p:.2f} | {p / equal:.2f} | {r / equal:.2f} |")
    return "\n".join(lines)


def child(args) -> None:
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    out = {"environment": _environment(args.threads), "groups": []}
    for group in grid(args.tiny):
        log(f"[{args.threads}] {group.name}")
        out["groups"].append({**dataclasses.asdict(group), "results": time_group(group, log)})
    with open(args.child_out, "w") as f:
        json.dump(out, f, indent=1)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", choices=("one", "default"), default="one",
                        help="one: XLA pinned to one thread (default); default: XLA's own threading")
    parser.add_argument("--tiny", action="store_true", help="tiny models, two rounds: checks that every row runs")
    parser.add_argument("--out", default=None, help="also write the measurements as JSON here")
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_out:
        child(args)
        return
    # XLA reads its flags when it starts: the timing runs in a fresh process with them set
    env = dict(os.environ)
    if args.threads == "one":
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {THREAD_FLAGS}".strip()
    here = os.path.dirname(os.path.abspath(__file__))
    path = args.out or os.path.join(here, "results", ".rep_grad-last.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.rep_grad", "--child-out", path, "--threads", args.threads]
    cmd += ["--tiny"] if args.tiny else []
    subprocess.run(cmd, env=env, check=True, cwd=os.path.dirname(here))
    with open(path) as f:
        run = json.load(f)
    if args.out is None:
        os.unlink(path)
    env_info = run["environment"]
    print(f"threads={env_info['threads']} device={env_info['device']} jax={env_info['jax']} "
          f"cpus={env_info['cpu_count']}")
    print(table(run["groups"]))


if __name__ == "__main__":
    main()
