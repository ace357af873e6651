"""CAGrad: the conflict-averse direction in a ball around the mean gradient.

Scale: d = (g0 + (r / ||g_w||) g_w) / divisor with divisor 1 + c^2 (``rescale=1``, the paper's code and
LibMTL's default), 1 + c (``rescale=2``) or 1 (``rescale=0``, TorchJD's ``CAGrad``).

References:
  Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021;
  TorchJD, ``torchjd/aggregation/_cagrad.py``; LibMTL, ``LibMTL/weighting/CAGrad.py``.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from orthojax.aggregators._checks import _check_cap, _check_nonneg_float
from orthojax.aggregators._numerics import _cnorm, _log, _pow2_exponent, _saturate
from orthojax.aggregators._solvers import _active_set_cap, _log_ratios_to_min, _min_norm
from orthojax.aggregators.base import Aggregator, gramian_aggregator
from orthojax.aggregators.gramian import GramianLike, Solution, _as_factored, _cosines, _nan_in_nan_out

__all__ = ["cagrad", "cagrad_solution", "cagrad_weights"]


def _log_rows_factored(logscale: jax.Array, Ph: jax.Array, C: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Log-norms and cosines of p_t = exp(logscale_t) sum_k Ph_tk u_k (u_k unit vectors with cosines C)."""
    e = _pow2_exponent(jnp.max(jnp.abs(Ph), axis=1))
    Ph = jnp.ldexp(Ph, -e[:, None])
    Gh = Ph @ C @ Ph.T
    Gh = 0.5 * (Gh + Gh.T)
    d = jnp.sqrt(jnp.maximum(jnp.diagonal(Gh), 0.0))
    logn = logscale + _log(d) + e.astype(d.dtype) * np.log(2.0)
    return logn, _cosines(Gh, d)


def _log_cnorm(loga: jax.Array, ahat: jax.Array, C: jax.Array) -> jax.Array:
    """log ||sum_t exp(loga_t) ahat_t u_t||, for scale factors beyond the dtype's range (-inf for 0)."""
    top = jnp.max(loga)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    return top + _log(_cnorm(ahat * jnp.exp(loga - top), C))


