"""GradNorm (Chen et al., 2018): task weights that balance the gradient norms of the weighted losses.

With task weights w (sum_t w_t = T) and a shared parameter set W (the last shared layer in the paper, or
all shared parameters as in LibMTL):

    G_t = || grad_W (w_t L_t) || = |w_t| || grad_W L_t ||,     mean G = mean_j G_j
    L~_t = L_t / L_t(0),   r_t = L~_t / mean_j L~_j         (L_t(0): the losses of the first step)
    target_t = stop_gradient(mean G * r_t^alpha)
    L_grad(w) = sum_t | G_t - target_t |

The model is trained on  sum_t w_t L_t  (w held constant); w takes one step of its own optimiser on
dL_grad/dw (the norms ||grad_W L_t|| held constant), is clipped at a tiny positive floor, and is then
renormalised to sum to T.

Numerics: the norms ||grad_W L_t|| are computed on vectors rescaled by a power of two near their largest
entry, so they neither flush to zero nor overflow for gradients far from 1 (norms from about 1e-30 to 1e30
in float32). A weight update whose result is not finite (e.g. Adam's second moment overflowing for weight
gradients beyond ~1e19 in float32) is skipped: the weights and their optimiser state are kept. The state
(weights, initial losses, optimiser state) has the floating dtype of the parameters (float64 under x64).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from orthojax.methods.base import check_positive as _check_positive, Method, MethodStep, MultiTaskProblem, task_losses_and_aux
from orthojax.methods.registry import register
from orthojax.select import make_selection

PyTree = Any

__all__ = ["GradNormState", "gradnorm", "safe_norm"]

_ON = ("last_shared", "shared")
_MIN_WEIGHT = 1e-6


def param_dtype(params: PyTree) -> jnp.dtype:
    """The floating dtype for a method's state: the parameters' (promoted to at least float32)."""
    dtypes = [jnp.result_type(x) for x in jax.tree.leaves(params)]
    dtypes = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
    if not dtypes:
        return jnp.dtype(jnp.result_type(jnp.float32))
    return jnp.dtype(jnp.promote_types(jnp.result_type(*dtypes), jnp.float32))


def copy_leaves(tree: PyTree) -> PyTree:
    """A copy of every array leaf (distinct buffers: an optimiser may return arrays it was given)."""
    return jax.tree.map(lambda x: jnp.array(x, copy=True) if isinstance(x, jax.Array) else x, tree)


def power_of_two_scale(top: jax.Array) -> jax.Array:
    """A power of two s with top / s in [1, 2) (1 where ``top`` is 0 or not finite); dividing by it is exact."""
    top = jax.lax.stop_gradient(top)
    _, exponent = jnp.frexp(top)
    scale = jnp.ldexp(jnp.ones_like(top), exponent - 1)  # 2^(e-1) never overflows: top < 2^e
    return jnp.where(jnp.logical_and(top > 0, jnp.isfinite(top)), scale, jnp.ones_like(top))


def safe_norm(x: jax.Array, axis: Optional[int] = None) -> jax.Array:
    """Euclidean norm of ``x`` (over ``axis``, or all of it) that neither underflows nor overflows.

    The entries are divided by a power of two near their largest magnitude (exact), squared and summed,
    and the square root is multiplied back: the result is finite and non-zero whenever the true norm is a
    finite non-zero number of the dtype (``sqrt(sum x^2)`` flushes to 0 below ~1e-19 and overflows above
    ~1e19 in float32). Zero vectors give 0; non-finite entries give a non-finite norm.
    """
    a = jnp.abs(x)
    top = jax.lax.stop_gradient(jnp.max(a, axis=axis, keepdims=True))
    ok = jnp.logical_and(top > 0, jnp.isfinite(top))
    scale = power_of_two_scale(top)
    scaled = jnp.sqrt(jnp.sum(jnp.square(a / scale), axis=axis, keepdims=True))
    out = jnp.where(ok, scale * scaled, top)
    return jnp.squeeze(out, axis=axis) if axis is not None else jnp.reshape(out, ())


def keep_finite_update(new: PyTree, old: PyTree) -> PyTree:
    """``new`` where all its floating leaves are finite, else ``old`` (leaf by leaf, one decision)."""
    leaves = [x for x in jax.tree.leaves(new) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.array(True)
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


class GradNormState(NamedTuple):
    """State of :func:`gradnorm`.

    Attributes:
      weights: (T,) task weights, summing to T.
      initial_losses: (T,) L_t(0), recorded at the first step.
      count: number of steps taken (int32 scalar).
      opt_state: optax state of the weights' optimiser.
    """

    weights: jax.Array
    initial_losses: jax.Array
    count: jax.Array
    opt_state: Any


def gradnorm(
    alpha: float = 1.5,
    *,
    on: Literal["last_shared", "shared"] = "last_shared",
    learning_rate: float = 1e-3,
    optimizer: Optional[optax.GradientTransformation] = None,
) -> Method:
    """GradNorm adaptive task weighting.

    Args:
      alpha: asymmetry, >= 0 (1.5 in the paper; 0 pulls every G_t to the same norm).
      on: "last_shared" (the paper: ``problem.last_shared``) or "shared" (every shared parameter,
        ``problem.shared``, as LibMTL does; results differ noticeably between the two).
      learning_rate: learning rate of the default weight optimiser ``optax.adam(learning_rate)``.
      optimizer: an optax transformation for the weights; overrides ``learning_rate`` when given.

    Returns:
      A :class:`~orthojax.methods.base.Method` named "gradnorm". Metrics: "task_weights" (T,) (the weights
      used for this step's gradient), "grad_norms" (T,) the G_t, "gradnorm_loss" L_grad.

    Example:
      >>> method = gradnorm(alpha=1.5, on="last_shared")

    References:
      Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss
      Balancing in Deep Multitask Networks", ICML 2018.
    """
    alpha = _check_positive("gradnorm: alpha", alpha, allow_zero=True)
    if on not in _ON:
        raise ValueError(f"gradnorm: on must be one of {_ON}; got {on!r}")
    if optimizer is None:
        optimizer = optax.adam(_check_positive("gradnorm: learning_rate", learning_rate))
    elif not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"gradnorm: optimizer must be an optax.GradientTransformation; got {optimizer!r}")

    def init(params: PyTree, num_tasks: int) -> GradNormState:
        if num_tasks < 2:
            raise ValueError(f"gradnorm needs at least 2 tasks; got {num_tasks}")
        dtype = param_dtype(params)
        weights = jnp.ones((num_tasks,), dtype)
        return GradNormState(
            weights, jnp.ones((num_tasks,), dtype), jnp.zeros((), jnp.int32), copy_leaves(optimizer.init(weights))
        )

    def step(
        problem: MultiTaskProblem, params: PyTree, state: GradNormState, batch: Any, rng: jax.Array
    ) -> MethodStep:
        selector = problem.last_shared if on == "last_shared" else problem.shared
        selection = make_selection(params, selector)

        def losses_fn(p):
            return task_losses_and_aux(problem, p, batch, rng)

        # one forward pass; the full gradient of sum_t w_t L_t and the per-task gradients of W share it
        losses, pullback, aux = jax.vjp(losses_fn, params, has_aux=True)
        weights = state.weights.astype(losses.dtype)
        (grads,) = pullback(weights)
        (per_task,) = jax.vmap(pullback)(jnp.eye(losses.shape[0], dtype=losses.dtype))
        leaves = jax.tree.leaves(per_task)
        w_rows = jnp.concatenate(
            [jnp.reshape(leaves[i], (losses.shape[0], -1)) for i in selection.indices], axis=1
        )
        norms = jax.lax.stop_gradient(safe_norm(w_rows, axis=1))

        first = state.count == 0
        initial_losses = jnp.where(first, jax.lax.stop_gradient(losses), state.initial_losses.astype(losses.dtype))
        ratios = losses / initial_losses
        relative = jax.lax.stop_gradient(ratios / jnp.mean(ratios))

        def gradnorm_loss(w):
            g = jnp.abs(w) * norms
            target = jax.lax.stop_gradient(jnp.mean(g) * relative**alpha)
            return jnp.sum(jnp.abs(g - target)), g

        (gn_loss, g_norms), w_grad = jax.value_and_grad(gradnorm_loss, has_aux=True)(weights)
        updates, opt_state = optimizer.update(
            w_grad.astype(state.weights.dtype), state.opt_state, state.weights
        )
        new_w = jnp.maximum(optax.apply_updates(state.weights, updates), _MIN_WEIGHT)
        new_w = new_w * (new_w.shape[0] / jnp.sum(new_w))
        new_w, opt_state = keep_finite_update((new_w, opt_state), (state.weights, state.opt_state))

        new_state = GradNormState(
            new_w, initial_losses.astype(state.initial_losses.dtype), state.count + 1, opt_state
        )
        metrics = {"task_weights": weights, "grad_norms": g_norms, "gradnorm_loss": gn_loss}
        return MethodStep(grads, new_state, jnp.dot(weights, losses), losses, aux, metrics)

    return Method(name="gradnorm", init=init, step=step)

register("gradnorm", gradnorm, label="GradNorm", aliases=("grad_norm",))
