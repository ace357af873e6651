"""Aggregators: pure, jittable functions of a Jacobian, usable without the orthojax engine.

Every aggregator factory validates its hyper-parameters eagerly and returns
``aggregate(jacobian, state=None, *, key=None) -> (direction, state)``:

* ``jacobian``: a (T, P) array or a pytree whose leaves have a leading task axis T (the per-task gradients,
  e.g. what :func:`orthojax.task_jacobian` returns); the two give the same direction;
* ``direction``: the structure of one task's gradient (the task axis removed), in the Jacobian's dtype;
* ``state``: None for stateless aggregators; a stateful one builds its first state when given None;
* ``key``: a ``jax.random`` key, required by randomised aggregators (PCGrad with ``random_order=True``), which
  raise a ValueError without one; the others ignore it.

The built-in ones are :class:`~orthojax.aggregators.base.Aggregator` objects, which also give the step's
diagnostics: ``aggregate.with_info(J) -> Aggregation(direction, state, info)`` with ``info`` holding
"grad_norms" (T,), "gramian" (T, T), "task_weights" (T,) for the weightings (d = w @ J: all but GradDrop and
TrimmedMean) and, for the iterative solvers, "solver_residual"; and, for the stateful ones (GradVac's EMA
targets, Nash-MTL's last weights), ``aggregate.init(T, dtype)``, the state that ``state=None`` stands for,
of the same shapes at every step.

The aggregators: the Gramian weightings MGDA, PCGrad, IMTL-G, Aligned-MTL, UPGrad, DualProj, CAGrad,
ConFIG, Nash-MTL, FairGrad, GradVac, Krum and the fixed ones (:func:`constant`, :func:`sum_aggregator`,
:func:`mean_aggregator`); and two that act coordinate by coordinate, GradDrop (randomised) and
TrimmedMean.

Beside them, the Gramian weightings that the aggregators are built from: ``<name>_weights(G, ...) -> (T,)``
and ``<name>_solution(G, ...) -> Solution(weights, coefficients, residual)`` (G = J J^T, or its scale-safe
factored form :func:`scaled_gramian`), and :func:`gramian`, :func:`combine` (d = w @ J) and
:func:`combine_unit` (d from the unit-gradient coefficients). Scale conventions (what d is on the scale of)
are in each module: MGDA returns the min-norm point, IMTL-G and CAGrad (rescaled) a convex-combination
scale, UPGrad the mean of the projected gradients, DualProj the projected mean, PCGrad the sum of the
de-conflicted gradients.

Example::

    from orthojax import aggregators
    aggregate = aggregators.upgrad()
    d, _ = jax.jit(aggregate)(J)                       # J: (T, P)
    w = aggregators.upgrad_weights(aggregators.gramian(J))
    assert jnp.allclose(d, aggregators.combine(w, J))

Adding an aggregator: write ``orthojax/aggregators/<name>.py`` with a factory ``<name>(**hyperparameters)``
returning a plain ``aggregate`` function or an :class:`Aggregator` (``gramian_aggregator(name, solve)`` for a
weighting of the Gramian), re-export it here, and register it as a training method with one line in
:data:`orthojax.methods.aggregation.AGGREGATORS`::

    "krum": _method_from_aggregator(aggregators.krum),

The method then takes the factory's hyper-parameters (the registry reads its signature and docstring).
"""

from orthojax.aggregators.aligned_mtl import aligned_mtl, aligned_mtl_solution, aligned_mtl_weights
from orthojax.aggregators.base import Aggregation, Aggregator, gramian_aggregator, jacobian_info, num_tasks_of
from orthojax.aggregators.cagrad import cagrad, cagrad_solution, cagrad_weights
from orthojax.aggregators.config import config, config_weights
from orthojax.aggregators.constant import constant, mean_aggregator, sum_aggregator
from orthojax.aggregators.fairgrad import fairgrad, fairgrad_solve, fairgrad_weights
from orthojax.aggregators.graddrop import graddrop
from orthojax.aggregators.gradvac import GradVacState, gradvac, gradvac_order, gradvac_weights
from orthojax.aggregators.gramian import (
    ScaledGramian,
    Solution,
    as_scaled_gramian,
    combine,
    combine_unit,
    gramian,
    scaled_gramian,
)
from orthojax.aggregators.imtl_g import imtl_g, imtl_g_solution, imtl_g_weights
from orthojax.aggregators.krum import krum, krum_weights
from orthojax.aggregators.mgda import mgda, mgda_solution, mgda_weights
from orthojax.aggregators.nash_mtl import NashMTLState, nash_mtl, nash_mtl_solve, nash_mtl_weights
from orthojax.aggregators.pcgrad import pcgrad, pcgrad_order, pcgrad_solution, pcgrad_weights
from orthojax.aggregators.trimmed_mean import trimmed_mean
from orthojax.aggregators.upgrad import (
    dualproj,
    dualproj_solution,
    dualproj_weights,
    upgrad,
    upgrad_solution,
    upgrad_weights,
)

__all__ = [
    "Aggregation",
    "Aggregator",
    "GradVacState",
    "NashMTLState",
    "ScaledGramian",
    "Solution",
    "aligned_mtl",
    "aligned_mtl_solution",
    "aligned_mtl_weights",
    "as_scaled_gramian",
    "cagrad",
    "cagrad_solution",
    "cagrad_weights",
    "combine",
    "combine_unit",
    "config",
    "config_weights",
    "constant",
    "dualproj",
    "dualproj_solution",
    "dualproj_weights",
    "fairgrad",
    "fairgrad_solve",
    "fairgrad_weights",
    "graddrop",
    "gradvac",
    "gradvac_order",
    "gradvac_weights",
    "gramian",
    "gramian_aggregator",
    "imtl_g",
    "imtl_g_solution",
    "imtl_g_weights",
    "jacobian_info",
    "krum",
    "krum_weights",
    "mean_aggregator",
    "mgda",
    "mgda_solution",
    "mgda_weights",
    "nash_mtl",
    "nash_mtl_solve",
    "nash_mtl_weights",
    "num_tasks_of",
    "pcgrad",
    "pcgrad_order",
    "pcgrad_solution",
    "pcgrad_weights",
    "scaled_gramian",
    "sum_aggregator",
    "trimmed_mean",
    "upgrad",
    "upgrad_solution",
    "upgrad_weights",
]
