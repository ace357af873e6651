"""orthojax: multi-task learning in JAX around CosReg, the orthogonal task-gradient regulariser.

Everything starts from one task-loss function (:mod:`orthojax.task_losses`)::

    task_losses_fn(params, *args) -> losses (T,)        # or (losses, aux) with has_aux=True

The core is pure functions of it: :func:`task_gradients` / :func:`task_jacobian` (per-task gradients of a
selected layer), :func:`cosine_matrix` / :func:`cosreg_penalty`, and :func:`loss_with_cosreg` (the
regularised objective, differentiated through the per-task gradients: its gradient is exact), with
:func:`loss_with_cosreg_split` for encoder/decoder models.

Where the rest lives:

* :mod:`orthojax.methods`: every multi-task method behind one calling convention, by name
  (:func:`build_method`, :func:`method_names`) or your own (``register``, ``"pkg.module:factory"``);
* :mod:`orthojax.aggregators`: the gradient aggregators as plain functions of a Jacobian;
* :mod:`orthojax.models`: the Flax models of the experiments;
* :mod:`orthojax.data`: datasets, embedded defaults and the batch iterator;
* :mod:`orthojax.training`: the compiled train step, the loop, sharding and checkpoints;
* :mod:`orthojax.metrics`: the field's metrics (segmentation, depth, normals, accuracy, Delta_m).
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
from orthojax.task_losses import TaskLossFn, from_outputs
from orthojax.methods import (  # noqa: E402  (the methods build on the core above)
    Method,
    MethodStep,
    MultiTaskProblem,
    build_method,
    get_method,
    method_names,
    method_spec,
    register,
)

__version__ = "0.1.0"

__all__ = [
    "CosRegAux",
    "Method",
    "MethodStep",
    "MultiTaskProblem",
    "TaskLossFn",
    "build_method",
    "cosine_matrix",
    "cosreg_penalty",
    "from_outputs",
    "get_method",
    "leaf_paths",
    "loss_with_cosreg",
    "loss_with_cosreg_split",
    "make_selection",
    "method_names",
    "method_spec",
    "penalty_from_cosine",
    "register",
    "select_subtree",
    "task_gradients",
    "task_jacobian",
]
