"""Multi-task methods behind one calling convention (see :mod:`orthojax.methods.base`)."""

from orthojax.methods.aggregation import (
    aligned_mtl,
    cagrad,
    dualproj,
    gradient_aggregation,
    imtl_g,
    mgda,
    pcgrad,
    upgrad,
)
from orthojax.methods.base import Method, MethodStep, MultiTaskProblem, last_shared_cosine
from orthojax.methods.cosreg import cosreg
from orthojax.methods.gradnorm import GradNormState, gradnorm
from orthojax.methods.recon import (
    ReconState,
    conflict_counts,
    conflict_scores,
    layer_cosines,
    layer_short_name,
    load_scores_json,
    recon,
    save_scores_json,
    select_conflict_layers,
    shared_layer_prefixes,
)
from orthojax.methods.loss_balancing import dwa, famo
from orthojax.methods.registry import METHODS, get_method, method_names
from orthojax.methods.rotograd import (
    RotoGradState,
    rotate_only,
    rotate_representations,
    rotation_matrices,
    rotograd,
    rotograd_norm,
)
from orthojax.methods.scalarization import equal, single_task, weighted_sum
from orthojax.methods.uncertainty import UncertaintyState, uncertainty

__all__ = [
    "aligned_mtl",
    "cagrad",
    "dualproj",
    "dwa",
    "famo",
    "gradient_aggregation",
    "imtl_g",
    "mgda",
    "pcgrad",
    "upgrad",
    "GradNormState",
    "METHODS",
    "Method",
    "MethodStep",
    "MultiTaskProblem",
    "ReconState",
    "RotoGradState",
    "UncertaintyState",
    "conflict_counts",
    "conflict_scores",
    "cosreg",
    "equal",
    "get_method",
    "gradnorm",
    "last_shared_cosine",
    "layer_cosines",
    "layer_short_name",
    "load_scores_json",
    "method_names",
    "recon",
    "rotate_only",
    "rotate_representations",
    "rotation_matrices",
    "rotograd",
    "rotograd_norm",
    "save_scores_json",
    "select_conflict_layers",
    "shared_layer_prefixes",
    "single_task",
    "uncertainty",
    "weighted_sum",
]
