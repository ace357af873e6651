"""Methods by name: ``get_method("cosreg", alpha=10.0)``."""

from __future__ import annotations

from typing import Any, Callable

from orthojax.methods.base import Method
from orthojax.methods.cosreg import cosreg
from orthojax.methods.scalarization import equal, single_task

__all__ = ["METHODS", "get_method", "method_names"]

METHODS: dict[str, Callable[..., Method]] = {
    "equal": equal,
    "single_task": single_task,
    "cosreg": cosreg,
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
