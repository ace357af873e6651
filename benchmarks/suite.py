"""The step-time benchmark suite: every method's compiled train step, CosReg's implementations and the
PyTorch double-backward CosReg step, timed side by side in one run.

    python -m benchmarks.suite --quick        # about 3 minutes per threading mode on a 2-core CPU
    python -m benchmarks.suite                # the whole grid (tens of minutes on a 2-core CPU)
    python -m benchmarks.suite --no-paper-segnet --threads one

For each threading mode (``one``: XLA and PyTorch pinned to one thread; ``default``: each framework's own
threading) a fresh process builds every step of a group (same model, batch and T), compiles it, warms it
up, then times the steps in interleaved rounds (one call of each step per round) and keeps the median, so
a load change on a shared machine hits every step of a group alike. Recorded per step: median and
quartiles of the step time (ms), compile time (s: lowering + XLA compilation; PyTorch: the first step),
and the peak memory XLA plans for the step (MB: arguments + outputs + temporaries - aliased; PyTorch:
not measured).

JAX steps are the engine's (:func:`orthojax.training.make_train_step`, donated, Adam 1e-3, without the
cosine diagnostic unless the row says so). CosReg rows: ``cosreg`` (split over the model's encode/decode,
the engine's default), ``cosreg[fast]`` (:func:`orthojax.loss_with_cosreg` on the whole model) and
``cosreg[reference]`` (reverse over reverse). PyTorch rows (when torch is installed): ``torch equal`` and
``torch cosreg`` (``autograd.grad(create_graph=True)`` per task, then ``backward``) on the twin models of
:mod:`benchmarks.torch_reference`.

Writes ``--out`` (JSON, default ``benchmarks/results/suite[-quick].json``), then regenerates the tables
between the markers in BENCHMARKS.md and the plots in ``benchmarks/results/`` (see
:mod:`benchmarks.report`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional

THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


@dataclasses.dataclass(frozen=True)
class Group:
    """Steps timed together: one model, batch size and task count."""

    name: str
    model: str  # "cnn" or "segnet"
    batch_size: int
    num_tasks: int
    rows: tuple[str, ...]
    rounds: int = 15
    width: float = 0.125
    image_size: int = 64
    output_size: int = 16


CNN_CORE = ("equal", "cosreg", "cosreg[fast]", "cosreg[reference]", "torch equal", "torch cosreg")
SCALING = ("equal", "cosreg", "cosreg[fast]", "torch equal", "torch cosreg")


def groups(quick: bool, paper_segnet: bool, method_names: list[str]) -> list[Group]:
    """The grid. ``quick``: the CNN at the paper's config, T = 4, and a quick SegNet."""
    segnet_rows = ("equal", "cosreg", "cosreg[fast]", "cosreg[reference]", "torch equal", "torch cosreg")
    if quick:
        return [
            Group("cnn paper config", "cnn", 64, 2, CNN_CORE + ("equal+cosine",), rounds=10),
            Group("cnn T=4", "cnn", 64, 4, SCALING, rounds=8),
            Group("segnet quick", "segnet", 4, 3, segnet_rows, rounds=6),
        ]
    others = tuple(m for m in method_names if m not in ("equal", "cosreg"))
    out = [Group("cnn paper config", "cnn", 64, 2, CNN_CORE + ("equal+cosine",) + others, rounds=15)]
    out += [Group(f"cnn T={t}", "cnn", 64, t, SCALING, rounds=10) for t in range(3, 9)]
    out += [Group(f"cnn batch={b}", "cnn", b, 2, SCALING, rounds=10) for b in (16, 32, 128, 256)]
    out.append(Group("segnet quick", "segnet", 4, 3, segnet_rows + ("equal+cosine",), rounds=10))
    out.append(Group("segnet quick T=5", "segnet", 4, 5, SCALING, rounds=6))
    if paper_segnet:
        for b in (2, 8):
            out.append(Group(f"segnet paper batch={b}", "segnet", b, 3,
                             ("equal", "cosreg", "torch equal", "torch cosreg"), rounds=5,
                             width=1.0, image_size=320, output_size=80))
    return out


def selected_groups(quick: bool, paper_segnet: bool, method_names: list[str], only: str, rows: str) -> list[Group]:
    """The grid narrowed by ``--only`` (substrings of group names) and ``--rows`` (row names).

    Raises:
      SystemExit: an ``--only`` entry that matches no group or a ``--rows`` entry that is no row (the
        message lists the valid ones).
    """
    grid = groups(quick, paper_segnet, method_names)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    unknown = [w for w in wanted if not any(w in g.name for g in grid)]
    if unknown:
        raise SystemExit(f"--only {unknown} matches no group of this grid; groups: {[g.name for g in grid]}")
    if wanted:
        grid = [g for g in grid if any(w in g.name for w in wanted)]
    keep = [r.strip() for r in rows.split(",") if r.strip()]
    known = sorted({r for g in grid for r in g.rows})
    if [r for r in keep if r not in known]:
        raise SystemExit(f"--rows {[r for r in keep if r not in known]} are not rows of the chosen groups; "
                         f"rows: {known}")
    return grid


