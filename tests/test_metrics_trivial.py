"""Tests for orthojax.metrics.trivial against NumPy float64 oracles written from the definitions."""

import math

import numpy as np
import pytest

from orthojax.metrics import trivial as T


def _rng(seed=0):
    return np.random.default_rng(seed)


def _labels(rng, shape, c, void_frac=0.2):
    y = rng.choice(c, size=shape, p=np.arange(1, c + 1) / np.arange(1, c + 1).sum()).astype(np.int32)
    return np.where(rng.random(shape) < void_frac, -1, y).astype(np.int32)


def _depth(rng, shape, missing_frac=0.2):
    d = rng.uniform(0.5, 6.0, size=shape).astype(np.float32)
    return np.where(rng.random(shape) < missing_frac, 0, d).astype(np.float32)


def _normals(rng, shape, missing_frac=0.2):
    n = rng.normal(size=shape + (3,)) + np.array([0.3, -0.8, 0.5])
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    n[rng.random(shape) < missing_frac] = 0
    n[0, 0, 0] = (math.sqrt(0.5), -math.sqrt(0.5), 0.0)  # valid, channel sum 0: kept by "all_zero" only
    return n.astype(np.float32)


# ------------------------------------------------------------------------------- oracles

def oracle_seg(train, ev, c):
    t = train.ravel()
    counts = np.array([np.sum(t == k) for k in range(c)])
    major = int(np.argmax(counts))
    e = ev.ravel()
    e = e[(e >= 0) & (e < c)]
    ious = []
    for k in range(c):
        tp = np.sum((e == k) & (major == k))
        fp = np.sum((e != k) & (major == k))
        fn = np.sum((e == k) & (major != k))
        if tp + fp + fn:
            ious.append(tp / (tp + fp + fn))
    return major, float(np.mean(ious)), float(np.mean(e == major))


def oracle_depth_errors(pred, gt):
    g = np.asarray(gt, np.float64).ravel()
    g = g[g != 0]
    e = pred - g
    return np.mean(np.abs(e)), np.mean(np.abs(e) / g), math.sqrt(np.mean(e * e))


def oracle_normal_errors(direction, gt, rule):
    g = np.asarray(gt, np.float64).reshape(-1, 3)
    valid = np.any(g != 0, axis=-1) if rule == "all_zero" else g.sum(-1) != 0
    g = g[valid]
    cos = np.clip(g @ direction, -1, 1)
    ang = np.degrees(np.arccos(cos))
    g_unit = g / np.linalg.norm(g, axis=-1, keepdims=True)
    return {"angle_mean": ang.mean(), "angle_median": np.median(ang),
            "within_11.25": np.mean(ang < 11.25), "within_22.5": np.mean(ang < 22.5), "within_30": np.mean(ang < 30),
            "one_minus_abs_cos": np.mean(1 - np.abs(g_unit @ direction))}


# ------------------------------------------------------------------------------- constants

def test_majority_class_counts_valid_labels_only():
    y = np.array([[-1, -1, -1, 2], [2, 1, 7, 7]])  # void and out-of-range (7 for C=3) are not counted
    assert T.majority_class(y, 3) == 2
    assert T.majority_class(np.array([1, 0]), 2) == 0  # tie: smallest label
    assert T.majority_class(np.array([5, 5, 1]), 6, ignore_index=5) == 1


def test_mean_depth_and_normal_use_the_valid_pixels_of_the_losses():
    rng = _rng(1)
    d = _depth(rng, (3, 5, 4, 1))
    assert T.mean_depth(d) == pytest.approx(np.asarray(d, np.float64)[d != 0].mean(), rel=1e-12)
    n = _normals(rng, (3, 5, 4))
    g = n.reshape(-1, 3).astype(np.float64)
    m = g[np.any(g != 0, -1)].sum(0)
    np.testing.assert_allclose(T.mean_normal(n), m / np.linalg.norm(m), rtol=1e-12)


