"""Train your own Flax model on your own data with any registered multi-task method.

    python examples/own_model_and_data.py                            # CosReg (alpha = 10), 5 epochs
    python examples/own_model_and_data.py --method upgrad --workdir /tmp/upgrad   # any `method_names()`
    python examples/own_model_and_data.py --hp alpha=1 --workdir /tmp/run --steps 100   # stop at step 100
    python examples/own_model_and_data.py --hp alpha=1 --workdir /tmp/run --resume      # ... go on to the end

What the engine (:func:`orthojax.training.train_and_evaluate`) needs from you:

* **a model**: a Flax Linen module whose ``__call__(x, train)`` returns a tuple of T outputs. Here a shared
  MLP trunk ``encoder`` and one linear head per task. ``encode(x, train) -> (zs, extras)`` (one
  representation per task) and ``decode(zs, extras, train) -> outputs`` split it: methods that act on the
  shared representation (RotoGrad) need them, and CosReg's default ``implementation="auto"`` uses them for
  its split gradient (a model without them trains CosReg with ``--hp implementation=fast``).
* **the task-loss contract**: ``task_losses(outputs, batch) -> losses`` of shape (T,), one loss per task.
  The engine turns it into ``fn(params, batch, rng) -> (losses (T,), aux)`` (``orthojax.from_outputs``) and
  every method derives its gradient from that one function.
* **the last shared layer**: ``last_shared="encoder/last"``, a "/"-separated path into the parameters (the
  layer whose per-task gradients CosReg decorrelates and whose cosines every run logs); ``shared="encoder"``
  selects every shared parameter (what the gradient-aggregation methods aggregate).
* **the method by name**: ``build_method(name, context, **hyper-parameters)``. Each hyper-parameter is typed
  in the registry (``method_spec(name).hyperparameters``), so ``--hp alpha=10`` is parsed by the method's
  own type. The :class:`~orthojax.methods.RunContext` fills in what a method takes from the model when
  you leave it unset (RotoGrad's ``latent_size``).
* **multi-stage methods** (``recon``, ``single_task``: ``method_spec(name).protocol`` is set) train here
  as one stage (e.g. ``--method single_task --hp task=0``); their protocols over several runs are
  driven by the experiments' runner.
* **data**: a dict of NumPy arrays; ``iterate_batches`` orders each epoch by (seed, epoch) only, so a
  resumed run sees the same batches.

The workdir then holds ``config.json``, ``metrics.jsonl`` (every step's losses, cosines and gradient norm,
one summary per epoch with the evaluation), ``tb/`` (TensorBoard) and ``checkpoints/`` (orbax, train state
and data position). ``--resume`` continues from the last checkpoint, and refuses a changed method or
hyper-parameter. The last line printed is the final evaluation as JSON: the test mean squared error of
each task.

The two tasks regress ``sin(x . w_t)`` for two directions ``w_1``, ``w_2`` at 120 degrees: a shared
representation helps both, while their gradients on the trunk partly disagree.
"""

import argparse
import json

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

from orthojax.data import iterate_batches, steps_per_epoch
from orthojax.methods import RunContext, build_method, method_spec
from orthojax.training import EvalMetrics, TrainConfig, train_and_evaluate


def make_data(n, seed=0, dim=8):
    """Inputs x (n, dim) and targets y (n, 2), float32: y_t = sin(2 x . w_t) + 0.05 noise, w_t fixed."""
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(dim, 2)))[0]  # the tasks: fixed directions
    w = q @ np.array([[1.0, -0.5], [0.0, np.sqrt(0.75)]])      # unit columns at 120 degrees
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = np.sin(2 * x @ w) + 0.05 * rng.normal(size=(n, 2))
    return {"x": x, "y": y.astype(np.float32)}


class Trunk(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.tanh(nn.Dense(16, name="last")(nn.tanh(nn.Dense(32, name="hidden")(x))))


class TwoTaskMLP(nn.Module):
    def setup(self):
        self.encoder, self.heads = Trunk(), [nn.Dense(1) for _ in range(2)]

    def encode(self, x, train):               # (one representation per task, extras)
        return (self.encoder(x),) * 2, None

    def decode(self, zs, extras, train):      # a tuple of T outputs, (B,) each
        return tuple(head(z)[:, 0] for head, z in zip(self.heads, zs))

    def __call__(self, x, train):
        return self.decode(*self.encode(x, train), train)


def squared_errors(outputs, batch):          # (T,): each task's squared errors summed over the batch
    return jnp.stack([jnp.sum((out - batch["y"][:, t]) ** 2) for t, out in enumerate(outputs)])


def task_losses(outputs, batch):              # the task-loss contract: (T,) losses
    return squared_errors(outputs, batch) / batch["y"].shape[0]


test_mse = EvalMetrics(                       # exact over the whole test set: (summed errors, count)
    init=lambda: (jnp.zeros(2), jnp.zeros(())),
    update=lambda acc, outputs, batch: (acc[0] + squared_errors(outputs, batch), acc[1] + len(batch["y"])),
    finalize=lambda acc: {"mse": (np.asarray(acc[0]) / float(acc[1])).tolist()},
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="cosreg")
    parser.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE", help="a hyper-parameter")
    parser.add_argument("--workdir", default="/tmp/orthojax_own_model")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="stop after this many steps in total")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)

    train, test = make_data(2048, seed=0), make_data(512, seed=1)
    try:                                      # each value parsed by the method's own type for it
        spec = method_spec(args.method)
        hps = {k: spec.hyperparameter(k).parse(v) for k, _, v in (item.partition("=") for item in args.hp)}
    except (KeyError, ValueError) as error:
        parser.error(error.args[0])
    spe = steps_per_epoch(len(train["x"]), args.batch_size)
    context = RunContext(num_tasks=2, learning_rate=1e-2, steps_per_epoch=spe, latent_size=16)
    method = build_method(args.method, context, **hps)
    result = train_and_evaluate(
        TrainConfig(num_epochs=args.epochs, max_steps=args.steps, resume=args.resume, checkpoint_every=50),
        args.workdir, model=TwoTaskMLP(), task_losses=task_losses, method=method, optimizer=optax.adam(1e-2),
        train_batches=lambda epoch, start: iterate_batches(train, args.batch_size, 0, epoch, start_step=start),
        steps_per_epoch=spe, sample_batch=train, input_key="x", last_shared="encoder/last", shared="encoder",
        eval_batches=lambda: iterate_batches(test, 128, 0, 0, shuffle=False), eval_metrics=test_mse,
        run_config={"method": method.name, "hyperparameters": dict(method.hyperparameters)},
    )
    print(json.dumps({"method": method.name, "step": result.history.epochs[-1]["step"],
                      **result.history.epochs[-1]["eval"]}))
    return result


if __name__ == "__main__":
    main()
