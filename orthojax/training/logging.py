"""Run outputs: ``config.json``, ``metrics.jsonl`` (one JSON record per train step / evaluation) and
TensorBoard event files, plus the one-line epoch summary."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Mapping, Optional

import numpy as np

__all__ = ["MetricWriter", "epoch_summary", "to_jsonable", "write_config"]


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
    """Writes ``<workdir>/config.json`` (sorted keys) and returns its path."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    with open(path, "w") as f:
        json.dump(to_jsonable(dict(config)), f, indent=2, sort_keys=True)
        f.write("\n")
    return path


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

    Every record has "kind" ("train" or "eval") and "step". A writer with ``enabled=False`` (processes
    other than 0) writes nothing.

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
        """Drops records with a step beyond ``step`` (and a torn last line), e.g. when resuming."""
        if not self.enabled or not os.path.exists(self.path):
            return
        self._file.close()
        kept = []
        with open(self.path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if int(record.get("step", 0)) <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
        with open(self.path, "w") as f:
            f.writelines(kept)
        self._file = open(self.path, "a")

    def flush(self) -> None:
        """Flushes the JSONL file and the event files."""
        if self._file is not None:
            self._file.flush()
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
