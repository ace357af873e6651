"""Multi-device checks, run in a subprocess by test_multidevice.py with 4 fake CPU devices.

Every check compares a multi-device computation with the single-device computation on the same global batch.
Prints one JSON line ``{check_name: {"ok": bool, "detail": str}}`` at the end.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import json  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

jax.config.update("jax_enable_x64", True)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import orthojax  # noqa: E402
from conftest import make_mlp  # noqa: E402

N = 4
ALPHA = 3.0
WRT = "encoder/dense2"
RTOL, ATOL = 1e-9, 1e-12


def close(a, b, what):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    if ta != tb:
        raise AssertionError(f"{what}: tree structures differ: {ta} vs {tb}")
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape:
            raise AssertionError(f"{what}: shapes {x.shape} vs {y.shape}")
        if not np.allclose(x, y, rtol=RTOL, atol=ATOL):
            raise AssertionError(f"{what}: max abs diff {np.max(np.abs(x - y)):.3e}; got {x.ravel()[:4]} want {y.ravel()[:4]}")


VARIANTS = ("fast", "reference", "split")


def main():
    results = {}
    for variant in VARIANTS:
        for name, outcome in run_checks(variant).items():
            results[f"{variant}:{name}"] = outcome
    print(json.dumps(results))


def run_checks(variant):
    """Every check with the objective built by ``variant`` against the single-device reference formulation."""
    assert jax.device_count() == N, jax.devices()
    params, fn, (x, ys) = make_mlp(0, n_tasks=3, batch=8)  # x (8, 3); ys (T=3, 8, 2): batch axis 1

    def objective(variant, p, x, ys, **kw):
        if variant == "split":
            encode, decode = fn.split
            return orthojax.loss_with_cosreg_split(encode, decode, p, x, ys, wrt=WRT, alpha=ALPHA, **kw)
        return orthojax.loss_with_cosreg(fn, p, x, ys, wrt=WRT, alpha=ALPHA, implementation=variant, **kw)

    def total_fn(p, x, ys, **kw):
        return objective(variant, p, x, ys, **kw)

    # single device, global batch, the straightforward formulation
    (t_ref, aux_ref), g_ref = jax.jit(jax.value_and_grad(
        lambda p, x, ys: objective("reference", p, x, ys), has_aux=True))(params, x, ys)

    # per-shard local task losses (device k holds examples 2k, 2k+1)
    local_losses = np.stack([np.asarray(fn(params, x[2 * k : 2 * k + 2], ys[:, 2 * k : 2 * k + 2])) for k in range(N)])
    local_totals_ref = local_losses.sum(axis=1) + ALPHA * float(aux_ref.penalty)

    # single-device per-task gradients from an explicit loop (global batch)
    tg_ref = jax.tree.map(
        lambda *xs: jnp.stack(xs),
        *[jax.grad(lambda p, t=t: fn(p, x, ys)[t])(params)["encoder"]["dense2"] for t in range(3)],
    )
    losses_ref = fn(params, x, ys)

    results = {}

    def check(name):
        def deco(f):
            try:
                f()
                results[name] = {"ok": True, "detail": ""}
            except Exception as e:  # noqa: BLE001
                results[name] = {"ok": False, "detail": f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}"}
            return f

        return deco

    def compare_all(t, pen, cos, g, tag):
        close(t, t_ref, f"{tag} total")
        close(pen, aux_ref.penalty, f"{tag} penalty")
        close(cos, aux_ref.cosine, f"{tag} cosine")
        close(g, g_ref, f"{tag} gradient")

    # ---------------------------------------------------------------------------------------- jit + NamedSharding
    def jit_sharded(axis_type):
        mesh = jax.make_mesh((N,), ("data",), axis_types=(axis_type,))
        rep = NamedSharding(mesh, P())
        p_s = jax.device_put(params, rep)
        x_s = jax.device_put(x, NamedSharding(mesh, P("data")))
        ys_s = jax.device_put(ys, NamedSharding(mesh, P(None, "data")))
        (t, aux), g = jax.jit(jax.value_and_grad(total_fn, has_aux=True))(p_s, x_s, ys_s)
        assert len(x_s.sharding.device_set) == N
        compare_all(t, aux.penalty, aux.cosine, g, f"jit[{axis_type}]")

    check("jit_sharded_explicit_mesh")(lambda: jit_sharded(jax.sharding.AxisType.Explicit))
    check("jit_sharded_auto_mesh")(lambda: jit_sharded(jax.sharding.AxisType.Auto))

    # ---------------------------------------------------------------------------------------- shard_map
    mesh = jax.make_mesh((N,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    p_s = jax.device_put(params, NamedSharding(mesh, P()))
    x_s = jax.device_put(x, NamedSharding(mesh, P("data")))
    ys_s = jax.device_put(ys, NamedSharding(mesh, P(None, "data")))

    @check("shard_map_grad_of_pmean_total")
    def _():
        # check_vma=True (the default): params are replicated (invariant), so a user takes the gradient of the
        # axis-averaged total; JAX sums the per-shard cotangents of the invariant params itself.
        def body(p, x, ys):
            def global_total(p):
                t, aux = total_fn(p, x, ys, axis_name="data")
                return lax.pmean(t, "data"), (aux, t)

            (t_mean, (aux, t_local)), g = jax.value_and_grad(global_total, has_aux=True)(p)
            return t_mean, aux.penalty, aux.cosine, g, t_local[None]

        f = jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data"), P(None, "data")),
                          out_specs=(P(), P(), P(), P(), P("data")))
        t, pen, cos, g, t_local = jax.jit(f)(p_s, x_s, ys_s)
        compare_all(t, pen, cos, g, "shard_map")
        # the task losses in each shard's total are the local ones, the penalty the global one
        close(t_local, local_totals_ref, "shard_map local totals")

    @check("shard_map_grad_outside")
    def _():
        # gradient taken outside shard_map of the axis-averaged total
        def body(p, x, ys):
            t, aux = total_fn(p, x, ys, axis_name="data")
            return lax.pmean(t, "data"), aux.penalty

        f = jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data"), P(None, "data")), out_specs=(P(), P()))
        (t, pen), g = jax.jit(jax.value_and_grad(lambda p: f(p, x_s, ys_s), has_aux=True))(p_s)
        close(t, t_ref, "total")
        close(pen, aux_ref.penalty, "penalty")
        close(g, g_ref, "gradient")

    @check("shard_map_no_vma_grad_then_pmean")
    def _():
        # check_vma=False: per-shard gradient of the local total, then the usual pmean (as under pmap)
        def body(p, x, ys):
            (t, aux), g = jax.value_and_grad(lambda p: total_fn(p, x, ys, axis_name="data"), has_aux=True)(p)
            return lax.pmean(t, "data"), aux.penalty, aux.cosine, lax.pmean(g, "data")

        f = jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data"), P(None, "data")),
                          out_specs=(P(), P(), P(), P()), check_vma=False)
        t, pen, cos, g = jax.jit(f)(p_s, x_s, ys_s)
        compare_all(t, pen, cos, g, "shard_map(check_vma=False)")

    @check("shard_map_task_gradients")
    def _():
        def body(p, x, ys):
            losses, grads = orthojax.task_gradients(fn, p, x, ys, wrt=WRT, axis_name="data")
            return losses, grads

        f = jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data"), P(None, "data")), out_specs=(P(), P()))
        losses, grads = jax.jit(f)(p_s, x_s, ys_s)
        close(losses, losses_ref, "losses (pmean of local means)")
        close(grads, tg_ref, "per-task gradients (global batch)")

    # ---------------------------------------------------------------------------------------- pmap
    xr = x.reshape(N, 2, -1)
    ysr = ys.reshape(ys.shape[0], N, 2, ys.shape[-1])

    @check("pmap_grad_then_pmean")
    def _():
        def body(p, x, ys):
            (t, aux), g = jax.value_and_grad(lambda p: total_fn(p, x, ys, axis_name="data"), has_aux=True)(p)
            return lax.pmean(t, "data"), aux.penalty, aux.cosine, lax.pmean(g, "data"), t

        out = jax.pmap(body, axis_name="data", in_axes=(None, 0, 1))(params, xr, ysr)
        t, pen, cos, g, t_local = out
        for k in range(N):
            compare_all(t[k], pen[k], cos[k], jax.tree.map(lambda a: a[k], g), f"pmap device {k}")
        close(t_local, local_totals_ref, "pmap local totals")

    @check("pmap_task_gradients")
    def _():
        def body(p, x, ys):
            return orthojax.task_gradients(fn, p, x, ys, wrt=WRT, axis_name="data")

        losses, grads = jax.pmap(body, axis_name="data", in_axes=(None, 0, 1))(params, xr, ysr)
        for k in range(N):
            close(losses[k], losses_ref, f"losses device {k}")
            close(jax.tree.map(lambda a: a[k], grads), tg_ref, f"per-task gradients device {k}")

    return results


if __name__ == "__main__":
    main()
