"""The examples run as documented: tiny settings (a few steps), temporary workdirs, seconds each.

``examples/own_model_and_data.py`` trains a user's model through the engine with several registered methods
(a scalarisation, CosReg, a gradient aggregator, RotoGrad with a hyper-parameter from the run context); its
printed test MSE is checked against a NumPy float64 forward pass of the final parameters, its workdir
against what the example promises, and a resumed run against an uninterrupted one.
``examples/plain_optax.py`` runs its two engine-free loops.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from orthojax.training import ConfigChangedError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def own():
    """The namespace of examples/own_model_and_data.py (imported, not run)."""
    return runpy.run_path(str(EXAMPLES / "own_model_and_data.py"), run_name="own_model_and_data")


@pytest.fixture(scope="module")
def plain():
    return runpy.run_path(str(EXAMPLES / "plain_optax.py"), run_name="plain_optax")


def _printed_json(out: str) -> dict:
    """The last line of the output, which the examples print as JSON."""
    return json.loads(out.strip().splitlines()[-1])


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _numpy_mse(params, data) -> np.ndarray:
    """(T,) test MSE of the example's MLP, forward pass in NumPy float64 (no Flax)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    dense = lambda layer, h: h @ layer["kernel"] + layer["bias"]
    x, y = np.asarray(data["x"], np.float64), np.asarray(data["y"], np.float64)
    z = np.tanh(dense(p["encoder"]["last"], np.tanh(dense(p["encoder"]["hidden"], x))))
    preds = np.stack([dense(p[f"heads_{t}"], z)[:, 0] for t in range(2)], axis=1)
    return np.mean((preds - y) ** 2, axis=0)


@pytest.mark.parametrize("method, hps", [  # "equal" runs in the resume test
    ("cosreg", ["--hp", "alpha=0.5"]),
    ("upgrad", []),
    ("rotograd", ["--hp", "burn_in_period=1"]),  # latent_size comes from the example's RunContext
])
def test_own_model_trains_with_a_method_by_name(own, method, hps, tmp_path, capsys):
    workdir = tmp_path / method
    result = own["main"](["--method", method, *hps, "--steps", "3", "--workdir", str(workdir)])
    printed = _printed_json(capsys.readouterr().out)

    assert printed["method"] == method and printed["step"] == 3
    assert len(printed["mse"]) == 2 and np.all(np.isfinite(printed["mse"]))
    assert result.history.status == "completed"
    # what the docstring promises in the workdir
    config = json.loads((workdir / "config.json").read_text())
    assert config["method"] == method and config["train"]["max_steps"] == 3
    if hps:
        name, value = hps[1].split("=")
        assert config["hyperparameters"][name] == pytest.approx(float(value))
    train = [r for r in _records(workdir) if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    for record in train:
        assert np.all(np.isfinite(record["task_losses"])) and np.shape(record["task_losses"]) == (2,)
        assert np.shape(record["cosine"]) == (2, 2) and np.all(np.abs(record["cosine"]) <= 1 + 1e-6)
    assert (workdir / "checkpoints" / "3").is_dir()
    if method != "rotograd":  # RotoGrad's heads are evaluated on rotated representations
        expected = _numpy_mse(result.state.params, own["make_data"](512, seed=1))
        np.testing.assert_allclose(printed["mse"], expected, rtol=2e-5)


def test_own_model_resumes_from_its_checkpoint(own, tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    whole = own["main"](["--method", "equal", "--steps", "5", "--workdir", str(straight)])
    own["main"](["--method", "equal", "--steps", "3", "--workdir", str(split)])
    resumed = own["main"](["--method", "equal", "--steps", "5", "--workdir", str(split), "--resume"])
    capsys.readouterr()

    assert [r["step"] for r in resumed.history.train] == [1, 2, 3, 4, 5]
    for a, b in zip(jax.tree.leaves(whole.state.params), jax.tree.leaves(resumed.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ConfigChangedError, match="method"):  # a changed method is refused, not mixed in
        own["main"](["--method", "cosreg", "--steps", "6", "--workdir", str(split), "--resume"])


@pytest.mark.parametrize("argv, message", [
    (["--method", "cosrge"], "did you mean 'cosreg'"),
    (["--method", "cosreg", "--hp", "alpah=1"], "no hyper-parameter 'alpah'"),
    (["--method", "cosreg", "--hp", "alpha=big"], "cannot read 'big' as a number"),
])
def test_own_model_bad_method_or_hyperparameter_is_a_usage_error(own, argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        own["main"]([*argv, "--steps", "1", "--workdir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_own_model_runs_as_a_command(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "own_model_and_data.py"), "--steps", "1", "--workdir", str(tmp_path / "run")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = _printed_json(proc.stdout)
    assert printed["method"] == "cosreg" and np.all(np.isfinite(printed["mse"]))


def test_plain_optax_loops(plain, capsys):
    report = plain["main"](["--steps", "3", "--aggregator", "mgda"])
    assert _printed_json(capsys.readouterr().out) == report
    losses = report["aggregated_losses"] + report["cosreg_losses"]
    assert len(losses) == 4 and np.all(np.isfinite(losses))
    assert -1.0 <= report["cosreg_cosine"] <= 1.0


def test_plain_optax_cosreg_decorrelates_the_shared_layer(plain):
    """With alpha > 0 the last shared layer's task-gradient cosine ends nearer 0 than without the penalty
    (the tasks' directions are 120 degrees apart, so unregularised training leaves them conflicting)."""
    x, y = plain["make_data"](256)
    params = plain["init_params"](jax.random.key(0))
    optimizer = __import__("optax").adam(1e-2)
    _, free = plain["train_cosreg"](0.0, params, x, y, 150, optimizer)
    _, regularised = plain["train_cosreg"](1.0, params, x, y, 150, optimizer)
    assert abs(float(regularised[0, 1])) < 0.5 * abs(float(free[0, 1]))


def test_plain_optax_refuses_what_is_not_an_aggregator(plain, capsys):
    for name in ("gramian", "nope", "Aggregator"):
        with pytest.raises(SystemExit) as exit_info:
            plain["main"](["--aggregator", name, "--steps", "1"])
        assert exit_info.value.code == 2
        assert f"--aggregator {name!r}" in capsys.readouterr().err
