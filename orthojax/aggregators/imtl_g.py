"""IMTL-G: the direction with equal projections on every unit task gradient.

Scale: the weights sum to 1 (d is on the scale of a convex combination of the gradients), as in Liu et al.,
LibMTL's ``IMTL`` (gradient part) and TorchJD's ``IMTLG``.

References:
  Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021;
  TorchJD, ``torchjd/aggregation/_imtl_g.py``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from orthojax.aggregators._checks import _check_nonneg_float
from orthojax.aggregators._numerics import _ratio
from orthojax.aggregators.base import Aggregator, gramian_aggregator
from orthojax.aggregators.gramian import GramianLike, Solution, _as_factored, _nan_in_nan_out

__all__ = ["imtl_g", "imtl_g_solution", "imtl_g_weights"]


@_nan_in_nan_out
def imtl_g_solution(G: GramianLike, *, eps: Optional[float] = None) -> Solution:
    """IMTL-G: weights whose direction has equal projections on every task's unit gradient.

    The direction d = sum_t a_t u_t (u_t = g_t / ||g_t||) with <d, u_t> equal for all t solves C a = 1 (C the
    cosines): a = pinv(C) 1, then w_t = a_t / ||g_t||, normalised to sum 1. This uses the cosines only, so
    the direction is invariant to rescaling any task. Where 1 is in the range of C (e.g. J of full row rank)
    it is the closed form w proportional to pinv(G) sqrt(diag G) of Liu et al. and of TorchJD's IMTLG
    (identical then: pinv(G) n = diag(n)^-1 pinv(C) 1 for invertible C); elsewhere TorchJD's form mixes the
    norms into the pseudo-inverse and can differ. TorchJD also thresholds |sum(v)| < 1e-12 on the raw scale
    of G (so its weights vanish for gradient norms above ~1e12); here the threshold is scale-free.

    Computed with rho_t = min_s ||g_s|| / ||g_t||: w = rho a / (rho^T a). If |rho^T a| <= eps (e.g. two
    exactly opposing gradients, where no such direction exists) the weights are 0.

    Args:
      G: (T, T) Gramian or :class:`ScaledGramian`.
      eps: threshold on |rho^T a|; default 100 * machine epsilon of G's dtype.

    Returns:
      :class:`Solution` (residual 0): weights summing to 1 (or all zero); a zero gradient gets weight 0.

    References:
      Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021.
    """
    T, n, C = _as_factored(G, "imtl_g_weights")
    if eps is not None:
        _check_nonneg_float(eps, "eps", "imtl_g_weights")
    threshold = 100.0 * jnp.finfo(C.dtype).eps if eps is None else eps
    pos = n > 0
    n_min = jnp.min(jnp.where(pos, n, jnp.inf))
    n_min = jnp.where(jnp.any(pos), n_min, 0.0).astype(C.dtype)
    rho = _ratio(jnp.full_like(n, n_min), n)
    a = jnp.linalg.pinv(C, hermitian=True) @ jnp.ones((T,), C.dtype)
    a = jnp.where(pos, a, 0.0)
    total = rho @ a
    ok = jnp.abs(total) > threshold
    inv = jnp.where(ok, 1.0 / jnp.where(ok, total, 1), 0.0)
    weights = jnp.where(ok, rho * a * inv, 0.0)
    coefficients = jnp.where(ok, (a * inv) * n_min, 0.0)
    return Solution(weights, coefficients, jnp.zeros((), C.dtype))


def imtl_g_weights(G: GramianLike, *, eps: Optional[float] = None) -> jax.Array:
    """IMTL-G weights (:func:`imtl_g_solution`): (T,) summing to 1 (or all zero)."""
    return imtl_g_solution(G, eps=eps).weights




def imtl_g(eps: Optional[float] = None) -> Aggregator:
    """IMTL-G aggregator: equal projections of d on every unit task gradient (:func:`imtl_g_solution`).

    Stateless and deterministic. ``with_info`` reports "task_weights", "grad_norms" and "gramian".

    Args:
      eps: threshold below which the normalising sum gives zero weights; default 100 * machine epsilon.

    Raises:
      ValueError: ``eps`` negative or not finite.
    """
    if eps is not None:
        _check_nonneg_float(eps, "eps", "imtl_g")
    return gramian_aggregator("imtl_g", lambda S, key: imtl_g_solution(S, eps=eps))
