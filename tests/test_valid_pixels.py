"""One rule for valid pixels across losses, metrics and data; DWA's period in the experiments.

A depth pixel is valid where gt != 0; a surface normal is valid unless it is all-zero. The expected values
are worked out by hand (or in float64 NumPy) on this example: gt normals (0,0,1), (0,0,0),
(1/sqrt2,-1/sqrt2,0), (0,1,0) with predictions at 10, any, 40 and 20 degrees from them.
"""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import dense, runner
from orthojax import metrics as M

S = math.sqrt(0.5)
GT = np.array([[[0, 0, 1], [0, 0, 0]], [[S, -S, 0], [0, 1, 0]]], np.float32)  # (2 images, 2 pixels, 3)
ANGLES = (10.0, 40.0, 20.0)  # of the valid pixels, in order


def _rot(g, axis, deg):
    t = math.radians(deg)
    return [math.cos(t) * a + math.sin(t) * b for a, b in zip(g, axis)]


PRED = np.array([[_rot((0, 0, 1), (1, 0, 0), 10), [0.6, 0.0, -0.8]],
                 [_rot((S, -S, 0), (0, 0, 1), 40), _rot((0, 1, 0), (0, 0, 1), 20)]], np.float32)


def test_normal_loss_metrics_and_exact_median_agree_on_the_valid_pixels():
    tasks = (dense.TaskSpec("normal", "normal"),)
    # loss: mean over the 3 valid pixels of ||p - g||^2 = 2 - 2 cos(angle) for unit vectors
    want_loss = np.mean([2 - 2 * math.cos(math.radians(a)) for a in ANGLES])
    assert float(dense.normal_loss(jnp.asarray(PRED), jnp.asarray(GT))) == pytest.approx(want_loss, abs=1e-6)
    ev = dense.dense_eval_metrics(tasks)
    acc = ev.init()
    for i in range(2):  # one image per batch
        acc = ev.update(acc, (PRED[i:i + 1],), {"normal": GT[i:i + 1]})
    out = ev.finalize(acc)
    assert out["normal/angle_mean"] == pytest.approx(70 / 3, abs=1e-3)
    assert out["normal/within_30"] == pytest.approx(2 / 3, abs=1e-12)
    assert out["normal/batch/angle_mean"] == pytest.approx((10 + 30) / 2, abs=1e-3)
    assert out["normal/batch/angle_median"] == pytest.approx((10 + 30) / 2, abs=1e-3)
    batches = lambda: iter([{"image": PRED[i:i + 1], "normal": GT[i:i + 1]} for i in range(2)])
    median = dense.exact_normal_median(lambda v, x: (x,), None, batches, 0)
    assert median == pytest.approx(20.0, abs=1e-3)


def test_mtan_normal_mask_is_opt_in_for_the_dense_evaluation():
    tasks = (dense.TaskSpec("normal", "normal"),)
    ev = dense.dense_eval_metrics(tasks, normal_mask="mtan")
    acc = ev.update(ev.init(), (PRED,), {"normal": GT})
    out = ev.finalize(acc)
    assert out["normal/angle_mean"] == pytest.approx(15.0, abs=1e-3)
    assert out["normal/within_30"] == pytest.approx(1.0)
    batches = lambda: iter([{"image": PRED, "normal": GT}])
    assert dense.exact_normal_median(lambda v, x: (x,), None, batches, 0, normal_mask="mtan") == pytest.approx(
        15.0, abs=1e-3)
    with pytest.raises(ValueError, match="normal_mask"):
        dense.dense_eval_metrics(tasks, normal_mask="sum")


