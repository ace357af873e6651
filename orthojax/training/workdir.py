"""The workdir of a run: the lock that gives one run at a time a workdir (:class:`WorkdirLock`) and the
checks made before a run writes anything in it (:func:`check_workdir`)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from typing import Any, Mapping, Optional, Sequence

from orthojax.training.checkpoint import checkpoint_steps, layout_problem
from orthojax.training.config import RESUMABLE_CHANGES, TrainConfig, config_record
from orthojax.training.errors import (
    CheckpointError, CheckpointsMissingError, ConfigChangedError, RunExistsError, WorkdirLocked,
)
from orthojax.training.logging import config_changes, read_config, scan_metrics

__all__ = ["LOCK_FILE", "WorkdirLock", "check_workdir"]

LOCK_FILE = "run.lock"
"""The lock file a run keeps in its workdir while it runs (see :class:`WorkdirLock`)."""


def _process_start(pid: int) -> Optional[str]:
    """The start time of process ``pid`` (Linux: field 22 of /proc/<pid>/stat), to tell a reused pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
        return text.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


class WorkdirLock:
    """Gives one run at a time a workdir: ``<workdir>/run.lock`` holds the owner's pid, host and process
    start time while it runs, under an exclusive ``flock``, and is removed when the run ends.

    A process that dies (SIGKILL, a crash, a lost machine) loses its ``flock`` with it, so its lock is
    stale and the next run takes it over. Where ``flock`` is not available, a lock is stale when its pid
    is dead (or now belongs to another process) on this host. A lock held by another live run is refused
    with :class:`WorkdirLocked`, naming the owner.

    Use as a context manager, or :meth:`acquire` / :meth:`release`.
    """

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.path = os.path.join(self.workdir, LOCK_FILE)
        self._fd: Optional[int] = None

    @staticmethod
    def _me() -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": list(sys.argv)}

    def owner(self) -> Optional[dict]:
        """The lock file's record (None: no lock file; {} for an unreadable or empty one)."""
        try:
            with open(self.path) as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _stale_by_pid(self, owner: Optional[dict]) -> bool:
        """Without ``flock``: whether ``owner``'s process is gone (same host only)."""
        if not owner:
            return True
        if owner.get("host") != socket.gethostname():
            return False
        try:
            pid = int(owner.get("pid"))
        except (TypeError, ValueError):
            return True
        if not _alive(pid):
            return True
        start = owner.get("start")
        return start is not None and _process_start(pid) not in (None, start)

    @staticmethod
    def describe(owner: Optional[dict]) -> str:
        """"pid N on HOST, since T, running ARGV"."""
        owner = owner or {}
        who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"
        if owner.get("since"):
            who += f", since {owner['since']}"
        if owner.get("argv"):
            who += f", running {' '.join(map(str, owner['argv']))}"
        return who

    def _message(self, owner: Optional[dict]) -> str:
        return (f"{self.workdir} is in use by another run ({self.describe(owner)}; lock file {self.path}); "
                f"wait for it to finish or stop it")

    def locked_by_other(self) -> Optional[dict]:
        """The owner's record if another live run holds the lock, else None (changes nothing)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except (BlockingIOError, PermissionError):
                return self.owner() or {}
            except (ImportError, OSError):  # no flock here
                owner = self.owner()
                return None if self._stale_by_pid(owner) else owner
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                return None
        finally:
            os.close(fd)

    def check(self) -> None:
        """Raises :class:`WorkdirLocked` if another live run holds the lock (changes nothing)."""
        if self._fd is not None:
            return
        owner = self.locked_by_other()
        if owner is not None:
            raise WorkdirLocked(self._message(owner))

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> "WorkdirLock":
        """Takes the lock (creating the workdir), taking over a stale one.

        Raises:
          WorkdirLocked: another live run holds it.
        """
        if self._fd is not None:
            return self
        os.makedirs(self.workdir, exist_ok=True)
        for _ in range(50):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except (BlockingIOError, PermissionError):
                os.close(fd)
                raise WorkdirLocked(self._message(self.owner())) from None
            except (ImportError, OSError):  # no flock here: the pid decides
                owner = self.owner()
                if owner and not self._stale_by_pid(owner) and owner.get("pid") != os.getpid():
                    os.close(fd)
                    raise WorkdirLocked(self._message(owner)) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released (and removed) by its owner between our open and our flock: retry
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(self._me()).encode())
            os.fsync(fd)
            self._fd = fd
            return self
        raise WorkdirLocked(f"could not take the lock {self.path} (contended)")

    def release(self) -> None:
        """Removes the lock file and releases the lock, if this object holds it."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        finally:
            os.close(fd)

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_workdir(config: TrainConfig, workdir: str | os.PathLike, *, steps_per_epoch: int,
                  run_config: Optional[Mapping[str, Any]] = None, may_change: Sequence[str] = (),
                  check_lock: bool = True, compare_config: bool = True) -> Optional[int]:
    """What :func:`orthojax.training.train_and_evaluate` checks before it writes anything in ``workdir``;
    changes nothing.

    Args:
      config, steps_per_epoch, run_config: as for :func:`orthojax.training.train_and_evaluate`.
      may_change: names in ``config.json`` (dotted, e.g. "settings.progress") that may differ on resume
        besides :data:`RESUMABLE_CHANGES`.
      check_lock: also check that no other live run holds the workdir.
      compare_config: compare ``run_config`` and ``config`` with the saved ``config.json`` on resume.

    Returns:
      The newest checkpoint's step (None: the run starts from step 0).

    Raises:
      WorkdirLocked: another live run holds the workdir.
      RunExistsError: checkpoints, or logged steps, of an earlier run and ``config.resume`` is False.
      ConfigChangedError: ``config.resume`` with settings that change the run (each one named: saved ->
        new), or a ``max_steps`` below the step the run has reached.
      CheckpointsMissingError: ``config.resume`` where ``metrics.jsonl`` logs checkpoints but none is
        left.
      CheckpointError: ``config.resume`` where the newest checkpoint has the earlier layout (train state
        and history), which this version does not resume.
    """
    workdir = os.path.abspath(os.fspath(workdir))
    if check_lock:
        WorkdirLock(workdir).check()
    checkpoints = os.path.join(workdir, "checkpoints")
    steps = checkpoint_steps(checkpoints)
    logged = scan_metrics(workdir)
    if not config.resume:
        if steps:
            raise RunExistsError(
                f"{checkpoints} already holds checkpoint {steps[-1]}; resume it (--resume) or use a new workdir "
                f"(nothing in {workdir} was changed)"
            )
        if logged["train_steps"]:
            raise RunExistsError(
                f"{workdir} holds the metrics.jsonl of an earlier run (up to step {logged['train_steps']}) and no "
                f"checkpoint; use a new workdir, or "
                + ("remove it to start over (its checkpoints are gone)" if logged["checkpoints"] else
                   "resume it (--resume), which starts it again from step 0 (it stopped before its first "
                   "checkpoint)")
            )
        return None
    if steps or logged["train_steps"]:
        saved = read_config(workdir)
        if saved is not None and compare_config:
            changes = config_changes(saved, config_record(config, run_config),
                                     tuple(RESUMABLE_CHANGES) + tuple(may_change))
            if changes:
                listed = "; ".join(f"{name}: {old!r} -> {new!r}" for name, old, new in changes)
                raise ConfigChangedError(
                    f"{workdir}: --resume with settings that change this run ({listed}). Only progress bars, "
                    f"TensorBoard, checkpoint cadence and a --max-steps beyond the step reached may change on "
                    f"resume; rerun with the saved settings (config.json) or use a new workdir"
                )
    if steps:
        layout = layout_problem(os.path.join(checkpoints, str(steps[-1])))
        if layout is not None:
            raise CheckpointError(layout)
        total = config.total_steps(steps_per_epoch)
        if total < steps[-1]:
            raise ConfigChangedError(
                f"{workdir}: --resume with max_steps {config.max_steps} (a run of {total} steps), below step "
                f"{steps[-1]} that this run already reached; give --max-steps {steps[-1]} or more"
            )
        return steps[-1]
    if logged["checkpoints"]:
        raise CheckpointsMissingError(
            f"{workdir}: metrics.jsonl logs checkpoints up to step {max(logged['checkpoints'])}, but {checkpoints} "
            f"holds none (removed?), so --resume cannot continue this run; restore them, or start over in a new "
            f"workdir (or after removing {workdir})"
        )
    return None
