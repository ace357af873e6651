"""Methods by name: ``get_method("cosreg", alpha=10.0)``.

Names: "single_task", "equal", "cosreg", "uncertainty", "gradnorm", "rotate_only", "rotograd",
"rotograd_norm", "recon", and the gradient-aggregation methods "mgda", "pcgrad", "imtl_g", "aligned_mtl",
"upgrad", "dualproj", "cagrad", with the loss-balancing "dwa" and "famo". Hyper-parameters are the factories' keyword arguments (e.g.
``get_method("rotograd", latent_size=20)``, ``get_method("recon", layers=(...), base="cosreg")``).
"""

from __future__ import annotations

from typing import Any, Callable

from orthojax.methods.aggregation import AGGREGATORS
from orthojax.methods.base import Method
from orthojax.methods.loss_balancing import dwa, famo
from orthojax.methods.cosreg import cosreg
from orthojax.methods.gradnorm import gradnorm
from orthojax.methods.recon import recon
from orthojax.methods.rotograd import rotate_only, rotograd, rotograd_norm
from orthojax.methods.scalarization import equal, single_task
from orthojax.methods.uncertainty import uncertainty

__all__ = ["METHODS", "get_method", "method_names"]

METHODS: dict[str, Callable[..., Method]] = {
    "equal": equal,
    "single_task": single_task,
    "cosreg": cosreg,
    "uncertainty": uncertainty,
    "gradnorm": gradnorm,
    "rotate_only": rotate_only,
    "rotograd": rotograd,
    "rotograd_norm": rotograd_norm,
    "recon": recon,
    **AGGREGATORS,
    "dwa": dwa,
    "famo": famo,
}


def method_names() -> list[str]:
    """The registered method names, sorted."""
    return sorted(METHODS)


def get_method(name: str, **hyperparameters: Any) -> Method:
    """Builds the method registered as ``name`` with its hyper-parameters.

    Raises:
      KeyError: an unknown name (the message lists the known ones).
      TypeError: a hyper-parameter the method does not take.
    """
    try:
        factory = METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known methods: {method_names()}") from None
    return factory(**hyperparameters)
