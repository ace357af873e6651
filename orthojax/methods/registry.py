"""Methods by name: what each method is, what it takes, and how to build it.

A method module registers its factories here (``register("cosreg", cosreg, aliases=("cos_reg",))``);
:mod:`orthojax.methods` imports every built-in method module, so importing it fills the registry. This
module imports no method module: a user's method registers itself the same way, or is named by reference
(``"my_pkg.my_module:my_method"``) without registering at all.

Each registration is a :class:`MethodSpec`: the factory, its :class:`Hyperparameter` s (generated from the
factory's signature, annotations and docstring), what the method takes from the run when the user leaves
a hyper-parameter unset (``context``: e.g. RotoGrad's ``latent_size`` from the model) and, for multi-stage
methods (Recon, single task), the protocol that runs them (:mod:`orthojax.methods.protocol`).

Names are matched case-insensitively and without regard to "-", "_", " " or "."; the field's usual
spellings are aliases (:data:`ALIASES`): ``build_method("EW")``, ``"IMTL-G"``, ``"UW"``, ``"STL"``...

Example:
  >>> from orthojax.methods import build_method, method_spec
  >>> build_method("CosReg", alpha=1.0).name
  'cosreg'
  >>> method_spec("cosreg").hyperparameter("alpha").parse("0.5")
  0.5
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import importlib
import inspect
import re
import types
import typing
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional

__all__ = [
    "ALIASES", "METHODS", "REQUIRED", "Hyperparameter", "MethodSpec", "RunContext", "build_method",
    "close_method_names", "get_method", "hyperparameters_of", "method_names", "method_spec", "normalize_name",
    "register", "resolve_method_name",
]

_EMPTY: Mapping[str, Any] = types.MappingProxyType({})


class _Required:
    """The default of a hyper-parameter the user must give."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "REQUIRED"

    def __reduce__(self):
        return (_Required, ())


REQUIRED = _Required()
"""The ``default`` of a :class:`Hyperparameter` that has none."""

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_SIMPLE = (bool, int, float, str)


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
    """One hyper-parameter of a method: what the command line and the configs show and accept.

    Attributes:
      name: the factory's keyword.
      type: ``int``, ``float``, ``bool``, ``str``, ``tuple``, ``dict`` or None (any value; passed as given).
      default: the factory's default, or :data:`REQUIRED`.
      help: the text of the factory docstring's Args entry ("" when there is none).
      choices: the allowed values (from a ``Literal[...]`` annotation), or None.
      nullable: None is a valid value (an ``Optional[...]`` annotation or a None default).
      item_type: for ``tuple``: the type of its items (``Sequence[float]`` -> float), None for str.
      method: the registry name of the method it belongs to (for messages).
    """

    name: str
    type: Optional[type] = None
    default: Any = REQUIRED
    help: str = ""
    choices: Optional[tuple] = None
    nullable: bool = False
    item_type: Optional[type] = None
    method: str = ""

    @property
    def required(self) -> bool:
        """Whether the user (or the method's context) must give a value."""
        return self.default is REQUIRED

    def describe(self) -> str:
        """``name: type = default`` (``name: type (required)``), as the error messages list it."""
        kind = "any" if self.type is None else self.type.__name__
        if self.choices is not None:
            kind = "{" + ", ".join(map(str, self.choices)) + "}"
        return f"{self.name}: {kind}" + (" (required)" if self.required else f" = {self.default!r}")

    def parse(self, text: str) -> Any:
        """The value a command-line string stands for.

        bool: true / false / 1 / 0 / yes / no; int: an integer; float: a number; tuple: a comma-separated list
        (items converted to ``item_type``; "" is the empty tuple); dict: ``key=value`` pairs separated by
        commas (values stay strings); "none" is None when the hyper-parameter is nullable (or of any type).

        Raises:
          ValueError: the text is not such a value, or not one of ``choices``; the message names the method,
            the hyper-parameter, the text and what was expected.
        """
        if not isinstance(text, str):
            raise TypeError(f"{self._where()}: parse takes a string; got {type(text).__name__}")
        stripped = text.strip()
        if stripped.lower() == "none" and (self.nullable or self.type is None):
            return None
        try:
            value = _convert(self.type, stripped, self.item_type)
        except ValueError:
            raise ValueError(f"{self._where()}: cannot read {text!r} as {self._expected()}") from None
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self._where()}: {text!r} is not one of {', '.join(map(str, self.choices))}")
        return value

    def _where(self) -> str:
        return f"{self.method}: hyper-parameter {self.name!r}" if self.method else f"hyper-parameter {self.name!r}"

    def _expected(self) -> str:
        expected = {
            bool: "a boolean (true/false/1/0)", int: "an integer", float: "a number", str: "a string",
            dict: "key=value pairs separated by commas",
        }.get(self.type)
        if self.type is tuple:
            item = (self.item_type or str).__name__
            expected = f"a comma-separated list of {item}"
        expected = expected or "a value"
        return expected + (' or "none"' if self.nullable else "")


