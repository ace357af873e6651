"""The command line of every experiment, generated from its configuration and the method registry.

``python -m experiments.<name> [flags]`` resolves to one :class:`Command`: the table's
:class:`~experiments.configs.ExperimentConfig` (a preset, then every override in the order given) and how
to run it (workdir, resume, eval-only, devices). Overrides:

- ``--set FIELD=VALUE`` (or ``--config.FIELD=VALUE``) for any field: ``--set train.lr=3e-4``,
  ``--set methods.cosreg.alpha=1``, ``--set methods.recon.k=2``, ``--set data.image_size=32,32``;
- the shorthands users type (:data:`COMMON_SHORTHANDS` and the experiment's own): ``--lr 3e-4`` is
  ``--set train.lr=3e-4``, ``--alpha 1`` is ``--set methods.cosreg.alpha=1``, ``--methods`` sets the rows.

``--list-methods`` prints every registered method with its hyper-parameters (type, default, help).
A bad value is one ``prog: error: ...`` line naming the flag or field and what was expected (exit status 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
from typing import Any, Callable, Mapping, Optional, Sequence

from experiments.configs import (
    ConfigError, ExperimentConfig, apply_override, config_changes, load_config, split_override,
)
from orthojax.methods.registry import close_method_names, method_names, method_spec, normalize_name, resolve_method_name

__all__ = ["COMMON_SHORTHANDS", "SEGNET_SHORTHANDS", "Command", "Distributed", "Experiment", "Shorthand", "build_parser", "existing_path",
           "list_methods", "number", "parse_command", "parse_list", "parse_rows", "resolve_row", "row_key",
           "workdir_path"]


def parse_list(text: str) -> list[str]:
    """"a,b c" -> ["a", "b", "c"]."""
    return [item for part in text.replace(",", " ").split() if (item := part.strip())]


def number(kind: type = float, *, minimum: float | None = None, above: float | None = None,
           maximum: float | None = None) -> Callable[[str], float]:
    """An argparse ``type``: an int or a finite float, within the bounds given (``above``: strictly)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}; got {text!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number; got {text!r}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum:g}; got {text}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be > {above:g}; got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum:g}; got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = number(int, minimum=1)


def existing_path(kind: str = "any") -> Callable[[str], str]:
    """A field parser: a path that exists ("dir": a directory, "file": a file); "none" is None.

    Raises:
      ValueError: the path does not exist or is of the other kind.
    """

    def parse(text: str) -> Optional[str]:
        if text.strip().lower() == "none":
            return None
        path = os.path.expanduser(text)
        if not os.path.exists(path):
            raise ValueError(f"{text} does not exist")
        if kind == "dir" and not os.path.isdir(path):
            raise ValueError(f"{text} is not a directory")
        if kind == "file" and not os.path.isfile(path):
            raise ValueError(f"{text} is not a file")
        return path

    return parse


def workdir_path(text: str) -> str:
    """``--workdir``: a directory, or a path where one can be made (not a file, nor under one)."""
    path = os.path.expanduser(text)
    if not path.strip():
        raise argparse.ArgumentTypeError("--workdir is empty")
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise argparse.ArgumentTypeError(f"{text}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text}: {probe} is not writable")
    return path


# ------------------------------------------------------------------------------------------------------------
# Rows
# ------------------------------------------------------------------------------------------------------------

def row_key(name: str) -> str:
    """The key (and directory name) of the row that runs ``name``: a user reference "pkg.mod:attr" becomes
    "pkg.mod.attr"; other names are keys already."""
    return re.sub(r"[^0-9A-Za-z_.-]", ".", name)


def _unknown_rows_message(names: Sequence[str], rows: Sequence[str]) -> str:
    valid = sorted(set(rows) | set(method_names()))
    parts = []
    for name in names:
        close = close_method_names(name, valid)
        parts.append(f"{name!r} (did you mean {' or '.join(repr(c) for c in close)}?)" if close else repr(name))
    return (f"unknown row{'s' if len(names) > 1 else ''} {', '.join(parts)}; valid rows: {', '.join(valid)}, or all "
            f"(every registered method) (case-insensitive; aliases such as EW, UW, STL, IMTL-G, Aligned-MTL are "
            f"accepted; a method of your own as package.module:factory)")


