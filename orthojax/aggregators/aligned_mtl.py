"""Aligned-MTL: align the task gradients into orthogonal directions of equal norm, then weight them.

Scale: with the default preference 1/T, d = B J pref on the scale of the mean of the aligned gradients
(norm s_min each), as TorchJD's ``AlignedMTL``; the paper's code sums with unit preferences (T times that).

References:
  Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023;
  TorchJD, ``torchjd/aggregation/_aligned_mtl.py``.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from orthojax.aggregators._checks import _check_pref, _preference
from orthojax.aggregators.base import Aggregator, gramian_aggregator
from orthojax.aggregators.gramian import GramianLike, Solution, _as_factored, _nan_in_nan_out, _normalised_gramian

__all__ = ["aligned_mtl", "aligned_mtl_solution", "aligned_mtl_weights"]


@_nan_in_nan_out
def aligned_mtl_solution(G: GramianLike, pref: Optional[Any] = None) -> Solution:
    """Aligned-MTL: align the task gradients into orthogonal directions of equal norm, then weight them.

    With the eigendecomposition G = V diag(lambda) V^T restricted to its rank r (lambda_1 >= ... >= lambda_r
    > tol), B = sqrt(lambda_r) V diag(lambda^{-1/2}) V^T and w = B @ pref. The rows of B J are orthogonal with
    the common norm sqrt(lambda_r) (the smallest singular value of J): J = U S W^T gives B J =
    s_r U W^T. A zero Gramian gives B = I. tol = max(lambda) * T * machine epsilon of G's dtype (TorchJD
    uses the default torch dtype's epsilon): by this definition a task whose gradient norm is below about
    sqrt(T eps) times the largest counts as rank-deficient. G / trace(G) is formed from norms and cosines,
    so the weights are invariant to a global rescaling of J by any factor.

    Args:
      G: (T, T) Gramian or :class:`ScaledGramian`.
      pref: (T,) preference weights on the aligned gradients; default 1/T each (TorchJD's default).

    Returns:
      :class:`Solution` (residual 0).

    References:
      Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023.
    """
    T, n, C = _as_factored(G, "aligned_mtl_weights")
    Q, _ = _normalised_gramian(n, C)
    pref = _preference(pref, T, Q.dtype, "aligned_mtl_weights")
    lam, V = jnp.linalg.eigh(Q)
    tol = jnp.max(lam) * T * jnp.finfo(Q.dtype).eps
    keep = lam > tol
    rank = jnp.sum(keep)
    lam_r = jnp.min(jnp.where(keep, lam, jnp.inf))
    inv_sqrt = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lam, 1)), 0.0)
    B = jnp.sqrt(jnp.where(rank > 0, lam_r, 1.0)) * (V * inv_sqrt) @ V.T
    B = jnp.where(rank > 0, B, jnp.eye(T, dtype=Q.dtype))
    w = B @ pref
    return Solution(w, w * n, jnp.zeros((), Q.dtype))


def aligned_mtl_weights(G: GramianLike, pref: Optional[Any] = None) -> jax.Array:
    """Aligned-MTL weights (:func:`aligned_mtl_solution`): (T,)."""
    return aligned_mtl_solution(G, pref).weights




def aligned_mtl(pref: Optional[tuple] = None) -> Aggregator:
    """Aligned-MTL aggregator (:func:`aligned_mtl_solution`).

    Stateless and deterministic. ``with_info`` reports "task_weights", "grad_norms" and "gramian".

    Args:
      pref: optional (T,) preference weights on the aligned gradients (default 1/T each).

    Raises:
      ValueError: ``pref`` not a non-empty sequence of finite numbers (its length is checked against T at
        the call).
    """
    pref = _check_pref(pref, "aligned_mtl")
    return gramian_aggregator("aligned_mtl", lambda S, key: aligned_mtl_solution(S, pref))