@_nan_in_nan_out
def cagrad_solution(
    G: GramianLike,
    c: float = 0.4,
    *,
    rescale: int = 1,
    num_outer: Optional[int] = None,
    num_inner: Optional[int] = None,
) -> Solution:
    """CAGrad: maximise the worst task improvement within a ball around the mean gradient.

    With g0 = mean_t g_t and r = c ||g0||, CAGrad solves max_{||d - g0|| <= r} min_t <g_t, d>. Its dual is
    min_{w in simplex} F(w) = <g_w, g0> + r ||g_w||, g_w = w @ J, and the primal solution is the closed form
    d = g0 + (r / ||g_w*||) g_w*; min_t <g_t, d> = F(w*). In weights: 1/T + (r / ||g_w*||) w*, divided by
    1 + c^2 (``rescale=1``, the paper's code default), 1 + c (``rescale=2``) or 1 (``rescale=0``).

    Solver. With the variational form r ||x|| = min_{s > 0} r (||x||^2 / s + s) / 2, for a fixed s the
    minimiser w(s) is the nearest point of conv{g_t} to y(s) = -(s / r) g0 (an MGDA problem on the points
    g_t - y(s), solved exactly by the active-set NNLS of :func:`mgda_solution`), and the optimal s is the
    root of s = psi(s) = ||g_w(s)||, unique because s - psi(s) changes sign once (the partial minimum over w
    is convex in s). The root is bracketed in log s between the min-norm m0 of the hull (or, when m0 is at
    rounding level, that level) and max_t ||g_t||, and found by the Illinois (modified regula falsi) method
    to |log s - log psi(s)| <= 16 T eps or a bracket narrower than 4 eps in log s (eps of G's dtype; ~6e-14
    in float64 and ~8e-5 in float32 for T = 40), within ``num_outer`` steps (typically 5-15). Scales are
    carried as logarithms of norms relative to max_t ||g_t|| and the rest as cosines, so tasks of any scale
    count (e.g. a task with gradient norm 1e-30 next to one with 1e30, in float32). ``Solution.residual`` is
    the larger of the inner KKT residual (see :func:`mgda_solution`) and the final |log s - log psi(s)|.

    Degenerate case: when ||g_w*|| is at rounding level, ||g_w*|| <= 10 sqrt(T eps) ||(w*_t ||g_t||)_t||
    (0 lies in the convex hull of the gradients and no point of the hull makes an obtuse enough angle with
    g0, so F* = 0 and the maximiser is not unique), the direction is g0 (weights 1/T before rescaling).

    Relation to TorchJD (``CAGradWeighting(c, norm_eps=1e-4)``: ``normalize(G, norm_eps)``, then the dual
    solved by cvxpy/CLARABEL in float64; weights 1/T + (r / ||g_w||) w when ||g_w|| >= norm_eps, else 0):
    the same dual on the same normalised Gramian, with these differences. (1) TorchJD does not rescale: it
    matches ``rescale=0``. (2) TorchJD zeroes the Gramian when trace(G) = ||J||_F^2 < 1e-4, and its weights are
    then all 0 (no update); here the weights do not depend on the scale of J. (3) Where 0 lies in the
    convex hull of the gradients and F* = 0, TorchJD returns zero weights (d = 0, which is outside the ball
    for c < 1); here d = g0 (the official code, which adds 1e-8 to ||g_w||^2 under the square root and to
    ||g_w||, on the raw scale, returns a large multiple of a rounding-level g_w). (4) TorchJD's zero-weight test
    ||g_w|| < 1e-4 is on the normalised scale, so it also zeroes the update when the optimal g_w is small
    but genuine (e.g. the gradient of a task whose norm is below 1e-4 ||J||_F); here the exact CAGrad
    direction d = g0 + r g_w / ||g_w|| is kept down to rounding level. (5) TorchJD solves in float64 to
    CLARABEL's default tolerances (~1e-8); here the dual is solved in G's dtype to the tolerance above.

    Args:
      G: (T, T) Gramian or :class:`ScaledGramian`.
      c: radius of the ball relative to ||g0||, >= 0 (0.4 here; the paper uses 0.4-0.5). c = 0 gives g0.
      rescale: 0, 1 or 2 (see above).
      num_outer: cap on the root-finding iterations; None (default): 100.
      num_inner: cap on the active-set iterations of each inner solve; None (default): 10 T + 50.

    Returns:
      :class:`Solution`.

    References:
      Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021.
    """
    T, n, C = _as_factored(G, "cagrad_weights")
    _check_nonneg_float(c, "c", "cagrad_weights")
    _check_rescale(rescale, "cagrad_weights")
    _check_cap(num_outer, "num_outer", "cagrad_weights")
    _check_cap(num_inner, "num_inner", "cagrad_weights")
    outer_cap = 100 if num_outer is None else int(num_outer)
    inner_cap = _active_set_cap(num_inner, T)
    dtype = C.dtype
    eps = jnp.finfo(dtype).eps
    divisor = {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]
    mean = jnp.full((T,), 1.0 / T, dtype)
    # Scales as logarithms relative to the largest norm, so that ratios beyond the dtype's range stay exact.
    logn = _log(n)
    zero_jacobian = ~(jnp.max(logn) > -jnp.inf)
    lognt = jnp.where(zero_jacobian, -jnp.inf, logn - jnp.where(zero_jacobian, 0.0, jnp.max(logn)))
    h = jnp.exp(lognt) / T  # g0 = max_t ||g_t|| sum_k h_k u_k
    log_hmax = _log(jnp.max(h))
    log_rt = _log(jnp.asarray(c, dtype) * _cnorm(h, C))  # log(r / max_t ||g_t||)
    radius = (log_rt > -jnp.inf) & ~zero_jacobian

    def inner(ell):
        """At s = exp(ell) max_t ||g_t||: w(s), g_w = sum_t exp(loga_t) coef_t u_t, log ||g_w|| and the residual."""
        loglam = ell - jnp.where(radius, log_rt, 0.0)  # y(s) = -lam g0, lam = s / r
        m = jnp.maximum(lognt, loglam + log_hmax)  # log of row t's largest entry
        m = jnp.where(m > -jnp.inf, m, 0.0)
        own = jnp.where(lognt > -jnp.inf, jnp.exp(lognt - m), 0.0)
        shift = jnp.where(loglam > -jnp.inf, jnp.exp(loglam - m), 0.0)
        Ph = jnp.eye(T, dtype=dtype) * own[:, None] + shift[:, None] * h[None, :]  # p_t = g_t - y(s), row-scaled
        logpn, pC = _log_rows_factored(m, Ph, C)
        rho, has_zero, log_pmin = _log_ratios_to_min(logpn)
        w, ahat, res = _min_norm(rho, has_zero, pC, inner_cap)
        safe = jnp.where(has_zero, 0.0, log_pmin - logpn)
        loga = jnp.where(has_zero, lognt, safe + lognt)  # g_w = sum_t w_t g_t, w_t = exp(log_pmin - logpn_t) ahat_t
        coef = jnp.where(has_zero, w, ahat)
        return w, loga, coef, _log_cnorm(loga, coef, C), res

    def fval(ell, log_psi):
        return jnp.where(log_psi > -jnp.inf, ell - log_psi, jnp.inf)

    def log_norm2(loga, coef):
        top = jnp.max(loga)
        top = jnp.where(jnp.isfinite(top), top, 0.0)
        return top + _log(jnp.sqrt(jnp.sum((coef * jnp.exp(loga - top)) ** 2)))

    # Bracket in ell = log(s / max norm): psi(s) >= m0 = psi(0), the min-norm of the hull, and psi(s) <= 1 =
    # psi(hi). When m0 is at rounding level (0 in the hull, up to rounding) the lower end is that level.
    # One loop (a single copy of the inner solver): step 0 evaluates psi(0) (m0), step 1 the upper end, step 2
    # the lower end, then Illinois steps.
    log_noise = jnp.log(10.0 * jnp.sqrt(T * eps))
    ftol = 16 * T * eps
    zeros = jnp.zeros((T,), dtype)
    inf = jnp.asarray(jnp.inf, dtype)
    best0 = (zeros, zeros, zeros, -inf, inf, inf)

    def cond(state):
        *_, it, done = state
        return (~done) & (it < outer_cap + 3)

    def body(state):
        lo, f_lo, hi, f_hi, side, best, lo_is_floor, at_lo, it, done = state
        finite = jnp.isfinite(f_lo) & jnp.isfinite(f_hi) & (f_hi > f_lo)
        secant = jnp.where(finite, (lo * f_hi - hi * f_lo) / jnp.where(finite, f_hi - f_lo, 1), 0.5 * (lo + hi))
        margin = 1e-3 * (hi - lo)
        ell = jnp.select([it == 0, it == 1, it == 2], [-inf, hi, lo], jnp.clip(secant, lo + margin, hi - margin))
        out = inner(ell)
        f = fval(ell, out[3])
        cand = out + (jnp.abs(f),)
        # step 0: the lower end from m0
        log_a0 = log_norm2(out[1], out[2])
        floor0 = ~(out[3] > log_noise + log_a0)
        lo0 = jnp.where(floor0, log_noise + jnp.where(log_a0 > -jnp.inf, log_a0, 0.0), out[3])
        # steps >= 3: Illinois; steps 1 and 2 set f_hi and f_lo
        go_lo = f <= 0  # the root is above ell
        il_lo = jnp.where(go_lo, ell, lo)
        il_flo = jnp.where(go_lo, f, jnp.where(side == 1, 0.5 * f_lo, f_lo))  # Illinois: halve the end kept twice
        il_hi = jnp.where(go_lo, hi, ell)
        il_fhi = jnp.where(go_lo, jnp.where(side == -1, 0.5 * f_hi, f_hi), f)
        il_side = jnp.where(go_lo, -1, 1).astype(jnp.int32)
        setup = it < 3
        new_lo = jnp.where(it == 0, lo0, jnp.where(setup, lo, il_lo))
        new_flo = jnp.where(it == 2, f, jnp.where(setup, f_lo, il_flo))
        new_hi = jnp.where(setup, hi, il_hi)
        new_fhi = jnp.where(it == 1, f, jnp.where(setup, f_hi, il_fhi))
        new_side = jnp.where(setup, 0, il_side).astype(jnp.int32)
        new_floor = jnp.where(it == 0, floor0, lo_is_floor)
        new_at_lo = at_lo | ((it == 2) & (f >= 0))  # the root is at lo: s* = m0, or s* ~ 0 below the floor
        better = (it > 0) & ((cand[5] <= best[5]) | new_at_lo)
        best = jax.tree.map(lambda x, y: jnp.where(better, x, y), cand, best)
        done = jnp.where(
            it == 0,
            False,
            new_at_lo | (best[5] <= ftol) | ((it == 1) & (f <= 0))
            | (~setup & (il_hi - il_lo <= 4 * eps * jnp.maximum(1.0, jnp.abs(ell)))),
        )
        return new_lo, new_flo, new_hi, new_fhi, new_side, best, new_floor, new_at_lo, it + 1, done

    state = (-inf, -inf, jnp.zeros((), dtype), inf, jnp.zeros((), jnp.int32), best0, jnp.zeros((), bool),
             jnp.zeros((), bool), jnp.zeros((), jnp.int32), ~radius)
    *_, best, lo_is_floor, start_lo, _, _ = jax.lax.while_loop(cond, body, state)
    w_star, loga, coef, log_psi, res_inner, fgap = best
    log_anorm = log_norm2(loga, coef)
    degenerate = (start_lo & lo_is_floor) | (log_psi <= log_noise + log_anorm)
    ok = radius & ~degenerate
    log_lam = jnp.where(ok, log_rt - log_psi, -jnp.inf)  # log(r / ||g_w*||)
    big = jnp.log(jnp.finfo(dtype).max)
    log_div = float(np.log(divisor))
    extra = jnp.where(ok & (w_star > 0), jnp.exp(jnp.minimum(log_lam - log_div + _log(w_star), big)), 0.0)
    weights = _saturate(mean / divisor + extra)
    lognmax = jnp.where(zero_jacobian, 0.0, jnp.max(logn))
    scale = jnp.exp(jnp.minimum(lognmax + log_lam - log_div + loga, big))
    extra_coef = jnp.where(ok & (coef != 0), _saturate(scale * coef), 0.0)
    coefficients = _saturate(n / (T * divisor) + extra_coef)
    residual = jnp.where(ok, jnp.maximum(res_inner, jnp.where(jnp.isfinite(fgap), fgap, jnp.inf)), 0.0)
    return Solution(weights, coefficients, residual.astype(dtype))


