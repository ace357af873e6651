"""The history of a run: every train step's metrics and a summary per epoch (with its evaluation).

It is saved inside every checkpoint, so a resumed run continues the same history, and written to
``<workdir>/history.json`` at the end for the diagnostics plots (cosine distributions, rolling sigma).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import numpy as np

__all__ = ["History", "epoch_means"]


@dataclasses.dataclass
class History:
    """Per-step and per-epoch records (JSON-ready: Python numbers and lists).

    Attributes:
      train: one dict per step: "step" (steps completed), "epoch", and the step metrics ("loss",
        "task_losses", "cosine" (T, T), "grad_norm", ..., with a leading seed axis when vmapped).
      epochs: one dict per finished epoch: "epoch", "step", "train" (means over the epoch), "eval"
        (finalized metrics, or one dict of per-seed lists), "images_per_sec".
      nonfinite_steps: steps whose loss or gradient was not finite (skipped), for any seed.
      status: "running", "completed", "interrupted" (signal) or "nonfinite" (stopped by the guard).
    """

    train: list = dataclasses.field(default_factory=list)
    epochs: list = dataclasses.field(default_factory=list)
    nonfinite_steps: list = dataclasses.field(default_factory=list)
    status: str = "running"

    def to_json(self) -> dict:
        """A JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Optional[Mapping[str, Any]]) -> "History":
        """The inverse of :meth:`to_json` (an empty history for None)."""
        if not data:
            return cls()
        return cls(
            train=list(data.get("train", [])),
            epochs=list(data.get("epochs", [])),
            nonfinite_steps=list(data.get("nonfinite_steps", [])),
            status=str(data.get("status", "running")),
        )

    def truncate(self, step: int) -> "History":
        """The records up to and including ``step`` (e.g. the state of a restored checkpoint)."""
        return History(
            train=[r for r in self.train if r["step"] <= step],
            epochs=[r for r in self.epochs if r["step"] <= step],
            nonfinite_steps=[s for s in self.nonfinite_steps if s <= step],
            status=self.status,
        )

    def skipped_steps(self, num_seeds: int = 1) -> list[int]:
        """Per seed, how many steps the non-finite guard skipped (from each step's "finite" flag)."""
        counts = np.zeros((num_seeds,), np.int64)
        for record in self.train:
            finite = np.asarray(record.get("finite", True), dtype=bool).reshape(-1)
            if finite.size not in (1, num_seeds):
                raise ValueError(f"step {record.get('step')}: {finite.size} 'finite' flags for {num_seeds} seeds")
            counts += np.broadcast_to(~finite, (num_seeds,))
        return counts.tolist()

    def metric(self, name: str) -> np.ndarray:
        """One step metric stacked over steps, e.g. ``history.metric("cosine")`` -> (steps, T, T)."""
        return np.asarray([r[name] for r in self.train if name in r])


_NOT_AVERAGED = ("step", "epoch", "finite", "nonfinite_streak")


def epoch_means(records: list) -> dict:
    """Means of the numeric step metrics over ``records`` (non-finite steps excluded)."""
    good = [r for r in records if np.all(r.get("finite", True))]
    if not good:
        return {}
    keys = [k for k in good[0] if k not in _NOT_AVERAGED]
    out = {}
    for k in keys:
        values = np.asarray([r[k] for r in good if k in r], dtype=np.float64)
        out[k] = values.mean(axis=0).tolist()
    return out
