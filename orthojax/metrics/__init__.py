"""The field's multi-task metrics, accumulated exactly over a whole test set.

One module per task family:

* :mod:`~orthojax.metrics.segmentation`: confusion matrix, mIoU, pixel accuracy;
* :mod:`~orthojax.metrics.depth`: abs / rel error, RMSE;
* :mod:`~orthojax.metrics.normals`: angle mean and median, fraction within 11.25 / 22.5 / 30
  degrees, and the CosReg paper's 1 - |cos|;
* :mod:`~orthojax.metrics.classification`: accuracy and the harmonic mean of task accuracies;
* :mod:`~orthojax.metrics.scores`: the relative-improvement summaries Delta_m (Nash-MTL, CAGrad) and
  Delta_p (LibMTL), the published baselines and the paper's NYUv2 row.

Every metric has a functional accumulator: ``init_*() -> state``, ``update_*(state, ...) -> state``
(pure, wrapped in ``jax.jit``, usable inside a jitted eval step; states are NamedTuples of arrays)
and ``finalize_*(state) -> dict`` (host side, float64). The one exception is the exact pooled median
of normal angles, which needs every valid angle of the test set: ``init_angle_collector`` /
``collect_angles`` / ``exact_median`` keep them on the host (``normal_angles`` computes them inside the
jitted step).

Aggregation: "pooled" (LibMTL; default) pools all valid pixels of the test set, so it does not
depend on the batch size. "batch" (MTAN, Nash-MTL, CAGrad) computes the statistic on each test batch
and averages over batches; batches without a valid pixel are skipped. Which epoch to report is the
caller's choice: the MTAN family reports the mean over the last 10 epochs, LibMTL the best epoch.

Valid pixels (one rule, shared with the dense-task losses of ``experiments.dense`` and the data
readers): a depth pixel is valid where ``gt != 0``; a surface normal is valid unless it is all-zero
(``valid_depth_mask``, ``valid_normal_mask``). MTAN's evaluation code keeps a normal where its
channel sum is non-zero instead, which also drops valid normals whose components sum to 0, e.g.
(1/sqrt2, -1/sqrt2, 0); pass ``normal_mask="mtan"`` to the normal functions to reproduce it.

Sums are accumulated in the state's float dtype (float32 unless ``jax_enable_x64``) and counts in
int32 (exact up to 2**31 - 1 pixels, e.g. 10**4 NYUv2 test sets at 288 x 384).
"""

from orthojax.metrics.classification import (ClassificationState, accuracy, finalize_classification, harmonic_mean,
                                             init_classification, update_classification)
from orthojax.metrics.depth import (DepthState, DepthStatistics, depth_statistics, finalize_depth, init_depth,
                                    update_depth, valid_depth_mask)
from orthojax.metrics.normals import (NORMAL_MASKS, NORMAL_THRESHOLDS, AngleCollector, NormalState, collect_angles,
                                      exact_median, finalize_normals, init_angle_collector, init_normals,
                                      normal_angles, one_minus_abs_cos, update_normals, valid_normal_mask)
from orthojax.metrics.scores import (NYUV2_HIGHER_IS_BETTER, NYUV2_HIGHER_IS_BETTER_BY_TASK,
                                     PAPER_NYUV2_HIGHER_IS_BETTER, PAPER_NYUV2_SINGLE_TASK, SEGNET_NYUV2_STL,
                                     SEGNET_NYUV2_STL_BY_TASK, delta_m, delta_p, paper_nyuv2_metrics)
from orthojax.metrics.segmentation import (SegmentationState, confusion_matrix, finalize_segmentation,
                                           init_segmentation, segmentation_scores, update_segmentation)
from orthojax.metrics.trivial import trivial_evaluation

__all__ = [
    "NORMAL_MASKS", "NORMAL_THRESHOLDS", "NYUV2_HIGHER_IS_BETTER", "NYUV2_HIGHER_IS_BETTER_BY_TASK",
    "PAPER_NYUV2_HIGHER_IS_BETTER", "PAPER_NYUV2_SINGLE_TASK", "SEGNET_NYUV2_STL", "SEGNET_NYUV2_STL_BY_TASK",
    "AngleCollector", "ClassificationState", "DepthState", "DepthStatistics", "NormalState", "SegmentationState",
    "accuracy", "collect_angles", "confusion_matrix", "delta_m", "delta_p", "depth_statistics", "exact_median",
    "finalize_classification", "finalize_depth", "finalize_normals", "finalize_segmentation", "harmonic_mean",
    "init_angle_collector", "init_classification", "init_depth", "init_normals", "init_segmentation",
    "normal_angles", "one_minus_abs_cos", "paper_nyuv2_metrics", "segmentation_scores", "update_classification",
    "update_depth", "update_normals", "update_segmentation", "valid_depth_mask", "valid_normal_mask",
    "trivial_evaluation",
]