def resolve_row(name: str, rows: Sequence[str]) -> str:
    """The table row that ``name`` spells: one of the benchmark's ``rows`` or a registry method, matched
    case-insensitively and with the field's usual spellings ("Equal", "EW", "IMTL-G", "STL", ...), or a user
    method "pkg.module:attr" (checked: it must load).

    Raises:
      KeyError: an unknown name (the message names the closest rows and lists the valid ones), or a user
        reference that cannot be loaded (the message says why).
    """
    if name in rows:
        return name
    by_key = {normalize_name(r): r for r in rows}
    if ":" not in name and normalize_name(name) in by_key:
        return by_key[normalize_name(name)]
    if ":" in name:
        method_spec(name)  # KeyError: the module, the attribute and why
        return name
    try:
        return resolve_method_name(name)
    except KeyError:
        raise KeyError(_unknown_rows_message([name], rows)) from None


def parse_rows(text: str, rows: Sequence[str]) -> list[str]:
    """``--methods``: "Equal, cosreg" -> ["equal", "cosreg"]; "all" is every registered method; every name
    is checked (:func:`resolve_row`) before anything runs.

    Raises:
      ValueError: an empty list, unknown names (all of them, in one message), a user method that does not
        load, or a row given twice.
    """
    items = parse_list(text)
    if not items:
        raise ValueError("no rows given; e.g. --methods equal,cosreg (or all)")
    expanded: list[str] = []
    for item in items:
        expanded.extend(method_names() if item.lower() == "all" else [item])
    resolved, unknown, broken = [], [], []
    for item in expanded:
        try:
            resolved.append(resolve_row(item, rows))
        except KeyError as error:
            (broken if ":" in item else unknown).append(error.args[0] if ":" in item else item)
    if broken:
        raise ValueError("; ".join(broken))
    if unknown:
        raise ValueError(_unknown_rows_message(unknown, rows))
    seen: dict[str, str] = {}
    for item, row in zip(expanded, resolved):
        if row_key(row) in seen:
            raise ValueError(f"row {row!r} is given twice ({seen[row_key(row)]!r} and {item!r})")
        seen[row_key(row)] = item
    return resolved


# ------------------------------------------------------------------------------------------------------------
# The experiment's command-line description
# ------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Shorthand:
    """A flag that sets one configuration field: ``--lr 3e-4`` is ``--set train.lr=3e-4``.

    Attributes:
      flags: the option strings (e.g. ``("--lr",)``).
      field: the dotted field path it sets.
      help: its ``--help`` text.
      const: for a flag that takes no value, the text it sets (e.g. ``--no-batchnorm``: "false").
      metavar: the value's name in ``--help``.
      choices: the values ``--help`` lists (checked by the field's own validation).
    """

    flags: tuple[str, ...]
    field: str
    help: str
    const: Optional[str] = None
    metavar: Optional[str] = None
    choices: Optional[tuple] = None


COMMON_SHORTHANDS = (
    Shorthand(("--seeds",), "train.seeds", "a count N (seeds 0..N-1) or a list; default: the preset's", metavar="SEEDS"),
    Shorthand(("--epochs",), "train.epochs", "override the preset's number of epochs", metavar="N"),
    Shorthand(("--max-steps",), "train.max_steps", "stop each run after this many steps (>= 1)", metavar="N"),
    Shorthand(("--batch-size",), "train.batch_size", "override the preset's global batch size", metavar="N"),
    Shorthand(("--lr",), "train.lr", "override the preset's learning rate", metavar="LR"),
    Shorthand(("--checkpoint-every",), "train.checkpoint_every",
              "also checkpoint every N steps (0: at epoch ends and at the end only)", metavar="N"),
    Shorthand(("--data-dir",), "data.data_dir", "real data on disk; without it the embedded default data is used",
              metavar="DIR"),
    Shorthand(("--alpha",), "methods.cosreg.alpha",
              "CosReg's penalty weight (methods.cosreg.alpha; default: the paper's for this benchmark; rows of the "
              "paper's table that fix their own alpha keep it)", metavar="ALPHA"),
    Shorthand(("--scale-alpha-by-loss",), "methods.cosreg.scale_alpha_by_loss",
              "CosReg: multiply alpha by the (constant) mean task loss (default: the preset's)", const="true"),
    Shorthand(("--no-scale-alpha-by-loss",), "methods.cosreg.scale_alpha_by_loss",
              "CosReg: alpha as given", const="false"),
)
"""The shorthands every experiment has."""