def _convert(kind: Optional[type], text: str, item_type: Optional[type]) -> Any:
    if kind is None or kind is str:
        return text
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(text)
    if kind is int:
        return int(text, 10)
    if kind is float:
        return float(text)
    if kind is tuple:
        if not text:
            return ()
        return tuple(_convert(item_type or str, part.strip(), None) for part in text.split(","))
    if kind is dict:
        out = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise ValueError(text)
            out[key.strip()] = value.strip()
        return out
    raise ValueError(text)


class RunContext(NamedTuple):
    """What a method may ask of the run and the model when the user leaves a hyper-parameter unset.

    Attributes:
      num_tasks: T.
      learning_rate: the model's (base) learning rate.
      steps_per_epoch: training steps in one epoch.
      latent_size: channels of the shared representation (None when the model does not say).
      model_kwargs: the model's options.
      shared_layer_names: the model's shared layer paths in architectural order (() when it does not say).
    """

    num_tasks: int
    learning_rate: float
    steps_per_epoch: int
    latent_size: Optional[int] = None
    model_kwargs: Mapping[str, Any] = _EMPTY
    shared_layer_names: tuple = ()


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Attributes:
      name: the registry name (the name its :class:`~orthojax.methods.base.Method` reports).
      factory: ``fn(**hyperparameters) -> Method``; validates eagerly.
      aliases: other spellings of ``name``.
      hyperparameters: the factory's keywords as :class:`Hyperparameter` s.
      summary: the first line of the factory's docstring.
      context: hyper-parameter name -> ``fn(RunContext) -> value``, used when the user does not set it.
      protocol: a multi-stage protocol (:class:`orthojax.methods.protocol.MultiStage`), or None for a method
        trained in one run.
      label: the method's name as the field's tables write it ("Nash-MTL"); the experiments' row labels.
      model_options: options the method needs the model to have (e.g. Recon retrains with
        ``task_specific_layers``); a model without one cannot run the method.
    """

    name: str
    factory: Callable[..., Any]
    aliases: tuple = ()
    hyperparameters: tuple = ()
    summary: str = ""
    context: Mapping[str, Callable[[RunContext], Any]] = dataclasses.field(default_factory=dict)
    protocol: Any = None
    label: str = ""
    model_options: tuple = ()

    def hyperparameter(self, name: str) -> Hyperparameter:
        """The hyper-parameter ``name``.

        Raises:
          KeyError: the method has none of that name (the message lists them).
        """
        for hp in self.hyperparameters:
            if hp.name == name:
                return hp
        raise KeyError(f"{self.name} has no hyper-parameter {name!r}; it takes {self.signature()}")

    def signature(self) -> str:
        """``"alpha: float = 10.0, ..."`` (``"no hyper-parameters"`` when it takes none)."""
        return ", ".join(hp.describe() for hp in self.hyperparameters) or "no hyper-parameters"

    def complete(self, hyperparameters: Mapping[str, Any], context: Optional[RunContext] = None) -> dict:
        """The user's hyper-parameters plus those the context gives (for the ones the user left unset).

        Defaults are not added; required ones may still be missing (:meth:`check` says so).

        Raises:
          TypeError: a name the method does not take (the message lists the valid ones, with types and
            defaults).
        """
        names = {hp.name for hp in self.hyperparameters}
        unknown = sorted(set(hyperparameters) - names)
        if unknown:
            raise TypeError(f"{self.name}: unknown hyper-parameter(s) {', '.join(map(repr, unknown))}; "
                            f"{self.name} takes {self.signature()}")
        out = dict(hyperparameters)
        if context is not None:
            for name, fn in self.context.items():
                if name not in out:
                    value = fn(context)
                    if value is not None or not self.hyperparameter(name).required:
                        out[name] = value
        return out

    def check(self, hyperparameters: Mapping[str, Any]) -> None:
        """Raises a TypeError when a required hyper-parameter is missing (or a name is unknown)."""
        self.complete(hyperparameters)
        missing = [hp.name for hp in self.hyperparameters if hp.required and hp.name not in hyperparameters]
        if missing:
            raise TypeError(f"{self.name}: missing required hyper-parameter(s) {', '.join(map(repr, missing))}; "
                            f"{self.name} takes {self.signature()}")

    def parse_strings(self, hyperparameters: Mapping[str, Any]) -> dict:
        """``hyperparameters`` with each string value of a non-string hyper-parameter read by
        :meth:`Hyperparameter.parse` (values given on a command line); other values unchanged.

        Raises:
          TypeError: an unknown name. ValueError: a string that does not parse.
        """
        self.complete(hyperparameters)
        out = {}
        for name, value in hyperparameters.items():
            hp = self.hyperparameter(name)
            needs = isinstance(value, str) and (hp.type not in (str, None) or hp.nullable)
            out[name] = hp.parse(value) if needs else value
        return out

    def with_defaults(self, hyperparameters: Mapping[str, Any]) -> dict:
        """Every hyper-parameter's value: the given ones, the defaults for the rest (required ones absent)."""
        out = {hp.name: hp.default for hp in self.hyperparameters if not hp.required}
        out.update(hyperparameters)
        return out


