"""train_and_evaluate: outputs in the workdir, SIGTERM + resume (bit for bit), the non-finite stop, and
S seeds vmapped in one program against S separate runs."""

from __future__ import annotations

import glob
import json
import os
import signal
import sys

import jax
import numpy as np
import optax
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _training_common import (  # noqa: E402
    LAST_SHARED, compilation_cache, TinyMTL, flat_params, make_data, run, task_losses,
)

from orthojax import training  # noqa: E402
from orthojax.data.loader import iterate_batches  # noqa: E402
from orthojax.methods import get_method  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _shared_compilation_cache(tmp_path_factory):
    with compilation_cache(str(tmp_path_factory.getbasetemp() / "training_jax_cache")):
        yield

TRAIN, TEST = make_data(48), make_data(23, seed=1)  # 6 steps per epoch at batch 8; eval batches 7,7,7,2


def _assert_same_params(a, b):
    fa, fb = flat_params(a), flat_params(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def test_sigterm_checkpoint_then_resume_is_bit_exact_and_logs_are_complete(tmp_path):
    common = dict(train=TRAIN, test=TEST, num_epochs=2, checkpoint_every=4, keep_checkpoints=2, log_every=3,
                  dropout=0.3)
    ref = run(str(tmp_path / "ref"), **common)
    assert ref.history.status == "completed"

    def sigterm_at_step_9(epoch, step, batch):
        if (epoch, step) == (1, 2):  # the batch that global step 9 trains on (no periodic save there)
            os.kill(os.getpid(), signal.SIGTERM)
        return batch

    workdir = str(tmp_path / "run")
    cut = run(workdir, on_batch=sigterm_at_step_9, **common)
    assert cut.history.status == "interrupted" and int(cut.state.step) == 9
    assert training.Checkpointer(os.path.join(workdir, "checkpoints")).all_steps() == [8, 9]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    with pytest.raises(FileExistsError, match="resume"):
        run(workdir, **common)
    resumed = run(workdir, resume=True, **common)
    assert resumed.history.status == "completed"
    _assert_same_params(resumed.state.params, ref.state.params)
    _assert_same_params(resumed.state.batch_stats, ref.state.batch_stats)
    assert resumed.history.train == ref.history.train
    assert [e["eval"] for e in resumed.history.epochs] == [e["eval"] for e in ref.history.epochs]

    # Every step logged once, cosine matrices included; an epoch record per epoch; config and events.
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 13))
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [0, 1]
    assert np.asarray(records[0]["cosine"]).shape == (2, 2)
    assert [r["eval/count"] for r in records if r["kind"] == "epoch"] == [23, 23]
    assert [(r["step"], r["status"]) for r in records if r["kind"] == "status"] == [(9, "interrupted"), (12, "completed")]
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["train"]["num_epochs"] == 2 and config["method"] == "cosreg"
    assert glob.glob(os.path.join(workdir, "tb", "events.out.tfevents.*"))
    # metrics.jsonl is the history's one store: rebuilt from it, it is the history the run returned
    assert training.History.from_metrics(workdir) == resumed.history
    assert not os.path.exists(os.path.join(workdir, "history.json"))

    # Checkpoints hold the train state and the data position only.
    checkpoints = os.path.join(workdir, "checkpoints")
    assert training.Checkpointer(checkpoints).all_steps() == [9, 12]
    assert {"state", "data", training.MANIFEST} <= set(os.listdir(os.path.join(checkpoints, "9")))
    assert "history" not in os.listdir(os.path.join(checkpoints, "9"))
    assert json.load(open(os.path.join(checkpoints, "9", "data", "metadata"))) == {
        "step": 9, "epoch": 1, "position": 3, "steps_per_epoch": 6}


def test_nonfinite_guard_stops_with_a_good_checkpoint(tmp_path):
    def nan_from_step_3(epoch, step, batch):
        return dict(batch, image=batch["image"] * np.nan) if step >= 3 else batch

    workdir = str(tmp_path / "run")
    with pytest.raises(training.NonFiniteError, match="3 consecutive steps"):
        run(workdir, train=TRAIN, on_batch=nan_from_step_3, max_nonfinite=3, log_every=1, use_bn=False,
            cosine=False)
    saved = training.History.from_metrics(workdir)
    assert saved.status == "nonfinite" and saved.nonfinite_steps == [4, 5, 6]
    # The checkpoint holds the parameters of step 3, which a clean 3-step run reproduces exactly.
    clean = run(str(tmp_path / "clean"), train=TRAIN, max_steps=3, use_bn=False, cosine=False)
    checkpointer = training.Checkpointer(os.path.join(workdir, "checkpoints"))
    state, position = checkpointer.restore(training.abstract_like(clean.state))
    checkpointer.close()
    assert int(state.step) == 6 and int(state.nonfinite_streak) == 3
    _assert_same_params(state.params, clean.state.params)
    assert position == {"step": 6, "epoch": 1, "position": 0, "steps_per_epoch": 6}


