"""Tests for orthojax.training.logging.MetricWriter's TensorBoard side: scalars named by task, cosine
histograms at flushes and the HParams summaries, read back from the event files."""

import glob
import json
import os
import struct

import pytest
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

from orthojax.training.logging import MetricWriter, hparams_summaries

TASKS = ("seg", "depth", "normal")


def read_events(logdir):
    """Every summary value of the event files under ``logdir``: (step, tag, value proto), parsed from the
    TFRecord framing (u64 length, u32 crc, payload, u32 crc)."""
    out = []
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        data = open(path, "rb").read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            out.extend((event.step, v.tag, v) for v in event.summary.value)
    return out


def cosine_matrix(c01, c02, c12):
    return [[1.0, c01, c02], [c01, 1.0, c12], [c02, c12, 1.0]]


def write_run(workdir, **kwargs):
    w = MetricWriter(workdir, task_names=TASKS, **kwargs)
    cos = [cosine_matrix(0.1, -0.2, 0.3), cosine_matrix(0.5, float("nan"), 0.0), cosine_matrix(-0.4, 0.2, 0.1)]
    for step, c in enumerate(cos, start=1):
        w.write({"kind": "train", "step": step, "epoch": 0, "loss": 6.0 - step, "task_losses": [1.0, 2.0, 3.0 + step],
                 "grad_norms": [0.5, 0.25, 0.125], "cosine": c, "finite": True})
        if step == 2:
            w.flush()
    w.flush()
    w.write({"kind": "epoch", "step": 3, "epoch": 0, "images_per_sec": 12.5, "train/task_losses": [1.0, 2.0, 5.0],
             "eval/seg/miou": 0.25, "eval/depth/abs_err": 0.75, "eval/seg/iou": [0.1, 0.4]})
    w.write({"kind": "status", "step": 3, "status": "completed"})
    w.close()
    return read_events(os.path.join(workdir, "tb"))


def test_scalars_are_named_by_task(tmp_path):
    events = write_run(tmp_path)
    scalars = {(step, tag): v.simple_value for step, tag, v in events if v.WhichOneof("value") == "simple_value"}
    assert scalars[(2, "train/loss/normal")] == pytest.approx(5.0)
    assert scalars[(1, "train/objective")] == pytest.approx(5.0)
    assert scalars[(1, "train/task_grad_norm/depth")] == pytest.approx(0.25)
    assert scalars[(3, "train/cosine/seg-depth")] == pytest.approx(-0.4)
    assert scalars[(3, "train/cosine/depth-normal")] == pytest.approx(0.1)
    assert scalars[(3, "eval/depth/abs_err")] == pytest.approx(0.75)
    assert scalars[(3, "eval/seg/iou/1")] == pytest.approx(0.4)  # not a task vector: by index
    assert scalars[(3, "epoch/loss/depth")] == pytest.approx(2.0)
    assert scalars[(3, "epoch/images_per_sec")] == pytest.approx(12.5)
    tags = {tag for _, tag in scalars}
    assert not any(t.startswith("train/cosine/seg-seg") or t.endswith("/0") for t in tags if "cosine" in t)
    assert "train/epoch" not in tags and not any("task_losses" in t for t in tags)


def test_cosine_histograms_hold_the_steps_since_the_last_flush(tmp_path):
    events = write_run(tmp_path)
    hist = {(step, tag): v.histo for step, tag, v in events if v.WhichOneof("value") == "histo"}
    first = hist[(2, "train/cosine_distribution/seg-depth")]
    assert first.num == 2 and first.sum == pytest.approx(0.6) and first.min == pytest.approx(0.1)
    assert first.max == pytest.approx(0.5) and first.sum_squares == pytest.approx(0.26)
    assert hist[(2, "train/cosine_distribution/seg-normal")].num == 1  # the NaN (uncomputed) step is left out
    last = hist[(3, "train/cosine_distribution/depth-normal")]
    assert last.num == 1 and last.sum == pytest.approx(0.1)
    assert sorted(tag for step, tag in hist if step == 3) == [
        "train/cosine_distribution/depth-normal", "train/cosine_distribution/seg-depth",
        "train/cosine_distribution/seg-normal"]