SEGNET_SHORTHANDS = (
    Shorthand(("--width",), "model.width", "SegNet channel multiplier (1 = VGG16; default: the preset's)",
              metavar="W"),
    Shorthand(("--no-batchnorm",), "model.batchnorm", "SegNet without BatchNorm (plain vgg16)", const="false"),
    Shorthand(("--vgg16-weights",), "model.vgg16_weights",
              "ImageNet VGG16 weights for the encoder (.npz / .safetensors written by python -m "
              "orthojax.models.convert_vgg16); width 1 only", metavar="FILE"),
)
"""The SegNet shorthands of the dense experiments (NYUv2, SUN RGB-D)."""


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What the command line of one experiment is generated from.

    Attributes:
      name: the experiment's name (``runs/<name>-<preset>`` is its default workdir).
      description: one paragraph for ``--help``.
      get_config: ``fn(preset) -> ExperimentConfig``.
      presets: the preset names.
      rows: the rows of the paper's tables (key -> :class:`experiments.runner.Row`), besides the registry's
        methods.
      shorthands: the experiment's own shorthands (after :data:`COMMON_SHORTHANDS`).
      parsers: field path -> ``fn(text) -> value`` for fields that need more than their type (paths that
        must exist).
      add_arguments: adds the experiment's own non-configuration flags (e.g. a mode such as ``--sweep``).
      workdir_name: ``fn(args) -> name`` of the default workdir (default: ``name``).
    """

    name: str
    description: str
    get_config: Callable[[str], ExperimentConfig]
    presets: tuple[str, ...]
    rows: Mapping[str, Any]
    shorthands: tuple[Shorthand, ...] = ()
    parsers: Mapping[str, Callable[[str], Any]] = dataclasses.field(default_factory=dict)
    add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None
    workdir_name: Optional[Callable[[argparse.Namespace], str]] = None

    @property
    def prog(self) -> str:
        """``python -m experiments.<name>``."""
        return f"python -m experiments.{self.name}"

    def field_parsers(self) -> dict[str, Callable[[str], Any]]:
        """Every field parser, the rows' included."""
        rows = tuple(self.rows)
        return {"rows": lambda text: tuple(parse_rows(text, rows)),
                "data.data_dir": existing_path(), **dict(self.parsers)}


