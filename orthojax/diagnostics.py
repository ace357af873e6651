"""Gradient-cosine diagnostics of the CosReg paper, computed on logged histories (NumPy, host).

Phi(t_i, t_j) is the distribution over training iterations of the cosine between the gradients of
tasks t_i and t_j (w.r.t. the last shared layer), with mean mu and standard deviation sigma
(paper section 3, Figures 2 and 4). The paper also tracks sigma over rolling windows of 50
iterations (Figure 5, appendix A), and plots final accuracy against the sigma of the first epoch
(Figure 3). Conflict rates count cosines below 0 (conflicting gradients) or below a threshold S
(Recon's S-conflict score).

Every function takes ``cosines`` in one of three layouts:
  (steps,)        one task pair; results are scalars,
  (steps, P)      P task pairs; results have a trailing axis of length P,
  (steps, T, T)   cosine matrices; reduced to the T (T - 1) / 2 upper-triangle pairs (i < j) in the
                  order of ``np.triu_indices(T, 1)``.
Standard deviations use ``ddof`` (default 0, the population standard deviation).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

__all__ = ["PhiStats", "conflict_rate", "first_epoch_sigma", "pairwise_cosines", "phi_stats", "rolling_sigma",
           "summarize_cosines"]


def _as_array(cosines: Any) -> np.ndarray:
    c = np.asarray(cosines, dtype=np.float64)
    if c.ndim not in (1, 2, 3):
        raise ValueError(
            f"cosines must have shape (steps,), (steps, P) or (steps, T, T), got {c.shape}")
    if c.shape[0] == 0:
        raise ValueError("cosines must hold at least one step")
    if not np.all(np.isfinite(c)):
        raise ValueError("cosines must be finite")
    return c


def _pairs(cosines: Any) -> np.ndarray:
    """Cosines as (steps,) or (steps, P)."""
    c = _as_array(cosines)
    return pairwise_cosines(c)[0] if c.ndim == 3 else c


def _check_ddof(ddof: int, n: int) -> None:
    if not isinstance(ddof, (int, np.integer)) or ddof < 0 or ddof >= n:
        raise ValueError(f"ddof must be an int in [0, {n}), got {ddof!r}")


def pairwise_cosines(cosine_matrices: Any,
                     task_names: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Upper-triangle task-pair cosines of a history of cosine matrices.

    Args:
      cosine_matrices: (steps, T, T), e.g. the logged C = G G^T of each iteration, T >= 2.
      task_names: optional T names; default "0", "1", ...

    Returns:
      (cosines of shape (steps, P), labels "name_i/name_j"), P = T (T - 1) / 2, pairs i < j.
    """
    c = _as_array(cosine_matrices)
    if c.ndim != 3 or c.shape[1] != c.shape[2] or c.shape[1] < 2:
        raise ValueError(f"cosine_matrices must have shape (steps, T, T) with T >= 2, got {c.shape}")
    t = c.shape[1]
    names = [str(i) for i in range(t)] if task_names is None else [str(n) for n in task_names]
    if len(names) != t:
        raise ValueError(f"task_names must have T={t} entries, got {len(names)}")
    i, j = np.triu_indices(t, k=1)
    return c[:, i, j], [f"{names[a]}/{names[b]}" for a, b in zip(i, j)]


class PhiStats(NamedTuple):
    """Mean and standard deviation of the cosine distribution Phi per pair."""

    mu: Any
    sigma: Any


def phi_stats(cosines: Any, ddof: int = 0) -> PhiStats:
    """mu = mean_s cos_s and sigma = sqrt(sum_s (cos_s - mu)^2 / (steps - ddof)) per task pair."""
    c = _pairs(cosines)
    _check_ddof(ddof, c.shape[0])
    return PhiStats(mu=c.mean(axis=0), sigma=c.std(axis=0, ddof=ddof))


def rolling_sigma(cosines: Any, window: int = 50, ddof: int = 0) -> np.ndarray:
    """Standard deviation over sliding windows of ``window`` consecutive iterations (Figure 5).

    out[k] = std(cos[k : k + window]), k = 0 .. steps - window.

    Returns:
      (steps - window + 1,) or (steps - window + 1, P).
    """
    c = _pairs(cosines)
    if not isinstance(window, (int, np.integer)) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    if window > c.shape[0]:
        raise ValueError(f"window ({window}) must not exceed the number of steps ({c.shape[0]})")
    _check_ddof(ddof, window)
    views = np.lib.stride_tricks.sliding_window_view(c, window, axis=0)  # (..., window) last
    return views.std(axis=-1, ddof=ddof)


def conflict_rate(cosines: Any, threshold: float = 0.0) -> Any:
    """Fraction of iterations whose cosine is strictly below ``threshold`` (0: conflicting)."""
    c = _pairs(cosines)
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    return (c < threshold).mean(axis=0)


def first_epoch_sigma(cosines: Any, steps_per_epoch: int, ddof: int = 0) -> Any:
    """sigma of the cosines of the first ``steps_per_epoch`` iterations (Figure 3's x axis)."""
    c = _pairs(cosines)
    if (not isinstance(steps_per_epoch, (int, np.integer)) or isinstance(steps_per_epoch, bool)
            or steps_per_epoch < 1):
        raise ValueError(f"steps_per_epoch must be a positive int, got {steps_per_epoch!r}")
    if steps_per_epoch > c.shape[0]:
        raise ValueError(
            f"steps_per_epoch ({steps_per_epoch}) exceeds the logged steps ({c.shape[0]})")
    _check_ddof(ddof, steps_per_epoch)
    return c[:steps_per_epoch].std(axis=0, ddof=ddof)


def summarize_cosines(cosines: Any, *, task_names: Sequence[str] | None = None,
                      threshold: float = 0.0, window: int = 50,
                      steps_per_epoch: int | None = None,
                      ddof: int = 0) -> dict[str, dict[str, float]]:
    """All diagnostics per task pair, as floats (for results.json / results.md).

    Returns:
      pair label -> {"mu", "sigma", "conflict_rate" (cos < 0), "s_conflict_rate"
      (cos < threshold), "rolling_sigma_last" (if steps >= window), "first_epoch_sigma"
      (if steps_per_epoch is given)}. Labels as in ``pairwise_cosines`` ("pair" for 1-D input,
      "pair_k" for (steps, P) input without names).
    """
    c = _as_array(cosines)
    if c.ndim == 3:
        c, labels = pairwise_cosines(c, task_names)
    elif task_names is not None:
        raise ValueError("task_names is only used with (steps, T, T) cosine matrices")
    else:
        labels = ["pair"] if c.ndim == 1 else [f"pair_{k}" for k in range(c.shape[1])]
    c2 = c.reshape(c.shape[0], -1)
    stats = phi_stats(c2, ddof)
    cols = {
        "mu": stats.mu,
        "sigma": stats.sigma,
        "conflict_rate": conflict_rate(c2, 0.0),
        "s_conflict_rate": conflict_rate(c2, threshold),
    }
    if c2.shape[0] >= window:
        cols["rolling_sigma_last"] = rolling_sigma(c2, window, ddof)[-1]
    if steps_per_epoch is not None:
        cols["first_epoch_sigma"] = first_epoch_sigma(c2, steps_per_epoch, ddof)
    return {lab: {k: float(v[p]) for k, v in cols.items()} for p, lab in enumerate(labels)}
