"""Checkpoints with orbax (the train state and the run's history, saved atomically, the last k kept), each
verified on restore, and the lock that gives one run at a time a workdir.

Layout: ``<workdir>/checkpoints/<step>/{state,history,MANIFEST.sha256.json}``. Orbax writes each
checkpoint into a temporary directory and renames it when complete, so a process killed during a save
leaves the previous checkpoint as the latest usable one (the partial directory is ignored and cleaned up
on the next start). Once a save has completed, the size and SHA-256 of every file in it are written next
to orbax's files (:data:`MANIFEST`); a restore checks them first, and a checkpoint that does not match
(a truncated or missing file, a flipped bit, no manifest) is reported by path and skipped for the newest
one that does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, NamedTuple, Optional

import jax
import orbax.checkpoint as ocp

PyTree = Any

__all__ = [
    "LOCK_FILE",
    "MANIFEST",
    "CheckpointError",
    "CheckpointsMissingError",
    "Checkpointer",
    "ConfigChangedError",
    "Restored",
    "RunExistsError",
    "WorkdirError",
    "WorkdirLock",
    "WorkdirLocked",
    "abstract_like",
    "checkpoint_steps",
    "verify_checkpoint",
]

MANIFEST = "MANIFEST.sha256.json"
"""The file, in each checkpoint's directory, with the size and SHA-256 of every other file in it."""

LOCK_FILE = "run.lock"
"""The lock file a run keeps in its workdir while it runs (see :class:`WorkdirLock`)."""


class WorkdirError(Exception):
    """A workdir that a run cannot use as asked (held by another run, already used, changed settings,
    checkpoints missing or damaged); the message names the path and what to do."""


class WorkdirLocked(WorkdirError):
    """Another live process holds the workdir's lock."""


class CheckpointError(WorkdirError):
    """No intact checkpoint to restore (each damaged one is named with what is wrong with it)."""


class RunExistsError(WorkdirError, FileExistsError):
    """The workdir holds an earlier run (checkpoints or logged steps) and the run was not asked to
    resume it."""


class ConfigChangedError(WorkdirError, ValueError):
    """``resume`` with settings that would change the run (named in the message)."""


class CheckpointsMissingError(WorkdirError, FileNotFoundError):
    """``resume`` of a run whose logged checkpoints are gone from its workdir."""


def abstract_like(state: PyTree, sharding: Optional[PyTree] = None) -> PyTree:
    """``jax.ShapeDtypeStruct`` leaves (with ``sharding`` when given) describing ``state``."""
    if sharding is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, sharding)


