"""GradVac: Gradient Vaccine (Wang et al., 2021), with EMA cosine targets per task pair (stateful).

For each task i, visit the other tasks j in random order. Let phi_ij be the cosine between the (already
corrected) gradient g_i' of task i and the original g_j, and phi^_ij the EMA target. When
phi_ij < phi^_ij, add the multiple of g_j that raises the cosine to the target,

    g_i' <- g_i' + w g_j,   w = ||g_i'|| (phi^_ij sqrt(1 - phi_ij^2) - phi_ij sqrt(1 - phi^_ij^2))
                                / (||g_j|| sqrt(1 - phi^_ij^2) + eps),

and, whether or not it corrected, update the target phi^_ij <- (1 - beta) phi^_ij + beta phi_ij. The
direction is the sum of the corrected gradients, d = sum_i g_i'. Cosines carry the same eps:
phi_ij = <g_i', g_j> / (||g_i'|| ||g_j|| + eps). Targets start at 0 (the first call corrects only the
conflicting pairs, as PCGrad does up to the eps terms).

Every g_i' stays a combination of the original gradients, g_i' = sum_k C_ik g_k, so the whole procedure is a
function of the Gramian G (||g_i'||^2 = C_i G C_i^T, <g_i', g_j> = (C_i G)_j): :func:`gradvac_weights`
returns w = sum_i C_i and the new targets, and d = combine(w, J). The Jacobian is first rescaled by a power
of two 2^e near its largest entry (exact), with eps rescaled to match (eps / 4^e in the cosines,
eps / 2^e in w), so the result is the reference's formula evaluated without overflow or underflow.

Defaults: beta = 0.5 and eps = 1e-8 as in LibMTL (``GradVac_beta``, ``LibMTL/config.py``) and TorchJD; the
whole Jacobian is one group (LibMTL's ``whole_model``). ``shuffle=True`` draws the visiting orders from
``key`` (the paper); ``shuffle=False`` visits j in increasing order and needs no key.

References:
  Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and Improving Multi-task Optimization in
  Massively Multilingual Models", ICLR 2021, Algorithm 1;
  LibMTL, https://github.com/median-research-group/LibMTL, ``LibMTL/weighting/GradVac.py``;
  TorchJD 0.18, https://github.com/TorchJD/torchjd, ``torchjd/aggregation/_gradvac.py``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from orthojax.aggregators.base import Aggregation, Aggregator, jacobian_info
from orthojax.aggregators.gramian import combine, gramian

__all__ = ["GradVacState", "gradvac", "gradvac_order", "gradvac_weights"]

PyTree = Any


class GradVacState(NamedTuple):
    """targets: (T, T) EMA cosine targets phi^_ij (row i: task being corrected; diagonal unused)."""

    targets: jax.Array


def _others(num_tasks: int) -> np.ndarray:
    """(T, T-1): row i lists the tasks j != i in increasing order."""
    return np.array([[j for j in range(num_tasks) if j != i] for i in range(num_tasks)], dtype=np.int32)


def gradvac_order(num_tasks: int, key: Optional[jax.Array] = None) -> jax.Array:
    """(T, T-1) visiting orders: row i a permutation of the tasks j != i (random with ``key``, else increasing)."""
    others = jnp.asarray(_others(num_tasks))
    if key is None or num_tasks < 2:
        return others
    keys = jax.random.split(key, num_tasks)
    return jax.vmap(lambda k, row: jax.random.permutation(k, row))(keys, others)


def gradvac_weights(
    G: jax.Array, targets: jax.Array, order: jax.Array, beta: float = 0.5, eps: float = 1e-8,
    *, eps_norm: Optional[float] = None,
) -> tuple[jax.Array, jax.Array]:
    """GradVac's weights and updated targets from the Gramian (the loop in the module docstring).

    Args:
      G: (T, T) Gramian J J^T.
      targets: (T, T) EMA targets phi^ (zeros at the first step).
      order: (T, T-1) integer visiting orders (:func:`gradvac_order`).
      beta: EMA rate in [0, 1].
      eps: the constant added to ||g_i'|| ||g_j|| in the cosines.
      eps_norm: the constant added to ||g_j|| sqrt(1 - phi^2) in w (``eps`` when None).

    Returns:
      (weights, new_targets): (T,) weights w = sum_i C_i (d = combine(w, J)) and (T, T) targets, in G's dtype.
    """
    G = jnp.asarray(G)
    num_tasks = G.shape[0]
    dtype = G.dtype
    eps_cos = jnp.asarray(eps, dtype)
    eps_w = jnp.asarray(eps if eps_norm is None else eps_norm, dtype)
    targets = jnp.asarray(targets, dtype)
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(G), 0.0))

    def task(i, carry):
        coef_sum, phi_hat = carry
        row = jnp.zeros((num_tasks,), dtype).at[i].set(1.0)

        def pair(k, inner):
            row, cg, phi_hat = inner
            j = order[i, k]
            norm_i = jnp.sqrt(jnp.maximum(jnp.dot(cg, row), 0.0))
            phi = cg[j] / (norm_i * norms[j] + eps_cos)
            hat = phi_hat[i, j]
            s_phi = jnp.sqrt(jnp.maximum(1.0 - phi * phi, 0.0))
            s_hat = jnp.sqrt(jnp.maximum(1.0 - hat * hat, 0.0))
            w = norm_i * (hat * s_phi - phi * s_hat) / (norms[j] * s_hat + eps_w)
            w = jnp.where(phi < hat, w, 0.0)
            row = row.at[j].add(w)
            cg = cg + w * G[j]
            phi_hat = phi_hat.at[i, j].set((1.0 - beta) * hat + beta * phi)
            return row, cg, phi_hat

        row, _, phi_hat = lax.fori_loop(0, num_tasks - 1, pair, (row, G[i], phi_hat))
        return coef_sum + row, phi_hat

    weights, new_targets = lax.fori_loop(0, num_tasks, task, (jnp.zeros((num_tasks,), dtype), targets))
    return weights, new_targets


def _check_float(value: Any, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"gradvac: {what} must be a number; got {value!r}")
    if not (low <= value <= high):
        raise ValueError(f"gradvac: {what} must be in [{low}, {high}]; got {value!r}")
    return float(value)


def gradvac(beta: float = 0.5, eps: float = 1e-8, *, shuffle: bool = True) -> Aggregator:
    """GradVac aggregator (stateful: the EMA targets).

    Args:
      beta: EMA rate of the cosine targets, in [0, 1] (LibMTL / TorchJD default 0.5).
      eps: non-negative constant in the cosine and correction denominators (default 1e-8).
      shuffle: visit the other tasks in a random order drawn from ``key`` (the paper); False: increasing
        order, deterministic, no key needed.

    Returns:
      An :class:`~orthojax.aggregators.Aggregator` (``needs_key`` when ``shuffle``), ``aggregate(jacobian,
      state=None, *, key=None) -> (direction, GradVacState)``: ``jacobian`` a (T, P) array or a pytree of
      (T, ...) floating-point leaves; ``state=None`` starts from zero targets (``aggregate.init(T, dtype)``,
      the same fixed-shape state a training loop holds from the first step); ``direction`` = sum of the
      corrected task gradients (the scale of the *sum*), one task's structure and dtype. Diagnostics
      (``with_info``): "task_weights" (the w of d = w @ J), "grad_norms", "gramian".

    Raises:
      TypeError / ValueError: bad hyper-parameters (at once); a missing ``key`` with ``shuffle=True``, or a
      state whose targets are not (T, T) (when called).

    Example:
      >>> agg = gradvac()
      >>> J = jnp.array([[1.0, 0.0], [-0.5, 1.0]])
      >>> d, state = agg(J, None, key=jax.random.key(0))
      >>> d, state = agg(2.0 * J, state, key=jax.random.key(1))   # the targets carried over
      >>> state.targets.shape
      (2, 2)
    """
    beta = _check_float(beta, "beta", 0.0, 1.0)
    eps = _check_float(eps, "eps", 0.0, np.inf)
    if not isinstance(shuffle, bool):
        raise TypeError(f"gradvac: shuffle must be a bool; got {shuffle!r}")

    def init(num_tasks: int, dtype: Any) -> GradVacState:
        return GradVacState(jnp.zeros((num_tasks, num_tasks), dtype))

    def fn(jacobian: PyTree, state: GradVacState, key: Optional[jax.Array]) -> Aggregation:
        leaves = jax.tree.leaves(jacobian)
        num_tasks = leaves[0].shape[0]
        dtype = jnp.result_type(*leaves)
        if not isinstance(state, GradVacState) or jnp.shape(state.targets) != (num_tasks, num_tasks):
            raise ValueError(f"gradvac: state must be a GradVacState with (T, T) = ({num_tasks}, {num_tasks}) targets")
        maxabs = jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in leaves]))
        _, e = jnp.frexp(jnp.where(jnp.isfinite(maxabs) & (maxabs > 0), maxabs, 1))
        e = e.astype(jnp.int32)
        G = gramian(jax.tree.map(lambda x: jnp.ldexp(x, -e), jacobian))
        order = gradvac_order(num_tasks, key if shuffle else None)
        weights, targets = gradvac_weights(
            G, state.targets, order, beta, jnp.ldexp(jnp.asarray(eps, dtype), -2 * e),
            eps_norm=jnp.ldexp(jnp.asarray(eps, dtype), -e),
        )
        new_state = GradVacState(targets.astype(state.targets.dtype))
        return Aggregation(combine(weights, jacobian), new_state, jacobian_info(jacobian, weights))

    return Aggregator(name="gradvac", fn=fn, init=init, needs_key=shuffle)
