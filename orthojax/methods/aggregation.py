"""Training methods from aggregators: any :mod:`orthojax.aggregators` aggregator as a :class:`Method`.

:func:`gradient_aggregation` turns an aggregator ``aggregate(jacobian, state=None, *, key=None) -> (direction,
state)`` into a method whose step computes, from one forward pass,

* the Jacobian J of the task losses with respect to the shared parameters (``problem.shared``), by T
  vector-Jacobian products batched with ``jax.vmap`` (as :func:`orthojax.task_jacobian` does), under
  ``stop_gradient``;
* the shared-parameter gradient d = aggregate(J) (a list of leaves in the selection's order);
* the gradient of sum_t L_t for every other parameter: each task-specific decoder only sees its own loss,
  so this is its own task gradient, untouched by the aggregation.

With ``rep_grad=True`` (LibMTL's ``rep_grad``; every weighting method takes it as a hyper-parameter) the
Jacobian is taken with respect to the shared representation instead, which costs one encoder backward pass
instead of T (:func:`representation_step`):

* the representation Jacobian R, row t = dL_t / dz_t, the gradient of task t's loss with respect to its
  representation z_t from ``problem.encode`` (per example: flattened over the batch and the features);
* the weights w from the aggregator applied to R (its "task_weights", under ``stop_gradient``);
* the encoder's gradient is the pullback of the cotangents w_t dL_t / dz_t, i.e. the gradient of
  sum_t w_t L_t with respect to the encoder's parameters; the decoders get the gradient of sum_t L_t
  (their own task gradients), as above and as in LibMTL.

``MethodStep.loss`` is sum_t L_t (for logging: the update is not the gradient of one scalar). Metrics: the
aggregator's diagnostics where it reports them (:meth:`~orthojax.aggregators.base.Aggregator.with_info`:
"task_weights" (T,), "grad_norms" (T,) ||g_t||, "gramian" (T, T) and, for MGDA, UPGrad, DualProj and
CAGrad, "solver_residual"), and "cosine" (T, T), the last shared layer's cosines from the same Jacobian
when that layer is among the shared parameters (with ``rep_grad`` the weights, norms and Gramian are those of
the representation Jacobian, and no "cosine" is reported: the engine computes the parameter one). The
method's state is the aggregator's state (``()`` for a
stateless one); the aggregator's ``key`` is the step's ``rng`` folded with a constant (None without one).

:data:`AGGREGATORS` maps the registry names to method factories taking the aggregators' hyper-parameters;
a new aggregator is one line there: ``"krum": _method_from_aggregator(aggregators.krum)``. A weighting
(an aggregator whose diagnostics hold "task_weights") is registered with ``rep_grad=True`` so that its method
takes the ``rep_grad`` hyper-parameter.

Example::

    method = orthojax.methods.aggregation.upgrad()          # or gradient_aggregation(aggregators.upgrad(), name="upgrad")
    method = orthojax.methods.get_method("mgda", rep_grad=True)   # weights from the representation's Jacobian
    state = method.init(params, num_tasks)
    out = method.step(problem, params, state, batch, rng)

References: see each aggregator's module in :mod:`orthojax.aggregators`; the representation variant:
Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018 (MGDA-UB, the gradients
of the shared representation); LibMTL, https://github.com/median-research-group/LibMTL,
``LibMTL/weighting/abstract_weighting.py`` (``rep_grad``).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from orthojax import aggregators
from orthojax.cosreg import cosine_matrix
from orthojax.methods.base import Method, MethodStep, MultiTaskProblem
from orthojax.methods.db_mtl import _merge_leaves, shared_jacobian
from orthojax.select import make_selection

PyTree = Any

__all__ = [
    "AGGREGATORS",
    "aligned_mtl",
    "cagrad",
    "config",
    "dualproj",
    "fairgrad",
    "graddrop",
    "gradient_aggregation",
    "gradvac",
    "imtl_g",
    "jacobian_step",
    "mean_aggregator",
    "mgda",
    "nash_mtl",
    "pcgrad",
    "representation_step",
    "sum_aggregator",
    "trimmed_mean",
    "upgrad",
]

# Folded into the step's key so that a randomised aggregator (PCGrad's task order) is independent of the
# model's own randomness.
_AGGREGATOR_KEY_SALT = 0x5043


def jacobian_step(problem: MultiTaskProblem, params: PyTree, batch: Any, rng: jax.Array):
    """One forward pass; the shared-parameter Jacobian and the gradient of sum_t L_t for the rest.

    The Jacobian is :func:`~orthojax.methods.db_mtl.shared_jacobian`'s; the other leaves' gradient is its
    pull-back of the all-ones cotangent, from the same forward pass.

    Returns:
      ``(losses, aux, jacobian, rest_grads, selection, rest_indices)``: ``jacobian`` is the list of (T, ...)
      Jacobian leaves of the shared parameters (in ``selection.indices`` order), ``rest_grads`` the list of
      gradients of sum_t L_t for the other leaves (in ``rest_indices`` order).
    """
    sj = shared_jacobian(problem, params, batch, rng)
    _, rest_grads = sj.pullback(jnp.ones_like(sj.losses))
    return sj.losses, sj.aux, sj.jacobian, rest_grads, sj.selection, sj.rest_indices


def representation_step(problem: MultiTaskProblem, params: PyTree, batch: Any, rng: jax.Array):
    """One forward pass split at the shared representation; its Jacobian and the decoders' gradient.

    ``problem.decode`` must be separable (task t's loss reads ``zs[t]`` only, as RotoGrad requires and as
    LibMTL's per-task copies of the representation are by construction): one decoder pullback then gives
    every row dL_t / dz_t and the decoders' gradient of sum_t L_t.

    Returns:
      ``(losses, aux, rep_jacobian, decoder_grads, encoder_pullback, z_tree)``: ``rep_jacobian`` the (T, ...)
      array whose row t is dL_t / dz_t (the representations' common shape, batch axis included),
      ``decoder_grads`` the gradient of sum_t L_t through the decoders only (the structure of ``params``),
      ``encoder_pullback(cotangents) -> (grads,)`` the encoder's VJP, taking a pytree of the structure
      ``z_tree`` of the representations.

    Raises:
      ValueError: no ``encode`` / ``decode``, not one representation per task, representations of different
        shapes, or decode not returning ``(losses (T,), aux)``.
    """
    if problem.encode is None or problem.decode is None:
        raise ValueError("rep_grad=True takes the Jacobian with respect to the shared representation: the "
                         "MultiTaskProblem needs encode(params, batch, rng) -> (zs, extras) and decode(params, zs, "
                         "extras, batch, rng) -> (losses, aux); got encode="
                         f"{problem.encode!r}, decode={problem.decode!r}")
    zs, encoder_pullback, extras = jax.vjp(lambda p: problem.encode(p, batch, rng), params, has_aux=True)
    z_leaves, z_tree = jax.tree.flatten(zs)

    def decode(p, leaves):
        out = problem.decode(p, jax.tree.unflatten(z_tree, leaves), extras, batch, rng)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError(f"problem.decode must return a pair (losses of shape (T,), aux); got {type(out).__name__}")
        losses, aux = out
        if jnp.ndim(losses) != 1 or losses.shape[0] != len(z_leaves):
            raise ValueError(f"problem.decode must return losses of shape (T,) = ({len(z_leaves)},), one per "
                             f"representation from problem.encode; got {jnp.shape(losses)}")
        return losses, aux

    shapes = {jnp.shape(z) for z in z_leaves}
    if len(shapes) != 1:
        raise ValueError(f"rep_grad=True needs the T representations from problem.encode to have one shape (their "
                         f"gradients form the rows of one Jacobian); got {[jnp.shape(z) for z in z_leaves]}")
    losses, decoder_pullback, aux = jax.vjp(decode, params, z_leaves, has_aux=True)
    decoder_grads, rows = decoder_pullback(jnp.ones_like(losses))
    return losses, aux, jnp.stack(rows), decoder_grads, encoder_pullback, z_tree


def _last_shared_cosine(problem: MultiTaskProblem, params: PyTree, selection, jacobian: list):
    """The (T, T) cosines of the last shared layer's rows of the shared Jacobian (None when that layer is not
    among the shared parameters)."""
    last = make_selection(params, problem.last_shared).indices
    position = {index: k for k, index in enumerate(selection.indices)}
    if not last or any(i not in position for i in last):
        return None
    return cosine_matrix([jacobian[position[i]] for i in last])


def _is_empty_state(state: PyTree) -> bool:
    return state is None or (type(state) is tuple and not state)


def _float_dtype_of(params: PyTree):
    floats = [jnp.result_type(x) for x in jax.tree.leaves(params) if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
    return jnp.result_type(*floats) if floats else jnp.float32


def gradient_aggregation(aggregator: Callable[..., Any], *, name: Optional[str] = None,
                         rep_grad: bool = False) -> Method:
    """The training method that updates the shared parameters along ``aggregator``'s direction.

    Args:
      aggregator: ``aggregate(jacobian, state=None, *, key=None) -> (direction, state)``, e.g.
        ``orthojax.aggregators.upgrad()`` or a user's function. An :class:`~orthojax.aggregators.Aggregator`
        also gives its diagnostics as metrics and its initial state to ``init``; for a plain function the
        state starts as None (a stateful plain function therefore changes the state's structure after the
        first step, which costs one more trace).
      name: the method's name; default the aggregator's ``name`` attribute.
      rep_grad: take the Jacobian with respect to the shared representation (``problem.encode`` /
        ``problem.decode``) instead of the shared parameters, and train the encoder on the gradient of
        sum_t w_t L_t with the aggregator's weights w (module docstring). Needs an
        :class:`~orthojax.aggregators.Aggregator` that reports "task_weights" (a weighting).

    Returns:
      :class:`Method` (see the module docstring for its step).

    Raises:
      TypeError: ``aggregator`` not callable (e.g. a registry name: use ``get_method(name)``), no name, or
        ``rep_grad`` not a bool.
      ValueError: with ``rep_grad``, a plain function (no ``with_info``: no weights); at the step, a problem
        without encode / decode, representations of different shapes, or an Aggregator that reports no
        "task_weights" (GradDrop, TrimmedMean).
    """
    if not callable(aggregator):
        raise TypeError(f"gradient_aggregation: aggregator must be an aggregate function such as "
                        f"orthojax.aggregators.upgrad(); got {aggregator!r} (for a method by name use "
                        f"orthojax.methods.get_method)")
    name = getattr(aggregator, "name", None) if name is None else name
    if not isinstance(name, str) or not name:
        raise TypeError(f"gradient_aggregation: name must be a non-empty string; got {name!r}")
    if not isinstance(rep_grad, bool):
        raise TypeError(f"{name}: rep_grad must be a bool; got {rep_grad!r}")
    with_info = getattr(aggregator, "with_info", None)
    init_fn = getattr(aggregator, "init", None)
    if rep_grad and with_info is None:
        raise ValueError(f"{name}: rep_grad=True needs the aggregator's task weights: an "
                         f"orthojax.aggregators.Aggregator whose with_info reports 'task_weights'; got {aggregator!r}")

    def init(params: PyTree, num_tasks: int) -> PyTree:
        if num_tasks < 1:
            raise ValueError(f"{name} needs at least 1 task; got {num_tasks}")
        return () if init_fn is None else init_fn(num_tasks, _float_dtype_of(params))

    def aggregate(jac: PyTree, state: PyTree, rng: Optional[jax.Array]):
        agg_state = None if _is_empty_state(state) else state
        key = None if rng is None else jax.random.fold_in(rng, _AGGREGATOR_KEY_SALT)
        if with_info is not None:
            direction, new_state, info = with_info(jac, agg_state, key=key)
        else:
            (direction, new_state), info = aggregator(jac, agg_state, key=key), {}
        if jax.tree.structure(direction) != jax.tree.structure(jac):
            raise ValueError(f"{name}: the aggregator's direction must have the structure of the Jacobian without "
                             f"its task axis, {jax.tree.structure(jac)}; got {jax.tree.structure(direction)}")
        return direction, (() if new_state is None else new_state), dict(jax.lax.stop_gradient(info))

    def step(problem: MultiTaskProblem, params: PyTree, state: PyTree, batch: Any, rng: jax.Array) -> MethodStep:
        losses, aux, jacobian, rest_grads, selection, rest_indices = jacobian_step(problem, params, batch, rng)
        jac = jax.lax.stop_gradient(jacobian)
        direction, new_state, metrics = aggregate(jac, state, rng)
        grads = _merge_leaves(selection, rest_indices, direction, rest_grads)
        cosine = _last_shared_cosine(problem, params, selection, jac)
        if cosine is not None:  # the diagnostic from this Jacobian: the engine computes no extra one
            metrics["cosine"] = cosine
        return MethodStep(grads, new_state, jnp.sum(losses), losses, aux, metrics)

    def rep_step(problem: MultiTaskProblem, params: PyTree, state: PyTree, batch: Any, rng: jax.Array) -> MethodStep:
        losses, aux, rep_jac, decoder_grads, encoder_pullback, z_tree = representation_step(
            problem, params, batch, rng)
        _, new_state, metrics = aggregate(jax.lax.stop_gradient(rep_jac), state, rng)
        if "task_weights" not in metrics:
            raise ValueError(f"{name}: rep_grad=True needs an aggregator that reports 'task_weights' (a weighting "
                             f"of the task gradients); this one reports {sorted(metrics)}")
        weights = metrics["task_weights"].astype(rep_jac.dtype)
        cotangents = [weights[t] * rep_jac[t] for t in range(rep_jac.shape[0])]
        (encoder_grads,) = encoder_pullback(jax.tree.unflatten(z_tree, cotangents))
        grads = jax.tree.map(jnp.add, encoder_grads, decoder_grads)
        return MethodStep(grads, new_state, jnp.sum(losses), losses, aux, metrics)

    return Method(name=name, init=init, step=rep_step if rep_grad else step)


_REP_GRAD_HELP = ("take the Jacobian with respect to the shared representation (LibMTL's rep_grad; needs the "
                  "model's encode / decode) instead of the shared parameters: one encoder backward pass instead "
                  "of T, and the encoder is trained on the gradient of sum_t w_t L_t.")


def _without_examples(doc: str) -> str:
    """``doc`` without its "Example:" section: the aggregator's examples call the aggregator, not the method
    (and would run as the method's doctests)."""
    out, skip_below = [], None
    for line in (doc or "").splitlines():
        indent = len(line) - len(line.lstrip())
        if skip_below is not None:
            if not line.strip() or indent > skip_below:
                continue
            skip_below = None
        if line.strip() in ("Example:", "Examples:", "Example::", "Examples::"):
            skip_below = indent
            continue
        out.append(line)
    return "\n".join(out).rstrip() + "\n"


def _doc_with_rep_grad(doc: str) -> str:
    """``doc`` with a ``rep_grad`` entry at the top of its Args section (an Args section added if it has none)."""
    lines = (doc or "").splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "Args:":
            indent = " " * (len(line) - len(line.lstrip()) + 2)
            return "\n".join(lines[: i + 1] + [f"{indent}rep_grad: {_REP_GRAD_HELP}"] + lines[i + 1:])
    return (doc or "").rstrip() + f"\n\n    Args:\n      rep_grad: {_REP_GRAD_HELP}\n"


def _method_from_aggregator(factory: Callable[..., Any], *, name: Optional[str] = None,
                            rep_grad: bool = False) -> Callable[..., Method]:
    """A method factory with ``factory``'s hyper-parameters (signature, annotations, docstring):
    ``make(**hyperparameters) = gradient_aggregation(factory(**hyperparameters), name=name)``; ``name``
    defaults to the factory's ``__name__``. With ``rep_grad`` (for a weighting) it also takes the keyword
    ``rep_grad: bool = False`` (:func:`gradient_aggregation`)."""
    method_name = factory.__name__ if name is None else name
    signature = inspect.signature(factory)

    @functools.wraps(factory)
    def make(*args: Any, **kwargs: Any) -> Method:
        representation = kwargs.pop("rep_grad", False) if rep_grad else False
        return gradient_aggregation(factory(*args, **kwargs), name=method_name, rep_grad=representation)

    parameters = list(signature.parameters.values())
    doc = _without_examples(factory.__doc__ or "")
    if rep_grad:
        parameters.append(inspect.Parameter("rep_grad", inspect.Parameter.KEYWORD_ONLY, default=False,
                                            annotation=bool))
        doc = _doc_with_rep_grad(doc)
    make.__signature__ = signature.replace(parameters=parameters, return_annotation=Method)
    make.__annotations__ = {**getattr(factory, "__annotations__", {}), **({"rep_grad": bool} if rep_grad else {}),
                            "return": Method}
    make.__module__ = __name__
    make.__doc__ = doc + (
        "\n\n    As a training method (:func:`gradient_aggregation`): the direction on the shared parameters, "
        "the own task gradient on the rest.\n")
    return make


# the weightings (d = w @ J, "task_weights" reported): they take rep_grad
mgda = _method_from_aggregator(aggregators.mgda, rep_grad=True)
pcgrad = _method_from_aggregator(aggregators.pcgrad, rep_grad=True)
imtl_g = _method_from_aggregator(aggregators.imtl_g, rep_grad=True)
aligned_mtl = _method_from_aggregator(aggregators.aligned_mtl, rep_grad=True)
upgrad = _method_from_aggregator(aggregators.upgrad, rep_grad=True)
dualproj = _method_from_aggregator(aggregators.dualproj, rep_grad=True)
cagrad = _method_from_aggregator(aggregators.cagrad, rep_grad=True)
config = _method_from_aggregator(aggregators.config, rep_grad=True)
nash_mtl = _method_from_aggregator(aggregators.nash_mtl, rep_grad=True)
fairgrad = _method_from_aggregator(aggregators.fairgrad, rep_grad=True)
gradvac = _method_from_aggregator(aggregators.gradvac, rep_grad=True)
sum_aggregator = _method_from_aggregator(aggregators.sum_aggregator, name="sum", rep_grad=True)
mean_aggregator = _method_from_aggregator(aggregators.mean_aggregator, name="mean", rep_grad=True)
# coordinate-wise: no task weights, so no representation variant
graddrop = _method_from_aggregator(aggregators.graddrop)
trimmed_mean = _method_from_aggregator(aggregators.trimmed_mean)

AGGREGATORS: dict[str, Callable[..., Method]] = {
    "mgda": mgda,
    "pcgrad": pcgrad,
    "imtl_g": imtl_g,
    "aligned_mtl": aligned_mtl,
    "upgrad": upgrad,
    "dualproj": dualproj,
    "cagrad": cagrad,
    "config": config,
    "nash_mtl": nash_mtl,
    "fairgrad": fairgrad,
    "gradvac": gradvac,
    "sum": sum_aggregator,
    "mean": mean_aggregator,
    "graddrop": graddrop,
    "trimmed_mean": trimmed_mean,
}
"""Registry name -> method factory. Registered with the field's spellings matched by the registry's
normalisation ("Nash-MTL", "NashMTL", "ConFIG", "GradVac", "TrimmedMean", "Sum", ...). Krum
(:func:`orthojax.aggregators.krum`) needs T >= n_byzantine + 3 tasks; it is not registered by default:
``gradient_aggregation(aggregators.krum(n_byzantine=0))`` makes it a method."""
