"""Multi-task summaries: Delta_m (Nash-MTL, CAGrad), Delta_p (LibMTL) and the CosReg paper's NYUv2 row.

Delta_m = 100/K sum_k (-1)^{d_k} (M_k - B_k) / B_k over all K metrics (lower is better);
Delta_p = 100/T sum_t 1/K_t sum_k (-1)^{w_tk} (B_tk - M_tk) / B_tk, averaged within each task first
(higher is better). Both are relative to a baseline, usually the single-task models; the published
SegNet single-task baseline on NYUv2 (MTAN preprocessing) and the metric directions are here.

References:
  Maninis, Radosavovic and Kokkinos, "Attentive Single-Tasking of Multiple Tasks", CVPR 2019 (Delta_m);
  Navon et al., "Multi-Task Learning as a Bargaining Game" (Nash-MTL), ICML 2022 (its NYUv2 use).
  Lin and Zhang, "LibMTL: A Python Library for Multi-Task Learning", JMLR 2023, ``count_improvement``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

__all__ = [
    "NYUV2_HIGHER_IS_BETTER",
    "NYUV2_HIGHER_IS_BETTER_BY_TASK",
    "PAPER_NYUV2_HIGHER_IS_BETTER",
    "PAPER_NYUV2_SINGLE_TASK",
    "SEGNET_NYUV2_STL",
    "SEGNET_NYUV2_STL_BY_TASK",
    "delta_m",
    "delta_p",
    "paper_nyuv2_metrics",
]

# Published single-task SegNet baseline on NYUv2 (MTAN preprocessing), used by Nash-MTL and CAGrad
# for Delta_m. Names match the keys returned by the finalize functions of this package.
SEGNET_NYUV2_STL_BY_TASK: dict[str, dict[str, float]] = {
    "segmentation": {"miou": 0.3830, "pixel_acc": 0.6376},
    "depth": {"abs_err": 0.6754, "rel_err": 0.2780},
    "normal": {
        "angle_mean": 25.01,
        "angle_median": 19.21,
        "within_11.25": 0.3014,
        "within_22.5": 0.5720,
        "within_30": 0.6915,
    },
}

NYUV2_HIGHER_IS_BETTER_BY_TASK: dict[str, dict[str, bool]] = {
    "segmentation": {"miou": True, "pixel_acc": True},
    "depth": {"abs_err": False, "rel_err": False},
    "normal": {
        "angle_mean": False,
        "angle_median": False,
        "within_11.25": True,
        "within_22.5": True,
        "within_30": True,
    },
}

SEGNET_NYUV2_STL: dict[str, float] = {
    k: v for task in SEGNET_NYUV2_STL_BY_TASK.values() for k, v in task.items()
}

NYUV2_HIGHER_IS_BETTER: dict[str, bool] = {
    k: v for task in NYUV2_HIGHER_IS_BETTER_BY_TASK.values() for k, v in task.items()
}


# The CosReg paper's NYUv2 metrics (Table 2, all lower is better) and its single-task row.
PAPER_NYUV2_HIGHER_IS_BETTER: dict[str, bool] = {
    "one_minus_miou": False,
    "rmse": False,
    "one_minus_abs_cos": False,
}
PAPER_NYUV2_SINGLE_TASK: dict[str, float] = {
    "one_minus_miou": 0.663,
    "rmse": 0.775,
    "one_minus_abs_cos": 0.051,
}


def paper_nyuv2_metrics(segmentation: Mapping[str, Any], depth: Mapping[str, float],
                        normal: Mapping[str, float]) -> dict[str, float]:
    """The CosReg paper's NYUv2 metrics (all lower is better) from the finalized dicts.

    Returns:
      {"one_minus_miou": 1 - mIoU, "rmse": depth RMSE, "one_minus_abs_cos": mean 1 - |cos|}.
    """
    for name, d, key in (("segmentation", segmentation, "miou"), ("depth", depth, "rmse"),
                         ("normal", normal, "one_minus_abs_cos")):
        if key not in d:
            raise ValueError(f"{name} must contain {key!r}, got keys {sorted(d)}")
    return {
        "one_minus_miou": 1.0 - float(segmentation["miou"]),
        "rmse": float(depth["rmse"]),
        "one_minus_abs_cos": float(normal["one_minus_abs_cos"]),
    }


def _relative_changes(metrics: Mapping[str, Any], baseline: Mapping[str, Any],
                      higher_is_better: Mapping[str, bool], where: str) -> np.ndarray:
    """s_k (M_k - B_k) / B_k for every metric of ``baseline``, s_k = +1 if higher is better."""
    if not baseline:
        raise ValueError(f"baseline{where} must name at least one metric")
    out = []
    for k, b in baseline.items():
        if k not in metrics:
            raise ValueError(f"metrics{where} lack {k!r} (baseline has {sorted(baseline)})")
        if k not in higher_is_better:
            raise ValueError(f"higher_is_better{where} lacks {k!r}")
        m, b = float(metrics[k]), float(b)
        if b == 0 or not math.isfinite(b):
            raise ValueError(f"baseline{where}[{k!r}] must be finite and non-zero, got {b}")
        if not math.isfinite(m):
            raise ValueError(f"metrics{where}[{k!r}] must be finite, got {m}")
        sign = 1.0 if bool(higher_is_better[k]) else -1.0
        out.append(sign * (m - b) / b)
    return np.asarray(out)


def delta_m(metrics: Mapping[str, float], baseline: Mapping[str, float],
            higher_is_better: Mapping[str, bool]) -> float:
    """Delta_m% (Nash-MTL, CAGrad): relative change to a baseline, lower is better.

        Delta_m = 100/K sum_k (-1)^{d_k} (M_k - B_k) / B_k,   d_k = 1 if higher is better else 0,

    over the K metrics named by ``baseline`` (extra keys in ``metrics`` are ignored).

    Example: ``delta_m(scores, SEGNET_NYUV2_STL, NYUV2_HIGHER_IS_BETTER)``; equal weighting's
    published NYUv2 scores give +5.59.

    Args:
      metrics: metric name -> value.
      baseline: metric name -> baseline value (non-zero), e.g. the single-task model.
      higher_is_better: metric name -> direction.

    Returns:
      Delta_m in percent.
    """
    return float(-100.0 * _relative_changes(metrics, baseline, higher_is_better, "").mean())


def delta_p(metrics_by_task: Mapping[str, Mapping[str, float]],
            baseline_by_task: Mapping[str, Mapping[str, float]],
            higher_is_better_by_task: Mapping[str, Mapping[str, bool]]) -> float:
    """Delta_p% (LibMTL ``count_improvement``): averaged within each task, then over tasks.

        Delta_p = 100/T sum_t 1/K_t sum_k (-1)^{w_tk} (B_tk - M_tk) / B_tk,
        w_tk = 1 if higher is better else 0,

    so higher is better (the opposite sign convention to Delta_m), and each task counts equally
    whatever its number of metrics. LibMTL returns the fraction; this returns percent.

    Args:
      metrics_by_task: task -> metric name -> value.
      baseline_by_task: task -> metric name -> baseline value; its tasks and metrics are used.
      higher_is_better_by_task: task -> metric name -> direction.

    Returns:
      Delta_p in percent.
    """
    if not baseline_by_task:
        raise ValueError("baseline_by_task must name at least one task")
    per_task = []
    for task, base in baseline_by_task.items():
        if task not in metrics_by_task:
            raise ValueError(f"metrics_by_task lacks task {task!r}")
        if task not in higher_is_better_by_task:
            raise ValueError(f"higher_is_better_by_task lacks task {task!r}")
        r = _relative_changes(metrics_by_task[task], base, higher_is_better_by_task[task],
                              f"[{task!r}]")
        per_task.append(r.mean())
    return float(100.0 * np.mean(per_task))