def test_mean_normal_maximises_the_summed_cosine():
    n = _normals(_rng(2), (2, 6, 6)).reshape(-1, 3).astype(np.float64)
    n = n[np.any(n != 0, -1)]
    best = T.mean_normal(n)
    for v in _rng(3).normal(size=(50, 3)):
        v /= np.linalg.norm(v)
        assert (n @ best).sum() >= (n @ v).sum() - 1e-9


def test_majority_labels_per_task():
    y = np.array([[0, 3], [2, 3], [2, 1], [4, 1]])
    np.testing.assert_array_equal(T.majority_labels(y), [2, 1])
    np.testing.assert_array_equal(T.majority_labels(np.array([1, 1, 0])), [1])


# ------------------------------------------------------------------------------- scores

def test_trivial_segmentation_matches_numpy():
    rng = _rng(4)
    train, ev = _labels(rng, (4, 6, 5), 5), _labels(rng, (3, 6, 5), 5)
    major, miou, acc = oracle_seg(train, ev, 5)
    out = T.trivial_segmentation(train, ev, 5)
    assert out["miou"] == pytest.approx(miou, rel=1e-12)
    assert out["pixel_acc"] == pytest.approx(acc, rel=1e-12)
    assert out["iou"][major] == pytest.approx(acc, rel=1e-12)  # one predicted class: IoU = its share


@pytest.mark.parametrize("batch_size", [None, 2])
def test_trivial_depth_matches_numpy(batch_size):
    rng = _rng(5)
    train, ev = _depth(rng, (4, 5, 6, 1)), _depth(rng, (5, 5, 6, 1))
    mean = np.asarray(train, np.float64)[train != 0].mean()
    out = T.trivial_depth(train, ev, batch_size)
    want = oracle_depth_errors(np.float32(mean), ev)
    np.testing.assert_allclose([out["abs_err"], out["rel_err"], out["rmse"]], want, rtol=1e-5)
    if batch_size is None:
        assert not any(k.startswith("batch/") for k in out)
    else:  # batches of 2, 2, 1 examples, each with valid pixels: the mean of the per-batch values
        per = [oracle_depth_errors(np.float32(mean), ev[i:i + 2]) for i in range(0, 5, 2)]
        np.testing.assert_allclose([out["batch/abs_err"], out["batch/rel_err"], out["batch/rmse"]],
                                   np.mean(per, axis=0), rtol=1e-5)


@pytest.mark.parametrize("normal_mask", ["all_zero", "mtan"])
def test_trivial_normals_match_numpy(normal_mask):
    rng = _rng(6)
    train, ev = _normals(rng, (4, 6, 6)), _normals(rng, (3, 6, 6))
    g = train.reshape(-1, 3).astype(np.float64)
    m = g[np.any(g != 0, -1)].sum(0)  # the training mean uses the losses' rule whatever the evaluation's mask
    want = oracle_normal_errors(m / np.linalg.norm(m), ev, normal_mask)
    out = T.trivial_normals(train, ev, normal_mask)
    assert set(out) == set(want)
    for k, v in want.items():
        assert out[k] == pytest.approx(v, rel=2e-4, abs=2e-4), k


def test_trivial_normals_batch_entries():
    rng = _rng(7)
    train, ev = _normals(rng, (2, 4, 4)), _normals(rng, (3, 4, 4))
    out = T.trivial_normals(train, ev, batch_size=1)
    direction = T.mean_normal(train)
    per = [oracle_normal_errors(direction, ev[i:i + 1], "all_zero") for i in range(3)]
    for k in per[0]:
        assert out[f"batch/{k}"] == pytest.approx(np.mean([p[k] for p in per]), rel=2e-4, abs=2e-4), k


