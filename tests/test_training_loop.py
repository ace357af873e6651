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
