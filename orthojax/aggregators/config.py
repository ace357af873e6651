"""ConFIG: the conflict-free direction of Liu et al. (2024), Equation 2.

With unit task gradients u_t = g_t / ||g_t|| (rows of U, a zero gradient giving a zero row) and a preference
vector w (all ones by default), the direction is

    v = U^+ w,   v^ = v / ||v||,   d = (sum_t <g_t, v^>) v^,

i.e. the minimum-norm v with equal cosines <u_t, v> = w_t (when the u_t are linearly independent),
rescaled so that its length is the sum of the projections of the gradients on it. Since
U^+ = U^T (U U^T)^+, v = sum_t a_t u_t with a = C^+ w, where C = U U^T is the cosine matrix; hence
||v||^2 = a^T C a and sum_t <g_t, v^> = sum_t ||g_t|| (C a)_t / ||v||, and ConFIG is a function of the
Gramian: :func:`config_weights` returns the weights of d = combine(weights, J).

When the u_t are linearly independent and w > 0, <d, g_t> = ||g_t|| w_t length / ||v|| > 0 for every task
(no conflict). The pseudo-inverse is taken on C by an eigendecomposition, dropping eigenvalues below
max(max(T, P) eps, sqrt(10 T eps))^2 lambda_max (eps the dtype's machine epsilon): the first term is
``torch.linalg.pinv``'s default relative tolerance on the singular values of U, the second the accuracy of
eigenvalues of C (singular values of U below ~1e-7 sigma_max in float64 count as zero).

The Jacobian is rescaled by a power of two near its largest entry first (exact), so the Gramian neither
overflows nor underflows; d is positively homogeneous (J -> c J gives c d) and equivariant to task
permutations (with the preference vector permuted alike).

References:
  Liu, Chu, Thuerey et al., "ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks",
  ICLR 2025 (arXiv:2408.11104), Equation 2; https://github.com/tum-pbs/ConFIG, ``conflictfree/grad_operator.py``;
  TorchJD 0.18, https://github.com/TorchJD/torchjd, ``torchjd/aggregation/_config.py``.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from orthojax.aggregators._checks import _check_vector
from orthojax.aggregators._numerics import _pow2_normalised
from orthojax.aggregators.base import Aggregation, Aggregator, _check_stateless, jacobian_info, num_tasks_of
from orthojax.aggregators.gramian import combine, gramian

__all__ = ["config", "config_weights"]

PyTree = Any


def config_weights(G: jax.Array, pref: Optional[jax.Array] = None, *, num_params: int = 0) -> jax.Array:
    """ConFIG's weights from the Gramian: d = combine(weights, J) (formula in the module docstring).

    Args:
      G: (T, T) Gramian J J^T, floating point.
      pref: (T,) preference vector w (all ones when None).
      num_params: P, the number of parameters, for the pseudo-inverse tolerance max(T, P) eps (0: use T).

    Returns:
      (T,) weights in G's dtype; 0 for a task with a zero gradient; all zero for a zero Jacobian.
    """
    G = jnp.asarray(G)
    if G.ndim != 2 or G.shape[0] != G.shape[1]:
        raise ValueError(f"config_weights: G must be a square (T, T) matrix; got shape {G.shape}")
    num_tasks = G.shape[0]
    dtype = G.dtype
    w = jnp.ones((num_tasks,), dtype) if pref is None else jnp.asarray(pref, dtype)
    if w.shape != (num_tasks,):
        raise ValueError(f"config_weights: pref must have shape ({num_tasks},); got {w.shape}")
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(G), 0.0))
    pos = norms > 0
    inv = jnp.where(pos, 1.0 / jnp.where(pos, norms, 1), 0.0)
    C = (G * inv[:, None]) * inv[None, :]
    C = jnp.where(jnp.eye(num_tasks, dtype=bool), pos.astype(dtype), 0.5 * (C + C.T))
    lam, V = jnp.linalg.eigh(C)
    eps = float(jnp.finfo(dtype).eps)
    rtol = max(max(num_tasks, num_params) * eps, float(np.sqrt(10 * num_tasks * eps))) ** 2
    keep = lam > rtol * jnp.max(lam)
    lam_inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1), 0.0)
    a = V @ (lam_inv * (V.T @ w))
    Ca = C @ a
    v_norm = jnp.sqrt(jnp.maximum(jnp.dot(a, Ca), 0.0))
    v_norm_safe = jnp.maximum(v_norm, 1e-12)  # torch.nn.functional.normalize's floor
    length = jnp.dot(norms, Ca) / v_norm_safe
    return length * a * inv / v_norm_safe


def config(pref: Optional[Any] = None) -> Aggregator:
    """ConFIG aggregator (deterministic, stateless).

    Args:
      pref: None (all ones, TorchJD's default) or a (T,) sequence of finite preference weights.

    Returns:
      An :class:`~orthojax.aggregators.Aggregator`, ``aggregate(jacobian, state=None, *, key=None) ->
      (direction, None)``: ``jacobian`` a (T, P) array or a pytree of (T, ...) floating-point leaves;
      ``direction`` with one task's structure and dtype. ``key`` is ignored. Diagnostics (``with_info``):
      "task_weights", "grad_norms", "gramian".

    Raises:
      TypeError / ValueError: ``pref`` not a finite 1-D numeric sequence (at once); T != len(pref) (when
      called).

    Example:
      >>> J = jnp.array([[1.0, 0.0], [-0.5, 1.0]])
      >>> d, _ = config()(J)
      >>> bool(jnp.all(J @ d > 0))  # no conflict: <d, g_t> > 0 for every task
      True
    """
    pref_np = None if pref is None else _check_vector(pref, "pref", "config")

    def fn(jacobian: PyTree, state: None, key: Any) -> Aggregation:
        del key  # deterministic
        _check_stateless(state, "config")
        num_tasks, dtype = num_tasks_of(jacobian, "config")
        if pref_np is not None and pref_np.size != num_tasks:
            raise ValueError(f"config: the Jacobian has T={num_tasks} tasks but pref has {pref_np.size} entries")
        _, scaled = _pow2_normalised(jacobian)
        num_params = sum(int(np.prod(x.shape[1:])) for x in jax.tree.leaves(jacobian))
        pref_arr = None if pref_np is None else jnp.asarray(pref_np, dtype)
        weights = config_weights(gramian(scaled), pref_arr, num_params=num_params)
        # d = combine(weights, J) = 2^e combine(weights, J / 2^e): the weights are scale free.
        return Aggregation(combine(weights, jacobian), None, jacobian_info(jacobian, weights))

    return Aggregator(name="config", fn=fn)
