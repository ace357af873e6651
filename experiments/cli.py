"""The command-line flags every experiment shares."""

from __future__ import annotations

import argparse
import math
import os
from typing import Callable, Sequence

from orthojax.methods.registry import close_method_names, method_names, normalize_name, resolve_method_name

__all__ = ["build_parser", "existing_path", "number", "parse_list", "parse_method_name", "parse_rows", "parse_seeds",
           "resolve_row", "workdir_path"]


def parse_list(text: str) -> list[str]:
    """"a,b c" -> ["a", "b", "c"]."""
    return [item for part in text.replace(",", " ").split() if (item := part.strip())]


def parse_seeds(text: str) -> list[int]:
    """"3" -> [0, 1, 2]; "0,4,7" -> [0, 4, 7] (distinct, >= 0)."""
    items = parse_list(text)
    try:
        values = [int(x) for x in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes a count or a comma-separated list of ints; got {text!r}")
    if not values:
        raise argparse.ArgumentTypeError("--seeds is empty; give a count (e.g. 3) or a list (e.g. 0,4,7)")
    if len(values) == 1:
        if values[0] < 1:
            raise argparse.ArgumentTypeError(f"--seeds count must be >= 1; got {values[0]}")
        return list(range(values[0]))
    if min(values) < 0:
        raise argparse.ArgumentTypeError(f"--seeds must be >= 0; got {text!r}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"--seeds lists {repeated} more than once (their runs would share a workdir)")
    return values


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
non_negative_int = number(int, minimum=0)
positive_float = number(float, above=0)
finite_float = number(float)


def existing_path(kind: str = "any") -> Callable[[str], str]:
    """An argparse ``type``: a path that exists ("dir": a directory, "file": a file)."""

    def parse(text: str) -> str:
        path = os.path.expanduser(text)
        if not os.path.exists(path):
            raise argparse.ArgumentTypeError(f"{text} does not exist")
        if kind == "dir" and not os.path.isdir(path):
            raise argparse.ArgumentTypeError(f"{text} is not a directory")
        if kind == "file" and not os.path.isfile(path):
            raise argparse.ArgumentTypeError(f"{text} is not a file")
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


def _unknown_rows_message(names: Sequence[str], rows: Sequence[str]) -> str:
    valid = sorted(set(rows) | set(method_names()))
    parts = []
    for name in names:
        close = close_method_names(name, valid)
        parts.append(f"{name!r} (did you mean {' or '.join(repr(c) for c in close)}?)" if close else repr(name))
    return (f"unknown row{'s' if len(names) > 1 else ''} {', '.join(parts)}; valid rows: {', '.join(valid)} "
            f"(case-insensitive; aliases such as EW, UW, STL, IMTL-G, Aligned-MTL are accepted)")


def resolve_row(name: str, rows: Sequence[str]) -> str:
    """The table row that ``name`` spells: one of the benchmark's ``rows`` or a registry method, matched
    case-insensitively and with the field's usual spellings ("Equal", "EW", "IMTL-G", "STL", ...).

    Raises:
      KeyError: an unknown name; the message names the closest rows and lists the valid ones.
    """
    if name in rows:
        return name
    by_key = {normalize_name(r): r for r in rows}
    if normalize_name(name) in by_key:
        return by_key[normalize_name(name)]
    try:
        return resolve_method_name(name)
    except KeyError:
        raise KeyError(_unknown_rows_message([name], rows)) from None


def parse_rows(text: str, rows: Sequence[str]) -> list[str]:
    """``--methods``: "Equal, cosreg" -> ["equal", "cosreg"], every name checked (:func:`resolve_row`) before
    anything runs.

    Raises:
      argparse.ArgumentTypeError: an empty list, unknown names (all of them, in one message) or a row given
        twice.
    """
    items = parse_list(text)
    if not items:
        raise argparse.ArgumentTypeError("no rows given; e.g. --methods equal,cosreg")
    resolved, unknown = [], []
    for item in items:
        try:
            resolved.append(resolve_row(item, rows))
        except KeyError:
            unknown.append(item)
    if unknown:
        raise argparse.ArgumentTypeError(_unknown_rows_message(unknown, rows))
    seen: dict[str, str] = {}
    for item, row in zip(items, resolved):
        if row in seen:
            raise argparse.ArgumentTypeError(f"row {row!r} is given twice ({seen[row]!r} and {item!r})")
        seen[row] = item
    return resolved


def parse_method_name(text: str) -> str:
    """A registry method name in any accepted spelling, as its registry name (``--recon-base``)."""
    try:
        return resolve_method_name(text.strip())
    except KeyError as error:
        raise argparse.ArgumentTypeError(error.args[0]) from None


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``prog: error: ...`` (exit status 2), without the
    usage block that the experiments' many flags make long (``--help`` shows it)."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message}\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where the help does not already say it and X means something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def build_parser(prog: str, description: str, rows: Sequence[str], default_rows: Sequence[str],
                 default_alpha: float) -> argparse.ArgumentParser:
    """The shared parser; an experiment adds its own flags to the result.

    Args:
      prog: the module name (``python -m experiments.nyuv2``).
      description: one paragraph for ``--help``.
      rows: the table rows this experiment defines besides the registry's method names.
      default_rows: the rows run when ``--methods`` is not given (the paper's table).
      default_alpha: the paper's CosReg alpha for this benchmark.
    """
    parser = _Parser(prog=prog, description=description, formatter_class=_HelpFormatter)
    known = sorted(set(rows) | set(method_names()))
    parser.add_argument(
        "--methods", type=lambda text: parse_rows(text, tuple(rows)), default=",".join(default_rows),
        help=f"table rows to run (comma-separated; case-insensitive, and aliases such as EW, UW, STL, IMTL-G, "
             f"Aligned-MTL are accepted); rows: {', '.join(known)}",
    )
    parser.add_argument("--seeds", type=parse_seeds, default=None,
                        help="a count N (seeds 0..N-1) or a list; default: the preset's")
    parser.add_argument("--data-dir", type=existing_path(), default=None,
                        help="real data on disk; without it the embedded default data is used")
    parser.add_argument("--workdir", type=workdir_path, default=None,
                        help="output directory (default: runs/<experiment>-<preset>)")
    parser.add_argument("--resume", action="store_true", help="continue the runs found in --workdir")
    parser.add_argument("--preset", choices=("quick", "paper"), default="quick",
                        help="quick: small CPU-sized run; paper: the paper's protocol exactly")
    parser.add_argument("--epochs", type=positive_int, default=None, help="override the preset's number of epochs")
    parser.add_argument("--max-steps", type=positive_int, default=None,
                        help="stop each run after this many steps (>= 1)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="override the preset's global batch size")
    parser.add_argument("--lr", type=positive_float, default=None, help="override the preset's learning rate")
    parser.add_argument("--alpha", type=number(float, minimum=0), default=None,
                        help=f"CosReg penalty weight (default: the paper's, {default_alpha:g} here; rows of the "
                             f"paper's table that fix their own alpha keep it unless this is given)")
    parser.add_argument("--scale-alpha-by-loss", action=argparse.BooleanOptionalAction, default=None,
                        help="CosReg: multiply alpha by the (constant) mean task loss; default: the preset's")
    parser.add_argument("--gradnorm-alpha", type=number(float, minimum=0), default=1.5, help="GradNorm asymmetry")
    parser.add_argument("--gradnorm-on", choices=("last_shared", "shared"), default="last_shared",
                        help="GradNorm gradient norms on the last shared layer (paper) or all shared params")
    parser.add_argument("--rotograd-lr", type=positive_float, default=None,
                        help="RotoGrad rotation learning rate (default: half the model's)")
    parser.add_argument("--recon-k", type=positive_int, default=None,
                        help="Recon: number of layers made task-specific")
    parser.add_argument("--recon-s", type=number(float, minimum=-1, maximum=1), default=None,
                        help="Recon: S-conflict threshold (a cosine, in [-1, 1])")
    parser.add_argument("--recon-base", type=parse_method_name, default="equal",
                        help="Recon: the method that retrains the new network")
    parser.add_argument("--recon-stage1-epochs", type=positive_int, default=None,
                        help="Recon: epochs of the recording run (default: the preset's epochs)")
    parser.add_argument("--checkpoint-every", type=non_negative_int, default=0,
                        help="also checkpoint every N steps (0: at epoch ends and at the end only)")
    parser.add_argument("--distributed", action="store_true",
                        help="multi-host: call jax.distributed.initialize() (each process feeds its slice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--compilation-cache", default=None, metavar="DIR",
                        help="persistent XLA compilation cache: programs shared by the rows and every program of "
                             "a resumed or repeated run load instead of compiling; 'off' disables it (default: "
                             "$ORTHOJAX_COMPILATION_CACHE, else ~/.cache/orthojax/xla)")
    return parser


def method_kwargs_from_args(args: argparse.Namespace, default_alpha: float,
                            scale_alpha_default: bool = False) -> dict[str, dict]:
    """Hyper-parameters given on the command line (or the benchmark's defaults), keyed by method name."""
    scale = args.scale_alpha_by_loss if args.scale_alpha_by_loss is not None else scale_alpha_default
    alpha = args.alpha if args.alpha is not None else default_alpha
    kwargs: dict[str, dict] = {
        "cosreg": {"alpha": alpha, "scale_alpha_by_loss": scale},
        "gradnorm": {"alpha": args.gradnorm_alpha, "on": args.gradnorm_on},
    }
    if args.rotograd_lr is not None:
        for name in ("rotate_only", "rotograd", "rotograd_norm"):
            kwargs[name] = {"learning_rate": args.rotograd_lr}
    return kwargs


def settings_overrides(args: argparse.Namespace) -> dict:
    """The RunSettings fields the command line overrides (only those given)."""
    out = {
        "epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.lr,
        "seeds": args.seeds, "max_steps": args.max_steps, "recon_k": args.recon_k, "recon_s": args.recon_s,
        "recon_stage1_epochs": args.recon_stage1_epochs,
    }
    out = {k: v for k, v in out.items() if v is not None}
    out.update(checkpoint_every=args.checkpoint_every, resume=args.resume, progress=not args.no_progress,
               recon_base=args.recon_base)
    return out


def add_segnet_flags(parser: argparse.ArgumentParser) -> None:
    """SegNet options of the dense benchmarks: --width, --no-batchnorm, --vgg16-weights, --augment."""
    parser.add_argument("--width", type=positive_float, default=None,
                        help="SegNet channel multiplier (1 = VGG16; default: the preset's)")
    parser.add_argument("--no-batchnorm", action="store_true", help="SegNet without BatchNorm (plain vgg16)")
    parser.add_argument("--vgg16-weights", type=existing_path("file"), default=None,
                        help="ImageNet VGG16 weights for the encoder (.npz / .safetensors written by "
                             "python -m orthojax.models.convert_vgg16); width 1 only")