# ---------------------------------------------------------------------------------------------------------------
# Hyper-parameters from a factory
# ---------------------------------------------------------------------------------------------------------------


def _docstring_args(doc: Optional[str]) -> dict[str, str]:
    """``{name: help}`` from a Google-style docstring's ``Args:`` section (continuation lines joined)."""
    if not doc:
        return {}
    lines = inspect.cleandoc(doc).splitlines()
    out: dict[str, str] = {}
    inside, indent, current = False, None, None
    for line in lines:
        stripped = line.strip()
        if not inside:
            inside = stripped in ("Args:", "Arguments:", "Parameters:")
            continue
        if not stripped:
            continue
        here = len(line) - len(line.lstrip())
        if indent is None:
            indent = here
        if here < indent:
            break
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*(?:\s*,\s*[A-Za-z_][A-Za-z0-9_]*)*)\s*(?:\(.*?\))?:\s*(.*)$",
                         stripped)
        if here == indent and match:
            names = [n.strip() for n in match.group(1).split(",")]
            for n in names:
                out[n] = match.group(2).strip()
            current = names
        elif current:
            for n in current:
                out[n] = f"{out[n]} {stripped}".strip()
    return out


def _type_of(annotation: Any) -> tuple[Optional[type], bool, Optional[tuple], Optional[type]]:
    """(type, nullable, choices, item_type) of an annotation; type None where it is not a simple one."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return None, False, None, None
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is getattr(types, "UnionType", None):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(members) < len(typing.get_args(annotation))
        parsed = [_type_of(m) for m in members]
        simple = [p for p in parsed if p[0] is not None]
        if len(simple) == 1:
            kind, _, choices, item = simple[0]
            return kind, nullable, choices, item
        return None, nullable, None, None
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        kinds = {type(c) for c in choices}
        return (kinds.pop() if len(kinds) == 1 else None), None in choices, tuple(choices), None
    if annotation in _SIMPLE:
        return annotation, False, None, None
    if annotation is tuple or origin in (tuple, collections.abc.Sequence, list):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        items = {a for a in args if a in _SIMPLE}
        return tuple, False, None, (items.pop() if len(items) == 1 and len(args) >= 1 and args[0] in _SIMPLE
                                    and items != {str} else None)
    if annotation is dict or origin in (dict, collections.abc.Mapping):
        return dict, False, None, None
    return None, False, None, None


def hyperparameters_of(factory: Callable[..., Any], method: str = "") -> tuple[Hyperparameter, ...]:
    """The :class:`Hyperparameter` s of a factory: its keywords, with types from the annotations, defaults
    from the signature and help from the docstring's Args section.

    ``*args`` / ``**kwargs`` are left out. An annotation that is not a simple type (an optax transformation,
    a ``Method``) gives ``type=None``.

    Raises:
      TypeError: ``factory`` is not callable.
    """
    if not callable(factory):
        raise TypeError(f"a method factory must be callable; got {factory!r}")
    signature = inspect.signature(factory)
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # an annotation that does not resolve: fall back to the raw ones
        hints = {}
    helps = _docstring_args(inspect.getdoc(factory))
    out = []
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = hints.get(param.name, param.annotation)
        kind, nullable, choices, item = _type_of(annotation)
        default = REQUIRED if param.default is param.empty else param.default
        out.append(Hyperparameter(
            name=param.name, type=kind, default=default, help=helps.get(param.name, ""), choices=choices,
            nullable=nullable or default is None, item_type=item, method=method,
        ))
    return tuple(out)


# ---------------------------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------------------------

_SPECS: dict[str, MethodSpec] = {}

METHODS: dict[str, Callable[..., Any]] = {}
"""Registry name -> factory (kept in step with the registry)."""

ALIASES: dict[str, str] = {}
"""Other spelling -> registry name, as the literature and other libraries write them (LibMTL, TorchJD, the
papers' tables); matched after :func:`normalize_name`, so "IMTL-G", "imtl_g" and "ImtlG" are one entry."""


def _summary(factory: Callable[..., Any]) -> str:
    doc = inspect.getdoc(factory) or ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


def _make_spec(name: str, factory: Callable[..., Any], aliases: Iterable[str], context: Optional[Mapping],
               protocol: Any, hyperparameters: Optional[Iterable[Hyperparameter]], label: Optional[str] = None,
               model_options: Iterable[str] = ()) -> MethodSpec:
    hps = tuple(hyperparameters_of(factory, name) if hyperparameters is None else hyperparameters)
    for hp in hps:
        if not isinstance(hp, Hyperparameter):
            raise TypeError(f"register({name!r}): hyperparameters must be Hyperparameter objects; got {hp!r}")
    hps = tuple(hp if hp.method else dataclasses.replace(hp, method=name) for hp in hps)
    context = dict(context or {})
    names = {hp.name for hp in hps}
    for key, fn in context.items():
        if key not in names:
            raise ValueError(f"register({name!r}): context names {key!r}, which is not a hyper-parameter "
                             f"(it takes {', '.join(sorted(names)) or 'none'})")
        if not callable(fn):
            raise TypeError(f"register({name!r}): context[{key!r}] must be fn(RunContext) -> value; got {fn!r}")
    return MethodSpec(name=name, factory=factory, aliases=tuple(aliases), hyperparameters=hps,
                      summary=_summary(factory), context=types.MappingProxyType(context), protocol=protocol,
                      label=label or name, model_options=tuple(model_options))


def register(
    name: str,
    factory: Optional[Callable[..., Any]] = None,
    *,
    aliases: Iterable[str] = (),
    context: Optional[Mapping[str, Callable[[RunContext], Any]]] = None,
    protocol: Any = None,
    hyperparameters: Optional[Iterable[Hyperparameter]] = None,
    label: Optional[str] = None,
    model_options: Iterable[str] = (),
):
    """Registers ``factory`` (returning a :class:`~orthojax.methods.base.Method`) as ``name``.

    Usable as a call (``register("cosreg", cosreg)``) or a decorator (``@register("my_method")``).

    Args:
      name: the registry name, a non-empty string.
      factory: the factory; omitted when used as a decorator.
      aliases: other spellings accepted by :func:`resolve_method_name`.
      context: hyper-parameter -> ``fn(RunContext) -> value`` for values taken from the run when unset.
      protocol: a multi-stage protocol (:mod:`orthojax.methods.protocol`), None for a single run.
      hyperparameters: overrides the :class:`Hyperparameter` s generated by :func:`hyperparameters_of`.
      label: the name the field's tables give the method (default: ``name``).
      model_options: model options the method needs (:attr:`MethodSpec.model_options`).

    Returns:
      The :class:`MethodSpec` (a call) or the decorator (which returns the factory unchanged).

    Raises:
      ValueError: ``name`` or an alias is already taken, or is empty; a context entry names no
        hyper-parameter.
    """
    if not isinstance(name, str) or not normalize_name(name):
        raise ValueError(f"register: a method name must be a non-empty string; got {name!r}")

    def add(fn: Callable[..., Any]):
        spellings = _spellings()
        taken = spellings.get(normalize_name(name))
        if name in _SPECS or taken is not None:
            raise ValueError(f"register: a method named {name!r} is already registered"
                             + (f" (as {taken!r})" if taken and taken != name else ""))
        for alias in aliases:
            other = spellings.get(normalize_name(alias))
            if other is not None and other != name:
                raise ValueError(f"register({name!r}): alias {alias!r} already names {other!r}")
        spec = _make_spec(name, fn, aliases, context, protocol, hyperparameters, label, model_options)
        _SPECS[name] = spec
        METHODS[name] = fn
        for alias in aliases:
            ALIASES[alias] = name
        return spec

    if factory is None:
        def decorator(fn):
            add(fn)
            return fn
        return decorator
    return add(factory)


def normalize_name(name: str) -> str:
    """The spelling-independent form of a method or row name: lower case, letters and digits only
    (``"IMTL-G"`` -> ``"imtlg"``)."""
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def _spellings() -> dict[str, str]:
    """normalize_name(spelling) -> registry name, for every registry name and alias."""
    table = {normalize_name(alias): target for alias, target in ALIASES.items()}
    table.update({normalize_name(name): name for name in _SPECS})  # a registry name always wins
    return table


def method_names() -> list[str]:
    """The registered method names, sorted."""
    return sorted(_SPECS)


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

    A user reference (``"pkg.module:attr"``) resolves to itself.

    Raises:
      TypeError: ``name`` is not a string.
      KeyError: an unknown name; the message lists the closest and all valid names.
    """
    if not isinstance(name, str):
        raise TypeError(f"a method name must be a string; got {type(name).__name__}")
    if name in _SPECS or _is_reference(name):
        return name
    found = _spellings().get(normalize_name(name))
    if found is None:
        close = close_method_names(name)
        hint = f"did you mean {_or_list(close)}? " if close else ""
        raise KeyError(f"unknown method {name!r}; {hint}known methods: {', '.join(method_names())} "
                       f"(case-insensitive; aliases such as EW, UW, STL, IMTL-G, Aligned-MTL are accepted; "
                       f"a method of your own as 'package.module:factory')")
    return found


def _is_reference(name: str) -> bool:
    return ":" in name


def _load_reference(reference: str) -> MethodSpec:
    """The :class:`MethodSpec` that ``"pkg.module:attr"`` names (a factory, a MethodSpec or a Method)."""
    from orthojax.methods.base import Method  # base is a leaf too: no import circle

    module_name, _, attr = reference.partition(":")
    usage = ("a method reference is 'package.module:attr', attr a factory returning a Method, a MethodSpec "
             "or a Method")
    if not module_name or not attr or not all(p.isidentifier() for p in module_name.split(".")) \
            or not all(p.isidentifier() for p in attr.split(".")):
        raise KeyError(f"method reference {reference!r} is malformed: {usage}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise KeyError(f"method reference {reference!r}: cannot import module {module_name!r} "
                       f"({type(error).__name__}: {error}); {usage}") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise KeyError(f"method reference {reference!r}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if isinstance(target, MethodSpec):
        return target
    if isinstance(target, Method):
        instance = target
        return MethodSpec(name=reference, factory=lambda: instance, summary=f"the method {instance.name!r}")
    if callable(target):
        return _make_spec(reference, target, (), None, None, None)
    raise KeyError(f"method reference {reference!r} is a {type(target).__name__}, not callable: {usage}")


def method_spec(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of a registry name, an alias (any spelling) or a user reference
    ``"pkg.module:attr"`` (attr: a factory returning a Method, a :class:`MethodSpec`, or a Method instance,
    which then takes no hyper-parameters).

    Raises:
      TypeError: ``name`` is not a string.
      KeyError: an unknown name (closest and all valid names listed), or a reference that cannot be loaded
        (the module, the attribute and why).
    """
    canonical = resolve_method_name(name)
    if canonical in _SPECS:
        return _SPECS[canonical]
    return _load_reference(canonical)


def build_method(name: str, context: Optional[RunContext] = None, **hyperparameters: Any):
    """Builds a method: ``name`` resolved by :func:`method_spec`, the hyper-parameters the user left unset
    taken from ``context`` where the method says how (:attr:`MethodSpec.context`), the rest defaults.

    Args:
      name: registry name, alias or ``"pkg.module:attr"``.
      context: the run (:class:`RunContext`), or None.
      **hyperparameters: the factory's keywords.

    Returns:
      The :class:`~orthojax.methods.base.Method`; its ``hyperparameters`` hold every value it was built with
      (defaults included).

    Raises:
      KeyError: an unknown method.
      TypeError: an unknown or missing hyper-parameter (the message lists the valid ones with types and
        defaults), or a factory that does not return a Method.
      ValueError: a value the factory refuses (raised by the factory, naming the hyper-parameter).
    """
    from orthojax.methods.base import Method

    spec = method_spec(name)
    values = spec.complete(hyperparameters, context)
    spec.check(values)
    method = spec.factory(**values)
    if not isinstance(method, Method):
        raise TypeError(f"{spec.name}: the factory returned {type(method).__name__}, not an "
                        f"orthojax.methods.Method")
    if not method.hyperparameters:
        method = method._replace(hyperparameters=types.MappingProxyType(spec.with_defaults(values)))
    return method


def get_method(name: str, **hyperparameters: Any):
    """Builds the method ``name`` with its hyper-parameters (:func:`build_method` without a run context)."""
    return build_method(name, None, **hyperparameters)
