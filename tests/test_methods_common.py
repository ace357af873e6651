"""Every registered method through one table: finite outputs, gradient structure, jit without retracing,
the multi-device step, and a toy problem on which each method lowers the task losses.

``make_toy`` (a tanh encoder with ``d`` features and one linear head per task, with encode / decode) is
shared with the per-method test files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from orthojax.methods import MultiTaskProblem, build_method, get_method, method_names, method_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ISSUE_NAMES = (
    "single_task", "equal", "cosreg", "uncertainty", "gradnorm", "rotate_only", "rotograd", "rotograd_norm",
    "recon",
)


def make_toy(key, n_tasks=2, d_in=3, d=4, batch=8, scales=None, dtype=jnp.float32, counter=None):
    """A 2-layer tanh encoder (d features) and a linear head per task; task t's loss is scales[t] * MSE.

    Returns ``(params, problem, batch)``; ``batch = (x, ys)``. ``counter`` (a dict) counts traces.
    """
    ks = jax.random.split(key, 6 + n_tasks)
    params = {
        "encoder": {
            "dense1": {"kernel": jax.random.normal(ks[0], (d_in, d), dtype) / np.sqrt(d_in),
                       "bias": 0.1 * jax.random.normal(ks[1], (d,), dtype)},
            "dense2": {"kernel": jax.random.normal(ks[2], (d, d), dtype) / np.sqrt(d),
                       "bias": 0.1 * jax.random.normal(ks[3], (d,), dtype)},
        },
        "heads": {
            f"task{t}": {"kernel": jax.random.normal(ks[6 + t], (d, 1), dtype) / np.sqrt(d),
                         "bias": jnp.zeros((1,), dtype)}
            for t in range(n_tasks)
        },
    }
    x = jax.random.normal(ks[4], (batch, d_in), dtype)
    mix = jax.random.normal(ks[5], (n_tasks, d_in, 1), dtype)
    ys = jnp.tanh(jnp.einsum("bi,tio->bto", x, mix))  # batch first: (B, T, 1)
    scale = jnp.ones((n_tasks,), dtype) if scales is None else jnp.asarray(scales, dtype)

    def encode(p, batch, rng):
        if counter is not None:
            counter["n"] = counter.get("n", 0) + 1
        x, _ = batch
        e = p["encoder"]
        h = jnp.tanh(x @ e["dense1"]["kernel"] + e["dense1"]["bias"])
        h = jnp.tanh(h @ e["dense2"]["kernel"] + e["dense2"]["bias"])
        return (h,) * n_tasks, None

    def decode(p, zs, extras, batch, rng):
        _, ys = batch
        losses = []
        for t in range(n_tasks):
            hp = p["heads"][f"task{t}"]
            losses.append(jnp.mean((zs[t] @ hp["kernel"] + hp["bias"] - ys[:, t]) ** 2))
        return jnp.stack(losses) * scale, {"mean_target": jnp.mean(ys)}

    def task_losses(p, batch, rng):
        return decode(p, *encode(p, batch, rng), batch, rng)

    problem = MultiTaskProblem(task_losses, last_shared="encoder/dense2", shared="encoder",
                               encode=encode, decode=decode)
    return params, problem, (x, ys)


RECON_LAYERS = ("encoder/dense1", "encoder/dense2")

# name -> hyper-parameters used by the table-driven tests
METHOD_TABLE = {
    "single_task": dict(task=0),
    "equal": dict(),
    "cosreg": dict(alpha=0.1),
    "uncertainty": dict(learning_rate=1e-2),
    "gradnorm": dict(learning_rate=1e-2),
    "gradnorm_shared": dict(on="shared", learning_rate=1e-2),
    "rotate_only": dict(latent_size=4, learning_rate=1e-2),
    "rotograd": dict(latent_size=4, learning_rate=1e-2, burn_in_period=3),
    "rotograd_norm": dict(latent_size=4, learning_rate=1e-2, burn_in_period=3),
    "recon": dict(layers=RECON_LAYERS),
    "dwa": dict(period=2),
    "famo": dict(),
    "mgda": dict(),
    "pcgrad": dict(),
    "imtl_g": dict(),
    "aligned_mtl": dict(),
    "upgrad": dict(),
    "dualproj": dict(),
    "cagrad": dict(),
    "rlw": dict(),
    "gls": dict(),
    "db_mtl": dict(),
    "stch": dict(steps_per_epoch=2, warmup_epochs=1),
    "excess_mtl": dict(),
    "imtl": dict(learning_rate=1e-2),
    "modo": dict(),
    "moco": dict(),
    "sdmgrad": dict(),
    "config": dict(),
    "nash_mtl": dict(),
    "fairgrad": dict(),
    "gradvac": dict(),
    "sum": dict(),
    "mean": dict(),
    "graddrop": dict(),
    "trimmed_mean": dict(trim_number=0),
    "mgda_rep_grad": dict(rep_grad=True),
    "nash_mtl_rep_grad": dict(rep_grad=True),
}
"""Every registered method's test hyper-parameters (extra entries: other settings of a method)."""