def test_seeds_vmapped_in_one_program_equal_separate_runs(tmp_path):
    seeds, train = 3, make_data(32)  # one epoch of 4 steps
    vmapped = run(str(tmp_path / "vmap"), train=train, test=TEST, num_seeds=seeds, seed=10,
                  dropout=0.3, method="equal")
    assert np.asarray(vmapped.history.train[-1]["loss"]).shape == (seeds,)
    assert np.asarray(vmapped.history.train[-1]["cosine"]).shape == (seeds, 2, 2)

    # S separate runs of the single-seed step, on the same batches.
    model, method, optimizer = TinyMTL(use_bn=True, dropout=0.3), get_method("equal"), optax.adam(1e-2)
    init = jax.jit(lambda k: training.init_train_state(k, model, method, optimizer, train["image"][:2]))
    step = jax.jit(training.make_train_step(model, task_losses, method, optimizer, last_shared=LAST_SHARED))
    for i in range(seeds):
        state = init(jax.random.key(10 + i))
        for batch in iterate_batches(train, 8, 0, 0):
            state, _ = step(state, batch)
        got = jax.tree.map(lambda x: x[i], vmapped.state)
        for name in ("params", "batch_stats"):
            for a, b in zip(jax.tree.leaves(getattr(got, name)), jax.tree.leaves(getattr(state, name))):
                np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
        model_vars = {"params": state.params, "batch_stats": state.batch_stats}
        outputs = model.apply(model_vars, TEST["image"], train=False)
        accuracy = [int(np.sum(np.argmax(np.asarray(o), -1) == TEST["labels"][:, t])) / 23
                    for t, o in enumerate(outputs)]
        np.testing.assert_allclose(vmapped.history.epochs[-1]["eval"]["accuracy"][i], accuracy)
    params = [jax.tree.leaves(vmapped.state.params)[0][i] for i in range(seeds)]
    assert not np.allclose(params[0], params[1])


def test_schedule_helpers_against_enumeration():
    from orthojax.training.schedule import data_position, is_epoch_end, is_time, should_evaluate

    assert [s for s in range(13) if is_time(s, 4)] == [4, 8, 12]
    assert [s for s in range(13) if is_time(s, 0, total=10)] == [10]
    assert [s for s in range(13) if is_time(s, 5, total=7)] == [5, 7, 10]
    assert not is_time(0, 1)
    assert [s for s in range(13) if is_epoch_end(s, 6)] == [6, 12]
    assert [tuple(data_position(s, 6)) for s in (0, 5, 6, 13)] == [(0, 0, 0), (5, 0, 5), (6, 1, 0), (13, 2, 1)]
    with pytest.raises(ValueError, match="steps_per_epoch must be >= 1; got 0"):
        data_position(3, 0)
    assert [e for e in range(7) if should_evaluate(e, eval_every=3, num_epochs=7)] == [2, 5, 6]
    assert should_evaluate(0, eval_every=3, num_epochs=7, last=True)
    assert not should_evaluate(6, eval_every=0, num_epochs=7, last=True)


def test_data_position_is_verified(tmp_path):
    from orthojax.training.checkpoint import check_position, position_record

    record = position_record(9, 6)
    assert record == {"step": 9, "epoch": 1, "position": 3, "steps_per_epoch": 6}
    assert tuple(check_position(record, step=9, state_step=9, steps_per_epoch=6, where="ck/9")) == (9, 1, 3)
    with pytest.raises(training.ConfigChangedError, match="ck/9 was written with 6 steps per epoch.*this run has 5"):
        check_position(record, step=9, state_step=9, steps_per_epoch=5, where="ck/9")
    for bad in ({**record, "epoch": 0}, {**record, "step": 8}):
        with pytest.raises(training.CheckpointError, match="ck/9: inconsistent data position"):
            check_position(bad, step=9, state_step=9, steps_per_epoch=6, where="ck/9")
    with pytest.raises(training.CheckpointError, match="inconsistent data position"):
        check_position(record, step=9, state_step=8, steps_per_epoch=6, where="ck/9")
    with pytest.raises(training.CheckpointError, match="unreadable data position"):
        check_position({"step": 9}, step=9, state_step=9, steps_per_epoch=6, where="ck/9")


