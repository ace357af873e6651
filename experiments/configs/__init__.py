"""Experiment configurations as data: typed, frozen, overridable field by field, saved with every table.

An experiment's configuration is an :class:`ExperimentConfig`: the training protocol (:class:`Train`), the
data options and the model options (dataclasses of the experiment, see ``experiments.configs.nyuv2`` and its
siblings), the table rows to run and the hyper-parameters of the methods. Each experiment module here gives
``get_config(preset)`` for its presets ("quick": minutes on a CPU; "paper": the paper's protocol), in the
manner of the flax examples' ``configs/`` directories.

Any field can be changed from the command line, as text, by its dotted path::

    train.lr=3e-4            train.seeds=0,4,7         data.image_size=32,32        model.width=0.25
    methods.cosreg.alpha=1   methods.recon.k=2         methods.my_pkg.my_module:my_method.weight=2

Text is converted by the field's type (int, float, bool, str, optional, tuples) and checked by the section's
own validation; a method's hyper-parameter by :meth:`orthojax.methods.registry.Hyperparameter.parse`. Every
error is a :class:`ConfigError` that names the field, the text and what was expected.

A table's resolved configuration is written to ``<workdir>/config.json`` (:func:`save_config`) and read back
with :func:`load_config`; :func:`config_changes` lists what a resumed command would change.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

__all__ = ["CONFIG_FILE", "RESUMABLE_FIELDS", "ConfigError", "ExperimentConfig", "Train", "apply_override", "preset_getter",
           "apply_overrides", "config_changes", "config_from_dict", "config_to_dict", "flatten", "load_config",
           "method_key", "parse_bool", "parse_field", "parse_seeds", "save_config", "split_override"]

CONFIG_FILE = "config.json"

RESUMABLE_FIELDS = ("train.max_steps", "train.checkpoint_every", "train.epochs", "train.seeds", "train.vmap_seeds",
                    "rows")
"""Fields a resumed (or evaluated) table may change: the loop's cadence and length, its seeds and the rows
run (each run's own ``config.json`` still refuses changes that alter a run: see
:func:`orthojax.training.check_workdir`). Any other change is refused."""


class ConfigError(ValueError):
    """A configuration value, an override or a saved ``config.json`` that cannot be used."""


# ------------------------------------------------------------------------------------------------------------
# Parsing text by type
# ------------------------------------------------------------------------------------------------------------

def parse_bool(text: str) -> bool:
    """"true"/"false", "1"/"0", "yes"/"no", "on"/"off" (any case).

    Raises:
      ValueError: anything else.
    """
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (true/false); got {text!r}")


def parse_seeds(text: str) -> tuple[int, ...]:
    """"3" -> (0, 1, 2); "0,4,7" -> (0, 4, 7) (distinct, >= 0).

    Raises:
      ValueError: not integers, empty, a count below 1, a negative or a repeated seed.
    """
    items = _items(text)
    try:
        values = [int(x) for x in items]
    except ValueError:
        raise ValueError(f"expected a count or a comma-separated list of integers; got {text!r}") from None
    if not values:
        raise ValueError("no seeds given; give a count (e.g. 3) or a list (e.g. 0,4,7)")
    if len(values) == 1:
        if values[0] < 1:
            raise ValueError(f"a seed count must be >= 1; got {values[0]}")
        return tuple(range(values[0]))
    return tuple(values)


def _items(text: str) -> list[str]:
    return [item for part in text.replace(",", " ").split() if (item := part.strip())]


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "none"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a comma-separated list of {_type_name(args[0])}"
        return f"{len(args)} comma-separated {'/'.join(sorted({_type_name(a) for a in args}))}"
    return {int: "int", float: "float", bool: "bool (true/false)", str: "str"}.get(tp, getattr(tp, "__name__", str(tp)))


def _parse_scalar(tp: Any, text: str) -> Any:
    if tp is bool:
        return parse_bool(text)
    if tp is int:
        return int(text.strip())
    if tp is float:
        value = float(text.strip())
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number; got {text!r}")
        return value
    if tp is str:
        return text
    raise TypeError(f"no text conversion for type {tp!r}")


def parse_field(tp: Any, text: str) -> Any:
    """``text`` as a value of the annotation ``tp`` (int, float, bool, str, ``Optional[...]``, ``tuple[T, ...]``,
    ``tuple[T1, T2]``); "none" gives None where ``tp`` allows it.

    Raises:
      ValueError: the text is not of that type (the message says what was expected).
    """
    try:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            args = typing.get_args(tp)
            if type(None) in args and text.strip().lower() in ("none", "null"):
                return None
            inner = [a for a in args if a is not type(None)]
            errors = []
            for option in inner:
                try:
                    return parse_field(option, text)
                except ValueError as error:
                    errors.append(error)
            raise errors[0]
        if origin is tuple:
            args = typing.get_args(tp)
            items = _items(text)
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_parse_scalar(args[0], item) for item in items)
            if len(items) != len(args):
                raise ValueError(f"{len(items)} values")
            return tuple(_parse_scalar(a, item) for a, item in zip(args, items))
        return _parse_scalar(tp, text)
    except ValueError as error:
        raise ValueError(f"expected {_type_name(tp)}; got {text!r} ({error})") from None


# ------------------------------------------------------------------------------------------------------------
# The sections
# ------------------------------------------------------------------------------------------------------------

def _check(condition: bool, field: str, value: Any, expected: str) -> None:
    if not condition:
        raise ConfigError(f"{field} must be {expected}; got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Train:
    """The training protocol of a table.

    Attributes:
      epochs: training epochs, >= 1.
      batch_size: global training batch size, >= 1 (every process loads its slice).
      lr: Adam's learning rate, > 0.
      seeds: the seeds run (distinct, >= 0); text: a count ``N`` (seeds 0..N-1) or a list.
      eval_batch_size: global evaluation batch size, >= 1.
      lr_decay_every_epochs: 0 for a constant learning rate, else x ``lr_decay_factor`` every this many epochs.
      lr_decay_factor: the step decay's factor, in (0, 1].
      max_steps: stop each run after this many steps (None: ``epochs`` full epochs).
      checkpoint_every: also checkpoint every this many steps (0: at epoch ends and at the end only).
      vmap_seeds: train the seeds of a row in one program (``jax.vmap``) instead of one after another.
    """

    epochs: int
    batch_size: int
    lr: float
    seeds: tuple[int, ...] = dataclasses.field(default=(0,), metadata={"parse": parse_seeds})
    eval_batch_size: int = 64
    lr_decay_every_epochs: int = 0
    lr_decay_factor: float = 0.5
    max_steps: Optional[int] = None
    checkpoint_every: int = 0
    vmap_seeds: bool = False

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size"):
            _check(_is_int(getattr(self, name)) and getattr(self, name) >= 1, f"train.{name}", getattr(self, name),
                   "an integer >= 1")
        for name in ("lr_decay_every_epochs", "checkpoint_every"):
            _check(_is_int(getattr(self, name)) and getattr(self, name) >= 0, f"train.{name}", getattr(self, name),
                   "an integer >= 0")
        _check(self.max_steps is None or (_is_int(self.max_steps) and self.max_steps >= 1), "train.max_steps",
               self.max_steps, "an integer >= 1 or none")
        _check(isinstance(self.lr, (int, float)) and not isinstance(self.lr, bool) and math.isfinite(self.lr)
               and self.lr > 0, "train.lr", self.lr, "a finite number > 0")
        _check(isinstance(self.lr_decay_factor, (int, float)) and 0 < self.lr_decay_factor <= 1,
               "train.lr_decay_factor", self.lr_decay_factor, "a number in (0, 1]")
        _check(isinstance(self.vmap_seeds, bool), "train.vmap_seeds", self.vmap_seeds, "true or false")
        seeds = self.seeds
        _check(isinstance(seeds, tuple) and len(seeds) > 0 and all(_is_int(s) and s >= 0 for s in seeds),
               "train.seeds", seeds, "a non-empty tuple of integers >= 0")
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        _check(not repeated, "train.seeds", seeds, f"distinct (seeds {repeated} would share a workdir)")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything a table of an experiment depends on.

    Attributes:
      experiment: the experiment's name ("nyuv2", "sunrgbd", "multidigit_mnist").
      preset: the preset it started from ("quick", "paper").
      train: the training protocol.
      data: the experiment's data options (a frozen dataclass).
      model: the experiment's model options (a frozen dataclass).
      rows: the table rows to run, in order: rows of the paper's table, registry method names, or user
        methods ``"my_pkg.my_module:attr"``.
      methods: hyper-parameters by method (registry name or user reference), used by every row of that
        method that does not fix them itself: ``{"cosreg": {"alpha": 10.0}}``. Read-only.
      sweep: the experiment's sweep grid (a frozen dataclass), or None where it has none.
    """

    experiment: str
    preset: str
    train: Train
    data: Any
    model: Any
    rows: tuple[str, ...]
    methods: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    sweep: Any = None

    def __post_init__(self):
        _check(isinstance(self.rows, tuple) and len(self.rows) > 0 and all(isinstance(r, str) and r for r in self.rows),
               "rows", self.rows, "a non-empty tuple of row names")
        repeated = sorted({r for r in self.rows if self.rows.count(r) > 1})
        _check(not repeated, "rows", self.rows, f"distinct (rows {repeated} are given twice)")
        _check(isinstance(self.methods, Mapping) and all(isinstance(v, Mapping) for v in self.methods.values()),
               "methods", self.methods, "a mapping from method names to hyper-parameter mappings")