_VARIANTS = {"gradnorm_shared": "gradnorm", "mgda_rep_grad": "mgda", "nash_mtl_rep_grad": "nash_mtl"}
_NOT_WEIGHTINGS = ("cosreg", "graddrop", "trimmed_mean")  # no "task_weights" metric


def build(entry):
    return build_method(_VARIANTS.get(entry, entry), **METHOD_TABLE[entry])


def test_every_registered_method_has_a_test_case():
    missing = sorted(set(method_names()) - set(METHOD_TABLE))
    assert not missing, f"registered methods without an entry in METHOD_TABLE: {missing}"
    for entry, hyperparameters in METHOD_TABLE.items():
        name = _VARIANTS.get(entry, entry)
        assert build(entry).hyperparameters == method_spec(name).with_defaults(hyperparameters)


def test_registry_holds_the_issue_names():
    assert set(ISSUE_NAMES) <= set(method_names())
    for name in ISSUE_NAMES:
        assert get_method(name, **METHOD_TABLE[name]).name == name


def test_registry_errors():
    with pytest.raises(KeyError, match="known methods"):
        get_method("no_such_method")
    with pytest.raises(TypeError):
        get_method("uncertainty", no_such_option=1)


@pytest.mark.parametrize("bad", [
    ("uncertainty", dict(form="log")), ("uncertainty", dict(learning_rate=0.0)),
    ("uncertainty", dict(init_log_var=float("nan"))), ("gradnorm", dict(alpha=-1.0)),
    ("gradnorm", dict(on="all")), ("gradnorm", dict(learning_rate=-1.0)),
    ("rotograd", dict(latent_size=0)), ("rotate_only", dict(latent_size=4, burn_in_period=-1)),
    ("rotograd_norm", dict(latent_size=4, alpha=-0.5)), ("rotograd", dict(latent_size=4, learning_rate=0.0)),
    ("recon", dict(layers=())), ("recon", dict(layers="encoder/dense1")),
])
def test_factories_validate_eagerly(bad):
    name, kwargs = bad
    with pytest.raises(ValueError):
        get_method(name, **kwargs)


@pytest.mark.parametrize("bad_optimizer", ["adam", 0.1])
@pytest.mark.parametrize("name,extra", [("uncertainty", {}), ("gradnorm", {}), ("rotograd", {"latent_size": 4})])
def test_optimizer_must_be_optax(name, extra, bad_optimizer):
    with pytest.raises(TypeError, match="optax"):
        get_method(name, optimizer=bad_optimizer, **extra)


class Compiled:
    """One method on the toy problem with its jitted step (compiled once per method and shared)."""

    def __init__(self, entry):
        self.counter = {}
        self.params, self.problem, self.batch = make_toy(jax.random.key(3), scales=(1.0, 3.0), counter=self.counter)
        self.method = build(entry)
        self.state = self.method.init(self.params, 2)
        problem, method = self.problem, self.method
        self.step = jax.jit(lambda p, s, b, r: method.step(problem, p, s, b, r))


@pytest.fixture(scope="module", params=sorted(METHOD_TABLE))
def compiled(request):
    """Module scope: pytest runs the tests of one method together, so a worker process that compiles a
    method's step runs all of its tests (the tests read ``Compiled`` and never write to it)."""
    return request.param, Compiled(request.param)


_sgd = jax.jit(lambda params, grads: jax.tree.map(lambda p, g: p - 0.01 * g, params, grads))
_adam = optax.adam(2e-2)
_adam_update = jax.jit(lambda params, grads, opt_state: _adam_step(params, grads, opt_state))


