"""Shared fixtures for the CosReg core tests.

The expected values in these tests never come from ``orthojax`` itself: they come from NumPy, from central
finite differences in float64, or from explicit per-task ``jax.grad`` loops written here.

``x64`` turns float64 on for one test only (``jax.enable_x64`` as a context), so global state stays clean.
"""

from __future__ import annotations

import os

# The experiments' persistent compilation cache stays out of the home directory during tests.
os.environ.setdefault("ORTHOJAX_COMPILATION_CACHE", "off")

# The tests' programs are tiny: XLA's backend optimisation (LLVM -O2 on CPU) takes most of their compile time
# and buys nothing at these sizes. Level 0 halves the suite's compile time; the results are the same
# arithmetic (no fast-math either way). Set before JAX starts, so worker subprocesses inherit it.
FAST_COMPILE = "--xla_backend_optimization_level"
if FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {FAST_COMPILE}=0").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax import lax  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _session_compilation_cache(tmp_path_factory):
    """JAX's persistent compilation cache for the session, one directory per test process (no two processes
    write one directory): a program that several tests build again (an experiment's step for each row, the
    same model in two runs) is compiled once. Only compilations of 0.5 s or more are stored."""
    from jax._src import compilation_cache as cc

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    previous = {n: getattr(jax.config, n) for n in names}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.getbasetemp() / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    cc.reset_cache()
    yield
    for name, value in previous.items():
        jax.config.update(name, value)
    cc.reset_cache()


@pytest.fixture
def x64():
    """Run the test with float64 enabled; restores the previous setting afterwards."""
    with jax.enable_x64(True):
        yield


# --------------------------------------------------------------------------------------------------------------
# Independent oracles
# --------------------------------------------------------------------------------------------------------------


def numpy_cosine(G):
    """NumPy cosine matrix of the rows of G (T, D); a zero row gets zeros everywhere, its diagonal included."""
    G = np.asarray(G, dtype=np.float64).reshape(G.shape[0], -1)
    n = np.linalg.norm(G, axis=1)
    U = np.zeros_like(G)
    nz = n > 0
    U[nz] = G[nz] / n[nz, None]
    return U @ U.T


def numpy_penalty(G):
    """Mean over ordered pairs i != j of cos^2."""
    C = numpy_cosine(G)
    T = C.shape[0]
    off = C[~np.eye(T, dtype=bool)]
    return float(np.mean(off**2))


def reference_penalty(task_losses_fn, params, *args, select):
    """CosReg penalty from T explicit ``jax.grad`` calls (differentiable, written independently).

    ``select(grad_pytree) -> list of arrays`` picks the leaves of the regularised layer.
    """
    losses = task_losses_fn(params, *args)
    T = losses.shape[0]
    vecs = []
    for t in range(T):
        g = jax.grad(lambda p, t=t: task_losses_fn(p, *args)[t])(params)
        vecs.append(jnp.concatenate([jnp.ravel(x) for x in select(g)]))
    G = jnp.stack(vecs)
    U = G / jnp.linalg.norm(G, axis=1, keepdims=True)
    C = U @ U.T
    mask = 1.0 - jnp.eye(T, dtype=C.dtype)
    return jnp.sum((C * mask) ** 2) / (T * (T - 1)), C, losses


def reference_total(task_losses_fn, params, *args, select, alpha, weights=None, frozen_scale=None):
    pen, _, losses = reference_penalty(task_losses_fn, params, *args, select=select)
    w = jnp.ones_like(losses) if weights is None else jnp.asarray(weights, losses.dtype)
    a = alpha if frozen_scale is None else alpha * frozen_scale
    return jnp.sum(w * losses) + a * pen


def central_fd(f, params, eps=1e-6):
    """Central finite-difference gradient of a scalar f at params (a pytree), same structure as params."""
    flat, unravel = ravel_pytree(params)
    flat = np.asarray(flat, dtype=np.float64)
    fj = jax.jit(lambda v: f(unravel(v)))
    out = np.zeros_like(flat)
    for i in range(flat.size):
        e = np.zeros_like(flat)
        e[i] = eps
        out[i] = (float(fj(jnp.asarray(flat + e))) - float(fj(jnp.asarray(flat - e)))) / (2 * eps)
    return unravel(jnp.asarray(out))


# --------------------------------------------------------------------------------------------------------------
# Tiny problems
# --------------------------------------------------------------------------------------------------------------


def _normal_factory(seed, dtype):
    """Random arrays from NumPy (no per-shape compilation of JAX's PRNG kernels)."""
    rng = np.random.default_rng(seed)

    def normal(shape):  # NumPy arithmetic on the result; converted once by _to_jax
        return rng.normal(size=shape).astype(dtype)

    return normal


