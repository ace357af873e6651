"""Compiled train-step time of each method on MultiDigitCNN (or a small SegNet): the cost of CosReg's
second-order term against equal weighting and the gradient-aggregation methods.

    python -m benchmarks.step_time --model cnn --batch-size 64 --steps 50
    python -m benchmarks.step_time --model segnet --width 0.25 --image-size 128 --batch-size 4

Prints, per method, the time to compile and run the initialiser, the train step's compile time and the median step time over ``--steps`` steps (after warm-up).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import optax

from experiments.dense import TaskSpec, dense_task_losses
from experiments.multidigit_mnist import task_losses as digit_losses
from orthojax.methods import get_method
from orthojax.models import MultiDigitCNN, SegNet
from orthojax.training import init_sharded, init_train_state, make_mesh, make_train_step


def _setup(args):
    rng = np.random.default_rng(0)
    if args.model == "cnn":
        model = MultiDigitCNN()
        batch = {"image": rng.random((args.batch_size, 64, 64, 1), np.float32),
                 "label": rng.integers(0, 5, (args.batch_size, 2)).astype(np.int32)}
        return model, digit_losses, batch, 20
    size, out = args.image_size, args.image_size // 4
    model = SegNet(width=args.width, output_size=out)
    tasks = (TaskSpec("seg", "seg", 14), TaskSpec("depth", "depth"), TaskSpec("normal", "normal"))
    normal = rng.normal(size=(args.batch_size, out, out, 3)).astype(np.float32)
    batch = {"image": rng.random((args.batch_size, size, size, 3), np.float32),
             "seg": rng.integers(-1, 14, (args.batch_size, out, out)).astype(np.int32),
             "depth": rng.random((args.batch_size, out, out, 1), np.float32),
             "normal": normal / np.linalg.norm(normal, axis=-1, keepdims=True)}
    return model, dense_task_losses(tasks), batch, max(1, round(512 * args.width))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("cnn", "segnet"), default="cnn")
    parser.add_argument("--methods", default="equal,cosreg,gradnorm,uncertainty,pcgrad,mgda,rotograd")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args()
    model, losses, batch, latent = _setup(args)
    last = model.last_shared_layer()
    print(f"device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}); model {args.model}; "
          f"batch {args.batch_size}")
    print(f"{'method':>14} {'init s':>10} {'compile s':>10} {'step ms':>10}")
    mesh = make_mesh()
    for name in args.methods.split(","):
        kwargs = {"latent_size": latent} if name.startswith("rot") else {}
        method, opt = get_method(name, **kwargs), optax.adam(1e-3)
        t0 = time.perf_counter()
        state, _ = init_sharded(lambda key: init_train_state(key, model, method, opt, batch["image"][:2]),
                                mesh, jax.random.key(0))
        jax.block_until_ready(state)
        init_s = time.perf_counter() - t0
        step = jax.jit(make_train_step(model, losses, method, opt, last_shared=last), donate_argnums=0)
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics["loss"])
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics["loss"])
            times.append(time.perf_counter() - t0)
        print(f"{name:>14} {init_s:>10.1f} {compile_s:>10.1f} {1e3 * float(np.median(times)):>10.1f}")


if __name__ == "__main__":
    main()