def test_checkpoint_of_the_earlier_layout_is_refused_by_name(tmp_path):
    step_dir = tmp_path / "checkpoints" / "4"
    for item in ("state", "history"):
        (step_dir / item).mkdir(parents=True)
    with pytest.raises(training.CheckpointError, match=f"checkpoint {step_dir} has the earlier layout"):
        training.check_workdir(training.TrainConfig(resume=True), tmp_path, steps_per_epoch=6)
    with pytest.raises(training.CheckpointError, match="earlier layout"):
        training.Checkpointer(tmp_path / "checkpoints", read_only=True).restore({}, step=4)


def test_history_from_metrics_skips_torn_lines_and_truncates(tmp_path):
    lines = [
        {"kind": "train", "step": 1, "epoch": 0, "loss": 0.5, "finite": True},
        {"kind": "train", "step": 2, "epoch": 0, "loss": float("inf"), "finite": [True, False]},
        {"kind": "checkpoint", "step": 2},
        {"kind": "epoch", "step": 2, "epoch": 0, "images_per_sec": None, "train/loss": 0.5, "eval/acc": [1.0, 0.5]},
        {"kind": "status", "step": 2, "status": "interrupted"},
        {"kind": "train", "step": 3, "epoch": 1, "loss": 0.25, "finite": True},
    ]
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "train", "st'  # a torn last line
    (tmp_path / "metrics.jsonl").write_text(text)
    history = training.History.from_metrics(tmp_path)
    assert [r["step"] for r in history.train] == [1, 2, 3] and "kind" not in history.train[0]
    assert history.nonfinite_steps == [2] and history.skipped_steps(2) == [0, 1]
    assert history.epochs == [{"epoch": 0, "step": 2, "train": {"loss": 0.5}, "eval": {"acc": [1.0, 0.5]},
                               "images_per_sec": None}]
    assert history.status == "interrupted"
    assert [r["step"] for r in training.History.from_metrics(tmp_path, up_to=1).train] == [1]
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"kind": "status", "step": 1, "status": "odd"}) + "\n")
    with pytest.raises(ValueError, match="'odd' is not one of"):
        training.History.from_metrics(tmp_path)


def test_sigterm_at_an_epoch_end_keeps_its_summary_and_evaluate_checkpoint_changes_nothing(tmp_path):
    from _training_common import evaluate, workdir_snapshot

    def sigterm_at_step_6(epoch, step, batch):
        if (epoch, step) == (0, 5):  # the last batch of epoch 0
            os.kill(os.getpid(), signal.SIGTERM)
        return batch

    workdir = str(tmp_path / "run")
    with pytest.raises(training.CheckpointsMissingError, match="no checkpoint .* to evaluate"):
        evaluate(workdir, train=TRAIN, test=TEST)
    cut = run(workdir, train=TRAIN, test=TEST, num_epochs=2, checkpoint_every=4, on_batch=sigterm_at_step_6)
    assert cut.history.status == "interrupted" and int(cut.state.step) == 6
    assert [(e["epoch"], e["step"]) for e in cut.history.epochs] == [(0, 6)]
    before = workdir_snapshot(workdir)
    latest = evaluate(workdir, train=TRAIN, test=TEST, steps_per_epoch=6)
    assert latest.step == 6 and latest.metrics == cut.history.epochs[0]["eval"]
    assert latest.metrics["count"] == 23
    earlier = evaluate(workdir, train=TRAIN, test=TEST, step=4)
    assert earlier.step == 4 and earlier.metrics["count"] == 23
    with pytest.raises(training.ConfigChangedError, match="written with 6 steps per epoch"):
        evaluate(workdir, train=TRAIN, test=TEST, steps_per_epoch=3)
    assert workdir_snapshot(workdir) == before


def test_train_batches_that_end_early_are_refused(tmp_path):
    def short(epoch, start):
        return iter(list(iterate_batches(TRAIN, 8, 0, epoch, start_step=start))[:2])

    with pytest.raises(ValueError, match=r"train_batches\(0, 0\) ended after step 2; expected 6 batches"):
        training.train_and_evaluate(
            training.TrainConfig(progress=False), str(tmp_path), model=TinyMTL(), task_losses=task_losses,
            method=get_method("equal"), optimizer=optax.adam(1e-2), train_batches=short, steps_per_epoch=6,
            sample_batch={k: v[:2] for k, v in TRAIN.items()}, last_shared=LAST_SHARED)
