"""End-to-end runs of the three experiments on tiny settings (a few steps each)."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from experiments import multidigit_mnist, nyuv2, sunrgbd
from experiments.pipeline import compilation_cache_dir
from orthojax.training import ConfigChangedError

from _data_fixtures import write_mnist_idx, write_mtan, write_sun


def _results(workdir):
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    assert os.path.exists(os.path.join(workdir, "results.md"))
    return results


def test_multidigit_rows_end_to_end(tmp_path):
    workdir = str(tmp_path / "md")
    multidigit_mnist.main(["--methods", "single_task,equal,cosreg_bn", "--max-steps", "3", "--workdir", workdir,
                           "--no-progress"])
    results = _results(workdir)
    rows = {r["row"]: r for r in results["rows"]}
    assert set(rows) == {"single_task", "equal", "cosreg_bn"}
    for row in rows.values():
        acc = row["columns"]["accuracy"]["mean"]
        assert acc is not None and 0.0 <= acc <= 100.0
    assert rows["equal"]["sigma"]["mean"] is not None and rows["single_task"]["sigma"]["mean"] is None
    assert results["data"]["synthetic"] is False
    assert os.path.exists(os.path.join(workdir, "plots", "cosine_distributions.png"))
    text = open(os.path.join(workdir, "results.md")).read()
    assert "The paper's findings, checked" in text and "90.70" in text  # published numbers beside ours


def test_multidigit_rotograd_and_recon(tmp_path):
    workdir = str(tmp_path / "md2")
    multidigit_mnist.main(["--methods", "rotograd,recon", "--set", "methods.recon.k=1", "--set", "methods.recon.s=0.0",
                           "--max-steps", "2", "--workdir", workdir, "--no-progress"])
    results = _results(workdir)
    rows = {r["row"]: r for r in results["rows"]}
    assert rows["rotograd"]["columns"]["accuracy"]["mean"] is not None
    assert rows["recon"]["recon_layers"][0] and len(rows["recon"]["recon_layers"][0]) == 1
    scores = json.load(open(os.path.join(workdir, "recon", "seed_0", "recon_scores.json")))
    assert "selected" in scores


def test_multidigit_resume_reuses_finished_runs(tmp_path):
    workdir = str(tmp_path / "md3")
    args = ["--methods", "equal", "--max-steps", "2", "--workdir", workdir, "--no-progress"]
    multidigit_mnist.main(args)
    first = _results(workdir)["rows"][0]["columns"]["accuracy"]["mean"]
    multidigit_mnist.main(args + ["--resume"])
    assert _results(workdir)["rows"][0]["columns"]["accuracy"]["mean"] == first


def test_eval_only_evaluates_the_checkpoints_of_a_table_and_a_user_method(tmp_path):
    """A user's method (by reference) trains like a built-in; --eval-only then re-evaluates the table from its
    checkpoints and saved config.json, training nothing, to the same numbers."""
    workdir = str(tmp_path / "md-eval")
    user = "tests._user_method:my_method"
    multidigit_mnist.main(["--methods", f"equal,{user}", "--set", f"methods.{user}.first_weight=3", "--max-steps", "2",
                           "--set", "data.sizes=128,32,64", "--filters", "4", "--workdir", workdir, "--no-progress"])
    trained = {r["row"]: r for r in _results(workdir)["rows"]}
    assert trained["tests._user_method.my_method"]["method_kwargs"] == {"first_weight": 3.0}
    os.remove(os.path.join(workdir, "results.json"))
    multidigit_mnist.main(["--eval-only", "--workdir", workdir, "--no-progress"])
    evaluated = {r["row"]: r for r in _results(workdir)["rows"]}
    for key, row in trained.items():
        assert evaluated[key]["columns"]["accuracy"]["mean"] == pytest.approx(row["columns"]["accuracy"]["mean"])
        assert evaluated[key]["sigma"]["mean"] == pytest.approx(row["sigma"]["mean"])
    with pytest.raises(ConfigChangedError, match="train.lr"):
        multidigit_mnist.main(["--eval-only", "--workdir", workdir, "--lr", "0.5"])


def test_multidigit_sweep_writes_figure_3_points_and_plot(tmp_path):
    workdir = tmp_path / "sweep"
    multidigit_mnist.main(["--sweep", "--methods", "equal", "--sweep-filters", "4,6", "--sweep-batch-sizes", "32",
                           "--sweep-lrs", "1e-3", "--seeds", "2", "--max-steps", "3", "--workdir", str(workdir),
                           "--no-progress"])
    sweep = json.loads((workdir / "sweep.json").read_text())
    points = sweep["points"]
    assert sorted((p["filters"], p["seed"]) for p in points) == [(4, 0), (4, 1), (6, 0), (6, 1)]
    for p in points:
        assert p["sigma"] >= 0.0 and 0.0 <= p["accuracy"] <= 100.0 and p["batch_size"] == 32 and p["lr"] == 1e-3
    assert (workdir / "plots" / "accuracy_vs_first_epoch_sigma.png").stat().st_size > 0
    assert set(sweep["pearson_r"]) == {"all", "Equal weights"}


def test_sweep_correlations_against_numpy_per_label_and_degenerate_groups():
    rng = np.random.default_rng(0)
    points = [{"sigma": float(s), "accuracy": float(a), "label": label}
              for label in ("A", "B") for s, a in rng.normal(size=(5, 2))]
    points.append({"sigma": 0.1, "accuracy": 50.0, "label": "C"})  # a single point: no correlation
    r = multidigit_mnist.sweep_correlations(points)
    for name, group in (("all", points), ("A", points[:5]), ("B", points[5:10])):
        expected = np.corrcoef([p["sigma"] for p in group], [p["accuracy"] for p in group])[0, 1]
        assert r[name] == pytest.approx(expected)
    assert r["C"] is None
    flat = [{"sigma": 0.2, "accuracy": float(a), "label": "A"} for a in range(4)]
    assert multidigit_mnist.sweep_correlations(flat) == {"all": None, "A": None}


def test_nyuv2_end_to_end_on_synthetic_scenes(tmp_path):
    workdir = str(tmp_path / "nyu")
    nyuv2.main(["--methods", "cosreg", "--max-steps", "2", "--workdir", workdir, "--no-progress"])
    results = _results(workdir)
    assert results["data"]["synthetic"] is True
    rows = {r["row"]: r for r in results["rows"]}
    for key in ("seg_err", "depth_rmse", "normal_err"):
        assert rows["cosreg"]["columns"][key]["mean"] is not None
    pooled = results["field_metrics"]["pooled"]["cosreg"]["metrics"]
    per_batch = results["field_metrics"]["batch"]["cosreg"]["metrics"]
    assert 0.0 <= pooled["normal/angle_median"] <= 180.0
    assert len(pooled) == len(per_batch) == 9 and None not in {**pooled, **per_batch}.values()
    assert per_batch["seg/miou"] == pooled["seg/miou"]  # MTAN also pools the confusion matrix
    assert "SYNTHETIC" in open(os.path.join(workdir, "results.md")).read()


def test_nyuv2_field_section_delta_m_against_hand_computation():
    keys = nyuv2.field_metric_keys("batch")
    assert keys[:2] == ["seg/miou", "seg/pixel_acc"] and keys[2] == "depth/batch/abs_err"
    base = dict(zip(keys, [0.4, 0.6, 0.7, 0.3, 25.0, 20.0, 0.3, 0.5, 0.7]))
    other = dict(base, **{"seg/miou": 0.44, "depth/batch/abs_err": 0.63})  # both 10 % better
    summary = [{"row": row, "label": row, "columns": {k: {"mean": v} for k, v in values.items()}}
               for row, values in (("single_task", base), ("equal", other))]
    text, payload = nyuv2.field_section(summary)
    assert payload["batch"]["single_task"]["delta_m"] == pytest.approx(0.0)
    assert payload["batch"]["equal"]["delta_m"] == pytest.approx(-20.0 / 9)
    assert payload["pooled"]["equal"]["delta_m"] == pytest.approx(-10.0 / 2)  # only the seg keys are pooled
    assert "MTAN-style" in text and "LibMTL-style" in text
    with pytest.raises(ValueError, match="aggregation"):
        nyuv2.field_metric_keys("mean")


def test_multidigit_on_mnist_idx_files_from_data_dir(tmp_path):
    data_dir = write_mnist_idx(tmp_path / "mnist")
    workdir = str(tmp_path / "md-real")
    multidigit_mnist.main(["--methods", "equal", "--max-steps", "2", "--data-dir", str(data_dir),
                           "--workdir", workdir, "--no-progress"])
    results = _results(workdir)
    assert results["data"]["synthetic"] is False and str(data_dir) in json.dumps(results["data"])
    assert 0.0 <= results["rows"][0]["columns"]["accuracy"]["mean"] <= 100.0


def test_nyuv2_on_mtan_layout_from_data_dir_at_native_size(tmp_path):
    data_dir = write_mtan(tmp_path / "nyu", counts=(4, 2), size=(32, 32))
    workdir = tmp_path / "nyu-real"
    args = ["--methods", "equal", "--max-steps", "1", "--protocol", "mtan", "--data-dir", str(data_dir),
            "--workdir", str(workdir), "--no-progress", "--no-batchnorm"]  # BatchNorm doubles the compile time
    with pytest.raises(ValueError, match="holds 4 examples, fewer than one batch of 8"):
        nyuv2.main(args)  # the quick preset's batch of 8 does not fit: stopped before anything is written
    assert not (workdir / "results.json").exists() and not (workdir / "equal").exists()
    nyuv2.main(args + ["--batch-size", "2"])
    results = _results(str(workdir))
    assert results["data"]["synthetic"] is False and "mtan" in json.dumps(results["data"])
    assert results["protocol"]["protocol"] == "mtan"
    metrics = results["field_metrics"]["pooled"]["equal"]["metrics"]
    assert len(metrics) == 9 and None not in metrics.values()
    assert "SYNTHETIC" not in (workdir / "results.md").read_text()


def test_sunrgbd_on_reorganised_layout_from_data_dir(tmp_path):
    """The SUN RGB-D end-to-end test; its synthetic default shares this path (``load_sunrgbd(None)``)."""
    data_dir = tmp_path / "sun"
    write_sun(data_dir, n=(2, 1), size=(24, 32))
    workdir = str(tmp_path / "sun-real")
    sunrgbd.main(["--methods", "equal", "--max-steps", "1", "--batch-size", "2", "--no-batchnorm",
                  "--data-dir", str(data_dir), "--workdir", workdir, "--no-progress"])
    results = _results(workdir)
    assert results["data"]["synthetic"] is False and results["protocol"]["classes"] == {"seg13": 13, "seg37": 37}
    for key in ("seg13_err", "seg37_err", "depth_rmse"):
        assert results["rows"][0]["columns"][key]["mean"] >= 0.0


def test_unknown_method_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        multidigit_mnist.main(["--methods", "nope", "--max-steps", "1", "--workdir", str(tmp_path / "x"),
                               "--no-progress"])
    assert exit_info.value.code == 2
    assert "unknown row 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_default_command_parses_to_the_papers_table():
    from experiments.cli import parse_command

    command = parse_command(nyuv2.EXPERIMENT, [])
    assert command.config.rows == nyuv2.TABLE2_ROWS and command.workdir == os.path.join("runs", "nyuv2-quick")


def test_compilation_cache_dir_flag_then_environment_then_default(monkeypatch, tmp_path):
    monkeypatch.setenv("ORTHOJAX_COMPILATION_CACHE", str(tmp_path / "env"))
    assert compilation_cache_dir(str(tmp_path / "flag")) == str(tmp_path / "flag")
    assert compilation_cache_dir(None) == str(tmp_path / "env")
    assert compilation_cache_dir("OFF") is None
    monkeypatch.delenv("ORTHOJAX_COMPILATION_CACHE")
    assert compilation_cache_dir(None) == os.path.expanduser(os.path.join("~", ".cache", "orthojax", "xla"))
    monkeypatch.setenv("ORTHOJAX_COMPILATION_CACHE", "off")
    assert compilation_cache_dir(None) is None


def test_experiment_fills_its_compilation_cache(tmp_path):
    """A fresh process (the cache is set before anything compiles) writes the compiled programs."""
    cache = tmp_path / "xla"
    # the experiment's own XLA settings: programs compiled at the test suite's optimisation level 0 can take
    # less than JAX's minimum compile time for the persistent cache, and would not be written
    env = {**os.environ, "XLA_FLAGS": " ".join(flag for flag in os.environ.get("XLA_FLAGS", "").split()
                                               if not flag.startswith("--xla_backend_optimization_level"))}
    subprocess.run([sys.executable, "-m", "experiments.multidigit_mnist", "--methods", "equal", "--max-steps", "1",
                    "--workdir", str(tmp_path / "run"), "--no-progress", "--compilation-cache", str(cache)],
                   check=True, capture_output=True, cwd=os.path.dirname(os.path.dirname(__file__)), env=env)
    assert cache.is_dir() and any(cache.iterdir())


@pytest.mark.parametrize("experiment", [multidigit_mnist, nyuv2, sunrgbd], ids=["multidigit", "nyuv2", "sunrgbd"])
def test_help_documents_every_shared_flag_once(experiment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        experiment.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--methods", "--seeds", "--data-dir", "--workdir", "--resume", "--preset", "--alpha", "--epochs",
                 "--max-steps", "--compilation-cache"):
        assert flag in text, flag
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: single_task," in text  # the paper's rows, as the user would type them


def _dense_info(depth):
    splits = {s: {"image": np.zeros((len(depth), 4, 4, 3), np.float32), "depth": depth} for s in ("train", "test")}
    return splits, {"tasks": ("depth",), "num_classes": {}, "target_size": (4, 4)}


def test_depth_head_bias_starts_at_the_mean_valid_training_depth():
    """The benchmark's init_variables sets SegNet's depth output bias to the mean of the non-zero training
    depths (NumPy oracle), on host arrays, leaving every other leaf as it was; a custom model gets it only
    from an explicit path, and a wrong path names what is there."""
    from experiments.dense import dense_benchmark, set_leaf

    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 6.0, size=(3, 4, 4, 1)).astype(np.float32)
    depth[0, :2] = 0.0  # missing measurements do not count
    splits, info = _dense_info(depth)
    expected = depth.astype(np.float64)[depth != 0].mean()
    kernel = rng.normal(size=(1, 1, 4, 1)).astype(np.float32)
    variables = {"params": {"decoder_depth": {"out": {"bias": np.zeros(1, np.float32), "kernel": kernel}}},
                 "batch_stats": {}}
    bench = dense_benchmark("t", splits, info, width=1 / 16, model_options={}, table_metrics=dict, task_columns={})
    out = bench.init_variables(variables)
    bias = out["params"]["decoder_depth"]["out"]["bias"]
    assert isinstance(bias, np.ndarray) and bias.dtype == np.float32
    np.testing.assert_allclose(bias, [expected], rtol=1e-6)
    assert out["params"]["decoder_depth"]["out"]["kernel"] is kernel
    assert variables["params"]["decoder_depth"]["out"]["bias"][0] == 0.0  # the input is not modified
    custom = dense_benchmark("t", splits, info, width=1, model_options={}, table_metrics=dict, task_columns={},
                             model=lambda **kw: None)
    assert custom.init_variables is None
    with pytest.raises(KeyError, match="params/decoder_depth has no 'head'"):
        set_leaf(variables, "params/decoder_depth/head/bias", 1.0)


def test_multidigit_tfds_flag_reads_mnist_from_the_given_tfds_data_dir(tmp_path, monkeypatch):
    """``--tfds --data-dir DIR`` asks TFDS (never downloading) for the prepared mnist splits in DIR. TFDS is
    replaced by a stand-in module serving the fixture's digits: a prepared TFDS dataset cannot be written
    here without TensorFlow."""
    import types

    from _data_fixtures import id_digits
    from orthojax.data import multidigit_mnist as build_multidigit

    digits = {"train": id_digits(12, 1), "test": id_digits(8, 121)}
    calls = []

    def data_source(name, split, data_dir=None, download=True):
        calls.append((name, split, data_dir, download))
        images, labels = digits[split]
        return [{"image": image[..., None], "label": label} for image, label in zip(images, labels)]

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", types.SimpleNamespace(data_source=data_source))
    tfds_dir = tmp_path / "tfds"
    tfds_dir.mkdir()
    workdir = str(tmp_path / "md-tfds")
    multidigit_mnist.main(["--tfds", "--data-dir", str(tfds_dir), "--methods", "equal", "--max-steps", "1",
                           "--set", "data.sizes=64,16,32", "--filters", "4", "--workdir", workdir, "--no-progress"])
    assert calls == [("mnist", "train", str(tfds_dir), False), ("mnist", "test", str(tfds_dir), False)]
    results = _results(workdir)
    assert "tfds" in results["data"]["source"] and str(tfds_dir) in results["data"]["source"]
    assert 0.0 <= results["rows"][0]["columns"]["accuracy"]["mean"] <= 100.0
    with pytest.raises(ValueError, match="tfds_data_dir=.* is for source='tfds'"):
        build_multidigit(source="embedded", tfds_data_dir=str(tfds_dir))


def test_single_task_runs_share_one_compiled_train_step(tmp_path):
    """The T runs of a single-task row compile one train-step program: in a fresh process with an empty
    persistent cache, task 0 writes it and task 1 reads it back (the cache's own log lines)."""
    cache = tmp_path / "xla"
    env = dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_LOGGING_LEVEL="DEBUG")
    result = subprocess.run([sys.executable, "-m", "experiments.multidigit_mnist", "--methods", "single_task",
                             "--max-steps", "1", "--set", "data.sizes=64,16,32", "--filters", "4",
                             "--workdir", str(tmp_path / "run"), "--no-progress", "--compilation-cache", str(cache)],
                            check=True, capture_output=True, text=True, env=env,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    def keys(kind):  # a message may be logged by more than one handler: distinct cache keys
        return set(re.findall(rf"{kind} for 'jit_step' with key '([^']+)'", result.stderr))

    missed, hit = keys("PERSISTENT COMPILATION CACHE MISS"), keys("Persistent compilation cache hit")
    assert len(missed) == 1 and hit == missed, result.stderr[-3000:]