# ------------------------------------------------------------------------------------------------------------
# Overrides
# ------------------------------------------------------------------------------------------------------------

def preset_getter(experiment: str, presets: Mapping[str, Callable[[], "ExperimentConfig"]]
                  ) -> Callable[[str], "ExperimentConfig"]:
    """``get_config(preset="quick") -> ExperimentConfig`` for an experiment whose presets are functions.

    Raises (from the returned function):
      ConfigError: an unknown preset (the message lists the experiment's presets).
    """
    def get_config(preset: str = "quick") -> ExperimentConfig:
        if preset not in presets:
            raise ConfigError(f"unknown preset {preset!r} for {experiment}; presets: {', '.join(presets)}")
        return presets[preset]()

    get_config.__doc__ = (f"The {experiment} configuration of ``preset`` ({', '.join(map(repr, presets))}).\n\n"
                          f"    Raises:\n      ConfigError: an unknown preset.\n")
    return get_config


def split_override(text: str) -> tuple[str, str]:
    """``"train.lr=3e-4"`` -> ``("train.lr", "3e-4")``.

    Raises:
      ConfigError: no ``=`` or an empty path.
    """
    path, sep, value = text.partition("=")
    if not sep or not path.strip():
        raise ConfigError(f"override {text!r}: expected FIELD=VALUE, e.g. train.lr=3e-4 or methods.cosreg.alpha=1")
    return path.strip(), value.strip()


