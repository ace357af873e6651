"""The command-line flags every experiment shares."""

from __future__ import annotations

import argparse
from typing import Sequence

from orthojax.methods import method_names

__all__ = ["build_parser", "parse_list", "parse_seeds"]


def parse_list(text: str) -> list[str]:
    """"a,b c" -> ["a", "b", "c"]."""
    return [item for part in text.replace(",", " ").split() if (item := part.strip())]


def parse_seeds(text: str) -> list[int]:
    """"3" -> [0, 1, 2]; "0,4,7" -> [0, 4, 7]."""
    items = parse_list(text)
    try:
        values = [int(x) for x in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes a count or a comma-separated list of ints; got {text!r}")
    if len(values) == 1:
        if values[0] < 1:
            raise argparse.ArgumentTypeError(f"--seeds count must be >= 1; got {values[0]}")
        return list(range(values[0]))
    return values


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
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    known = sorted(set(rows) | set(method_names()))
    parser.add_argument(
        "--methods", type=parse_list, default=list(default_rows),
        help=f"table rows to run (comma-separated); rows: {', '.join(known)}",
    )
    parser.add_argument("--seeds", type=parse_seeds, default=None,
                        help="a count N (seeds 0..N-1) or a list; default: the preset's")
    parser.add_argument("--data-dir", default=None,
                        help="real data on disk; without it the embedded default data is used")
    parser.add_argument("--workdir", default=None, help="output directory (default: runs/<experiment>-<preset>)")
    parser.add_argument("--resume", action="store_true", help="continue the runs found in --workdir")
    parser.add_argument("--preset", choices=("quick", "paper"), default="quick",
                        help="quick: small CPU-sized run; paper: the paper's protocol exactly")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's number of epochs")
    parser.add_argument("--max-steps", type=int, default=None, help="stop each run after this many steps")
    parser.add_argument("--batch-size", type=int, default=None, help="override the preset's global batch size")
    parser.add_argument("--lr", type=float, default=None, help="override the preset's learning rate")
    parser.add_argument("--alpha", type=float, default=default_alpha, help="CosReg penalty weight")
    parser.add_argument("--scale-alpha-by-loss", action=argparse.BooleanOptionalAction, default=None,
                        help="CosReg: multiply alpha by the (constant) mean task loss; default: the preset's")
    parser.add_argument("--gradnorm-alpha", type=float, default=1.5, help="GradNorm asymmetry")
    parser.add_argument("--gradnorm-on", choices=("last_shared", "shared"), default="last_shared",
                        help="GradNorm gradient norms on the last shared layer (paper) or all shared params")
    parser.add_argument("--rotograd-lr", type=float, default=None,
                        help="RotoGrad rotation learning rate (default: half the model's)")
    parser.add_argument("--recon-k", type=int, default=None, help="Recon: number of layers made task-specific")
    parser.add_argument("--recon-s", type=float, default=None, help="Recon: S-conflict threshold")
    parser.add_argument("--recon-base", default="equal", help="Recon: the method that retrains the new network")
    parser.add_argument("--recon-stage1-epochs", type=int, default=None,
                        help="Recon: epochs of the recording run (default: the preset's epochs)")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps")
    parser.add_argument("--distributed", action="store_true",
                        help="multi-host: call jax.distributed.initialize() (each process feeds its slice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser
