"""SDMGrad: stochastic direction-oriented multi-objective gradient descent.

SDMGrad looks for the direction d that maximises the worst task improvement min_t <g_t, d> while staying
close to the mean gradient g0 = (1/T) sum_t g_t, a CAGrad-like trade-off regularised by lam >= 0. Its dual
is a problem over task weights w on the simplex,

    min_w  1/2 ||J^T w + lam g0||^2,            gradient  J J^T (w + lam/T 1),

and the direction is d = (J^T w + lam g0) / (1 + lam). With stochastic Jacobians, J J^T is estimated
without bias by the product A = J_xi J_xi'^T of the Jacobians on two independent samples xi, xi', and d
uses a third, J_zeta. Each model step runs ``niter`` steps of SGD with momentum (learning rate ``lr``, a
fresh momentum buffer every model step) on w, each followed by the Euclidean projection onto the simplex,
starting from the previous step's w (1/T at the start), on the normalised matrix

    A / ((mean_t sqrt(max(A_tt, 0)))^2 + 1e-8).

The shared parameters receive d; every other parameter (the task heads) the gradient of sum_t L_t.

Double sampling from one batch. The reference code draws three batches per step; a method step here
receives one. With ``double_sampling=True`` (the default) it is split along its leading axis into two
halves, as :func:`orthojax.methods.modo.modo` does: J_xi and J_xi' are the Jacobians on the first and the
second half (independent samples, so A stays an unbiased estimate of the product of the expected
Jacobians, with half-batch variance), J_zeta the Jacobian on the whole batch, which also gives the
reported losses, the aux and the heads' gradient (so zeta shares its samples with xi and xi'). The halves
are evaluated with keys folded from the step's ``rng`` (1 and 2), the whole batch with ``rng``. Cost:
three forward passes (two on half batches) and 3T vector-Jacobian products. With
``double_sampling=False``, A = J_zeta J_zeta^T (one forward pass, T vector-Jacobian products): the biased
one-batch estimate, which is what the official code computes in effect, as it allocates its three gradient
buffers as one aliased tensor.

Differences from LibMTL: its heads accumulate the gradients of its three passes (three times the scale of
sum_t L_t on one batch; its MoDo divides them by 3, its SDMGrad does not); here they get one batch's. A is
formed from Jacobians pre-scaled by a common power of two, so that it neither overflows nor underflows in
float32 before its normalisation (the result equals LibMTL's formula wherever that one is representable).

References:
  Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and Provable Stochastic Algorithms",
  NeurIPS 2023. Reference code: OptMN-Lab/sdmgrad and LibMTL (median-research-group/LibMTL)
  LibMTL/weighting/SDMGrad.py (``backward``: the normalisation of GG, SGD(lr=5, momentum=0.5) with a
  simplex projection after every step, then g = (gw + lamda g0) / (1 + lamda)); defaults SDMGrad_lamda =
  0.3 and SDMGrad_niter = 20 from LibMTL/config.py (lamda 0.3 is also the official run scripts' value).
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from orthojax.aggregators.gramian import combine
from orthojax.methods.base import Method, MethodStep, MultiTaskProblem, _check_num_tasks, check_positive
from orthojax.methods.db_mtl import shared_jacobian
from orthojax.methods.gradnorm import param_dtype, power_of_two_scale
from orthojax.methods.modo import project_to_simplex, split_batch
from orthojax.methods.registry import register

PyTree = Any

__all__ = ["SDMGradState", "normalized_cross_gramian", "sdmgrad", "sdmgrad_weights"]

_EPS = 1e-8  # LibMTL's constant added to the squared scale


class SDMGradState(NamedTuple):
    """State of :func:`sdmgrad`.

    Attributes:
      weights: (T,) w, on the probability simplex (the starting point of the next step's inner loop).
    """

    weights: jax.Array


def _flat(jacobian: PyTree, dtype: Any) -> jax.Array:
    leaves = jax.tree.leaves(jacobian)
    if not leaves or any(jnp.ndim(x) < 1 for x in leaves):
        raise ValueError("sdmgrad: a Jacobian needs at least one leaf, each with a leading task axis")
    num_tasks = leaves[0].shape[0]
    return jnp.concatenate([jnp.reshape(x, (num_tasks, -1)).astype(dtype) for x in leaves], axis=1)


def normalized_cross_gramian(first: PyTree, second: PyTree) -> jax.Array:
    """A / ((mean_t sqrt(max(A_tt, 0)))^2 + 1e-8) with A = J_1 J_2^T, the matrix SDMGrad's weights descend on.

    Both Jacobians are divided by one power of two s near their largest entry before the product (exact),
    and the constant is divided by s^2 accordingly, so the result equals the formula wherever it is
    representable, with no overflow or underflow of A on the way.

    Args:
      first: J_1, one array or a pytree of arrays of shape (T, ...) (row t: task t's gradient).
      second: J_2, the same structure and shapes (another sample; may be ``first`` itself).

    Returns:
      (T, T) the normalised A, in the Jacobians' floating dtype promoted to at least float32. Not symmetric
      unless ``first is second``.

    Raises:
      ValueError: a Jacobian with no leaf or a leaf without a task axis, or T or leaf sizes that differ.
    """
    dtype = jnp.promote_types(jnp.result_type(*jax.tree.leaves(first), *jax.tree.leaves(second)), jnp.float32)
    j1, j2 = _flat(first, dtype), _flat(second, dtype)
    if j1.shape != j2.shape:
        raise ValueError(f"sdmgrad: the two Jacobians must have the same (T, P) shape; got {j1.shape} and {j2.shape}")
    top = jnp.maximum(jnp.max(jnp.abs(j1), initial=0.0), jnp.max(jnp.abs(j2), initial=0.0))
    s = power_of_two_scale(top)
    a = (j1 / s) @ (j2 / s).T
    scale = jnp.mean(jnp.sqrt(jnp.maximum(jnp.diagonal(a), 0.0)))
    return a / (scale**2 + _EPS / s / s)


def sdmgrad_weights(
    cross: jax.Array, weights: jax.Array, *, lam: float = 0.3, niter: int = 20, lr: float = 5.0,
    momentum: float = 0.5
) -> jax.Array:
    """SDMGrad's inner loop: ``niter`` projected SGD-with-momentum steps on w from ``weights``.

    With a fresh momentum buffer m = 0, each iteration does

        m <- momentum m + A (w + lam/T 1),   w <- Proj_simplex(w - lr m),

    (PyTorch's SGD with momentum and no dampening, the projection after every step).

    Args:
      cross: (T, T) A, the normalised cross Gramian (:func:`normalized_cross_gramian`).
      weights: (T,) the starting w (on the simplex).
      lam: the regularisation towards the mean gradient, >= 0.
      niter: number of iterations, a Python int >= 0 (0 returns ``weights``).
      lr: learning rate of the inner SGD.
      momentum: its momentum factor.

    Returns:
      (T,) the new w, on the simplex, in the dtype of ``weights``.
    """
    cross = cross.astype(weights.dtype)
    num_tasks = weights.shape[0]
    shift = lam / num_tasks

    def body(_, carry):
        w, buf = carry
        buf = momentum * buf + cross @ (w + shift)
        return project_to_simplex(w - lr * buf), buf

    w, _ = jax.lax.fori_loop(0, niter, body, (weights, jnp.zeros_like(weights)))
    return w


def sdmgrad(
    lam: float = 0.3, niter: int = 20, lr: float = 5.0, momentum: float = 0.5, double_sampling: bool = True
) -> Method:
    """SDMGrad: d = (J^T w + lam g0) / (1 + lam), w from projected SGD on the cross Gramian (module docstring).

    Args:
      lam: regularisation towards the mean gradient g0, >= 0 (0.3 in LibMTL/config.py and the official run
        scripts; 0 is the stochastic MGDA direction).
      niter: inner iterations on w per model step, an int >= 1 (20 in LibMTL/config.py).
      lr: learning rate of the inner SGD, > 0 (5 in LibMTL/weighting/SDMGrad.py; the official code uses 10).
      momentum: momentum of the inner SGD, in [0, 1) (0.5 in LibMTL and the official code).
      double_sampling: estimate J J^T from the two halves of the batch (unbiased); False uses the whole
        batch's Jacobian for it (biased, one forward pass).

    Returns:
      A :class:`~orthojax.methods.base.Method` named "sdmgrad". ``MethodStep.loss`` is sum_t c_t L_t with
      c = (w + lam/T) / (1 + lam) the weights of d on the task gradients; metrics: "task_weights" (T,) c,
      "simplex_weights" (T,) the new w.

    Raises:
      TypeError / ValueError: a hyper-parameter outside the ranges above (or of the wrong type); ``init``
        with num_tasks < 1; at trace time, with ``double_sampling``, a batch that cannot be split in two
        halves (:func:`orthojax.methods.modo.split_batch`).

    Example:
      >>> method = sdmgrad(lam=0.3, niter=20)
      >>> state = method.init(params, num_tasks=3)          # w = 1/T
      >>> out = method.step(problem, params, state, batch, rng)

    References:
      Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and Provable Stochastic
      Algorithms", NeurIPS 2023; LibMTL/weighting/SDMGrad.py.
    """
    lam = check_positive("sdmgrad: lam", lam, allow_zero=True)
    if isinstance(niter, bool) or not isinstance(niter, numbers.Integral):
        raise TypeError(f"sdmgrad: niter must be an int; got {niter!r}")
    if niter < 1:
        raise ValueError(f"sdmgrad: niter must be >= 1; got {niter}")
    niter = int(niter)
    lr = check_positive("sdmgrad: lr", lr)
    momentum = check_positive("sdmgrad: momentum", momentum, allow_zero=True)
    if momentum >= 1:
        raise ValueError(f"sdmgrad: momentum must be in [0, 1); got {momentum}")
    if not isinstance(double_sampling, bool):
        raise TypeError(f"sdmgrad: double_sampling must be a bool; got {double_sampling!r}")

    def init(params: PyTree, num_tasks: int) -> SDMGradState:
        _check_num_tasks(num_tasks, "sdmgrad")
        return SDMGradState(jnp.full((num_tasks,), 1.0 / num_tasks, param_dtype(params)))

    def step(problem: MultiTaskProblem, params: PyTree, state: SDMGradState, batch: Any, rng: jax.Array) -> MethodStep:
        sj = shared_jacobian(problem, params, batch, rng)
        if double_sampling:
            try:
                first, second = split_batch(batch)
            except ValueError as err:
                raise ValueError(f"sdmgrad with double_sampling=True needs a batch it can halve: {err}") from None
            j1 = shared_jacobian(problem, params, first, jax.random.fold_in(rng, 1)).jacobian
            j2 = shared_jacobian(problem, params, second, jax.random.fold_in(rng, 2)).jacobian
        else:
            j1 = j2 = sj.jacobian
        cross = normalized_cross_gramian(jax.lax.stop_gradient(j1), jax.lax.stop_gradient(j2))
        w = sdmgrad_weights(cross, state.weights, lam=lam, niter=niter, lr=lr, momentum=momentum)
        coefficients = (w + lam / w.shape[0]) / (1.0 + lam)
        shared = combine(coefficients, sj.jacobian)
        _, rest = sj.pullback(jnp.ones_like(sj.losses))
        loss = jnp.dot(coefficients.astype(sj.losses.dtype), sj.losses)
        metrics = {"task_weights": coefficients, "simplex_weights": w}
        return MethodStep(sj.assemble(shared, rest), SDMGradState(w), loss, sj.losses, sj.aux, metrics)

    return Method(name="sdmgrad", init=init, step=step)


register("sdmgrad", sdmgrad, label="SDMGrad", aliases=("sdm_grad",))
