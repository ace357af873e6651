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

__all__ = ["MetricWriter", "TAG_NAMES", "config_changes", "epoch_summary", "hparams_summaries", "read_config",
           "scan_metrics", "to_jsonable", "write_config"]


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


TAG_NAMES = {"loss": "objective", "task_losses": "loss", "grad_norms": "task_grad_norm",
             "task_weights": "task_weight"}
"""Step metrics renamed in TensorBoard: the method's objective (not comparable across methods) is
"objective"; the per-task quantities are named for what they hold, with one tag per task ("loss/seg")."""

_NOT_SCALARS = ("kind", "step", "epoch")

# the hparams plugin's session statuses (tensorboardX's proto has no "aborted": an interrupted run, to be
# resumed, is "unknown")
_STATUS = {"completed": "STATUS_SUCCESS", "interrupted": "STATUS_UNKNOWN", "nonfinite": "STATUS_FAILURE",
           "running": "STATUS_RUNNING"}


def _task_scalars(prefix: str, key: str, arr: np.ndarray, task_names: Optional[Sequence[str]]
                  ) -> Iterable[tuple[str, float]]:
    """(tag, float) pairs of one seed's value: a (T,) vector as ``prefix/<task>``, a (T, T) matrix as
    ``prefix/<task_i>-<task_j>`` for i < j ("cosine") or i <= j (others); any other array flattened to
    ``prefix/i_j`` by index."""
    if arr.ndim == 0:
        yield prefix, float(arr)
        return
    t = len(task_names) if task_names is not None else -1
    if arr.shape == (t,):
        for name, x in zip(task_names, arr):
            yield f"{prefix}/{name}", float(x)
        return
    if arr.shape == (t, t):
        i, j = np.triu_indices(t, k=1 if key == "cosine" else 0)
        for a, b in zip(i, j):
            yield f"{prefix}/{task_names[a]}-{task_names[b]}", float(arr[a, b])
        return
    for idx in np.ndindex(arr.shape):
        yield f"{prefix}/{'_'.join(map(str, idx))}", float(arr[idx])


def _scalars(prefix: str, key: str, value: Any, task_names: Optional[Sequence[str]] = None,
             num_seeds: int = 1) -> Iterable[tuple[str, float]]:
    """(tag, float) pairs for TensorBoard; with ``num_seeds`` > 1 the leading seed axis becomes a
    ``/seed_<i>`` suffix."""
    arr = np.asarray(value, dtype=np.float64)
    if num_seeds > 1 and arr.ndim >= 1 and arr.shape[0] == num_seeds:
        for s in range(num_seeds):
            for tag, x in _task_scalars(prefix, key, arr[s], task_names):
                yield f"{tag}/seed_{s}", x
        return
    yield from _task_scalars(prefix, key, arr, task_names)


def _tag_prefix(kind: str, key: str) -> tuple[str, str]:
    """The TensorBoard prefix and the metric name of a record's key: a train step's "task_losses" is
    "train/loss"; an epoch summary's "eval/depth/abs_err" stays as it is, its "train/task_losses" is
    "epoch/loss", its other keys are "epoch/<key>"."""
    if kind == "epoch":
        if key.startswith("eval/"):
            return key, key.split("/")[-1]
        if key.startswith("train/"):
            key = key.split("/", 1)[1]
        return f"epoch/{TAG_NAMES.get(key, key)}", key
    return f"{kind}/{TAG_NAMES.get(key, key)}", key