def test_depth_loss_and_metrics_share_gt_nonzero():
    pred = np.array([[[[1.5], [9.0]], [[1.0], [4.0]]]], np.float32)  # (1, 2, 2, 1)
    gt = np.array([[[[1.0], [0.0]], [[2.0], [4.0]]]], np.float32)
    assert float(dense.depth_loss(jnp.asarray(pred), jnp.asarray(gt))) == pytest.approx((0.25 + 1.0 + 0.0) / 3)
    ev = dense.dense_eval_metrics((dense.TaskSpec("depth", "depth"),))
    out = ev.finalize(ev.update(ev.init(), (pred,), {"depth": gt}))
    assert out["depth/abs_err"] == pytest.approx(0.5)
    assert out["depth/rel_err"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert out["depth/rmse"] == pytest.approx(math.sqrt(1.25 / 3))


def test_losses_use_the_metric_masks_on_random_targets():
    """The dense losses average over exactly the pixels the metrics count (NumPy float64 oracle)."""
    rng = np.random.default_rng(0)
    g = rng.normal(size=(2, 5, 4, 3))
    g /= np.linalg.norm(g, axis=-1, keepdims=True)
    u = rng.random((2, 5, 4))
    g[u < 0.2] = [S, -S, 0]
    g[u > 0.8] = 0
    p = rng.normal(size=g.shape)
    p /= np.linalg.norm(p, axis=-1, keepdims=True)
    valid = np.any(g != 0, axis=-1)
    want = np.sum((p - g) ** 2, axis=-1)[valid].mean()
    got = dense.normal_loss(jnp.asarray(p, jnp.float32), jnp.asarray(g, jnp.float32))
    assert float(got) == pytest.approx(want, rel=1e-5)
    np.testing.assert_array_equal(np.asarray(M.valid_normal_mask(g.astype(np.float32))), valid)


def test_synthetic_scenes_missing_normals_and_depth_coincide():
    from orthojax.data.synthetic import synthetic_scenes

    out = synthetic_scenes(4, (24, 24), (12, 12), seed=3, split="test", workers=1)  # has windows
    missing_normal = ~np.any(out["normal"] != 0, axis=-1)
    np.testing.assert_array_equal(missing_normal, out["depth"][..., 0] == 0)
    assert missing_normal.any() and not missing_normal.all()


# ----------------------------------------------------------------------------------------------------- DWA


class _Stop(Exception):
    pass


def _method_kwargs(monkeypatch, tmp_path, method, method_kwargs, n_train=10, batch_size=3):
    """The keyword arguments the runner builds ``method`` with (the run stops right after)."""
    seen = {}

    def spy(name, **kwargs):
        seen.update(name=name, kwargs=kwargs)
        raise _Stop

    monkeypatch.setattr(runner, "get_method", spy)
    bench = runner.Benchmark(
        name="tiny", task_names=("a", "b"), train={"x": np.zeros((n_train, 1), np.float32)}, eval={},
        build_model=lambda kw: None, task_losses=None, eval_metrics=None, table_metrics=dict,
        single_task_metrics=None, latent_size=lambda m: 1)
    settings = runner.RunSettings(epochs=1, batch_size=batch_size, learning_rate=1e-3, seeds=(0,))
    with pytest.raises(_Stop):
        runner._train(bench, settings, str(tmp_path), method, method_kwargs, {}, [0])
    return seen


def test_dwa_period_is_one_epoch_in_the_experiments(monkeypatch, tmp_path):
    seen = _method_kwargs(monkeypatch, tmp_path, "dwa", {})
    assert seen["name"] == "dwa" and seen["kwargs"]["period"] == 10 // 3  # steps per epoch (full batches)
    # an explicit period (a row's or the command line's) is kept
    assert _method_kwargs(monkeypatch, tmp_path, "dwa", {"period": 1})["kwargs"]["period"] == 1
    # other methods get no period
    assert "period" not in _method_kwargs(monkeypatch, tmp_path, "equal", {})["kwargs"]


def test_dwa_period_is_one_epoch_of_the_run_unless_set():
    """DWA averages the task losses over one epoch (MTAN): its period comes from the run's context."""
    from orthojax.methods import RunContext, method_spec

    context = RunContext(num_tasks=3, learning_rate=1e-3, steps_per_epoch=3, latent_size=None)
    assert method_spec("dwa").complete({}, context)["period"] == 3
    assert method_spec("dwa").complete({"period": 5}, context)["period"] == 5
