"""GradDrop: gradient sign dropout (Chen et al., 2020), the combination step of their Algorithm 1.

For every coordinate p of the shared parameters, the Gradient Positive Sign Purity

    P_p = 1/2 (1 + sum_t J_tp / sum_t |J_tp|)   in [0, 1]

measures how much the tasks agree on the sign. With one uniform draw U_p ~ U(0, 1) per coordinate, the
positive entries of column p are kept when f(P_p) > U_p and the negative ones when f(P_p) < U_p:

    M_tp = [f(P_p) > U_p] [J_tp > 0] + [f(P_p) < U_p] [J_tp < 0],
    d_p  = sum_t (l_t + (1 - l_t) M_tp) J_tp,

with leak l_t in [0, 1] (0: no leak, the paper's and LibMTL's default) and f monotonically increasing
(identity by default). With f the identity and no leak, d_p is the sum of the column's positive entries with
probability P_p and the sum of its negative entries otherwise. A coordinate with all entries zero gives 0.

The draws are indexed by the flattened parameter vector (leaves in ``jax.tree.leaves`` order, each leaf
row-major), so a pytree Jacobian gives the same direction as its (T, P) concatenation for the same key.

References:
  Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, "Just Pick a Sign: Optimizing Deep Multitask
  Models with Gradient Sign Dropout", NeurIPS 2020, Algorithm 1 lines 10-15;
  TorchJD 0.18, https://github.com/TorchJD/torchjd, ``torchjd/aggregation/_graddrop.py``;
  LibMTL, https://github.com/median-research-group/LibMTL, ``LibMTL/weighting/GradDrop.py`` (leak=0).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from orthojax.aggregators._checks import _check_vector
from orthojax.aggregators.base import Aggregation, Aggregator, _check_stateless, jacobian_info, num_tasks_of

__all__ = ["graddrop"]

PyTree = Any


def _direction(matrix: jax.Array, uniform: jax.Array, leak: jax.Array, f: Callable) -> jax.Array:
    """d for a (T, P) matrix, the (P,) draws U and the (T,) leaks (the formula in the module docstring)."""
    total = jnp.sum(matrix, axis=0)
    mass = jnp.sum(jnp.abs(matrix), axis=0)
    purity = 0.5 * (1.0 + total / jnp.where(mass > 0, mass, 1))
    fp = f(purity)
    keep = ((fp > uniform) & (matrix > 0)) | ((fp < uniform) & (matrix < 0))
    mask = leak[:, None] + (1 - leak[:, None]) * keep.astype(matrix.dtype)
    return jnp.sum(mask * matrix, axis=0)


def graddrop(leak: Optional[Any] = None, f: Optional[Callable[[jax.Array], jax.Array]] = None) -> Aggregator:
    """GradDrop aggregator (randomised: needs ``key``).

    Args:
      leak: None (no leak, the default) or a (T,) sequence of leaks l_t in [0, 1].
      f: a monotonically increasing, jittable elementwise function applied to the sign purity (identity
        when None), mapping [0, 1] into [0, 1].

    Returns:
      An :class:`~orthojax.aggregators.Aggregator` (``needs_key``), ``aggregate(jacobian, state=None, *, key)
      -> (direction, None)``: ``jacobian`` a (T, P) array or a pytree of (T, ...) floating-point leaves;
      ``key`` a ``jax.random`` key (one uniform draw per parameter coordinate, in the Jacobian's dtype);
      ``direction`` with one task's structure and dtype. Diagnostics (``with_info``): "grad_norms",
      "gramian" (no task weights: not a weighting).

    Raises:
      TypeError: ``f`` is not callable; ``leak`` not numeric.
      ValueError: ``leak`` not 1-D or outside [0, 1] (at once); ``key`` missing, or T != len(leak) (when
        called).

    Example:
      >>> J = jnp.array([[1.0, -2.0], [3.0, 4.0]])
      >>> d, _ = graddrop()(J, key=jax.random.key(0))
      >>> d.shape                                 # each column keeps its positive or its negative entries
      (2,)
    """
    if f is not None and not callable(f):
        raise TypeError(f"graddrop: f must be a callable or None; got {f!r}")
    purity_fn = (lambda p: p) if f is None else f
    leak_np = None if leak is None else _check_vector(leak, "leak", "graddrop")
    if leak_np is not None and not np.all((leak_np >= 0) & (leak_np <= 1)):
            raise ValueError(f"graddrop: every leak must be in [0, 1]; got {leak_np.tolist()}")

    def fn(jacobian: PyTree, state: None, key: jax.Array) -> Aggregation:
        _check_stateless(state, "graddrop")
        num_tasks, dtype = num_tasks_of(jacobian, "graddrop")
        leaves, treedef = jax.tree.flatten(jacobian)
        if leak_np is not None and leak_np.size != num_tasks:
            raise ValueError(f"graddrop: the Jacobian has T={num_tasks} tasks but {leak_np.size} leaks were given")
        lk = jnp.zeros((num_tasks,), dtype) if leak_np is None else jnp.asarray(leak_np, dtype)
        sizes = [int(np.prod(x.shape[1:])) for x in leaves]
        uniform = jax.random.uniform(key, (sum(sizes),), dtype)
        offsets = np.cumsum([0] + sizes)
        out = []
        for leaf, lo, hi in zip(leaves, offsets[:-1], offsets[1:]):
            m = jnp.reshape(leaf, (num_tasks, -1))
            d = _direction(m, uniform[lo:hi], lk.astype(leaf.dtype), purity_fn)
            out.append(jnp.reshape(d.astype(leaf.dtype), leaf.shape[1:]))
        return Aggregation(jax.tree.unflatten(treedef, out), None, jacobian_info(jacobian))

    return Aggregator(name="graddrop", fn=fn, needs_key=True)
