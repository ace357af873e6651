"""Checkpoints with orbax: the train state and the run's history, saved atomically, the last k kept.

Layout: ``<workdir>/checkpoints/<step>/{state,history}``. Orbax writes each checkpoint into a temporary
directory and renames it when complete, so a process killed during a save leaves the previous checkpoint
as the latest usable one (the partial directory is ignored and cleaned up on the next start).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

PyTree = Any

__all__ = ["Checkpointer", "abstract_like"]


def abstract_like(state: PyTree, sharding: Optional[PyTree] = None) -> PyTree:
    """``jax.ShapeDtypeStruct`` leaves (with ``sharding`` when given) describing ``state``."""
    if sharding is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, sharding)


class Checkpointer:
    """A thin wrapper over ``orbax.checkpoint.CheckpointManager`` for (state, history) pairs.

    Args:
      directory: where the step directories go (created if missing).
      max_to_keep: keep the last ``max_to_keep`` checkpoints (None keeps all).
      async_save: write in a background thread (call :meth:`wait` before exiting).
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: Optional[int] = 3,
                 async_save: bool = False):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None; got {max_to_keep}")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save,
        )
        self.directory = os.path.abspath(os.fspath(directory))
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "history"))

    def latest_step(self) -> Optional[int]:
        """The step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of every complete checkpoint kept, ascending."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: PyTree, history: dict) -> None:
        """Saves ``state`` and the JSON-serialisable ``history`` as checkpoint ``step`` (skipped if it
        already exists)."""
        if step in self._manager.all_steps():
            return
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), history=ocp.args.JsonSave(history)),
            force=True,
        )

    def restore(self, abstract_state: PyTree, step: Optional[int] = None) -> tuple[PyTree, dict]:
        """Restores checkpoint ``step`` (default: the latest) into the layout of ``abstract_state``.

        Args:
          abstract_state: ``jax.ShapeDtypeStruct`` leaves (with shardings) of the state, e.g.
            :func:`abstract_like` ``(state, sharding)``.
          step: which checkpoint.

        Returns:
          ``(state, history)``.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), history=ocp.args.JsonRestore()),
        )
        return restored.state, restored.history

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are written."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.close()
