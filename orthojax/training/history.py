"""The history of a run: every train step's metrics, a summary per epoch (with its evaluation) and the
run's status, built from the records of ``<workdir>/metrics.jsonl``.

``metrics.jsonl`` is the one place where per-step metrics are kept: the loop adds each record to the
history as it writes it (:meth:`History.add`), and a resumed run rebuilds the history of the steps before
its checkpoint from the file (:meth:`History.from_metrics`), so both ways give the same history.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Mapping, Optional

import numpy as np

__all__ = ["History", "epoch_means", "read_records"]

STATUSES = ("running", "completed", "interrupted", "nonfinite")


def read_records(path: str | os.PathLike) -> list[dict]:
    """The JSON records of a ``metrics.jsonl`` file, in order; lines that do not parse as a JSON object
    with an integer "step" (e.g. a line torn by a killed process) are skipped. [] for a missing file."""
    out = []
    try:
        f = open(path)
    except FileNotFoundError:
        return out
    with f:
        for line in f:
            try:
                record = json.loads(line)
                int(record["step"])
            except (ValueError, TypeError, KeyError, AttributeError):
                continue
            out.append(record)
    return out


def _epoch_entry(record: Mapping[str, Any]) -> dict:
    """An "epoch" record of ``metrics.jsonl`` (flat ``train/<name>``, ``eval/<name>`` keys) as a history
    entry: {"epoch", "step", "train": {...}, "eval": {...} or None, "images_per_sec"}."""
    train = {k.split("/", 1)[1]: v for k, v in record.items() if k.startswith("train/")}
    evaluation = {k.split("/", 1)[1]: v for k, v in record.items() if k.startswith("eval/")}
    return {"epoch": record["epoch"], "step": record["step"], "train": train, "eval": evaluation or None,
            "images_per_sec": record.get("images_per_sec")}


@dataclasses.dataclass
class History:
    """Per-step and per-epoch records (JSON-ready: Python numbers and lists).

    Attributes:
      train: one dict per step: "step" (steps completed), "epoch", and the step metrics ("loss",
        "task_losses", "cosine" (T, T), "grad_norm", "finite", ..., with a leading seed axis when
        vmapped).
      epochs: one dict per finished epoch: "epoch", "step", "train" (means over the epoch), "eval"
        (finalized metrics, or one dict of per-seed lists; None when not evaluated), "images_per_sec".
      nonfinite_steps: steps whose loss or gradient was not finite (skipped), for any seed.
      status: "running", "completed", "interrupted" (signal) or "nonfinite" (stopped by the guard).
    """

    train: list = dataclasses.field(default_factory=list)
    epochs: list = dataclasses.field(default_factory=list)
    nonfinite_steps: list = dataclasses.field(default_factory=list)
    status: str = "running"

    def add(self, record: Mapping[str, Any]) -> None:
        """Adds one ``metrics.jsonl`` record, by its "kind": "train" (a step), "epoch" (a summary),
        "status" (the run's status); other kinds ("checkpoint") are not part of the history.

        Raises:
          ValueError: a "status" record with an unknown status.
        """
        kind = record.get("kind")
        if kind == "train":
            entry = {k: v for k, v in record.items() if k != "kind"}
            self.train.append(entry)
            if not np.all(np.asarray(entry.get("finite", True), dtype=bool)):
                self.nonfinite_steps.append(entry["step"])
        elif kind == "epoch":
            self.epochs.append(_epoch_entry(record))
        elif kind == "status":
            if record.get("status") not in STATUSES:
                raise ValueError(f"status record at step {record.get('step')}: {record.get('status')!r} is not "
                                 f"one of {STATUSES}")
            self.status = record["status"]

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], up_to: Optional[int] = None) -> "History":
        """The history of ``records`` (in order), keeping those with a step <= ``up_to`` when given."""
        history = cls()
        for record in records:
            if up_to is None or int(record["step"]) <= up_to:
                history.add(record)
        return history

    @classmethod
    def from_metrics(cls, workdir: str | os.PathLike, up_to: Optional[int] = None) -> "History":
        """The history that ``<workdir>/metrics.jsonl`` records (up to step ``up_to`` when given)."""
        return cls.from_records(read_records(os.path.join(workdir, "metrics.jsonl")), up_to)

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
        """Per seed, how many steps the non-finite guard skipped (from each step's "finite" flag).

        Raises:
          ValueError: a step whose "finite" flags are neither one nor ``num_seeds``.
        """
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


_NOT_AVERAGED = ("step", "epoch", "finite", "nonfinite_streak", "kind")


def epoch_means(records: list) -> dict:
    """Means (float64) of the numeric step metrics over ``records``, non-finite steps excluded ({} if
    none is left): ``{name: mean over steps}`` with the metric's own shape."""
    good = [r for r in records if np.all(r.get("finite", True))]
    if not good:
        return {}
    keys = [k for k in good[0] if k not in _NOT_AVERAGED]
    out = {}
    for k in keys:
        values = np.asarray([r[k] for r in good if k in r], dtype=np.float64)
        out[k] = values.mean(axis=0).tolist()
    return out