def cagrad_weights(
    G: GramianLike,
    c: float = 0.4,
    *,
    rescale: int = 1,
    num_outer: Optional[int] = None,
    num_inner: Optional[int] = None,
) -> jax.Array:
    """CAGrad weights (:func:`cagrad_solution`): (T,)."""
    return cagrad_solution(G, c, rescale=rescale, num_outer=num_outer, num_inner=num_inner).weights



def _check_rescale(rescale: Any, name: str) -> None:
    if isinstance(rescale, bool) or rescale not in (0, 1, 2):
        raise ValueError(f"{name}: rescale must be 0, 1 or 2; got {rescale!r}")


def cagrad(
    c: float = 0.4, rescale: int = 1, num_outer: Optional[int] = None, num_inner: Optional[int] = None
) -> Aggregator:
    """CAGrad aggregator: the conflict-averse direction in a ball of radius c ||g0|| around the mean gradient
    (:func:`cagrad_solution`).

    Stateless and deterministic. ``with_info`` reports "task_weights", "grad_norms", "gramian" and
    "solver_residual".

    Args:
      c: relative radius, >= 0.
      rescale: 0 (none; TorchJD's CAGrad), 1 (divide by 1 + c^2, the paper's code default) or 2 (divide by
        1 + c).
      num_outer: cap on the root-finding iterations of the solver; None (default): 100.
      num_inner: cap on the active-set iterations of each inner solve; None (default): 10 T + 50.

    Raises:
      ValueError: a negative or non-finite ``c``, another ``rescale``, a cap below 1.
    """
    _check_nonneg_float(c, "c", "cagrad")
    _check_rescale(rescale, "cagrad")
    _check_cap(num_outer, "num_outer", "cagrad")
    _check_cap(num_inner, "num_inner", "cagrad")
    return gramian_aggregator(
        "cagrad",
        lambda S, key: cagrad_solution(S, c, rescale=rescale, num_outer=num_outer, num_inner=num_inner),
        reports_residual=True,
    )
