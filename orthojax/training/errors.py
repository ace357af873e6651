"""Why a workdir cannot be used as asked: the errors a run raises before it writes anything.

Each message names the path, what is wrong and what to do; every class is a :class:`WorkdirError`, so a
caller (e.g. a table of runs checked before its first run trains) can catch them together.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CheckpointsMissingError",
    "ConfigChangedError",
    "HistoryMissingError",
    "RunExistsError",
    "WorkdirError",
    "WorkdirLocked",
]


class WorkdirError(Exception):
    """A workdir that a run cannot use as asked (held by another run, already used, changed settings,
    checkpoints or logs missing or damaged); the message names the path and what to do."""


class WorkdirLocked(WorkdirError):
    """Another live process holds the workdir's lock."""


class CheckpointError(WorkdirError):
    """No intact checkpoint to restore (each damaged one is named with what is wrong with it), or a
    checkpoint that this version cannot restore (an earlier layout, an inconsistent data position)."""


class RunExistsError(WorkdirError, FileExistsError):
    """The workdir holds an earlier run (checkpoints or logged steps) and the run was not asked to
    resume it."""


class ConfigChangedError(WorkdirError, ValueError):
    """``resume`` with settings that would change the run (named in the message)."""


class CheckpointsMissingError(WorkdirError, FileNotFoundError):
    """``resume`` of a run whose logged checkpoints are gone from its workdir (or an evaluation of a
    workdir without checkpoints)."""


class HistoryMissingError(WorkdirError, FileNotFoundError):
    """``resume`` of a run whose ``metrics.jsonl`` lacks the steps of the checkpoint being restored, so
    that its history cannot be rebuilt."""
