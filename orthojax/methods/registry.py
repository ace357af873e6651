"""Methods by name: ``get_method("cosreg", alpha=10.0)``.

Names: "single_task", "equal", "cosreg", "uncertainty", "gradnorm", "rotate_only", "rotograd",
"rotograd_norm", "recon", and the gradient-aggregation methods "mgda", "pcgrad", "imtl_g", "aligned_mtl",
"upgrad", "dualproj", "cagrad", with the loss-balancing "dwa" and "famo". Hyper-parameters are the factories' keyword arguments (e.g.
``get_method("rotograd", latent_size=20)``, ``get_method("recon", layers=(...), base="cosreg")``).

Names are matched case-insensitively and without regard to "-", "_", " " or ".", and the field's usual
spellings are accepted (:data:`ALIASES`): ``get_method("EW")``, ``"Equal"``, ``"IMTL-G"``, ``"Aligned-MTL"``,
``"UW"``, ``"STL"`` ... :func:`resolve_method_name` gives the registry name of any of them, and raises a
``KeyError`` listing the valid names and the closest ones for anything else.
"""

from __future__ import annotations

import inspect

import difflib
import re
from typing import Any, Callable, Iterable

from orthojax.methods.aggregation import AGGREGATORS
from orthojax.methods.base import Method
from orthojax.methods.loss_balancing import dwa, famo
from orthojax.methods.cosreg import cosreg
from orthojax.methods.gradnorm import gradnorm
from orthojax.methods.recon import recon
from orthojax.methods.rotograd import rotate_only, rotograd, rotograd_norm
from orthojax.methods.scalarization import equal, single_task
from orthojax.methods.uncertainty import uncertainty

__all__ = ["ALIASES", "METHODS", "close_method_names", "get_method", "method_names", "normalize_name",
           "resolve_method_name"]

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

# Other spellings of the registry names, as the literature and other libraries write them (LibMTL, torchjd,
# the papers' tables). Matched after normalize_name, so "IMTL-G", "imtl_g" and "ImtlG" are one entry.
ALIASES: dict[str, str] = {
    "ew": "equal",
    "equal_weight": "equal",
    "equal_weights": "equal",
    "equal_weighting": "equal",
    "equally_weighted": "equal",
    "uw": "uncertainty",
    "uncertainty_weight": "uncertainty",
    "uncertainty_weights": "uncertainty",
    "uncertainty_weighting": "uncertainty",
    "stl": "single_task",
    "single": "single_task",
    "single_task_learning": "single_task",
    "cos_reg": "cosreg",
    "grad_norm": "gradnorm",
    "pc_grad": "pcgrad",
    "ca_grad": "cagrad",
    "up_grad": "upgrad",
    "dual_proj": "dualproj",
    "imtlg": "imtl_g",
    "alignedmtl": "aligned_mtl",
    "roto_grad": "rotograd",
    "rotograd_only_rotation": "rotate_only",
    "rotation_only": "rotate_only",
}


def normalize_name(name: str) -> str:
    """The spelling-independent form of a method or row name: lower case, letters and digits only
    (``"IMTL-G"`` -> ``"imtlg"``)."""
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def _spellings() -> dict[str, str]:
    """normalize_name(spelling) -> registry name, for every registry name and alias."""
    table = {normalize_name(alias): target for alias, target in ALIASES.items()}
    table.update({normalize_name(name): name for name in METHODS})  # a registry name always wins
    return table


def method_names() -> list[str]:
    """The registered method names, sorted."""
    return sorted(METHODS)


def close_method_names(name: str, candidates: Iterable[str] | None = None, n: int = 3) -> list[str]:
    """Up to ``n`` names of ``candidates`` (default: the registry's) closest to ``name``, best first; each
    candidate is compared through its spellings (aliases included), case-insensitively."""
    names = list(method_names() if candidates is None else candidates)
    spellings: dict[str, str] = {normalize_name(c): c for c in names}
    for alias, target in ALIASES.items():
        if target in names:
            spellings.setdefault(normalize_name(alias), target)
    key = normalize_name(name)
    scored: dict[str, float] = {}
    for spelling, target in spellings.items():
        ratio = difflib.SequenceMatcher(None, key, spelling, autojunk=False).ratio()
        scored[target] = max(scored.get(target, 0.0), ratio)
    best = max(scored.values(), default=0.0)
    # the close ones: at least 0.6 similar, and not much further than the best (no tail of weak matches)
    ranked = sorted((t for t, r in scored.items() if r >= max(0.6, best - 0.1)), key=lambda t: (-scored[t], t))
    return ranked[:n]


def _or_list(names: list[str]) -> str:
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def resolve_method_name(name: str) -> str:
    """The registry name that ``name`` spells (``"EW"`` -> ``"equal"``, ``"IMTL-G"`` -> ``"imtl_g"``).

    Raises:
      KeyError: an unknown name; the message lists the closest and all valid names.
    """
    if not isinstance(name, str):
        raise TypeError(f"a method name must be a string; got {type(name).__name__}")
    if name in METHODS:
        return name
    found = _spellings().get(normalize_name(name))
    if found is None:
        close = close_method_names(name)
        hint = f"did you mean {_or_list(close)}? " if close else ""
        raise KeyError(f"unknown method {name!r}; {hint}known methods: {', '.join(method_names())} "
                       f"(case-insensitive; aliases such as EW, UW, STL, IMTL-G, Aligned-MTL are accepted)")
    return found


def get_method(name: str, **hyperparameters: Any) -> Method:
    """Builds the method registered as ``name`` (any spelling :func:`resolve_method_name` accepts) with its
    hyper-parameters.

    Raises:
      KeyError: an unknown name (the message lists the closest and all known ones).
      TypeError: a hyper-parameter the method does not take, or a required one missing (the message names
        the method's signature).
    """
    canonical = resolve_method_name(name)
    factory = METHODS[canonical]
    try:
        inspect.signature(factory).bind(**hyperparameters)
    except TypeError as error:
        raise TypeError(
            f"get_method({name!r}) -> {canonical}{inspect.signature(factory)}: {error}"
        ) from None
    return factory(**hyperparameters)
