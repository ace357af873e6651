"""orthojax: multi-task learning in JAX around CosReg, the orthogonal task-gradient regulariser.

The core is three pure functions of a task-loss function ``fn(params, *args) -> losses (T,)``:
:func:`task_gradients` (per-task gradients of a selected layer), :func:`cosine_matrix` /
:func:`cosreg_penalty`, and :func:`loss_with_cosreg` (the regularised objective, differentiated through the
per-task gradients: its gradient is exact), with :func:`loss_with_cosreg_split` for encoder/decoder models.
"""

from orthojax.cosreg import (
    CosRegAux,
    cosine_matrix,
    cosreg_penalty,
    loss_with_cosreg,
    loss_with_cosreg_split,
    penalty_from_cosine,
)
from orthojax.jacobian import task_gradients, task_jacobian
from orthojax.select import leaf_paths, make_selection, select_subtree

__version__ = "0.1.0"

__all__ = [
    "CosRegAux",
    "cosine_matrix",
    "cosreg_penalty",
    "leaf_paths",
    "loss_with_cosreg",
    "loss_with_cosreg_split",
    "make_selection",
    "penalty_from_cosine",
    "select_subtree",
    "task_gradients",
    "task_jacobian",
]
