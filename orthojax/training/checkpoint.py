"""Checkpoints with orbax: the train state and the data position, saved atomically, the last k kept,
each verified on restore.

Layout: ``<workdir>/checkpoints/<step>/{state,data,MANIFEST.sha256.json}``: ``state`` is the
:class:`~orthojax.training.TrainState`, ``data`` the data position (:data:`DATA_ITEM`: the step, the
epoch, the batch within it and the steps per epoch), checked against the state and the run on restore
(:func:`check_position`). The run's metrics are not in checkpoints: ``metrics.jsonl`` holds them, and a
resumed run rebuilds its history from it.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a process
killed during a save leaves the previous checkpoint as the latest usable one (the partial directory is
ignored and cleaned up on the next start). Once a save has completed, the size and SHA-256 of every
file in it are written next to orbax's files (:data:`MANIFEST`); a restore checks them first, and a
checkpoint that does not match (a truncated or missing file, a flipped bit, no manifest) is reported by
path and skipped for the newest one that does. Checkpoints of the earlier layout (train state and
history) are refused with :class:`CheckpointError` (:func:`layout_problem`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import orbax.checkpoint as ocp

from orthojax.training.errors import CheckpointError, ConfigChangedError
from orthojax.training.schedule import DataPosition, data_position

PyTree = Any

__all__ = [
    "DATA_ITEM",
    "MANIFEST",
    "Checkpointer",
    "Restored",
    "abstract_like",
    "check_position",
    "checkpoint_steps",
    "layout_problem",
    "position_record",
    "verify_checkpoint",
]

MANIFEST = "MANIFEST.sha256.json"
"""The file, in each checkpoint's directory, with the size and SHA-256 of every other file in it."""

STATE_ITEM = "state"
DATA_ITEM = "data"
"""The checkpoint item (a JSON object) holding the data position: "step", "epoch", "position",
"steps_per_epoch"."""


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


def layout_problem(step_dir: str) -> Optional[str]:
    """Why this version cannot restore the checkpoint in ``step_dir`` although it may be intact (one
    of the earlier layout: train state and history, no data position), or None."""
    if os.path.isdir(os.path.join(step_dir, "history")) and not os.path.isdir(os.path.join(step_dir, DATA_ITEM)):
        return (f"checkpoint {step_dir} has the earlier layout (train state + history, written by orthojax 0.2); "
                f"this version's checkpoints hold the train state and the data position, and it cannot resume "
                f"it. Start the run again in a new workdir (its metrics.jsonl stays readable)")
    return None


def position_record(step: int, steps_per_epoch: int) -> dict:
    """The :data:`DATA_ITEM` of a checkpoint at ``step``: {"step", "epoch", "position",
    "steps_per_epoch"} (see :func:`orthojax.training.schedule.data_position`)."""
    return {**data_position(step, steps_per_epoch)._asdict(), "steps_per_epoch": steps_per_epoch}