@dataclasses.dataclass(frozen=True)
class Distributed:
    """Multi-host settings for :func:`jax.distributed.initialize` (None fields: JAX detects them)."""

    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None

    def kwargs(self) -> dict:
        """The keyword arguments given (those left None are detected by JAX)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class Command:
    """A parsed command line.

    Attributes:
      config: the table's configuration (saved one, on ``--resume`` / ``--eval-only``, with the overrides).
      workdir: the table's directory.
      resume: continue the runs found in ``workdir``.
      eval_only: evaluate the runs' checkpoints (no training) and write the results.
      progress: progress bars.
      compilation_cache: ``--compilation-cache`` as given.
      distributed: multi-host settings, or None for one process.
      saved: the configuration saved in ``workdir`` (None when there is none).
      args: every parsed flag (the experiment's own modes).
    """

    config: ExperimentConfig
    workdir: str
    resume: bool = False
    eval_only: bool = False
    progress: bool = True
    compilation_cache: Optional[str] = None
    distributed: Optional[Distributed] = None
    saved: Optional[ExperimentConfig] = None
    args: Optional[argparse.Namespace] = None


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``prog: error: ...`` (exit status 2), without the
    usage block that the experiments' many flags make long (``--help`` shows it)."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where the help does not already say it and X means something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or isinstance(action, _Override):
            return text
        return super()._get_help_string(action)


class _Override(argparse.Action):
    """Records ``(option, field, text)`` in ``namespace.overrides``, in command-line order."""

    def __init__(self, option_strings, dest, field: Optional[str] = None, const_text: Optional[str] = None, **kwargs):
        self.field = field
        self.const_text = const_text
        if const_text is not None:
            kwargs["nargs"] = 0
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        overrides = list(getattr(namespace, "overrides", None) or [])
        if self.field is None:  # --set FIELD=VALUE
            try:
                field, text = split_override(values)
            except ConfigError as error:
                parser.error(f"argument {option_string}: {error}")
        else:
            field, text = self.field, self.const_text if self.const_text is not None else values
        overrides.append((option_string, field, text))
        setattr(namespace, "overrides", overrides)


def list_methods() -> str:
    """Every registered method, its aliases, summary and hyper-parameters (type, default, help)."""
    lines = []
    for name in method_names():
        spec = method_spec(name)
        aliases = f" (also: {', '.join(spec.aliases)})" if spec.aliases else ""
        lines.append(f"{name}{aliases}: {spec.summary}")
        for hp in spec.hyperparameters:
            lines.append(f"    {hp.describe()}" + (f"  {' '.join(hp.help.split())}" if hp.help else ""))
        context = sorted(spec.context)
        if context:
            lines.append(f"    (from the run when unset: {', '.join(context)})")
    lines.append("")
    lines.append("Set one with --set methods.<method>.<hyper-parameter>=VALUE (e.g. --set methods.cosreg.alpha=1); "
                 "run a method of your own with --methods package.module:factory.")
    return "\n".join(lines)


class _ListMethods(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(list_methods())
        parser.exit(0)


def build_parser(experiment: Experiment) -> argparse.ArgumentParser:
    """The experiment's parser: the shared flags, the shorthands and the experiment's own flags."""
    parser = _Parser(prog=experiment.prog, description=experiment.description, formatter_class=_HelpFormatter)
    default = experiment.get_config(experiment.presets[0])
    known = sorted(set(experiment.rows) | set(method_names()))
    parser.add_argument(
        "--methods", action=_Override, field="rows", metavar="ROWS",
        help=f"table rows to run (comma-separated; case-insensitive; aliases such as EW, UW, STL, IMTL-G, "
             f"Aligned-MTL are accepted; 'all': every registered method; a method of your own as "
             f"package.module:factory); rows: {', '.join(known)} (default: {','.join(default.rows)})")
    parser.add_argument("--set", action=_Override, metavar="FIELD=VALUE",
                        help="set any configuration field, e.g. --set train.lr=3e-4, --set methods.cosreg.alpha=1, "
                             "--set methods.recon.k=2 (also spelled --config.FIELD=VALUE); repeatable")
    parser.add_argument("--list-methods", action=_ListMethods,
                        help="list every method with its hyper-parameters and exit")
    parser.add_argument("--workdir", type=workdir_path, default=None,
                        help=f"output directory (default: runs/{experiment.name}-<preset>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the runs found in --workdir, with its saved config.json")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate the checkpoints of the table in --workdir (finished or interrupted), from "
                             "its saved config.json, without training; write the results")
    parser.add_argument("--preset", choices=experiment.presets, default=None,
                        help=f"{' / '.join(experiment.presets)}: quick: small CPU-sized run; paper: the paper's "
                             f"protocol (default: {experiment.presets[0]}, or the saved one with --resume)")
    presets = {name: experiment.get_config(name) for name in experiment.presets}
    for shorthand in COMMON_SHORTHANDS + tuple(experiment.shorthands):
        text = shorthand.help
        if shorthand.const is None and "default" not in text:
            values = {name: _field_value(config, shorthand.field) for name, config in presets.items()}
            if len(set(map(repr, values.values()))) == 1:
                text += f" (default: {_show(next(iter(values.values())))})"
            else:
                text += " (default: " + "; ".join(f"{name} {_show(v)}" for name, v in values.items()) + ")"
        kwargs = dict(action=_Override, field=shorthand.field, help=text, dest="overrides")
        if shorthand.const is not None:
            kwargs["const_text"] = shorthand.const
        else:
            kwargs.update(metavar=shorthand.metavar, choices=shorthand.choices)
        parser.add_argument(*shorthand.flags, **kwargs)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--compilation-cache", default=None, metavar="DIR",
                        help="persistent XLA compilation cache: programs shared by the rows and every program of "
                             "a resumed or repeated run load instead of compiling; 'off' disables it (default: "
                             "$ORTHOJAX_COMPILATION_CACHE, else ~/.cache/orthojax/xla)")
    group = parser.add_argument_group("several hosts (jax.distributed.initialize; each process feeds its slice)")
    group.add_argument("--distributed", action="store_true",
                       help="call jax.distributed.initialize() with what JAX detects (SLURM, Open MPI, TPU) or the "
                            "three flags below")
    group.add_argument("--coordinator-address", default=None, metavar="HOST:PORT",
                       help="the address of process 0's coordinator, e.g. 10.0.0.1:1234 (implies --distributed)")
    group.add_argument("--num-processes", type=positive_int, default=None, metavar="N",
                       help="the number of processes (implies --distributed)")
    group.add_argument("--process-id", type=number(int, minimum=0), default=None, metavar="I",
                       help="this process's index, 0..N-1 (implies --distributed)")
    if experiment.add_arguments is not None:
        experiment.add_arguments(parser)
    parser.set_defaults(overrides=[])
    return parser


def _field_value(config: ExperimentConfig, path: str) -> Any:
    """The value of a field path in ``config`` (a method's hyper-parameter: its default where unset)."""
    if path.startswith("methods."):
        method, _, name = path[len("methods."):].rpartition(".")
        if name in config.methods.get(method, {}):
            return config.methods[method][name]
        return method_spec(method).hyperparameter(name).default
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value)


def _config_argv(argv: Sequence[str]) -> list[str]:
    """``--config.FIELD=VALUE`` / ``--config.FIELD VALUE`` -> ``--set FIELD=VALUE``."""
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        if item.startswith("--config."):
            body = item[len("--config."):]
            if "=" not in body and i + 1 < len(items):
                body, i = f"{body}={items[i + 1]}", i + 1
            out += ["--set", body]
        else:
            out.append(item)
        i += 1
    return out


def _distributed(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Optional[Distributed]:
    given = Distributed(args.coordinator_address, args.num_processes, args.process_id)
    if not (args.distributed or given.kwargs()):
        return None
    if given.num_processes is not None and given.process_id is not None and given.process_id >= given.num_processes:
        parser.error(f"argument --process-id: {given.process_id} is not below --num-processes {given.num_processes}")
    return given


def parse_command(experiment: Experiment, argv: Optional[Sequence[str]] = None) -> Command:
    """The :class:`Command` of ``argv`` (default: ``sys.argv[1:]``).

    The configuration is the preset's (``--preset``, default the first), or with ``--resume`` /
    ``--eval-only`` the one saved in the workdir; then every override in the order given.

    Raises:
      SystemExit: status 2 with one ``prog: error: ...`` line for a bad flag, field, value or method; status 0
        after ``--help`` / ``--list-methods``.
    """
    parser = build_parser(experiment)
    args = parser.parse_args(_config_argv(sys.argv[1:] if argv is None else argv))
    if args.resume and args.eval_only:
        parser.error("--resume and --eval-only exclude each other (--eval-only trains nothing)")
    preset = args.preset or experiment.presets[0]
    name = experiment.workdir_name(args) if experiment.workdir_name else experiment.name
    workdir = args.workdir or os.path.join("runs", f"{name}-{preset}")
    base, saved = experiment.get_config(preset), None
    if args.resume or args.eval_only:
        try:
            saved = load_config(workdir, base)
        except ConfigError as error:
            parser.error(str(error))
        if saved is None and args.eval_only:
            parser.error(f"--eval-only: {os.path.join(workdir, 'config.json')} does not exist; give the --workdir "
                         f"of a table run by this version")
        if saved is None and args.resume:
            parser.error(f"--resume: {os.path.join(workdir, 'config.json')} does not exist, so there is no table to "
                         f"resume in {workdir}; check --workdir, or start the table without --resume")
        if saved is not None:
            if args.preset is not None and args.preset != saved.preset:
                parser.error(f"--preset {args.preset}: the table in {workdir} was run with preset {saved.preset!r}")
            base = saved
    config, parsers = base, experiment.field_parsers()
    for option, field, text in args.overrides:
        try:
            config = apply_override(config, field, text, parsers)
        except ConfigError as error:
            parser.error(f"argument {option}: {error}")  # the error names the field
    return Command(config=config, workdir=workdir, resume=args.resume, eval_only=args.eval_only,
                   progress=not args.no_progress, compilation_cache=args.compilation_cache,
                   distributed=_distributed(args, parser), saved=saved, args=args)


def refused_changes(command: Command) -> list[tuple[str, Any, Any]]:
    """The changes to the saved configuration that a resumed or evaluated table may not make (see
    :data:`experiments.configs.RESUMABLE_FIELDS`)."""
    if command.saved is None:
        return []
    return config_changes(command.saved, command.config)
