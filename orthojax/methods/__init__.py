"""Multi-task methods behind one calling convention (see :mod:`orthojax.methods.base`)."""

from orthojax.methods.base import Method, MethodStep, MultiTaskProblem, last_shared_cosine
from orthojax.methods.cosreg import cosreg
from orthojax.methods.registry import METHODS, get_method, method_names
from orthojax.methods.scalarization import equal, single_task, weighted_sum

__all__ = [
    "METHODS",
    "Method",
    "MethodStep",
    "MultiTaskProblem",
    "cosreg",
    "equal",
    "get_method",
    "last_shared_cosine",
    "method_names",
    "single_task",
    "weighted_sum",
]