def test_trivial_classification_matches_numpy():
    rng = _rng(8)
    train = np.stack([rng.choice(5, 40, p=[.1, .1, .5, .2, .1]), rng.choice(5, 40, p=[.3, .1, .1, .1, .4])], 1)
    ev = rng.integers(0, 5, size=(25, 2))
    out = T.trivial_classification(train, ev)
    major = [np.bincount(train[:, t]).argmax() for t in range(2)]
    acc = [np.mean(ev[:, t] == major[t]) for t in range(2)]
    np.testing.assert_allclose(out["accuracy"], acc, rtol=1e-12)
    assert out["harmonic_mean"] == pytest.approx(2 / (1 / acc[0] + 1 / acc[1]) if min(acc) > 0 else 0.0)


def test_trivial_evaluation_gives_the_experiment_keys_and_columns():
    from experiments.dense import TaskSpec
    from experiments.nyuv2 import table_metrics

    rng = _rng(9)
    split = lambda n: {"seg": _labels(rng, (n, 4, 4), 3), "depth": _depth(rng, (n, 4, 4, 1)),
                       "normal": _normals(rng, (n, 4, 4))}
    train, ev = split(3), split(2)
    tasks = (TaskSpec("seg", "seg", 3), TaskSpec("depth", "depth"), ("normal", "normal"))
    out = T.trivial_evaluation(tasks, train, ev, eval_batch_size=1)
    assert out["seg/miou"] == pytest.approx(T.trivial_segmentation(train["seg"], ev["seg"], 3)["miou"])
    assert out["depth/batch/rmse"] == pytest.approx(T.trivial_depth(train["depth"], ev["depth"], 1)["batch/rmse"])
    assert "normal/angle_median" in out and "normal/batch/angle_median" in out
    columns = T.trivial_evaluation(tasks, train, ev, table_metrics=table_metrics)
    assert columns["seg_err"] == pytest.approx(1 - out["seg/miou"])
    assert columns["depth_rmse"] == pytest.approx(out["depth/rmse"])
    assert columns["normal_err"] == pytest.approx(out["normal/one_minus_abs_cos"])
    digits = T.trivial_evaluation([("label", "classification")], {"label": np.array([[0, 1], [0, 3], [2, 3]])},
                                  {"label": np.array([[0, 3], [1, 3]])})
    assert digits["accuracy"] == [0.5, 1.0]


@pytest.mark.parametrize("call, match", [
    (lambda: T.majority_class(np.array([-1, -1]), 3), "no valid label"),
    (lambda: T.majority_class(np.array([0.5]), 3), "integer"),
    (lambda: T.majority_class(np.array([0]), 0), "num_classes"),
    (lambda: T.mean_depth(np.zeros((2, 2), np.float32)), "no valid"),
    (lambda: T.mean_depth(np.array([1.0, np.nan])), "non-finite"),
    (lambda: T.mean_normal(np.zeros((2, 3), np.float32)), "no valid"),
    (lambda: T.mean_normal(np.array([[1.0, 0, 0], [-1.0, 0, 0]])), "zero vector"),
    (lambda: T.trivial_depth(np.ones(3, np.float32), np.zeros(3, np.float32)), "no valid pixel"),
    (lambda: T.trivial_depth(np.ones(3, np.float32), np.ones(3, np.float32), batch_size=0), "batch_size"),
    (lambda: T.trivial_normals(np.eye(3), np.eye(3)[None], normal_mask="sum"), "normal_mask"),
    (lambda: T.trivial_normals(np.eye(3), np.ones((1, 2, 2))), "3 channels"),
    (lambda: T.trivial_classification(np.zeros((3, 2), int), np.zeros((3, 3), int)), "task"),
    (lambda: T.majority_labels(np.array([[-1, 0]])), "non-negative"),
    (lambda: T.trivial_evaluation([("x", "segmentation")], {}, {}), "unknown kind"),
    (lambda: T.trivial_evaluation([("seg", "seg")], {}, {}), "num_classes"),
    (lambda: T.trivial_evaluation([("depth", "depth")], {"depth": np.ones(2)}, {}), "evaluation split has no"),
    (lambda: T.trivial_evaluation([], {}, {}), "tasks is empty"),
])
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