def _to_jax(tree):
    return jax.tree.map(jnp.asarray, tree)


def make_mlp(seed, n_tasks=3, d_in=3, d_hidden=4, d_out=2, batch=6, dtype=np.float64):
    """Shared 2-layer tanh MLP + one linear head per task; MSE per task. Returns (params, fn, (x, ys))."""
    normal = _normal_factory(seed, dtype)
    params = {
        "encoder": {
            "dense1": {
                "kernel": normal((d_in, d_hidden)) / np.sqrt(d_in),
                "bias": 0.1 * normal((d_hidden,)),
            },
            "dense2": {
                "kernel": normal((d_hidden, d_hidden)) / np.sqrt(d_hidden),
                "bias": 0.1 * normal((d_hidden,)),
            },
        },
        "heads": {
            f"task{t}": {
                "kernel": normal((d_hidden, d_out)) / np.sqrt(d_hidden),
                "bias": np.zeros((d_out,), dtype),
            }
            for t in range(n_tasks)
        },
    }
    params, x, ys = _to_jax((params, normal((batch, d_in)), normal((n_tasks, batch, d_out))))

    def encode(p, x, ys):
        h = jnp.tanh(x @ p["encoder"]["dense1"]["kernel"] + p["encoder"]["dense1"]["bias"])
        h = jnp.tanh(h @ p["encoder"]["dense2"]["kernel"] + p["encoder"]["dense2"]["bias"])
        return (h,) * n_tasks, None

    def decode(p, zs, extras, x, ys):
        losses = []
        for t in range(n_tasks):
            hp = p["heads"][f"task{t}"]
            pred = zs[t] @ hp["kernel"] + hp["bias"]
            losses.append(jnp.mean((pred - ys[t]) ** 2))
        return jnp.stack(losses)

    def task_losses_fn(p, x, ys):
        return decode(p, *encode(p, x, ys), x, ys)

    task_losses_fn.split = (encode, decode)  # the same model as encoder + per-task decoders
    return params, task_losses_fn, (x, ys)


def mlp_select(g):
    """The leaves of encoder/dense2 in sorted-key order (bias, kernel)."""
    d = g["encoder"]["dense2"]
    return [d["bias"], d["kernel"]]


def make_convnet(seed, n_tasks=2, dtype=np.float64):
    """Two 3x3 VALID convs (no bias) as the encoder, a conv + dense head per task; tiny sizes."""
    normal = _normal_factory(seed, dtype)
    params = {
        "encoder": {
            "conv1": {"kernel": 0.5 * normal((3, 3, 1, 2))},
            "conv2": {"kernel": 0.5 * normal((3, 3, 2, 2))},
        },
        "heads": {
            f"task{t}": {
                "conv": {"kernel": 0.5 * normal((2, 2, 2, 1))},
                "dense": {"kernel": 0.5 * normal((1, 1))},
            }
            for t in range(n_tasks)
        },
    }
    params, x, ys = _to_jax((params, normal((2, 6, 6, 1)), normal((n_tasks, 2, 1))))
    dn = ("NHWC", "HWIO", "NHWC")

    def conv(h, k):
        return lax.conv_general_dilated(h, k, (1, 1), "VALID", dimension_numbers=dn)

    def encode(p, x, ys):
        h = jnp.tanh(conv(x, p["encoder"]["conv1"]["kernel"]))  # (2,4,4,2)
        h = jnp.tanh(conv(h, p["encoder"]["conv2"]["kernel"]))  # (2,2,2,2)
        return (h,) * n_tasks, None

    def decode(p, zs, extras, x, ys):
        losses = []
        for t in range(n_tasks):
            hp = p["heads"][f"task{t}"]
            z = jnp.tanh(conv(zs[t], hp["conv"]["kernel"]))  # (2,1,1,1)
            pred = z.reshape(z.shape[0], -1) @ hp["dense"]["kernel"]
            losses.append(jnp.mean((pred - ys[t]) ** 2))
        return jnp.stack(losses)

    def task_losses_fn(p, x, ys):
        return decode(p, *encode(p, x, ys), x, ys)

    task_losses_fn.split = (encode, decode)  # the same model as encoder + per-task decoders
    return params, task_losses_fn, (x, ys)


def conv_select(g):
    return [g["encoder"]["conv2"]["kernel"]]


def assert_tree_allclose(a, b, rtol=1e-7, atol=1e-9):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb, f"tree structures differ:\n{ta}\n{tb}"
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)