def test_hparams_hold_the_settings_and_the_final_metrics(tmp_path):
    config = {"train": {"num_epochs": 3, "lr": 1e-3, "resume": False, "max_steps": None},
              "method": "cosreg", "method_kwargs": {"alpha": 0.5}, "seeds": [0, 1]}
    events = write_run(tmp_path, hparams=config)
    plugin = {tag: HParamsPluginData.FromString(v.metadata.plugin_data.content) for _, tag, v in events
              if v.metadata.plugin_data.plugin_name == "hparams"}
    start = plugin["_hparams_/session_start_info"].session_start_info.hparams
    assert start["train.num_epochs"].number_value == 3
    assert start["train.lr"].number_value == pytest.approx(1e-3)
    assert start["train.resume"].bool_value is False
    assert start["method"].string_value == "cosreg"
    assert start["method_kwargs.alpha"].number_value == 0.5
    assert json.loads(start["seeds"].string_value) == [0, 1]
    assert start["train.max_steps"].string_value == "null"
    metrics = [m.name.tag for m in plugin["_hparams_/experiment"].experiment.metric_infos]
    assert metrics == ["eval/seg/miou", "eval/depth/abs_err", "eval/seg/iou/0", "eval/seg/iou/1"]
    assert plugin["_hparams_/session_end_info"].session_end_info.status == 1  # STATUS_SUCCESS


def test_vmapped_seeds_and_default_names(tmp_path):
    w = MetricWriter(tmp_path, num_seeds=2)
    w.write({"kind": "train", "step": 1, "loss": [1.0, 2.0], "task_losses": [[1.0, 2.0], [3.0, 4.0]],
             "cosine": [[[1.0, 0.5], [0.5, 1.0]], [[1.0, -0.5], [-0.5, 1.0]]]})
    w.close()
    events = read_events(os.path.join(tmp_path, "tb"))
    scalars = {tag: v.simple_value for _, tag, v in events if v.WhichOneof("value") == "simple_value"}
    assert scalars["train/objective/seed_1"] == 2.0
    assert scalars["train/loss/1/seed_0"] == 2.0 and scalars["train/loss/0/seed_1"] == 3.0
    hist = {tag: v.histo for _, tag, v in events if v.WhichOneof("value") == "histo"}
    assert hist["train/cosine_distribution/0-1/seed_1"].sum == pytest.approx(-0.5)
    assert not any(v.metadata.plugin_data.plugin_name == "hparams" for _, _, v in events)  # none given


def test_status_and_bad_arguments(tmp_path):
    _, _, end = hparams_summaries({"a": 1}, ["eval/x"], status="nonfinite")
    info = HParamsPluginData.FromString(end.value[0].metadata.plugin_data.content).session_end_info
    assert info.status == 2  # STATUS_FAILURE
    with pytest.raises(ValueError, match="status"):
        hparams_summaries({"a": 1}, [], status="done")
    with pytest.raises(ValueError, match="task_names"):
        MetricWriter(tmp_path, task_names=("seg", "seg"))
    with pytest.raises(ValueError, match="task_names"):
        MetricWriter(tmp_path, task_names="seg")
    with pytest.raises(ValueError, match="num_seeds"):
        MetricWriter(tmp_path, num_seeds=0)
    assert not os.path.exists(tmp_path / "metrics.jsonl")  # refused before writing
    off = MetricWriter(tmp_path / "off", enabled=False, task_names=TASKS)
    off.write({"kind": "train", "step": 1, "loss": 1.0})
    off.close()
    assert not os.path.exists(tmp_path / "off")