def _adam_step(params, grads, opt_state):
    updates, opt_state = _adam.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def test_step_is_finite_and_grads_match_params(compiled):
    entry, c = compiled
    out = c.step(c.params, c.state, c.batch, jax.random.key(1))
    assert jax.tree.structure(out.grads) == jax.tree.structure(c.params)
    for g, p in zip(jax.tree.leaves(out.grads), jax.tree.leaves(c.params)):
        assert g.shape == p.shape and g.dtype == p.dtype
        assert np.all(np.isfinite(g))
    assert out.task_losses.shape == (2,)
    assert np.isfinite(out.loss) and out.loss.shape == ()
    assert set(out.aux) == {"mean_target"}
    for value in jax.tree.leaves(out.metrics):
        assert np.all(np.isfinite(value))
    if entry not in _NOT_WEIGHTINGS:
        assert out.metrics["task_weights"].shape == (2,)
    assert jax.tree.structure(out.state) == jax.tree.structure(c.state)
    # the encoder is trained by every method
    assert float(jnp.abs(out.grads["encoder"]["dense1"]["kernel"]).sum()) > 0


def test_jit_does_not_retrace(compiled):
    entry, c = compiled
    out = c.step(c.params, c.state, c.batch, jax.random.key(1))
    traced = c.counter["n"]
    params = c.params
    x, ys = c.batch
    for i in range(3):
        params = _sgd(params, out.grads)
        out = c.step(params, out.state, (x + 0.1 * (i + 1), ys), jax.random.key(2 + i))
    assert c.counter["n"] == traced, "the jitted step was traced again"


def test_each_method_lowers_the_task_losses_on_a_toy(compiled):
    entry, c = compiled
    params, state, opt_state = c.params, c.state, _adam.init(c.params)
    first = None
    for i in range(80):
        out = c.step(params, state, c.batch, jax.random.key(i))
        params, opt_state = _adam_update(params, out.grads, opt_state)
        state = out.state
        first = out.task_losses if first is None else first
    # evaluated by the method itself (RotoGrad's heads read rotated representations)
    final = c.step(params, state, c.batch, jax.random.key(0)).task_losses
    if entry == "single_task":  # only task 0 is trained
        assert final[0] < 0.5 * first[0]
    else:
        assert np.all(final < 0.6 * first), (first, final)


def test_rotograd_methods_require_encode_and_decode():
    params, problem, batch = make_toy(jax.random.key(0))
    bare = MultiTaskProblem(problem.task_losses, last_shared="encoder/dense2")
    for name in ("rotate_only", "rotograd", "rotograd_norm"):
        method = get_method(name, latent_size=4)
        with pytest.raises(ValueError, match="encode"):
            method.step(bare, params, method.init(params, 2), batch, jax.random.key(0))


_MULTI_DEVICE_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    sys.path.insert(0, {tests!r})
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from test_methods_common import METHOD_TABLE, build, make_toy

    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated = NamedSharding(mesh, P())
    params, problem, batch = make_toy(jax.random.key(0), batch=8)
    x, ys = batch
    sharded_batch = (jax.device_put(x, NamedSharding(mesh, P("data"))),
                     jax.device_put(ys, NamedSharding(mesh, P("data"))))
    for entry in {entries!r}:
        method = build(entry)
        state = method.init(params, 2)
        step = jax.jit(lambda p, s, b, r: method.step(problem, p, s, b, r))
        ref = step(params, state, batch, jax.random.key(1))
        p_rep, s_rep = jax.device_put((params, state), replicated)
        out = step(p_rep, s_rep, sharded_batch, jax.random.key(1))
        assert len(out.loss.sharding.device_set) == 4
        for a, b in zip(jax.tree.leaves((out.grads, out.state, out.metrics)),
                        jax.tree.leaves((ref.grads, ref.state, ref.metrics))):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6, err_msg=entry)
    print("OK")
    """
)


# the two methods that reduce over the batch beyond the losses (gradient norms, representation gradients)
MULTI_DEVICE_ENTRIES = ("gradnorm", "rotograd")


def test_multi_device_step_equals_single_device():
    """Batch sharded over 4 (fake CPU) devices under jit: grads, state and metrics equal the one-device step."""
    script = _MULTI_DEVICE_SCRIPT.format(tests=os.path.join(ROOT, "tests"), entries=MULTI_DEVICE_ENTRIES)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
