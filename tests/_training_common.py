"""A tiny two-task Flax model, its data and a runner, shared by the training tests and their workers."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from orthojax.data.loader import iterate_batches
from orthojax.methods import get_method
from orthojax.training import EvalMetrics, TrainConfig, train_and_evaluate

NUM_CLASSES = 3
LAST_SHARED = "encoder/conv2"


class Encoder(nn.Module):
    use_bn: bool = False

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(4, (3, 3), strides=2, use_bias=False, name="conv1")(x)
        if self.use_bn:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn1")(x)
        x = nn.relu(x)
        x = nn.Conv(4, (3, 3), strides=2, use_bias=False, name="conv2")(x)
        return nn.relu(x)


class Head(nn.Module):
    dropout: float = 0.0

    @nn.compact
    def __call__(self, z, train: bool):
        z = z.reshape(z.shape[0], -1)
        z = nn.relu(nn.Dense(8, name="fc1")(z))
        z = nn.Dropout(self.dropout, deterministic=not train)(z)
        return nn.Dense(NUM_CLASSES, name="fc2")(z)


class TinyMTL(nn.Module):
    """Shared two-conv encoder (optional BatchNorm), one dense head per task (optional dropout)."""

    num_tasks: int = 2
    use_bn: bool = False
    dropout: float = 0.0

    def setup(self):
        self.encoder = Encoder(self.use_bn)
        self.heads = [Head(self.dropout) for _ in range(self.num_tasks)]

    def encode(self, x, train: bool):
        z = self.encoder(x, train)
        return tuple(z for _ in range(self.num_tasks)), None

    def decode(self, zs, extras, train: bool):
        return tuple(head(z, train) for head, z in zip(self.heads, zs))

    def __call__(self, x, train: bool):
        return self.decode(*self.encode(x, train), train)


def task_losses(outputs: tuple, batch: dict) -> jax.Array:
    """Cross-entropy per task."""
    return jnp.stack([
        optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"][:, t]).mean()
        for t, logits in enumerate(outputs)
    ])


def make_data(n: int, seed: int = 0, size: int = 8) -> dict:
    """Random images whose labels depend on two image statistics (learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(n, size, size, 1)).astype(np.float32)
    left = image[:, :, : size // 2].mean(axis=(1, 2, 3))
    right = image[:, :, size // 2 :].mean(axis=(1, 2, 3))
    labels = np.stack([np.digitize(left, [-0.1, 0.1]), np.digitize(right, [-0.1, 0.1])], axis=1)
    return {"image": image, "labels": labels.astype(np.int32)}


def accuracy_metrics(num_tasks: int = 2) -> EvalMetrics:
    """Exact accuracy: correct counts per task and the example count, summed over the test set."""

    def init():
        return {"correct": jnp.zeros((num_tasks,), jnp.int32), "count": jnp.zeros((), jnp.int32)}

    def update(acc, outputs, batch):
        correct = jnp.stack([
            jnp.sum(jnp.argmax(o, -1) == batch["labels"][:, t]) for t, o in enumerate(outputs)
        ]).astype(jnp.int32)
        return {"correct": acc["correct"] + correct, "count": acc["count"] + batch["labels"].shape[0]}

    def finalize(acc):
        correct = np.asarray(acc["correct"], np.float64)
        return {"accuracy": (correct / float(acc["count"])).tolist(), "count": int(acc["count"])}

    return EvalMetrics(init, update, finalize)


def run(workdir: str, *, train: dict, test: Optional[dict] = None, batch_size: int = 8, data_seed: int = 0,
        method: str = "cosreg", method_kwargs: Optional[dict] = None, use_bn: bool = True,
        dropout: float = 0.0, lr: float = 1e-2, mesh: Any = None, eval_batch_size: int = 7,
        on_batch: Any = None, **config: Any):
    """Builds the tiny problem and calls :func:`train_and_evaluate`.

    ``on_batch(epoch, step, batch) -> batch`` is applied to each batch before it is yielded (for tests
    that interrupt runs or corrupt batches).
    """
    if method_kwargs is None:
        method_kwargs = {"alpha": 1.0} if method == "cosreg" else {}
    n = len(train["image"])
    spe = n // batch_size

    def train_batches(epoch, start):
        for i, batch in enumerate(iterate_batches(
            train, batch_size, data_seed, epoch, start_step=start,
            process_index=jax.process_index(), process_count=jax.process_count(),
        )):
            yield batch if on_batch is None else on_batch(epoch, start + i, batch)

    kwargs = {}
    if test is not None:
        kwargs = dict(
            eval_batches=lambda: iterate_batches(test, eval_batch_size, 0, 0, drop_last=False, shuffle=False),
            eval_metrics=accuracy_metrics(),
        )
    config.setdefault("progress", False)
    return train_and_evaluate(
        TrainConfig(**config), workdir,
        model=TinyMTL(use_bn=use_bn, dropout=dropout), task_losses=task_losses,
        method=get_method(method, **method_kwargs), optimizer=optax.adam(lr),
        train_batches=train_batches, steps_per_epoch=spe,
        sample_batch={k: v[:2] for k, v in train.items()},
        last_shared=LAST_SHARED, mesh=mesh, run_config={"method": method, "batch_size": batch_size},
        **kwargs,
    )


def flat_params(tree) -> dict:
    """Leaves keyed by path, as NumPy arrays (for saving with np.savez and exact comparison)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


FAST_COMPILE = "--xla_backend_optimization_level=0"
"""XLA_FLAGS for worker processes: less optimisation, half the compile time of these tiny programs."""

CACHE_ENV = {
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}


@contextlib.contextmanager
def compilation_cache(path: str):
    """Turns JAX's persistent compilation cache on (at ``path``) for the duration, then restores the
    previous settings. Identical programs compiled by several runs (and by worker processes given
    ``JAX_COMPILATION_CACHE_DIR=path`` and :data:`CACHE_ENV`) are then compiled once."""
    from jax._src import compilation_cache as cc

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    previous = {n: getattr(jax.config, n) for n in names}
    for name, value in zip(names, (path, 0.0, 0)):
        jax.config.update(name, value)
    cc.reset_cache()
    try:
        yield
    finally:
        for name, value in previous.items():
            jax.config.update(name, value)
        cc.reset_cache()


class TinyTableModel(TinyMTL):
    """TinyMTL as the experiment runner expects it (the last shared layer, the shared layers, the latent
    size); ``poison`` makes every output NaN (every step non-finite)."""

    poison: bool = False

    def last_shared_layer(self) -> str:
        return LAST_SHARED

    def shared_layer_names(self) -> tuple:
        return ("encoder/conv1", "encoder/conv2")

    def __call__(self, x, train: bool):
        outputs = super().__call__(x, train)
        return tuple(o * jnp.nan for o in outputs) if self.poison else outputs


def tiny_benchmark(train: Optional[dict] = None, test: Optional[dict] = None, augment: Any = None):
    """A :class:`experiments.runner.Benchmark` on the tiny model and data (model options: ``use_bn``,
    ``dropout``, ``poison``); ``augment(batch, rng)`` sees every training batch (e.g. to announce it)."""
    from experiments.runner import Benchmark

    train = make_data(48) if train is None else train
    test = make_data(13, seed=1) if test is None else test

    def table_metrics(evaluation):
        acc = np.asarray(evaluation["accuracy"], np.float64)
        return {"accuracy": 100 * float(acc.mean()), "acc_0": 100 * float(acc[0]), "acc_1": 100 * float(acc[1])}

    return Benchmark(
        name="tiny", task_names=("t0", "t1"), train=train, eval=test,
        build_model=lambda kw: TinyTableModel(**{"use_bn": False, **dict(kw)}),
        task_losses=task_losses, eval_metrics=accuracy_metrics(), table_metrics=table_metrics,
        single_task_metrics=lambda t, ev: {f"acc_{t}": 100 * float(ev["accuracy"][t])},
        latent_size=lambda model: 4, augment=augment,
    )


def tiny_settings(**overrides):
    """RunSettings for :func:`tiny_benchmark`: 6 steps per epoch (batch 8), one seed, no progress bars."""
    from experiments.runner import RunSettings

    base = dict(epochs=1, batch_size=8, learning_rate=1e-2, seeds=(0,), eval_batch_size=7, progress=False)
    return RunSettings(**{**base, **overrides})


TINY_COLUMNS = (("accuracy", "Acc. %", 2),)


def run_tiny_table(workdir: str, rows: list, settings=None, bench=None, **settings_overrides):
    """Runs rows ({key: Row} or keys of registry methods) through :func:`experiments.pipeline.run_benchmark`."""
    from experiments.pipeline import run_benchmark
    from experiments.runner import Row

    rows = [r if isinstance(r, Row) else Row(r, r, r) for r in rows]
    settings = settings if settings is not None else tiny_settings(**settings_overrides)
    return run_benchmark(bench or tiny_benchmark(), rows, settings, workdir, title="tiny", columns=TINY_COLUMNS,
                         paper={}, data_info={"name": "tiny"}, protocol={})


def workdir_snapshot(workdir: str) -> dict:
    """Every file under ``workdir`` with its bytes (the run lock aside): to show that nothing was written."""
    from orthojax.training import LOCK_FILE

    out = {}
    for root, _, names in os.walk(workdir):
        for name in names:
            path = os.path.join(root, name)
            if name != LOCK_FILE:
                out[os.path.relpath(path, workdir)] = open(path, "rb").read()
    return out


def logged_train_steps(workdir: str) -> list:
    """The steps of the "train" records in ``workdir/metrics.jsonl``, in order."""

    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return [r["step"] for r in records if r["kind"] == "train"]


def evaluate(workdir: str, *, train: dict, test: dict, use_bn: bool = True, dropout: float = 0.0,
             method: str = "cosreg", method_kwargs: Optional[dict] = None, eval_batch_size: int = 7,
             lr: float = 1e-2, **kwargs: Any):
    """:func:`orthojax.training.evaluate_checkpoint` of a workdir written by :func:`run` (same problem)."""
    from orthojax.training import evaluate_checkpoint

    if method_kwargs is None:
        method_kwargs = {"alpha": 1.0} if method == "cosreg" else {}
    config = {k: kwargs.pop(k) for k in ("num_seeds", "seed") if k in kwargs}
    return evaluate_checkpoint(
        TrainConfig(**config), workdir, model=TinyMTL(use_bn=use_bn, dropout=dropout),
        method=get_method(method, **method_kwargs), optimizer=optax.adam(lr),
        sample_batch={k: v[:2] for k, v in train.items()},
        eval_batches=lambda: iterate_batches(test, eval_batch_size, 0, 0, drop_last=False, shuffle=False),
        eval_metrics=accuracy_metrics(), **kwargs,
    )