# ------------------------------------------------------------------------------------------------ JAX side


def _jax_setup(group: Group):
    import numpy as np

    from experiments.dense import TaskSpec, dense_task_losses
    from experiments.multidigit_mnist import task_losses as digit_losses
    from orthojax.models import MultiDigitCNN, SegNet

    rng = np.random.default_rng(0)
    n, t = group.batch_size, group.num_tasks
    if group.model == "cnn":
        model = MultiDigitCNN(num_classes=(5,) * t)
        batch = {"image": rng.random((n, 64, 64, 1), np.float32),
                 "label": rng.integers(0, 5, (n, t)).astype(np.int32)}
        return model, digit_losses, batch, 20
    kinds = [("seg", "seg", 14), ("depth", "depth", 1), ("normal", "normal", 3)]
    kinds += [(f"depth{i}", "depth", 1) for i in range(t - 3)]
    specs = tuple(TaskSpec(key, kind, c if kind == "seg" else 0) for key, kind, c in kinds)
    heads = tuple((key, c, "normal" if kind == "normal" else "linear") for key, kind, c in kinds)
    size, out = group.image_size, group.output_size
    model = SegNet(heads=heads, width=group.width, output_size=out)
    normal = rng.normal(size=(n, out, out, 3)).astype(np.float32)
    batch = {"image": rng.random((n, size, size, 3), np.float32),
             "seg": rng.integers(-1, 14, (n, out, out)).astype(np.int32),
             "normal": normal / np.linalg.norm(normal, axis=-1, keepdims=True)}
    for key, kind, _ in kinds:
        if kind == "depth":
            batch[key] = rng.random((n, out, out, 1), np.float32)
    return model, dense_task_losses(specs), batch, max(1, round(512 * group.width))


def _method(row: str, model, latent: int):
    from orthojax.methods import get_method

    name, _, variant = row.partition("[")
    name = name.removesuffix("+cosine")
    kwargs: dict[str, Any] = {}
    if variant:
        kwargs["implementation"] = variant.rstrip("]")
    if name in ("rotate_only", "rotograd", "rotograd_norm"):
        kwargs["latent_size"] = latent
    if name == "recon":
        kwargs["layers"] = (model.last_shared_layer(),)
    if name == "single_task":
        kwargs["task"] = 0
    return get_method(name, **kwargs)


def _memory_mb(compiled) -> Optional[float]:
    try:
        m = compiled.memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
        return total / 2**20
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None


def _jax_step(group: Group, row: str, setup) -> tuple[Callable[[], None], float, Optional[float]]:
    import jax
    import optax

    from orthojax.training import init_train_state, make_train_step

    model, losses, batch, latent = setup
    method, optimizer = _method(row, model, latent), optax.adam(1e-3)
    state = init_train_state(jax.random.key(0), model, method, optimizer, batch["image"][:2])
    step = make_train_step(model, losses, method, optimizer, last_shared=model.last_shared_layer(),
                           cosine=row.endswith("+cosine"))
    device_batch = jax.device_put(batch)
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state, device_batch).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def run() -> None:
        holder["state"], metrics = compiled(holder["state"], device_batch)
        jax.block_until_ready(metrics["loss"])

    return run, compile_s, _memory_mb(compiled)


# ------------------------------------------------------------------------------------------------ PyTorch side


def _torch_step(group: Group, row: str, batch: dict) -> tuple[Callable[[], None], float, None]:
    import torch

    from benchmarks import torch_reference as tr

    torch.manual_seed(0)
    if group.model == "cnn":
        model, weight, losses = tr.make_cnn(group.num_tasks)
    else:
        heads = [("seg", 14), ("depth", 1), ("normal", 3)] + [("depth", 1)] * (group.num_tasks - 3)
        model, weight, losses = tr.make_segnet(heads, group.width, group.output_size)
    on = tr.device()
    model.to(on).train()
    step = tr.make_step(model, weight, losses, alpha=10.0 if row == "torch cosreg" else None)
    torch_batch = tr.to_torch(batch, on)
    t0 = time.perf_counter()
    step(torch_batch)
    compile_s = time.perf_counter() - t0
    return lambda: step(torch_batch), compile_s, None


# ------------------------------------------------------------------------------------------------ one process


def _time_group(group: Group, torch_ok: bool, log, keep_rows: frozenset = frozenset()) -> dict:
    setup = _jax_setup(group)
    runners, results = {}, {}
    for row in group.rows:
        if (row.startswith("torch") and not torch_ok) or (keep_rows and row not in keep_rows):
            continue
        try:
            if row.startswith("torch"):
                run, compile_s, memory = _torch_step(group, row, setup[2])
            else:
                run, compile_s, memory = _jax_step(group, row, setup)
            run()  # warm-up
            run()
        except Exception as e:  # noqa: BLE001 - one failing method must not hide the others
            results[row] = {"error": f"{type(e).__name__}: {e}"[:300]}
            log(f"  {row}: {results[row]['error']}")
            continue
        runners[row] = run
        results[row] = {"compile_s": compile_s, "memory_mb": memory, "times_ms": []}
    return time_interleaved(runners, results, group.rounds, log, width=22)