def check_position(record: Mapping[str, Any], *, step: int, state_step: int,
                   steps_per_epoch: Optional[int], where: str) -> DataPosition:
    """Checks a checkpoint's data position against the checkpoint's step, its state and the run.

    Args:
      record: the checkpoint's :data:`DATA_ITEM`.
      step: the checkpoint's step (its directory name).
      state_step: the restored ``TrainState.step`` (the first seed's when vmapped).
      steps_per_epoch: the resuming run's steps per epoch (None: not checked, e.g. for an evaluation).
      where: the checkpoint's path, for the messages.

    Returns:
      The :class:`~orthojax.training.schedule.DataPosition` it records.

    Raises:
      CheckpointError: the record is malformed, or disagrees with the step or with the state's step.
      ConfigChangedError: the checkpoint was written with another number of steps per epoch (the data
        position would point elsewhere in the data).
    """
    try:
        saved = DataPosition(int(record["step"]), int(record["epoch"]), int(record["position"]))
        saved_spe = int(record["steps_per_epoch"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {where}: unreadable data position {record!r} ({error})") from None
    if saved.step != step or state_step != step or saved != data_position(step, saved_spe):
        raise CheckpointError(
            f"checkpoint {where}: inconsistent data position {dict(record)} for checkpoint step {step} and train "
            f"state step {state_step}; restore an earlier checkpoint or start a new workdir")
    if steps_per_epoch is not None and saved_spe != steps_per_epoch:
        raise ConfigChangedError(
            f"checkpoint {where} was written with {saved_spe} steps per epoch (at batch {saved.position} of epoch "
            f"{saved.epoch}); this run has {steps_per_epoch}, so it would resume elsewhere in the data. Resume "
            f"with the same data and batch size, or start a new workdir")
    return saved


class Restored(NamedTuple):
    """What :meth:`Checkpointer.restore_latest` returns."""

    step: int
    state: PyTree
    position: dict  # the checkpoint's DATA_ITEM (see check_position)
    skipped: list  # [(step, reason)] of the newer checkpoints found damaged


class Checkpointer:
    """A thin wrapper over ``orbax.checkpoint.CheckpointManager`` for (train state, data position) pairs,
    with a checksum manifest per checkpoint, verified on restore.

    Args:
      directory: where the step directories go (created if missing, unless ``read_only``).
      max_to_keep: keep the last ``max_to_keep`` checkpoints (None keeps all).
      async_save: write in a background thread (call :meth:`wait` before exiting).
      on_saved: ``fn(step)`` called (in the caller's thread) once a checkpoint and its manifest are
        complete on disk.
      read_only: only restore: create, clean up and delete nothing (e.g. to evaluate the checkpoints of
        a run that may still be writing them).

    Raises:
      ValueError: ``max_to_keep`` < 1.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: Optional[int] = 3,
                 async_save: bool = False, on_saved: Optional[Callable[[int], None]] = None,
                 read_only: bool = False):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None; got {max_to_keep}")
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=not read_only,
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=async_save,
            read_only=read_only,
        )
        self.directory = os.path.abspath(os.fspath(directory))
        self.on_saved = on_saved
        self._pending: list[int] = []
        self._closed = False
        self._manager = self._new_manager()

    def _new_manager(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(self.directory, options=self._options, item_names=(STATE_ITEM, DATA_ITEM))

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

    def save(self, step: int, state: PyTree, position: Mapping[str, Any]) -> None:
        """Saves ``state`` and the data ``position`` (:func:`position_record`) as checkpoint ``step``
        (skipped if it already exists), then its manifest (at once, or when the asynchronous save has
        finished)."""
        self._finish_pending()
        if step in self._manager.all_steps():
            return
        self._manager.save(
            step,
            args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state),
                                       DATA_ITEM: ocp.args.JsonSave(dict(position))}),
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
          ``(state, position)``: the train state and the data position record.

        Raises:
          FileNotFoundError: no checkpoint at all.
          CheckpointError: ``step`` (or, for None, every checkpoint) is damaged, or has the earlier layout.
        """
        if step is None:
            restored = self.restore_latest(abstract_state, verify=verify)
            return restored.state, restored.position
        problem = layout_problem(self.step_directory(step))
        if problem is None and verify:
            problem = self.verify(step)
            problem = None if problem is None else f"checkpoint {self.step_directory(step)} is damaged: {problem}"
        if problem is not None:
            raise CheckpointError(problem)
        return self._restore(abstract_state, step)

    def _restore(self, abstract_state: PyTree, step: int) -> tuple[PyTree, dict]:
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(abstract_state),
                                       DATA_ITEM: ocp.args.JsonRestore()}),
        )
        return restored[STATE_ITEM], restored[DATA_ITEM]

    def restore_latest(self, abstract_state: PyTree, *, verify: bool = True) -> Restored:
        """Restores the newest checkpoint whose files match its manifest; each newer, damaged one is
        reported (a warning naming its path and the fault) and skipped.

        Raises:
          FileNotFoundError: no checkpoint at all.
          CheckpointError: every checkpoint is damaged, or the newest intact one has the earlier layout.
        """
        self._finish_pending()
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        skipped = []
        for step in reversed(steps):
            problem = verify_checkpoint(self.step_directory(step)) if verify else None
            if problem is None:
                layout = layout_problem(self.step_directory(step))
                if layout is not None:
                    raise CheckpointError(layout)
                try:
                    state, position = self._restore(abstract_state, step)
                except Exception as error:
                    if verify:  # the files are the ones written: not damage
                        raise
                    problem = f"cannot be restored ({type(error).__name__}: {error})"
                else:
                    return Restored(step, state, position, skipped)
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
        """Waits for pending saves and releases the manager (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._finish_pending()
        finally:
            self._manager.close()