def _hparam_value(value: Any) -> Any:
    """A config value as an hparam: bool, int, float or str (anything else as its JSON text)."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(to_jsonable(value), sort_keys=True)


def hparams_summaries(hparams: Mapping[str, Any], metric_tags: Sequence[str], status: str = "completed"):
    """The TensorBoard HParams plugin's three summaries (experiment, session start, session end) of one run.

    Nested mappings are flattened to dotted names ("train.num_epochs", "method_kwargs.alpha"); values
    that are not bool / int / float / str are written as their JSON text. The metrics are scalar tags of
    the same run (the plugin shows each tag's last value).

    Args:
      hparams: the run's settings (e.g. ``config.json``'s content).
      metric_tags: scalar tags to show beside the hyper-parameters (e.g. "eval/seg/miou").
      status: the run's status ("completed", "interrupted", "nonfinite", "running").

    Returns:
      (experiment, session_start, session_end) ``Summary`` protos (tensorboardX's).

    Raises:
      ValueError: an unknown status.
    """
    from tensorboardX.proto.api_pb2 import Status
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData, SessionEndInfo
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboardX.summary import hparams as tb_hparams

    if status not in _STATUS:
        raise ValueError(f"status must be one of {sorted(_STATUS)}; got {status!r}")
    flat = {k: _hparam_value(v) for k, v in _flatten(_normal(dict(hparams)), "", {}).items()}
    experiment, start, _ = tb_hparams(flat, {tag: 0.0 for tag in metric_tags})
    content = HParamsPluginData(session_end_info=SessionEndInfo(status=Status.Value(_STATUS[status])), version=0)
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="hparams",
                                                                      content=content.SerializeToString()))
    end = Summary(value=[Summary.Value(tag="_hparams_/session_end_info", metadata=metadata)])
    return experiment, start, end


def _check_task_names(task_names: Optional[Sequence[str]]) -> Optional[tuple[str, ...]]:
    if task_names is None:
        return None
    if isinstance(task_names, str) or not isinstance(task_names, Sequence):
        raise ValueError(f"task_names must be a sequence of task names, got {task_names!r}")
    names = tuple(task_names)
    if not names or not all(isinstance(n, str) and n and "/" not in n for n in names) or len(set(names)) < len(names):
        raise ValueError(f"task_names must be distinct non-empty strings without '/', got {names!r}")
    return names


class MetricWriter:
    """Appends records to ``<workdir>/metrics.jsonl`` and TensorBoard events under ``<workdir>/tb``.

    Every record has "kind" ("train", "epoch", "checkpoint" or "status") and "step". A writer with ``enabled=False``
    (processes other than 0) writes nothing.

    TensorBoard gets, named by task (``task_names``; default "0", "1", ...):

    - scalars: a train step's "train/objective" (the method's objective), "train/loss/<task>",
      "train/task_grad_norm/<task>", "train/task_weight/<task>", "train/cosine/<task_i>-<task_j>" and the
      method's other metrics; an epoch's means as "epoch/..." and its evaluation as "eval/<name>" (e.g.
      "eval/depth/abs_err"); vmapped seeds add "/seed_<i>";
    - histograms: "train/cosine_distribution/<task_i>-<task_j>", the pairwise cosines of the steps since
      the last one, at every flush (the loop's log steps);
    - hparams (when ``hparams`` is given), written on :meth:`close`: the flattened settings with the last
      evaluation's scalar tags as the metrics (the last epoch's mean task losses when never evaluated)
      and the run's status from its last "status" record.

    Args:
      workdir: the run directory.
      tensorboard: also write TensorBoard event files.
      enabled: write at all.
      task_names: the T task names, in the order of the task axis.
      num_seeds: S, the size of the leading seed axis of vmapped runs (1: none).
      hparams: the run's settings for the HParams dashboard (e.g. ``config.json``'s content).

    Raises:
      ValueError: ``task_names`` not distinct non-empty strings without "/", or ``num_seeds`` < 1.
    """

    def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True, enabled: bool = True,
                 task_names: Optional[Sequence[str]] = None, num_seeds: int = 1,
                 hparams: Optional[Mapping[str, Any]] = None):
        if isinstance(num_seeds, bool) or not isinstance(num_seeds, int) or num_seeds < 1:
            raise ValueError(f"num_seeds must be an int >= 1, got {num_seeds!r}")
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = enabled
        self.task_names = _check_task_names(task_names)
        self.num_seeds = num_seeds
        self.hparams = None if hparams is None else dict(hparams)
        self._file = None
        self._tb = None
        self._cosines: dict[str, list] = {}  # histogram tag -> cosines since the last flush
        self._last_step = 0
        self._final_tags: list = []
        self._status = "running"
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
        kind, step = record["kind"], int(record["step"])
        if kind == "status":
            self._status = record.get("status", self._status)
        if self._tb is None:
            return
        self._last_step = max(self._last_step, step)
        tags = []
        for key, value in record.items():
            if key in _NOT_SCALARS or isinstance(value, (str, dict)) or value is None:
                continue
            prefix, name = _tag_prefix(kind, key)
            for tag, x in _scalars(prefix, name, value, self.task_names, self.num_seeds):
                self._tb.add_scalar(tag, x, step)
                tags.append(tag)
        if kind == "train" and "cosine" in record:
            self._collect_cosines(record["cosine"])
        if kind == "epoch":
            evaluated = [t for t in tags if t.startswith("eval/")]
            self._final_tags = evaluated or [t for t in tags if t.startswith("epoch/loss")]

    def _collect_cosines(self, cosine: Any) -> None:
        """Keeps a step's pairwise cosines (finite ones) for the next histograms."""
        c = np.asarray(cosine, dtype=np.float64)
        if c.ndim < 2 or c.shape[-1] != c.shape[-2]:
            return
        t = c.shape[-1]
        names = self.task_names if self.task_names is not None and len(self.task_names) == t else \
            [str(i) for i in range(t)]
        per_seed = [(f"/seed_{s}", c[s]) for s in range(c.shape[0])] if c.ndim == 3 else [("", c)]
        i, j = np.triu_indices(t, k=1)
        for suffix, m in per_seed:
            for a, b in zip(i, j):
                if np.isfinite(m[a, b]):
                    tag = f"train/cosine_distribution/{names[a]}-{names[b]}{suffix}"
                    self._cosines.setdefault(tag, []).append(m[a, b])

    def _write_histograms(self) -> None:
        for tag, values in self._cosines.items():
            if values:
                self._tb.add_histogram(tag, np.asarray(values, np.float64), self._last_step)
        self._cosines = {}

    def write_hparams(self, hparams: Mapping[str, Any], metric_tags: Sequence[str], status: str = "completed"
                      ) -> None:
        """Writes the HParams dashboard's summaries (see :func:`hparams_summaries`) at the last step."""
        if self._tb is None:
            return
        file_writer = self._tb._get_file_writer()
        for summary in hparams_summaries(hparams, metric_tags, status):
            file_writer.add_summary(summary, self._last_step)

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
        """Flushes the JSONL file and the event files (after writing the cosine histograms of the steps
        since the last flush); ``sync`` also asks the OS to write the JSONL file to disk (``os.fsync``:
        before a checkpoint, so that the history it needs survives a crash)."""
        if self._file is not None:
            self._file.flush()
            if sync:
                os.fsync(self._file.fileno())
        if self._tb is not None:
            self._write_histograms()
            self._tb.flush()

    def close(self) -> None:
        """Writes the hparams (when given), flushes and closes."""
        if self._tb is not None and self.hparams is not None:
            self.write_hparams(self.hparams, self._final_tags, self._status)
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