def time_interleaved(runners: dict, results: dict, rounds: int, log: Callable[[str], None],
                     width: int = 22) -> dict:
    """Times every compiled step of ``runners`` in turn, ``rounds`` times (interleaved, so that a slow moment
    of a shared machine falls on every row alike), and adds each row's median and quartiles (ms) to
    ``results[row]``."""
    import numpy as np

    times = {row: [] for row in runners}
    for _ in range(rounds):
        for row, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[row].append(1e3 * (time.perf_counter() - t0))
    for row in runners:
        q1, med, q3 = np.percentile(np.asarray(times[row]), [25, 50, 75])
        results[row].pop("times_ms", None)
        results[row].update(median_ms=float(med), q1_ms=float(q1), q3_ms=float(q3), rounds=len(times[row]))
        log(f"  {row:>{width}}: {med:9.1f} ms  compile {results[row]['compile_s']:6.1f} s")
    return results


def _environment(threads: str) -> dict:
    import jax

    info = {
        "threads": threads,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "device": f"{jax.devices()[0].device_kind} ({jax.devices()[0].platform})",
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "jax": jax.__version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        info["torch"] = None
    return info


def child(args) -> None:
    """Runs the grid in this process (its threading was fixed by the parent's environment)."""
    if args.threads == "one":
        try:
            import torch

            torch.set_num_threads(1)
        except ImportError:
            pass
    from benchmarks import torch_reference
    from orthojax.methods import method_names

    torch_ok = torch_reference.available() and not args.no_torch
    out = {"environment": _environment(args.threads), "groups": []}
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    keep = frozenset(r.strip() for r in args.rows.split(",") if r.strip())
    for group in selected_groups(args.quick, args.paper_segnet, method_names(), args.only, args.rows):
        log(f"[{args.threads}] {group.name}")
        results = _time_group(group, torch_ok, log, keep)
        ran = dataclasses.replace(group, rows=tuple(results))
        out["groups"].append({**dataclasses.asdict(ran), "results": results})
    with open(args.child_out, "w") as f:
        json.dump(out, f, indent=1)


def main(argv: Optional[list[str]] = None) -> None:
    from orthojax.methods import method_names

    full = groups(False, True, method_names())
    epilog = ("groups (quick): " + ", ".join(g.name for g in groups(True, True, method_names()))
              + "; groups (full): " + ", ".join(g.name for g in full)
              + "; rows: " + ", ".join(sorted({r for g in full for r in g.rows})))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=epilog)
    parser.add_argument("--quick", action="store_true",
                        help="the small grid (about 3 minutes per threading mode on a 2-core CPU)")
    parser.add_argument("--threads", choices=("one", "default", "both"), default="both",
                        help="one: XLA and PyTorch pinned to one thread; default: each framework's own threading; "
                             "both: one process each (default)")
    parser.add_argument("--paper-segnet", action=argparse.BooleanOptionalAction, default=True,
                        help="include paper-size SegNet (320x320 -> 80x80, width 1) in the full grid")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows even if torch is installed")
    parser.add_argument("--only", default="", help="comma-separated substrings of group names to run")
    parser.add_argument("--rows", default="", help="comma-separated rows to keep (default: every row of a group)")
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/results/suite[-quick].json)")
    parser.add_argument("--no-report", action="store_true", help="do not rewrite BENCHMARKS.md and the plots")
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        selected_groups(args.quick, args.paper_segnet, method_names(), args.only, args.rows)
    except SystemExit as e:
        parser.error(str(e))
    if args.child_out:
        child(args)
        return

    here = os.path.dirname(os.path.abspath(__file__))
    out_path = args.out or os.path.join(here, "results", "suite-quick.json" if args.quick else "suite.json")
    modes = ("one", "default") if args.threads == "both" else (args.threads,)
    started = datetime.datetime.now(datetime.timezone.utc)
    runs = []
    for mode in modes:
        env = dict(os.environ)
        flags = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{flags} {THREAD_FLAGS}".strip() if mode == "one" else flags
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
            path = tmp.name
        cmd = [sys.executable, "-m", "benchmarks.suite", "--child-out", path, "--threads", mode]
        cmd += ["--quick"] if args.quick else []
        cmd += [] if args.paper_segnet else ["--no-paper-segnet"]
        cmd += ["--no-torch"] if args.no_torch else []
        cmd += ["--only", args.only] if args.only else []
        cmd += ["--rows", args.rows] if args.rows else []
        subprocess.run(cmd, env=env, check=True, cwd=os.path.dirname(here))
        with open(path) as f:
            runs.append(json.load(f))
        os.unlink(path)
    command = "python -m benchmarks.suite " + shlex.join(argv if argv is not None else sys.argv[1:])
    document = {"command": command.strip(), "date": started.strftime("%Y-%m-%d %H:%M UTC"), "runs": runs}
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(document, f, indent=1)
    print(f"wrote {out_path}")
    if not args.no_report:
        from benchmarks import report

        for written in report.update(out_path):
            print(f"wrote {written}")


if __name__ == "__main__":
    main()
