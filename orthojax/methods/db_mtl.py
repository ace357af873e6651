"""Dual-Balancing Multi-Task Learning (DB-MTL): log-transformed losses, max-norm gradient balancing.

Loss-scale balancing: every task loss is replaced by log(L_t + eps) (eps = 1e-8), whose gradient
g_t / (L_t + eps) no longer carries the loss's scale. Gradient-magnitude balancing: the per-task gradients
of the log losses with respect to the shared parameters are smoothed by an exponential moving average,

    h_t <- b_k h_t + (1 - b_k) grad log(L_t + eps),     b_k = beta / k^sigma   (step k = 1, 2, ...; h = 0),

and rescaled to the largest norm before they are added:

    d = sum_t alpha_t h_t,     alpha_t = max_s ||h_s|| / (||h_t|| + eps).

Every other parameter (the task heads) receives the gradient of sum_t log(L_t + eps). The method needs the
Jacobian of the task losses with respect to ``problem.shared`` (one forward pass, T vector-Jacobian
products, as :func:`shared_jacobian` computes it) and keeps a T x P buffer.

This module also holds :func:`shared_jacobian`, the one-forward-pass split into the shared Jacobian and a
pull-back for the other parameters that the Jacobian-based loss weightings (DB-MTL, ExcessMTL, IMTL, MoDo)
share.

References:
  Lin, Jiang, Ye, Zhang, Chen, Chen, Liu, Tsang & Kwok, "Dual-Balancing for Multi-Task Learning",
  arXiv:2308.12029 (Neural Networks, 2025). Reference code: LibMTL (median-research-group/LibMTL),
  LibMTL/weighting/DB_MTL.py; defaults DB_beta = 0.9, DB_beta_sigma = 0 from LibMTL/config.py.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from orthojax.methods.base import Method, MethodStep, MultiTaskProblem, task_losses_and_aux
from orthojax.methods.base import _check_num_tasks, _check_real
from orthojax.select import Selection, make_selection
from orthojax.methods.registry import register

PyTree = Any

__all__ = ["DBMTLState", "SharedJacobian", "db_mtl", "shared_jacobian", "task_norms"]

_EPS = 1e-8  # LibMTL's constant, both in log(L + eps) and in ||h_t|| + eps


def _merge_leaves(selection: Selection, rest_indices: tuple, shared_leaves: list, rest_leaves: list) -> PyTree:
    """The pytree of ``selection`` with its selected leaves replaced by ``shared_leaves`` (``selection.indices``
    order) and the others by ``rest_leaves`` (``rest_indices`` order)."""
    leaves = list(selection.leaves)
    for i, leaf in zip(selection.indices, shared_leaves):
        leaves[i] = leaf
    for i, leaf in zip(rest_indices, rest_leaves):
        leaves[i] = leaf
    return selection.treedef.unflatten(leaves)


class SharedJacobian(NamedTuple):
    """One forward pass of the task losses, split into the shared parameters and the rest.

    Attributes:
      losses: (T,) task losses.
      aux: the problem's aux.
      jacobian: list of (T, ...) arrays, row t = dL_t / d(shared leaf), one per shared leaf in
        ``selection.indices`` order.
      pullback: ``fn(cotangent (T,)) -> (shared_grads, rest_grads)``: the gradient of sum_t c_t L_t for the
        shared leaves and for the other leaves (``rest_indices`` order), from the same forward pass.
      selection: the :class:`~orthojax.select.Selection` of ``problem.shared`` in ``params``.
      rest_indices: positions (into ``selection.leaves``) of the leaves that are not shared.
    """

    losses: jax.Array
    aux: Any
    jacobian: list
    pullback: Callable[[jax.Array], tuple[list, list]]
    selection: Selection
    rest_indices: tuple

    def assemble(self, shared_grads: list, rest_grads: list) -> PyTree:
        """The full gradient pytree (the structure of ``params``) from its shared and other leaves."""
        return _merge_leaves(self.selection, self.rest_indices, shared_grads, rest_grads)


def shared_jacobian(problem: MultiTaskProblem, params: PyTree, batch: Any, rng: jax.Array) -> SharedJacobian:
    """The Jacobian of the task losses w.r.t. ``problem.shared`` and a pull-back for every parameter.

    One forward pass under ``jax.vjp``; the Jacobian is T vector-Jacobian products with the rows of the
    identity, batched with ``jax.vmap`` (the ``jax.jacrev`` pattern); ``pullback(c)`` reuses the same
    forward pass for the gradient of sum_t c_t L_t (XLA drops whichever half of it is unused).

    Raises:
      KeyError / ValueError / TypeError: ``problem.shared`` selects nothing (see
        :func:`orthojax.select.make_selection`); ``problem.task_losses`` does not return ((T,), aux).
    """
    selection = make_selection(params, problem.shared)
    chosen = set(selection.indices)
    rest_indices = tuple(i for i in range(len(selection.leaves)) if i not in chosen)

    def losses_fn(shared_leaves, rest_leaves):
        merged = _merge_leaves(selection, rest_indices, shared_leaves, rest_leaves)
        return task_losses_and_aux(problem, merged, batch, rng)

    rest = [selection.leaves[i] for i in rest_indices]
    losses, vjp_fn, aux = jax.vjp(losses_fn, selection.selected, rest, has_aux=True)
    num_tasks = losses.shape[0]
    jacobian, _ = jax.vmap(vjp_fn)(jnp.eye(num_tasks, dtype=losses.dtype))

    def pullback(cotangent: jax.Array) -> tuple[list, list]:
        return vjp_fn(jnp.asarray(cotangent, losses.dtype))

    return SharedJacobian(losses, aux, list(jacobian), pullback, selection, rest_indices)


def task_norms(jacobian: list) -> jax.Array:
    """(T,) Euclidean norms of the rows of a Jacobian given as (T, ...) leaves, without over- or underflow.

    Each row is divided by its largest absolute entry before squaring (rows of zeros have norm 0).
    """
    top = jnp.max(jnp.stack([jnp.max(jnp.abs(leaf.reshape(leaf.shape[0], -1)), axis=1) for leaf in jacobian]), axis=0)
    ok = (top > 0) & jnp.isfinite(top)
    safe = jnp.where(ok, top, 1)
    total = sum(jnp.sum(jnp.square(leaf.reshape(leaf.shape[0], -1) / safe[:, None].astype(leaf.dtype)), axis=1)
                for leaf in jacobian)
    return jnp.where(ok, safe * jnp.sqrt(total), jnp.where(jnp.isfinite(top), 0.0, top))


def _task_buffer(params: PyTree, num_tasks: int) -> PyTree:
    """Zeros of shape (T, *leaf.shape) for every floating leaf of ``params`` (dtype promoted to >= float32)."""

    def zeros(leaf):
        dtype = jnp.promote_types(jnp.result_type(leaf), jnp.float32)
        return jnp.zeros((num_tasks,) + tuple(jnp.shape(leaf)), dtype)

    return jax.tree.map(zeros, params)


def _check_buffer(buffer_leaves: list, selection: Selection, name: str) -> None:
    """Trace-time check that a per-task buffer was initialised for these parameters."""
    shapes = [tuple(jnp.shape(leaf)) for leaf in selection.leaves]
    got = [tuple(leaf.shape[1:]) for leaf in buffer_leaves]
    if got != shapes:
        raise ValueError(f"{name}: the state's buffer has leaf shapes {got} but the parameters have {shapes}; "
                         f"initialise the state with method.init(params, num_tasks) for these parameters")


class DBMTLState(NamedTuple):
    """State of :func:`db_mtl`.

    Attributes:
      buffer: the EMAs h_t of the log-loss gradients: the structure of ``params`` with a leading task axis
        on every leaf ((T, *leaf.shape)); ``init`` does not know which leaves are shared, so every leaf has
        one, and those outside ``problem.shared`` stay zero.
      count: number of steps taken (k - 1 at step k).
    """

    buffer: PyTree
    count: jax.Array


def db_mtl(beta: float = 0.9, beta_sigma: float = 0.0) -> Method:
    """DB-MTL: gradients of log(L_t + 1e-8), smoothed by an EMA and rescaled to the largest task norm.

    The shared parameters receive d = sum_t alpha_t h_t (module docstring); the other parameters the
    gradient of sum_t log(L_t + 1e-8).

    Args:
      beta: EMA factor beta in [0, 1) (0.9 in LibMTL/config.py); 0 uses this step's gradients alone.
      beta_sigma: decay exponent sigma >= 0 of the EMA factor, b_k = beta / k^sigma (0 in
        LibMTL/config.py: a constant factor).

    Returns:
      A :class:`~orthojax.methods.base.Method` named "db_mtl". ``MethodStep.loss`` is sum_t log(L_t + 1e-8);
      metrics: "task_weights" (T,) the scale factors alpha_t of the buffers h_t in d, "grad_norms" (T,)
      ||h_t||.

    Raises:
      TypeError / ValueError: ``beta`` outside [0, 1) or ``beta_sigma`` negative (or not a finite real).

    Example:
      >>> method = db_mtl()
      >>> state = method.init(params, num_tasks=3)
      >>> out = method.step(problem, params, state, batch, rng)

    References:
      Lin et al., "Dual-Balancing for Multi-Task Learning", arXiv:2308.12029; LibMTL/weighting/DB_MTL.py.
    """
    beta = _check_real(beta, "beta", "db_mtl")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"db_mtl: beta must be in [0, 1); got {beta}")
    beta_sigma = _check_real(beta_sigma, "beta_sigma", "db_mtl")
    if beta_sigma < 0:
        raise ValueError(f"db_mtl: beta_sigma must be >= 0; got {beta_sigma}")

    def init(params: PyTree, num_tasks: int) -> DBMTLState:
        _check_num_tasks(num_tasks, "db_mtl")
        return DBMTLState(_task_buffer(params, num_tasks), jnp.zeros((), jnp.int32))

    def step(problem: MultiTaskProblem, params: PyTree, state: DBMTLState, batch: Any, rng: jax.Array) -> MethodStep:
        sj = shared_jacobian(problem, params, batch, rng)
        losses = jax.lax.stop_gradient(sj.losses)
        inv = 1.0 / (losses + _EPS)  # d log(L + eps) / dL
        k = (state.count + 1).astype(losses.dtype)
        b = beta / k**beta_sigma
        old = jax.tree.leaves(state.buffer)
        _check_buffer(old, sj.selection, "db_mtl")
        buffers = []
        for i, g in zip(sj.selection.indices, sj.jacobian):
            g_log = g * inv.astype(g.dtype).reshape((-1,) + (1,) * (g.ndim - 1))
            buffers.append((b * old[i] + (1 - b) * g_log).astype(old[i].dtype))
        norms = task_norms(buffers)
        alpha = jnp.max(norms) / (norms + _EPS)
        shared = [jnp.tensordot(alpha.astype(h.dtype), h, axes=1).astype(g.dtype) for h, g in zip(buffers, sj.jacobian)]
        _, rest = sj.pullback(inv)
        new_leaves = list(old)
        for i, h in zip(sj.selection.indices, buffers):
            new_leaves[i] = h
        buffer = jax.tree.unflatten(jax.tree.structure(state.buffer), new_leaves)
        metrics = {"task_weights": alpha, "grad_norms": norms}
        return MethodStep(sj.assemble(shared, rest), DBMTLState(buffer, state.count + 1),
                          jnp.sum(jnp.log(sj.losses + _EPS)), sj.losses, sj.aux, metrics)

    return Method(name="db_mtl", init=init, step=step)


register("db_mtl", db_mtl, label="DB-MTL", aliases=("dbmtl", "dual_balancing"))