def method_key(name: str) -> str:
    """The key of ``config.methods`` for a method name: its registry name for any accepted spelling
    (``"CosReg"`` -> ``"cosreg"``), a user reference ``"pkg.module:attr"`` unchanged.

    Raises:
      ConfigError: an unknown registry name (the message lists the known ones).
    """
    from orthojax.methods.registry import resolve_method_name

    try:
        return resolve_method_name(name)
    except KeyError as error:
        raise ConfigError(error.args[0]) from None


def _hyperparameter(method: str, name: str, path: str):
    """The :class:`~orthojax.methods.registry.Hyperparameter` ``name`` of ``method`` (registry or reference)."""
    from orthojax.methods.registry import method_spec

    try:
        return method_spec(method).hyperparameter(name)
    except KeyError as error:
        raise ConfigError(f"{path}: {error.args[0]}") from None


def _override_method(config: ExperimentConfig, path: str, text: str) -> ExperimentConfig:
    body = path[len("methods."):]
    method, dot, name = body.rpartition(".")
    if not dot or not method or not name:
        raise ConfigError(f"{path}: expected methods.<method>.<hyper-parameter>=VALUE, e.g. methods.cosreg.alpha=1")
    try:
        key = method_key(method)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    hyperparameter = _hyperparameter(key, name, path)
    try:
        value = hyperparameter.parse(text)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{path}: {error.args[0] if error.args else error}") from None
    methods = {k: dict(v) for k, v in config.methods.items()}
    methods.setdefault(key, {})[name] = value
    return dataclasses.replace(config, methods=methods)


def _replace_path(obj: Any, parts: Sequence[str], text: str, path: str, parsers: Mapping[str, Callable]) -> Any:
    if not dataclasses.is_dataclass(obj):
        raise ConfigError(f"unknown field {path!r}: {'.'.join(parts[:-1]) or 'the config'} has no fields")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    name = parts[0]
    if name not in fields:
        prefix = path[: len(path) - len(".".join(parts))]
        raise ConfigError(f"unknown field {path!r}; fields here: {', '.join(prefix + f for f in fields)}")
    if len(parts) > 1:
        value = _replace_path(getattr(obj, name), parts[1:], text, path, parsers)
    else:
        if dataclasses.is_dataclass(getattr(obj, name)):
            raise ConfigError(f"{path} is a section; set one of its fields, e.g. {path}."
                              f"{dataclasses.fields(getattr(obj, name))[0].name}=...")
        parse = parsers.get(path) or fields[name].metadata.get("parse")
        try:
            if parse is not None:
                value = parse(text)
            else:
                value = parse_field(typing.get_type_hints(type(obj))[name], text)
        except (ValueError, TypeError, KeyError) as error:
            raise ConfigError(f"{path}: {error.args[0] if error.args else error}") from None
        choices = fields[name].metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{path}: expected one of {', '.join(map(str, choices))}; got {text!r}")
    try:
        return dataclasses.replace(obj, **{name: value})
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{path}: {error}") from None


