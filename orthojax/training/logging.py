"""Run outputs: ``config.json``, ``metrics.jsonl`` (one JSON record per train step / epoch summary /
completed checkpoint / final status) and TensorBoard event files, plus the one-line epoch summary; and the reading side
that a resumed run checks: the saved config against the new one (:func:`config_changes`) and what
``metrics.jsonl`` says happened (:func:`scan_metrics`)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from orthojax.training.history import read_records

__all__ = ["MetricWriter", "config_changes", "epoch_summary", "read_config", "scan_metrics", "to_jsonable",
           "write_config"]


def to_jsonable(value: Any) -> Any:
    """Arrays to (nested) lists, NumPy / JAX scalars to Python numbers, mappings and sequences recursed;
    non-finite floats stay floats (JSON NaN / Infinity)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    arr = np.asarray(value)
    if arr.dtype == bool:
        return arr.tolist()
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64).tolist()
    if np.issubdtype(arr.dtype, np.number):
        return arr.astype(np.float64).tolist()
    return str(value)


def write_config(workdir: str | os.PathLike, config: Mapping[str, Any]) -> str:
    """Writes ``<workdir>/config.json`` (sorted keys; atomically) and returns its path."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    fd, tmp = tempfile.mkstemp(dir=workdir, prefix=".config-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(to_jsonable(dict(config)), f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_config(workdir: str | os.PathLike) -> Optional[dict]:
    """``<workdir>/config.json`` (None if missing).

    Raises:
      ValueError: an unreadable file (named).
    """
    path = os.path.join(workdir, "config.json")
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: unreadable ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _flatten(value: Any, prefix: str, out: dict) -> dict:
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = value
    return out


def _normal(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples as lists, NumPy scalars as numbers)."""
    return json.loads(json.dumps(to_jsonable(value)))


def config_changes(saved: Mapping[str, Any], new: Mapping[str, Any],
                   may_change: Sequence[str] = ()) -> list[tuple[str, Any, Any]]:
    """The settings that differ between a saved ``config.json`` and a new one, as ``(dotted name, saved
    value, new value)`` (a value missing on one side is ``"<missing>"``), leaving out the names in
    ``may_change`` (and everything under them)."""
    a = _flatten(_normal(dict(saved)), "", {})
    b = _flatten(_normal(dict(new)), "", {})
    allowed = tuple(may_change)

    def ignored(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in allowed)

    out = []
    for name in sorted(set(a) | set(b)):
        if ignored(name):
            continue
        va, vb = a.get(name, "<missing>"), b.get(name, "<missing>")
        if va != vb:
            out.append((name, va, vb))
    return out


def scan_metrics(workdir: str | os.PathLike) -> dict:
    """What ``<workdir>/metrics.jsonl`` records: "exists", "train_steps" (the last train step logged, 0
    for none), "checkpoints" (steps of the checkpoints logged as completed) and "records" (lines read;
    torn lines are skipped)."""
    path = os.path.join(workdir, "metrics.jsonl")
    out = {"exists": os.path.exists(path), "train_steps": 0, "checkpoints": [], "records": 0}
    for record in read_records(path):
        out["records"] += 1
        if record.get("kind") == "train":
            out["train_steps"] = max(out["train_steps"], int(record["step"]))
        elif record.get("kind") == "checkpoint":
            out["checkpoints"].append(int(record["step"]))
    return out


def _scalars(prefix: str, value: Any) -> Iterable[tuple[str, float]]:
    """(tag, float) pairs for TensorBoard: arrays are flattened to ``prefix/i_j``."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        yield prefix, float(arr)
        return
    for idx in np.ndindex(arr.shape):
        yield f"{prefix}/{'_'.join(map(str, idx))}", float(arr[idx])


class MetricWriter:
    """Appends records to ``<workdir>/metrics.jsonl`` and TensorBoard events under ``<workdir>/tb``.

    Every record has "kind" ("train", "epoch", "checkpoint" or "status") and "step". A writer with ``enabled=False``
    (processes other than 0) writes nothing.

    Args:
      workdir: the run directory.
      tensorboard: also write TensorBoard event files.
      enabled: write at all.
    """

    def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True, enabled: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = enabled
        self._file = None
        self._tb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._file = open(self.path, "a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, record: Mapping[str, Any]) -> None:
        """Writes one record (must contain "kind" and "step")."""
        if not self.enabled:
            return
        record = to_jsonable(record)
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            kind, step = record["kind"], int(record["step"])
            for key, value in record.items():
                if key in ("kind", "step") or isinstance(value, (str, dict)) or value is None:
                    continue
                for tag, x in _scalars(f"{kind}/{key}", value):
                    self._tb.add_scalar(tag, x, step)

    def truncate_after(self, step: int) -> None:
        """Drops records with a step beyond ``step`` (and torn lines), e.g. when resuming; atomic."""
        if not self.enabled or not os.path.exists(self.path):
            return
        self._file.close()
        kept = [json.dumps(r) + "\n" for r in read_records(self.path) if int(r["step"]) <= step]
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path) or ".", prefix=".metrics-")
        with os.fdopen(fd, "w") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)
        self._file = open(self.path, "a")

    def flush(self, sync: bool = False) -> None:
        """Flushes the JSONL file and the event files; ``sync`` also asks the OS to write the JSONL file
        to disk (``os.fsync``: before a checkpoint, so that the history it needs survives a crash)."""
        if self._file is not None:
            self._file.flush()
            if sync:
                os.fsync(self._file.fileno())
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flushes and closes."""
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _fmt(value: Any) -> str:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return f"{float(arr):.4g}"
    return "[" + " ".join(f"{x:.4g}" for x in arr.ravel()) + "]"


def epoch_summary(epoch: int, train: Mapping[str, Any], evaluation: Optional[Mapping[str, Any]] = None,
                  images_per_sec: Optional[float] = None, max_items: int = 8) -> str:
    """One line: ``epoch 3 | train loss 0.41 task_losses [0.2 0.21] | eval acc 0.9 | 1234 img/s``.

    Only numeric scalars and short vectors are shown (at most ``max_items`` per part).
    """

    def part(values: Mapping[str, Any]) -> str:
        items = []
        for k, v in values.items():
            arr = np.asarray(v) if not isinstance(v, Mapping) else None
            if arr is None or arr.dtype.kind not in "fiub" or arr.size > 4:
                continue
            items.append(f"{k} {_fmt(arr)}")
        return " ".join(items[:max_items])

    line = f"epoch {epoch} | train {part(train)}"
    if evaluation:
        line += f" | eval {part(evaluation)}"
    if images_per_sec is not None and math.isfinite(images_per_sec):
        line += f" | {images_per_sec:.0f} img/s"
    return line
