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

from orthojax.methods import MultiTaskProblem, get_method, method_names

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
    ys = jnp.tanh(jnp.einsum("bi,tio->tbo", x, mix))
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
            losses.append(jnp.mean((zs[t] @ hp["kernel"] + hp["bias"] - ys[t]) ** 2))
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
}


def build(entry):
    name = "gradnorm" if entry == "gradnorm_shared" else entry
    return get_method(name, **METHOD_TABLE[entry])


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


@pytest.mark.parametrize("entry", sorted(METHOD_TABLE))
def test_step_is_finite_and_grads_match_params(entry):
    params, problem, batch = make_toy(jax.random.key(0))
    method = build(entry)
    state = method.init(params, 2)
    out = method.step(problem, params, state, batch, jax.random.key(1))
    assert jax.tree.structure(out.grads) == jax.tree.structure(params)
    for g, p in zip(jax.tree.leaves(out.grads), jax.tree.leaves(params)):
        assert g.shape == p.shape and g.dtype == p.dtype
        assert np.all(np.isfinite(g))
    assert out.task_losses.shape == (2,)
    assert np.isfinite(out.loss) and out.loss.shape == ()
    assert set(out.aux) == {"mean_target"}
    for value in jax.tree.leaves(out.metrics):
        assert np.all(np.isfinite(value))
    if "cosreg" not in entry:
        assert out.metrics["task_weights"].shape == (2,)
    assert jax.tree.structure(out.state) == jax.tree.structure(state)
    # the encoder is trained by every method
    assert float(jnp.abs(out.grads["encoder"]["dense1"]["kernel"]).sum()) > 0


@pytest.mark.parametrize("entry", sorted(METHOD_TABLE))
def test_jit_without_retracing_matches_eager(entry):
    counter = {}
    params, problem, batch = make_toy(jax.random.key(0), counter=counter)
    method = build(entry)
    state = method.init(params, 2)
    eager = method.step(problem, params, state, batch, jax.random.key(1))
    counter.clear()

    @jax.jit
    def step(params, state, batch, rng):
        return method.step(problem, params, state, batch, rng)

    out = step(params, state, batch, jax.random.key(1))
    traced = counter["n"]
    for g_jit, g_eager in zip(jax.tree.leaves(out.grads), jax.tree.leaves(eager.grads)):
        np.testing.assert_allclose(g_jit, g_eager, rtol=2e-4, atol=1e-6)
    for i in range(3):
        x, ys = batch
        new_batch = (x + 0.1 * (i + 1), ys)
        params = jax.tree.map(lambda p, g: p - 0.01 * g, params, out.grads)
        out = step(params, out.state, new_batch, jax.random.key(2 + i))
    assert counter["n"] == traced, "the jitted step was traced again"


@pytest.mark.parametrize("entry", sorted(METHOD_TABLE))
def test_each_method_lowers_the_task_losses_on_a_toy(entry):
    params, problem, batch = make_toy(jax.random.key(3), scales=(1.0, 3.0))
    method = build(entry)
    state = method.init(params, 2)
    opt = optax.adam(2e-2)
    opt_state = opt.init(params)

    @jax.jit
    def train_step(params, state, opt_state, rng):
        out = method.step(problem, params, state, batch, rng)
        updates, opt_state = opt.update(out.grads, opt_state, params)
        return optax.apply_updates(params, updates), out.state, opt_state, out.task_losses

    first = None
    for i in range(80):
        params, state, opt_state, losses = train_step(params, state, opt_state, jax.random.key(i))
        first = losses if first is None else first
    final, _ = problem.task_losses(params, batch, jax.random.key(0))
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
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
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
                     jax.device_put(ys, NamedSharding(mesh, P(None, "data"))))
    for entry in sorted(METHOD_TABLE):
        method = build(entry)
        state = method.init(params, 2)
        step = jax.jit(lambda p, s, b, r: method.step(problem, p, s, b, r))
        ref = step(params, state, batch, jax.random.key(1))
        ref = step(params, ref.state, batch, jax.random.key(2))
        p_rep, s_rep = jax.device_put((params, state), replicated)
        out = step(p_rep, s_rep, sharded_batch, jax.random.key(1))
        assert len(out.loss.sharding.device_set) == 4
        out = step(p_rep, out.state, sharded_batch, jax.random.key(2))
        for a, b in zip(jax.tree.leaves((out.grads, out.state, out.metrics)),
                        jax.tree.leaves((ref.grads, ref.state, ref.metrics))):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6, err_msg=entry)
    print("OK", len(METHOD_TABLE))
    """
)


def test_multi_device_step_equals_single_device():
    script = _MULTI_DEVICE_SCRIPT.format(tests=os.path.join(ROOT, "tests"))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
