"""Where one compiled train step spends its time: the XLA operations of a ``jax.profiler`` trace, slowest first.

    python -m benchmarks.profile_step --row equal            # MultiDigitCNN, batch 64, T = 2, one thread
    python -m benchmarks.profile_step --row cosreg --model segnet

Builds the step exactly as :mod:`benchmarks.suite` does, warms it up, traces ``--steps`` calls and prints the
mean time per step of each operation (fusions, convolutions, transposes) and the HLO op name behind it.
Pins XLA to one thread unless ``--threads default``.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import sys
import tempfile


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--row", default="equal", help="a row of the suite, e.g. equal, cosreg, cosreg[reference]")
    parser.add_argument("--model", choices=("cnn", "segnet"), default="cnn")
    parser.add_argument("--tasks", type=int, default=None, help="T (default 2 for the CNN, 3 for SegNet)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--threads", choices=("one", "default"), default="one")
    args = parser.parse_args(argv)
    if args.threads == "one" and "jax" not in sys.modules:
        from benchmarks.suite import THREAD_FLAGS

        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {THREAD_FLAGS}".strip()
    import jax

    from benchmarks.suite import Group, _jax_setup, _jax_step

    tasks = args.tasks or (2 if args.model == "cnn" else 3)
    group = Group("profile", args.model, 64 if args.model == "cnn" else 4, tasks, (args.row,))
    run, _, _ = _jax_step(group, args.row, _jax_setup(group))
    for _ in range(3):
        run()
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory, create_perfetto_trace=True):
            for _ in range(args.steps):
                run()
        (path,) = glob.glob(f"{directory}/**/*.trace.json.gz", recursive=True)
        events = json.load(gzip.open(path))["traceEvents"]
    total, count = collections.Counter(), collections.Counter()
    for event in events:
        name = event.get("name", "")
        if event.get("ph") == "X" and "dur" in event and not name.startswith(("$", "Thunk", "Pjit", "Common")):
            total[name] += event["dur"]
            count[name] += 1
    print(f"{args.model}, {args.row}, T = {tasks}: mean ms per step of each XLA operation ({args.steps} steps)")
    for name, micros in total.most_common(args.top):
        print(f"{micros / args.steps / 1e3:9.2f} ms  x{count[name] // args.steps:3d}  {name}")


if __name__ == "__main__":
    main()
