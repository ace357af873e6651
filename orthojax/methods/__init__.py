"""Multi-task methods behind one calling convention.

A method is a pair of pure functions built by a factory that validates its hyper-parameters:
``method.init(params, num_tasks) -> state`` and ``method.step(problem, params, state, batch, rng) ->
MethodStep`` (gradient for the optimiser, next state, loss, task losses, aux, metrics). ``problem``
(:class:`MultiTaskProblem`) is what a method may ask of the model; its ``task_losses(params, batch, rng)``
returns ``(losses (T,), aux)``: the task-loss contract of :mod:`orthojax.task_losses`.

Methods are registered by name (:mod:`orthojax.methods.registry`): :func:`build_method` builds any of
them, and a method of your own, in your own module, by reference (``"my_pkg.my_module:my_method"``).
Multi-stage methods (Recon, single task) carry their protocol (:mod:`orthojax.methods.protocol`).

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> from orthojax.methods import MultiTaskProblem, build_method
  >>> def task_losses(params, batch, rng):
  ...     x, ys = batch                                            # (B, 3) inputs, (B, 2) targets
  ...     h = jnp.tanh(x @ params["encoder"]["kernel"])            # the shared representation
  ...     preds = h @ params["heads"]["kernel"]                    # one output per task: (B, 2)
  ...     return jnp.mean((preds - ys) ** 2, axis=0), None         # losses (T,) and an aux
  >>> params = {"encoder": {"kernel": jnp.full((3, 4), 0.3)}, "heads": {"kernel": jnp.eye(4, 2)}}
  >>> batch = (jnp.linspace(-1.0, 1.0, 24).reshape(8, 3), jnp.zeros((8, 2)))
  >>> problem = MultiTaskProblem(task_losses, last_shared="encoder", shared="encoder")
  >>> method = build_method("cosreg", alpha=1.0)
  >>> state = method.init(params, num_tasks=2)
  >>> out = method.step(problem, params, state, batch, jax.random.key(0))
  >>> optimizer = optax.sgd(0.1)
  >>> updates, opt_state = optimizer.update(out.grads, optimizer.init(params), params)
  >>> params = optax.apply_updates(params, updates)
  >>> out.task_losses.shape, out.metrics["cosine"].shape
  ((2,), (2, 2))
"""

from orthojax.methods.base import Method, MethodStep, MultiTaskProblem, last_shared_cosine
from orthojax.methods.protocol import MultiStage, Outcome, PlannedStage, StageResult, Stages
from orthojax.methods.registry import (
    METHODS,
    REQUIRED,
    Hyperparameter,
    MethodSpec,
    RunContext,
    build_method,
    get_method,
    method_names,
    method_spec,
    register,
    resolve_method_name,
)

# every built-in method module registers its methods when imported
from orthojax.methods.aggregation import (
    AGGREGATORS as _AGGREGATORS,
    aligned_mtl,
    cagrad,
    config,
    dualproj,
    fairgrad,
    graddrop,
    gradient_aggregation,
    gradvac,
    imtl_g,
    mgda,
    nash_mtl,
    pcgrad,
    trimmed_mean,
    upgrad,
)
from orthojax.methods.cosreg import cosreg
from orthojax.methods.db_mtl import DBMTLState, db_mtl
from orthojax.methods.excess_mtl import ExcessMTLState, excess_mtl
from orthojax.methods.gls import gls
from orthojax.methods.imtl import IMTLState, imtl
from orthojax.methods.moco import MoCoState, moco
from orthojax.methods.modo import MoDoState, modo
from orthojax.methods.rlw import rlw
from orthojax.methods.sdmgrad import SDMGradState, sdmgrad
from orthojax.methods.stch import STCHState, stch
from orthojax.methods.gradnorm import GradNormState, gradnorm
from orthojax.methods.loss_balancing import DWAState, FAMOState, dwa, famo
from orthojax.methods.recon import ReconState, recon
from orthojax.methods.rotograd import RotoGradState, rotate_only, rotograd, rotograd_norm
from orthojax.methods.scalarization import SingleTaskState, equal, single_task, weighted_sum
from orthojax.methods.uncertainty import UncertaintyState, uncertainty

# the field's other spellings of the gradient-aggregation methods (LibMTL, TorchJD, the papers' tables)
_AGGREGATOR_ALIASES = {
    "pcgrad": ("pc_grad",),
    "cagrad": ("ca_grad",),
    "upgrad": ("up_grad",),
    "dualproj": ("dual_proj",),
    "imtl_g": ("imtlg",),
    "aligned_mtl": ("alignedmtl",),
}

# their names as the field's tables write them
_AGGREGATOR_LABELS = {
    "mgda": "MGDA", "pcgrad": "PCGrad", "imtl_g": "IMTL-G", "aligned_mtl": "Aligned-MTL", "upgrad": "UPGrad",
    "dualproj": "DualProj", "cagrad": "CAGrad", "nash_mtl": "Nash-MTL", "fairgrad": "FairGrad", "gradvac": "GradVac",
    "graddrop": "GradDrop", "config": "ConFIG", "krum": "Krum", "trimmed_mean": "TrimmedMean", "sum": "Sum",
    "mean": "Mean", "constant": "Constant",
}

for _name, _factory in _AGGREGATORS.items():
    if _name not in METHODS:
        register(_name, _factory, aliases=_AGGREGATOR_ALIASES.get(_name, ()), label=_AGGREGATOR_LABELS.get(_name))
del _name, _factory

__all__ = [
    # the calling convention
    "Method",
    "MethodStep",
    "MultiTaskProblem",
    "last_shared_cosine",
    # the registry
    "METHODS",
    "REQUIRED",
    "Hyperparameter",
    "MethodSpec",
    "RunContext",
    "build_method",
    "get_method",
    "method_names",
    "method_spec",
    "register",
    "resolve_method_name",
    # multi-stage protocols
    "MultiStage",
    "Outcome",
    "PlannedStage",
    "StageResult",
    "Stages",
    # the methods and their states
    "aligned_mtl",
    "cagrad",
    "config",
    "cosreg",
    "dualproj",
    "fairgrad",
    "graddrop",
    "gradvac",
    "nash_mtl",
    "trimmed_mean",
    "dwa",
    "equal",
    "famo",
    "gradient_aggregation",
    "gradnorm",
    "imtl_g",
    "mgda",
    "pcgrad",
    "recon",
    "rotate_only",
    "rotograd",
    "rotograd_norm",
    "single_task",
    "uncertainty",
    "upgrad",
    "weighted_sum",
    "db_mtl",
    "excess_mtl",
    "gls",
    "imtl",
    "moco",
    "modo",
    "rlw",
    "sdmgrad",
    "stch",
    "DWAState",
    "FAMOState",
    "GradNormState",
    "ReconState",
    "RotoGradState",
    "UncertaintyState",
    "DBMTLState",
    "ExcessMTLState",
    "IMTLState",
    "MoCoState",
    "MoDoState",
    "SDMGradState",
    "STCHState",
    "SingleTaskState",
]
