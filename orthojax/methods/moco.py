"""MoCo: multi-objective gradient with tracked (bias-corrected) task gradients.

MGDA's weights computed from one stochastic Jacobian are biased. MoCo keeps a running estimate Y (T x P)
of the task gradients, moved towards each step's stochastic gradients, and takes one step on the task
weights lambda per model step using the Gramian of Y instead of that of the noisy Jacobian. At step
k = 1, 2, ... with the Jacobian g_t = grad L_t w.r.t. the shared parameters:

    h_t    = g_t / (||g_t|| + 1e-8) * L_t                      (normalised, scaled by the task loss),
    y_t   <- y_t - beta_k (y_t - h_t),                          beta_k  = beta  / k^beta_sigma,
    lambda <- softmax(lambda - gamma_k (Y Y^T + rho I) lambda), gamma_k = gamma / k^gamma_sigma,
    d      = Y^T lambda                                        (the new Y and lambda),

with Y = 0 and lambda = 1/T at the start. The shared parameters receive d; every other parameter (the
task heads) the gradient of sum_t L_t.

The loss scaling of h_t and the softmax are those of the authors' code as released in LibMTL
(LibMTL/weighting/MoCo.py, ``backward``: the loop that divides each gradient by its norm + 1e-8 and
multiplies it by its loss, then the two update lines of ``self.y`` and ``self.lambd``). The paper's
Algorithm 1 tracks the raw stochastic gradients (h_t = g_t) and projects lambda onto the simplex:
``normalize=False`` and ``lambda_update="projection"`` give that variant. The softmax keeps every weight
positive, and near 1/T while the steps are small (the entries of a point of the simplex differ by at most
1, so their softmax weights differ by at most a factor e); the projection lets weights reach 0.

Norms and the Gramian Y Y^T are computed from rows pre-scaled by powers of two
(:func:`orthojax.methods.db_mtl.task_norms`, :func:`orthojax.aggregators.gramian.gramian`), so they
neither overflow nor underflow in float32. Cost: one forward pass, T vector-Jacobian products, and a
T x P buffer (every leaf of the parameters gets one; the leaves outside ``problem.shared`` stay zero).

References:
  Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, "Mitigating Gradient Bias in Multi-objective Learning:
  A Provably Convergent Approach", ICLR 2023. Reference code: the authors' code in LibMTL
  (median-research-group/LibMTL) LibMTL/weighting/MoCo.py; defaults MoCo_beta = 0.5, MoCo_beta_sigma =
  0.5, MoCo_gamma = 0.1, MoCo_gamma_sigma = 0.5, MoCo_rho = 0 from LibMTL/config.py (the "## MoCo"
  arguments).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from orthojax.aggregators.gramian import gramian
from orthojax.methods.base import Method, MethodStep, MultiTaskProblem, _check_num_tasks, check_positive
from orthojax.methods.db_mtl import _check_buffer, _task_buffer, shared_jacobian, task_norms
from orthojax.methods.gradnorm import param_dtype
from orthojax.methods.modo import project_to_simplex
from orthojax.methods.registry import register

PyTree = Any

__all__ = ["MoCoState", "moco", "moco_lambda_update"]

_EPS = 1e-8  # LibMTL's constant in g_t / (||g_t|| + eps)
_LAMBDA_UPDATES = ("softmax", "projection")


class MoCoState(NamedTuple):
    """State of :func:`moco`.

    Attributes:
      tracked: the tracked task gradients Y: the structure of ``params`` with a leading task axis on every
        leaf ((T, *leaf.shape)); ``init`` does not know which leaves are shared, so every leaf has one,
        and those outside ``problem.shared`` stay zero.
      weights: (T,) lambda, on the probability simplex.
      count: number of steps taken (k - 1 at step k), int32.
    """

    tracked: PyTree
    weights: jax.Array
    count: jax.Array


def moco_lambda_update(
    weights: jax.Array, gram: jax.Array, step_size: jax.Array, rho: float, lambda_update: str = "softmax"
) -> jax.Array:
    """One MoCo step on the task weights: lambda' = P(lambda - c (G + rho I) lambda).

    Args:
      weights: (T,) lambda, on the simplex.
      gram: (T, T) Gramian G = Y Y^T of the tracked gradients.
      step_size: scalar c = gamma_k.
      rho: the L2 regularisation rho >= 0.
      lambda_update: P: "softmax" (the authors' code in LibMTL) or "projection" (the Euclidean projection
        onto the simplex, the paper's Algorithm 1).

    Returns:
      (T,) the new lambda, on the simplex, in the dtype of ``weights``.

    Raises:
      ValueError: ``lambda_update`` is not "softmax" or "projection".
    """
    if lambda_update not in _LAMBDA_UPDATES:
        raise ValueError(f"moco: lambda_update must be one of {_LAMBDA_UPDATES}; got {lambda_update!r}")
    gram = gram.astype(weights.dtype)
    moved = weights - step_size * (gram @ weights + rho * weights)
    return jax.nn.softmax(moved) if lambda_update == "softmax" else project_to_simplex(moved)


def moco(
    beta: float = 0.5,
    beta_sigma: float = 0.5,
    gamma: float = 0.1,
    gamma_sigma: float = 0.5,
    rho: float = 0.0,
    lambda_update: Literal["softmax", "projection"] = "softmax",
    normalize: bool = True,
) -> Method:
    """MoCo: the shared parameters move along Y^T lambda, with Y tracked task gradients (module docstring).

    Args:
      beta: step size of the tracked gradients, in (0, 1] (0.5 in LibMTL/config.py).
      beta_sigma: decay exponent of beta, beta_k = beta / k^beta_sigma, >= 0 (0.5 in LibMTL/config.py).
      gamma: step size of lambda, > 0 (0.1 in LibMTL/config.py).
      gamma_sigma: decay exponent of gamma, gamma_k = gamma / k^gamma_sigma, >= 0 (0.5 in LibMTL/config.py).
      rho: L2 regularisation of lambda's update, >= 0 (0 in LibMTL/config.py).
      lambda_update: "softmax" (the authors' code in LibMTL) or "projection" (onto the simplex, as in the
        paper's Algorithm 1).
      normalize: track g_t / (||g_t|| + 1e-8) * L_t (the authors' code in LibMTL) rather than g_t (the paper).

    Returns:
      A :class:`~orthojax.methods.base.Method` named "moco". ``MethodStep.loss`` is sum_t lambda_t L_t (new
      lambda; d itself is not the gradient of a loss); metrics: "task_weights" (T,) the new lambda,
      "grad_norms" (T,) ||g_t||, "tracked_norms" (T,) ||y_t|| (new Y).

    Raises:
      TypeError / ValueError: a hyper-parameter outside the ranges above (or not a finite real; ``normalize``
        not a bool); ``init`` with num_tasks < 1; ``step`` with a state initialised for other parameters.

    Example:
      >>> method = moco()
      >>> state = method.init(params, num_tasks=3)          # Y = 0, lambda = 1/T
      >>> out = method.step(problem, params, state, batch, rng)

    References:
      Fernando et al., "Mitigating Gradient Bias in Multi-objective Learning: A Provably Convergent
      Approach", ICLR 2023; LibMTL/weighting/MoCo.py.
    """
    beta = check_positive("moco: beta", beta)
    if beta > 1:
        raise ValueError(f"moco: beta must be in (0, 1]; got {beta}")
    beta_sigma = check_positive("moco: beta_sigma", beta_sigma, allow_zero=True)
    gamma = check_positive("moco: gamma", gamma)
    gamma_sigma = check_positive("moco: gamma_sigma", gamma_sigma, allow_zero=True)
    rho = check_positive("moco: rho", rho, allow_zero=True)
    if lambda_update not in _LAMBDA_UPDATES:
        raise ValueError(f"moco: lambda_update must be one of {_LAMBDA_UPDATES}; got {lambda_update!r}")
    if not isinstance(normalize, bool):
        raise TypeError(f"moco: normalize must be a bool; got {normalize!r}")

    def init(params: PyTree, num_tasks: int) -> MoCoState:
        _check_num_tasks(num_tasks, "moco")
        return MoCoState(_task_buffer(params, num_tasks), jnp.full((num_tasks,), 1.0 / num_tasks, param_dtype(params)),
                         jnp.zeros((), jnp.int32))

    def step(problem: MultiTaskProblem, params: PyTree, state: MoCoState, batch: Any, rng: jax.Array) -> MethodStep:
        sj = shared_jacobian(problem, params, batch, rng)
        old = jax.tree.leaves(state.tracked)
        _check_buffer(old, sj.selection, "moco")
        jacobian = [jax.lax.stop_gradient(g) for g in sj.jacobian]
        losses = jax.lax.stop_gradient(sj.losses)
        norms = task_norms(jacobian)
        k = (state.count + 1).astype(state.weights.dtype)
        b = beta / k**beta_sigma
        c = gamma / k**gamma_sigma
        scale = losses / (norms + _EPS) if normalize else jnp.ones_like(losses)
        tracked = []
        for i, g in zip(sj.selection.indices, jacobian):
            y = old[i]
            h = g.astype(y.dtype) * scale.astype(y.dtype).reshape((-1,) + (1,) * (g.ndim - 1))
            tracked.append(y - b.astype(y.dtype) * (y - h))
        lam = moco_lambda_update(state.weights, gramian(tracked), c, rho, lambda_update)
        shared = [jnp.tensordot(lam.astype(y.dtype), y, axes=1).astype(g.dtype) for y, g in zip(tracked, sj.jacobian)]
        _, rest = sj.pullback(jnp.ones_like(sj.losses))
        new_leaves = list(old)
        for i, y in zip(sj.selection.indices, tracked):
            new_leaves[i] = y
        new_state = MoCoState(jax.tree.unflatten(jax.tree.structure(state.tracked), new_leaves), lam, state.count + 1)
        loss = jnp.dot(lam.astype(sj.losses.dtype), sj.losses)
        metrics = {"task_weights": lam, "grad_norms": norms, "tracked_norms": task_norms(tracked)}
        return MethodStep(sj.assemble(shared, rest), new_state, loss, sj.losses, sj.aux, metrics)

    return Method(name="moco", init=init, step=step)


register("moco", moco, label="MoCo")