def apply_override(config: ExperimentConfig, path: str, text: str,
                   parsers: Optional[Mapping[str, Callable[[str], Any]]] = None) -> ExperimentConfig:
    """``config`` with the field at ``path`` set from ``text``.

    Args:
      config: the configuration.
      path: a dotted field path ("train.lr", "data.image_size") or "methods.<method>.<hyper-parameter>",
        where <method> is any spelling of a registry method or a user reference "pkg.module:attr".
      text: the value as typed on the command line.
      parsers: field path -> ``fn(text) -> value`` for fields whose text needs the experiment's knowledge
        (e.g. "rows", resolved against the experiment's table).

    Raises:
      ConfigError: an unknown field, method or hyper-parameter (the message lists the valid ones), or a
        value of the wrong type or out of range (the message names the field and what was expected).
    """
    if path.startswith("methods."):
        return _override_method(config, path, text)
    return _replace_path(config, path.split("."), text, path, dict(parsers or {}))


def apply_overrides(config: ExperimentConfig, overrides: Iterable[str],
                    parsers: Optional[Mapping[str, Callable[[str], Any]]] = None) -> ExperimentConfig:
    """Every ``"FIELD=VALUE"`` of ``overrides`` in order (see :func:`apply_override`)."""
    for item in overrides:
        path, text = split_override(item)
        config = apply_override(config, path, text, parsers)
    return config


# ------------------------------------------------------------------------------------------------------------
# JSON
# ------------------------------------------------------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def config_to_dict(config: ExperimentConfig) -> dict:
    """The configuration as JSON-ready dicts and lists."""
    return _jsonable(config)


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _from_dict(template: Any, data: Any, where: str, source: str) -> Any:
    """A dataclass of ``template``'s class from ``data``, each nested dataclass field from its template."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {where or 'the config'} must be an object; got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(template)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {', '.join(where + k for k in unknown)}; expected "
                          f"{', '.join(where + k for k in fields)}")
    values = {}
    for name, value in data.items():
        current = getattr(template, name)
        if dataclasses.is_dataclass(current) and value is not None:
            values[name] = _from_dict(current, value, f"{where}{name}.", source)
        elif name == "methods":
            values[name] = {str(k): dict(_tuples(v)) for k, v in (value or {}).items()}
        else:
            values[name] = _tuples(value)
    try:
        return dataclasses.replace(template, **values)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{source}: {error}") from None


def config_from_dict(data: Mapping[str, Any], template: ExperimentConfig, source: str = "config") -> ExperimentConfig:
    """The configuration that :func:`config_to_dict` gave, rebuilt with ``template``'s section classes (the
    experiment's preset); fields missing from ``data`` keep ``template``'s values.

    Raises:
      ConfigError: another experiment's configuration, unknown fields, or values that fail validation
        (``source`` names where the data came from).
    """
    if data.get("experiment", template.experiment) != template.experiment:
        raise ConfigError(f"{source} is a {data.get('experiment')!r} configuration, not {template.experiment!r}")
    return _from_dict(template, data, "", source)


def save_config(config: ExperimentConfig, workdir: str) -> str:
    """Writes ``<workdir>/config.json`` (atomically); returns its path."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, CONFIG_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(config_to_dict(config), f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def load_config(workdir: str, template: ExperimentConfig) -> Optional[ExperimentConfig]:
    """The configuration saved in ``<workdir>/config.json`` (None when there is none).

    Raises:
      ConfigError: the file is not JSON or not a configuration of ``template``'s experiment.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not a readable configuration ({error})") from None
    if not isinstance(data, Mapping) or "train" not in data:
        raise ConfigError(f"{path}: not a table configuration (no 'train' section)")
    return config_from_dict(data, template, source=path)


def flatten(value: Any, prefix: str = "") -> dict:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (dataclasses and mappings; lists are values)."""
    if dataclasses.is_dataclass(value):
        value = config_to_dict(value)
    out: dict = {}
    if isinstance(value, Mapping) and (value or not prefix):
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    out[prefix[:-1]] = _jsonable(value)
    return out


def config_changes(saved: ExperimentConfig, new: ExperimentConfig,
                   may_change: Sequence[str] = RESUMABLE_FIELDS) -> list[tuple[str, Any, Any]]:
    """``(field, saved value, new value)`` for every field that differs, except those of ``may_change``."""
    old, now = flatten(saved), flatten(new)
    return [(k, old.get(k), now.get(k)) for k in sorted(set(old) | set(now))
            if k not in may_change and old.get(k) != now.get(k)]