# ----------------------------------------------------------------------------- manifests
def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(directory: str) -> list[str]:
    out = []
    for root, _, names in os.walk(directory):
        for name in names:
            out.append(os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/"))
    return sorted(f for f in out if f != MANIFEST)


def write_manifest(step_dir: str) -> str:
    """Writes :data:`MANIFEST` (size and SHA-256 of every file) in a completed checkpoint's directory,
    atomically; returns its path."""
    files = {rel: {"size": os.path.getsize(os.path.join(step_dir, rel)), "sha256": _sha256(os.path.join(step_dir, rel))}
             for rel in _files(step_dir)}
    path = os.path.join(step_dir, MANIFEST)
    fd, tmp = tempfile.mkstemp(dir=step_dir, prefix=".manifest-")
    with os.fdopen(fd, "w") as f:
        json.dump({"version": 1, "files": files}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def verify_checkpoint(step_dir: str) -> Optional[str]:
    """What is wrong with the checkpoint in ``step_dir`` against its manifest, or None when every file
    listed is there with its size and SHA-256."""
    path = os.path.join(step_dir, MANIFEST)
    if not os.path.isfile(path):
        return (f"no {MANIFEST} (the save did not complete, the manifest was removed, or an older orthojax "
                f"wrote this checkpoint)")
    try:
        with open(path) as f:
            files = json.load(f)["files"]
        items = [(str(rel), int(v["size"]), str(v["sha256"])) for rel, v in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"{path}: unreadable manifest ({error})"
    if not items:
        return f"{path}: the manifest lists no file"
    for rel, size, sha in items:
        file = os.path.join(step_dir, rel)
        if not os.path.isfile(file):
            return f"{file}: missing"
        actual = os.path.getsize(file)
        if actual != size:
            return f"{file}: {actual} bytes, {size} when saved (truncated or rewritten)"
        if _sha256(file) != sha:
            return f"{file}: SHA-256 differs from the one saved (the file was modified or is corrupt)"
    return None


def checkpoint_steps(directory: str | os.PathLike) -> list[int]:
    """Steps of the checkpoint directories in ``directory`` (orbax's finished ones, named by their
    step), ascending, without touching anything (no orbax manager, no clean-up); [] if it is missing."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


class Restored(NamedTuple):
    """What :meth:`Checkpointer.restore_latest` returns."""

    step: int
    state: PyTree
    history: dict
    skipped: list  # [(step, reason)] of the newer checkpoints found damaged


class Checkpointer:
    """A thin wrapper over ``orbax.checkpoint.CheckpointManager`` for (state, history) pairs, with a
    checksum manifest per checkpoint, verified on restore.

    Args:
      directory: where the step directories go (created if missing).
      max_to_keep: keep the last ``max_to_keep`` checkpoints (None keeps all).
      async_save: write in a background thread (call :meth:`wait` before exiting).
      on_saved: ``fn(step)`` called (in the caller's thread) once a checkpoint and its manifest are
        complete on disk.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: Optional[int] = 3,
                 async_save: bool = False, on_saved: Optional[Callable[[int], None]] = None):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None; got {max_to_keep}")
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save,
        )
        self.directory = os.path.abspath(os.fspath(directory))
        self.on_saved = on_saved
        self._pending: list[int] = []
        self._manager = self._new_manager()

    def _new_manager(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(self.directory, options=self._options, item_names=("state", "history"))

    def step_directory(self, step: int) -> str:
        """The directory of checkpoint ``step``."""
        return os.path.join(self.directory, str(step))

    def latest_step(self) -> Optional[int]:
        """The step of the newest complete checkpoint, or None (not verified: see :meth:`verify`)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of every complete checkpoint kept, ascending."""
        return sorted(self._manager.all_steps())

    def verify(self, step: int) -> Optional[str]:
        """What is wrong with checkpoint ``step`` (see :func:`verify_checkpoint`), or None if intact."""
        self._finish_pending()
        return verify_checkpoint(self.step_directory(step))

    def save(self, step: int, state: PyTree, history: dict) -> None:
        """Saves ``state`` and the JSON-serialisable ``history`` as checkpoint ``step`` (skipped if it
        already exists), then its manifest (at once, or when the asynchronous save has finished)."""
        self._finish_pending()
        if step in self._manager.all_steps():
            return
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), history=ocp.args.JsonSave(history)),
            force=True,
        )
        self._pending.append(step)
        if not self._options.enable_async_checkpointing:
            self._finish_pending()

    def _finish_pending(self) -> None:
        if not self._pending:
            return
        self._manager.wait_until_finished()
        steps, self._pending = self._pending, []
        if jax.process_index() != 0:
            return
        for step in steps:
            if os.path.isdir(self.step_directory(step)):
                write_manifest(self.step_directory(step))
                if self.on_saved is not None:
                    self.on_saved(step)

    def restore(self, abstract_state: PyTree, step: Optional[int] = None, *,
                verify: bool = True) -> tuple[PyTree, dict]:
        """Restores checkpoint ``step`` (default: the newest intact one) into the layout of
        ``abstract_state``.

        Args:
          abstract_state: ``jax.ShapeDtypeStruct`` leaves (with shardings) of the state, e.g.
            :func:`abstract_like` ``(state, sharding)``.
          step: which checkpoint (None: :meth:`restore_latest`'s choice).
          verify: check the checkpoint's files against its manifest first.

        Returns:
          ``(state, history)``.

        Raises:
          FileNotFoundError: no checkpoint at all.
          CheckpointError: ``step`` (or, for None, every checkpoint) is damaged.
        """
        if step is None:
            restored = self.restore_latest(abstract_state, verify=verify)
            return restored.state, restored.history
        if verify:
            problem = self.verify(step)
            if problem is not None:
                raise CheckpointError(f"checkpoint {self.step_directory(step)} is damaged: {problem}")
        return self._restore(abstract_state, step)

    def _restore(self, abstract_state: PyTree, step: int) -> tuple[PyTree, dict]:
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), history=ocp.args.JsonRestore()),
        )
        return restored.state, restored.history

    def restore_latest(self, abstract_state: PyTree, *, verify: bool = True) -> Restored:
        """Restores the newest checkpoint whose files match its manifest; each newer, damaged one is
        reported (a warning naming its path and the fault) and skipped.

        Raises:
          FileNotFoundError: no checkpoint at all.
          CheckpointError: every checkpoint is damaged.
        """
        self._finish_pending()
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        skipped = []
        for step in reversed(steps):
            problem = verify_checkpoint(self.step_directory(step)) if verify else None
            if problem is None:
                try:
                    state, history = self._restore(abstract_state, step)
                except Exception as error:
                    if verify:  # the files are the ones written: not damage
                        raise
                    problem = f"cannot be restored ({type(error).__name__}: {error})"
                else:
                    return Restored(step, state, history, skipped)
            skipped.append((step, problem))
            message = f"checkpoint {self.step_directory(step)} is damaged, skipped: {problem}"
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            print(message, file=sys.stderr, flush=True)
        listing = "; ".join(f"{self.step_directory(s)}: {p}" for s, p in skipped)
        raise CheckpointError(f"no intact checkpoint in {self.directory} ({listing})")

    def quarantine(self, steps) -> list[str]:
        """Moves checkpoints ``steps`` (found damaged) out of the way, to ``<directory>.damaged/``, so
        that they are neither restored nor in the way of new saves; returns their new paths. Every
        process calls it (process 0 moves them; all reload the list of checkpoints)."""
        moved = []
        if not steps:
            return moved
        self._finish_pending()
        target = self.directory.rstrip(os.sep) + ".damaged"
        for step in steps if jax.process_index() == 0 else ():  # the others only reload, below
            os.makedirs(target, exist_ok=True)
            source = self.step_directory(step)
            if not os.path.isdir(source):
                continue
            dest = os.path.join(target, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
            n = 0
            while os.path.exists(dest if n == 0 else f"{dest}-{n}"):
                n += 1
            dest = dest if n == 0 else f"{dest}-{n}"
            shutil.move(source, dest)
            moved.append(dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("orthojax.Checkpointer.quarantine")
        self._manager.close()
        self._manager = self._new_manager()
        return moved

    def wait(self) -> None:
        """Blocks until pending asynchronous saves (and their manifests) are written."""
        self._finish_pending()
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        try:
            self._finish_pending()
        finally:
            self._manager.close()


# ----------------------------------------------------------------------------- the workdir lock
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
