"""Gradient aggregation methods: MGDA, PCGrad, IMTL-G, Aligned-MTL, UPGrad, DualProj, CAGrad.

Each step computes, from one forward pass,

* the Jacobian J of the task losses with respect to the shared parameters (``problem.shared``), by T
  vector-Jacobian products batched with ``jax.vmap`` (as :func:`orthojax.task_jacobian` does);
* the Gramian in scale-safe factored form (task-gradient norms and cosines, :func:`~orthojax.methods.
  gramian.scaled_gramian`) and the method's :class:`~orthojax.methods.gramian.Solution`;
* the shared-parameter gradient d = sum_t a_t g_t / ||g_t|| from the solution's unit-gradient coefficients
  (:func:`~orthojax.methods.gramian.combine_unit`; equal to w @ J, and right even where a weight w_t is
  beyond the dtype's range, e.g. float32 task gradients with norms 1e-30 and 1e30 in one step);
* the gradient of sum_t L_t for every other parameter: each task-specific decoder only sees its own loss,
  so this is its own task gradient, untouched by the aggregation.

``MethodStep.loss`` is sum_t L_t (for logging: the update is not the gradient of one scalar);
metrics: "task_weights" (T,), "gramian" (T, T) (exact where representable; entries beyond the dtype's
range are 0 or inf), "grad_norms" (T,) ||g_t||, and for the methods with an iterative solver (MGDA,
UPGrad, DualProj, CAGrad) "solver_residual", the optimality residual the solver reached (see each
``*_solution`` in :mod:`orthojax.methods.gramian` for its definition and tolerance). The weights are
computed under ``stop_gradient``.

Example::

    method = orthojax.methods.aggregation.upgrad()
    state = method.init(params, num_tasks)
    out = method.step(problem, params, state, batch, rng)

References: see :mod:`orthojax.methods.gramian`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from orthojax.cosreg import cosine_matrix
from orthojax.methods import gramian as gm
from orthojax.methods.base import Method, MethodStep, MultiTaskProblem, task_losses_and_aux
from orthojax.select import make_selection

PyTree = Any
SolveFn = Callable[[gm.ScaledGramian, jax.Array], gm.Solution]

__all__ = [
    "AGGREGATORS",
    "aligned_mtl",
    "cagrad",
    "dualproj",
    "gradient_aggregation",
    "imtl_g",
    "jacobian_step",
    "mgda",
    "pcgrad",
    "upgrad",
]

# Folded into the step's key so that PCGrad's task order is independent of the model's own randomness.
_PCGRAD_KEY_SALT = 0x5043


def jacobian_step(problem: MultiTaskProblem, params: PyTree, batch: Any, rng: jax.Array):
    """One forward pass; the shared-parameter Jacobian and the gradient of sum_t L_t for the rest.

    Returns:
      ``(losses, aux, jacobian, rest_grads, selection, rest_indices)``: ``jacobian`` is the list of (T, ...)
      Jacobian leaves of the shared parameters (in ``selection.indices`` order), ``rest_grads`` the list of
      gradients of sum_t L_t for the other leaves (in ``rest_indices`` order).
    """
    selection = make_selection(params, problem.shared)
    chosen = set(selection.indices)
    rest_indices = tuple(i for i in range(len(selection.leaves)) if i not in chosen)

    def merged(shared_leaves, rest_leaves):
        leaves = list(selection.leaves)
        for i, leaf in zip(selection.indices, shared_leaves):
            leaves[i] = leaf
        for i, leaf in zip(rest_indices, rest_leaves):
            leaves[i] = leaf
        return selection.treedef.unflatten(leaves)

    def losses_fn(shared_leaves, rest_leaves):
        return task_losses_and_aux(problem, merged(shared_leaves, rest_leaves), batch, rng)

    rest = [selection.leaves[i] for i in rest_indices]
    losses, pullback, aux = jax.vjp(losses_fn, selection.selected, rest, has_aux=True)
    num_tasks = losses.shape[0]
    jacobian, _ = jax.vmap(pullback)(jnp.eye(num_tasks, dtype=losses.dtype))
    _, rest_grads = pullback(jnp.ones((num_tasks,), losses.dtype))
    return losses, aux, jacobian, rest_grads, selection, rest_indices


def _last_shared_cosine(problem: MultiTaskProblem, params: PyTree, selection, jacobian: list):
    """The (T, T) cosines of the last shared layer's rows of the shared Jacobian (None when that layer is not
    among the shared parameters)."""
    last = make_selection(params, problem.last_shared).indices
    position = {index: k for k, index in enumerate(selection.indices)}
    if not last or any(i not in position for i in last):
        return None
    return cosine_matrix([jacobian[position[i]] for i in last])


def _aggregation_method(name: str, solve_fn: SolveFn, min_tasks: int = 1, iterative: bool = False) -> Method:
    def init(params: PyTree, num_tasks: int) -> tuple:
        if num_tasks < min_tasks:
            raise ValueError(f"{name} needs at least {min_tasks} tasks; got {num_tasks}")
        return ()

    def step(problem: MultiTaskProblem, params: PyTree, state: tuple, batch: Any, rng: jax.Array) -> MethodStep:
        losses, aux, jacobian, rest_grads, selection, rest_indices = jacobian_step(problem, params, batch, rng)
        jac = jax.lax.stop_gradient(jacobian)
        exponents, scaled = gm._scaled_parts(jac)
        G = gm._gramian_from_parts(exponents, scaled)
        S = gm._scaled_from_parts(exponents, scaled)
        sol = jax.lax.stop_gradient(solve_fn(S, rng))
        w = sol.weights
        shared_grads = gm.combine_unit(sol.coefficients, jac, S.norms)
        leaves = list(selection.leaves)
        for i, g in zip(selection.indices, shared_grads):
            leaves[i] = g
        for i, g in zip(rest_indices, rest_grads):
            leaves[i] = g
        grads = selection.treedef.unflatten(leaves)
        metrics = {"task_weights": w, "gramian": G, "grad_norms": S.norms}
        if iterative:
            metrics["solver_residual"] = sol.residual
        cosine = _last_shared_cosine(problem, params, selection, jac)
        if cosine is not None:  # the diagnostic from this Jacobian: the engine computes no extra one
            metrics["cosine"] = cosine
        return MethodStep(grads, state, jnp.sum(losses), losses, aux, metrics)

    return Method(name=name, init=init, step=step)


def _check_pref(pref: Any, name: str) -> Optional[tuple]:
    if pref is None:
        return None
    values = tuple(float(p) for p in pref)
    if not values or not all(jnp.isfinite(v) for v in values):
        raise ValueError(f"{name}: pref must be a non-empty sequence of finite numbers; got {pref!r}")
    return values


def mgda(num_iters: Optional[int] = None) -> Method:
    """MGDA: the min-norm element of the convex hull of the shared task gradients (:func:`~orthojax.methods.
    gramian.mgda_solution`; exact active-set solver, metric "solver_residual").

    Args:
      num_iters: cap on the solver's active-set iterations; None (default): 10 T + 50.
    """
    gm._check_cap(num_iters, "num_iters", "mgda", minimum=0)
    return _aggregation_method("mgda", lambda S, rng: gm.mgda_solution(S, num_iters=num_iters), iterative=True)


def pcgrad(random_order: bool = True) -> Method:
    """PCGrad on the shared parameters (:func:`pcgrad_weights`).

    Args:
      random_order: draw each task's projection order from the step's ``rng`` (folded with a constant), as
        the paper does; with False, the deterministic order 0, ..., T-1 (reproducible without a key).
    """
    if not isinstance(random_order, bool):
        raise ValueError(f"pcgrad: random_order must be a bool; got {random_order!r}")

    def solve_fn(S, rng):
        key = jax.random.fold_in(rng, _PCGRAD_KEY_SALT) if random_order else None
        return gm.pcgrad_solution(S, key)

    return _aggregation_method("pcgrad", solve_fn)


def imtl_g(eps: Optional[float] = None) -> Method:
    """IMTL-G: equal projections of the shared update on every unit task gradient (:func:`imtl_g_weights`).

    Args:
      eps: threshold below which the normalising sum gives zero weights (default 100 * machine epsilon;
        see :func:`~orthojax.methods.gramian.imtl_g_solution`).
    """
    if eps is not None:
        gm._check_nonneg_float(eps, "eps", "imtl_g")
    return _aggregation_method("imtl_g", lambda S, rng: gm.imtl_g_solution(S, eps=eps))


def aligned_mtl(pref: Optional[Any] = None) -> Method:
    """Aligned-MTL: the eigendecomposition-based alignment of the shared task gradients (:func:`aligned_mtl_weights`).

    Args:
      pref: optional (T,) preference weights (default 1/T each).
    """
    pref = _check_pref(pref, "aligned_mtl")
    return _aggregation_method("aligned_mtl", lambda S, rng: gm.aligned_mtl_solution(S, pref))


def upgrad(pref: Optional[Any] = None, reg_eps: float = 1e-4, num_iters: Optional[int] = None) -> Method:
    """UPGrad: the sum of the projections of the task gradients onto the dual cone (:func:`~orthojax.methods.
    gramian.upgrad_solution`; exact active-set solver, metric "solver_residual").

    Args:
      pref: optional (T,) preference weights (default 1/T each).
      reg_eps: regularisation of the normalised Gramian (0: exact, per-task scale invariant).
      num_iters: cap on the solver's active-set iterations per QP; None (default): 10 T + 50.
    """
    pref = _check_pref(pref, "upgrad")
    gm._check_nonneg_float(reg_eps, "reg_eps", "upgrad")
    gm._check_cap(num_iters, "num_iters", "upgrad")
    return _aggregation_method(
        "upgrad", lambda S, rng: gm.upgrad_solution(S, pref, reg_eps=reg_eps, num_iters=num_iters), iterative=True
    )


def dualproj(pref: Optional[Any] = None, reg_eps: float = 1e-4, num_iters: Optional[int] = None) -> Method:
    """DualProj: the projection of the mean task gradient onto the dual cone (:func:`~orthojax.methods.
    gramian.dualproj_solution`; exact active-set solver, metric "solver_residual").

    Args:
      pref: optional (T,) preference weights (default 1/T each).
      reg_eps: regularisation of the normalised Gramian (0: exact).
      num_iters: cap on the solver's active-set iterations; None (default): 10 T + 50.
    """
    pref = _check_pref(pref, "dualproj")
    gm._check_nonneg_float(reg_eps, "reg_eps", "dualproj")
    gm._check_cap(num_iters, "num_iters", "dualproj")
    return _aggregation_method(
        "dualproj",
        lambda S, rng: gm.dualproj_solution(S, pref, reg_eps=reg_eps, num_iters=num_iters),
        iterative=True,
    )


def cagrad(
    c: float = 0.4, rescale: int = 1, num_outer: Optional[int] = None, num_inner: Optional[int] = None
) -> Method:
    """CAGrad: the conflict-averse direction in a ball of radius c ||g0|| around the mean gradient
    (:func:`~orthojax.methods.gramian.cagrad_solution`; metric "solver_residual").

    Args:
      c: relative radius, >= 0.
      rescale: 0 (none; TorchJD's CAGrad), 1 (divide by 1 + c^2, the paper's code default) or 2 (divide by
        1 + c).
      num_outer: cap on the root-finding iterations of the solver; None (default): 100.
      num_inner: cap on the active-set iterations of each inner solve; None (default): 10 T + 50.
    """
    gm._check_nonneg_float(c, "c", "cagrad")
    if rescale not in (0, 1, 2) or isinstance(rescale, bool):
        raise ValueError(f"cagrad: rescale must be 0, 1 or 2; got {rescale!r}")
    gm._check_cap(num_outer, "num_outer", "cagrad")
    gm._check_cap(num_inner, "num_inner", "cagrad")
    return _aggregation_method(
        "cagrad",
        lambda S, rng: gm.cagrad_solution(S, c, rescale=rescale, num_outer=num_outer, num_inner=num_inner),
        iterative=True,
    )


AGGREGATORS: dict[str, Callable[..., Method]] = {
    "mgda": mgda,
    "pcgrad": pcgrad,
    "imtl_g": imtl_g,
    "aligned_mtl": aligned_mtl,
    "upgrad": upgrad,
    "dualproj": dualproj,
    "cagrad": cagrad,
}


def gradient_aggregation(name: str, **hyperparameters: Any) -> Method:
    """The aggregation method ``name`` (one of :data:`AGGREGATORS`) built with its hyper-parameters.

    Raises:
      KeyError: an unknown name (the message lists the known ones).
      TypeError: a hyper-parameter the method does not take.
    """
    try:
        factory = AGGREGATORS[name]
    except KeyError:
        raise KeyError(f"unknown aggregation {name!r}; known: {sorted(AGGREGATORS)}") from None
    return factory(**hyperparameters)
