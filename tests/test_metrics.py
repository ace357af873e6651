"""Tests for orthojax.metrics against loop-based NumPy oracles and published numbers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orthojax import metrics as M
from orthojax.metrics.normals import _masked_median

SQRT1_2 = math.sqrt(0.5)


# ------------------------------------------------------------------------------- oracles

def oracle_confusion(pred, target, c, ignore):
    out = np.zeros((c, c), dtype=np.int64)
    for p, t in zip(np.ravel(pred), np.ravel(target)):
        if t == ignore or not (0 <= t < c) or not (0 <= p < c):
            continue
        out[t, p] += 1
    return out


def oracle_seg_scores(conf):
    c = len(conf)
    ious = []
    for k in range(c):
        tp = conf[k][k]
        fn = sum(conf[k][j] for j in range(c)) - tp
        fp = sum(conf[i][k] for i in range(c)) - tp
        if tp + fn + fp > 0:
            ious.append(tp / (tp + fn + fp))
    total = sum(sum(r) for r in conf)
    return sum(ious) / len(ious), sum(conf[k][k] for k in range(c)) / total


def oracle_depth_values(pred, gt, mask=None):
    pred, gt = np.asarray(pred, np.float64).ravel(), np.asarray(gt, np.float64).ravel()
    m = np.ones_like(gt, bool) if mask is None else np.broadcast_to(mask, np.shape(gt)).ravel()
    return [(p, g) for p, g, k in zip(pred, gt, m) if g != 0 and k]


def oracle_depth(values):
    n = len(values)
    return (sum(abs(p - g) for p, g in values) / n,
            sum(abs(p - g) / g for p, g in values) / n,
            math.sqrt(sum((p - g) ** 2 for p, g in values) / n))


def oracle_normal_values(pred, gt, normal_mask="all_zero"):
    """List of (angle_deg, 1-|cos|) over valid pixels, per-pixel loop in float64.

    Valid: gt not all-zero ("all_zero"), or gt's channel sum != 0 (MTAN's mask, "mtan").
    """
    pred = np.asarray(pred, np.float64).reshape(-1, pred.shape[-1])
    gt = np.asarray(gt, np.float64).reshape(-1, gt.shape[-1])
    out = []
    for p, g in zip(pred, gt):
        if (sum(g) == 0) if normal_mask == "mtan" else all(x == 0 for x in g):
            continue
        pn = math.sqrt(sum(x * x for x in p))
        gn = math.sqrt(sum(x * x for x in g))
        dot = sum(a * b for a, b in zip(p, g)) / pn
        ang = math.degrees(math.acos(max(-1.0, min(1.0, dot))))
        out.append((ang, 1.0 - abs(dot / gn)))
    return out


def random_normals(rng, shape, invalid_frac=0.2, zero_sum_frac=0.15):
    """Random unit gt normals, some all-zero (invalid), some valid with components summing to 0."""
    g = rng.normal(size=shape + (3,))
    g /= np.linalg.norm(g, axis=-1, keepdims=True)
    u = rng.random(shape)
    g[u < zero_sum_frac] = [SQRT1_2, -SQRT1_2, 0.0]
    g[u > 1 - invalid_frac] = 0.0
    p = g * rng.uniform(0.5, 2.0, size=shape + (1,)) + 0.6 * rng.normal(size=shape + (3,))
    return p.astype(np.float32), g.astype(np.float32)


# ---------------------------------------------------------------------------- segmentation

def test_confusion_matrix_matches_loop_oracle_with_ignore_and_out_of_range():
    rng = np.random.default_rng(0)
    c = 4
    target = rng.integers(-1, c, size=(3, 5, 6))
    target[0, 0, :3] = [7, -3, 4]  # out of range targets are excluded
    pred = rng.integers(0, c, size=target.shape)
    pred[1, 1, 0] = 9  # out of range prediction is excluded
    got = jax.jit(M.confusion_matrix, static_argnums=2)(pred, target, c)
    np.testing.assert_array_equal(np.asarray(got), oracle_confusion(pred, target, c, -1))
    assert got.dtype == jnp.int32


def test_confusion_matrix_custom_ignore_index():
    target = np.array([0, 1, 2, 2, 0])
    pred = np.array([0, 2, 2, 1, 1])
    got = np.asarray(M.confusion_matrix(pred, target, 3, ignore_index=0))
    np.testing.assert_array_equal(got, [[0, 0, 0], [0, 0, 1], [0, 1, 1]])


def test_segmentation_scores_hand_example_and_absent_class():
    # class 2 never occurs in target or prediction: excluded from the mean
    conf = np.array([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    s = M.segmentation_scores(conf)
    iou0, iou1 = 3 / (3 + 1 + 2), 4 / (4 + 2 + 1)
    assert s["miou"] == pytest.approx((iou0 + iou1) / 2, abs=1e-12)
    assert s["pixel_acc"] == pytest.approx(7 / 10, abs=1e-12)
    assert s["iou"][:2] == pytest.approx([iou0, iou1])
    assert math.isnan(s["iou"][2])


def test_segmentation_accumulator_equals_whole_set_and_oracle():
    rng = np.random.default_rng(1)
    c = 5
    target = rng.integers(-1, c, size=(7, 4, 4))
    logits = rng.normal(size=target.shape + (c,)).astype(np.float32)
    update = jax.jit(M.update_segmentation)
    state = M.init_segmentation(c)
    for lo, hi in ((0, 2), (2, 3), (3, 7)):  # uneven batches
        state = update(state, logits[lo:hi], target[lo:hi])
    pred = logits.argmax(-1)
    conf = oracle_confusion(pred, target, c, -1)
    np.testing.assert_array_equal(np.asarray(state.confusion), conf)
    miou, acc = oracle_seg_scores(conf.tolist())
    out = M.finalize_segmentation(state)
    assert out["miou"] == pytest.approx(miou, abs=1e-12)
    assert out["pixel_acc"] == pytest.approx(acc, abs=1e-12)
    # labels instead of scores give the same state
    s2 = M.update_segmentation(M.init_segmentation(c), pred, target)
    s2 = M.finalize_segmentation(s2)
    assert s2["miou"] == pytest.approx(out["miou"], abs=1e-12)


def test_segmentation_bad_input():
    with pytest.raises(ValueError, match="num_classes"):
        M.confusion_matrix(np.zeros(3, int), np.zeros(3, int), 0)
    with pytest.raises(ValueError, match="same shape"):
        M.confusion_matrix(np.zeros(3, int), np.zeros(4, int), 2)
    with pytest.raises(ValueError, match="integer"):
        M.confusion_matrix(np.zeros(3), np.zeros(3, int), 2)
    with pytest.raises(ValueError, match="square"):
        M.segmentation_scores(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="empty"):
        M.segmentation_scores(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="non-negative"):
        M.segmentation_scores(np.array([[1, -1], [0, 1]]))
    with pytest.raises(ValueError, match="pred"):
        M.update_segmentation(M.init_segmentation(3), np.zeros((2, 4, 4)), np.zeros((2, 4), int))
    with pytest.raises(ValueError, match="num_classes"):
        M.init_segmentation(-2)


# ------------------------------------------------------------------------------------ depth

def _depth_batches(rng):
    gt = rng.uniform(0.5, 5.0, size=(5, 4, 3, 1)).astype(np.float32)
    gt[rng.random(gt.shape) < 0.3] = 0.0
    gt[3] = 0.0  # a batch without any valid pixel
    pred = (gt + rng.normal(scale=0.4, size=gt.shape)).astype(np.float32)
    return pred, gt, ((0, 1), (1, 3), (3, 4), (4, 5))


def test_depth_pooled_and_batch_aggregation_match_oracles():
    rng = np.random.default_rng(2)
    pred, gt, batches = _depth_batches(rng)
    update = jax.jit(M.update_depth)
    state = M.init_depth()
    for lo, hi in batches:
        state = update(state, pred[lo:hi], gt[lo:hi])
    pooled = M.finalize_depth(state)
    want = oracle_depth(oracle_depth_values(pred, gt))
    assert [pooled["abs_err"], pooled["rel_err"], pooled["rmse"]] == pytest.approx(want, rel=1e-5)
    assert int(state.count) == len(oracle_depth_values(pred, gt))

    per_batch = [oracle_depth(v) for lo, hi in batches
                 if (v := oracle_depth_values(pred[lo:hi], gt[lo:hi]))]
    want_b = np.mean(per_batch, axis=0)
    got_b = M.finalize_depth(state, aggregation="batch")
    assert [got_b["abs_err"], got_b["rel_err"], got_b["rmse"]] == pytest.approx(want_b, rel=1e-5)
    assert int(state.num_batches) == 3
    assert got_b["rmse"] != pytest.approx(pooled["rmse"], rel=1e-4)  # the two definitions differ


def test_depth_mask_and_statistics():
    pred = np.array([[1.0, 2.0], [3.0, 5.0]], np.float32)
    gt = np.array([[2.0, 0.0], [4.0, 4.0]], np.float32)
    mask = np.array([[True, True], [True, False]])
    s = M.depth_statistics(pred, gt, mask)
    # valid: (0,0) and (1,0): errors -1, -1
    assert float(s.abs_sum) == pytest.approx(2.0)
    assert float(s.rel_sum) == pytest.approx(1 / 2 + 1 / 4)
    assert float(s.sq_sum) == pytest.approx(2.0)
    assert int(s.count) == 2


def test_depth_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        M.depth_statistics(np.ones((2, 2)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="mask"):
        M.depth_statistics(np.ones((2, 2)), np.ones((2, 2)), mask=np.ones((2, 2)))
    with pytest.raises(ValueError, match="broadcast"):
        M.depth_statistics(np.ones((2, 2)), np.ones((2, 2)), mask=np.ones(3, bool))
    with pytest.raises(ValueError, match="aggregation"):
        M.finalize_depth(M.init_depth(), aggregation="mean")
    with pytest.raises(ValueError, match="no valid pixel"):
        M.finalize_depth(M.init_depth())
    with pytest.raises(ValueError, match="no batch"):
        M.finalize_depth(M.init_depth(), aggregation="batch")


# ---------------------------------------------------------------------------------- normals

def test_normal_angles_and_one_minus_abs_cos_match_loop_oracle():
    rng = np.random.default_rng(3)
    pred, gt = random_normals(rng, (2, 5, 4))
    angles, valid = jax.jit(M.normal_angles)(pred, gt)
    oracle = oracle_normal_values(pred, gt)
    np.testing.assert_allclose(np.asarray(angles)[np.asarray(valid)], [a for a, _ in oracle],
                               atol=2e-3)
    assert float(M.one_minus_abs_cos(pred, gt)) == pytest.approx(
        np.mean([d for _, d in oracle]), abs=1e-6)
    # anti-parallel prediction: angle 180, 1 - |cos| = 0
    g = np.array([[0.0, 0.0, 1.0]], np.float32)
    a, _ = M.normal_angles(-3 * g, g)
    assert float(a[0]) == pytest.approx(180.0)
    assert float(M.one_minus_abs_cos(-3 * g, g)) == pytest.approx(0.0, abs=1e-7)


def test_normals_pooled_median_is_exact_over_the_test_set():
    rng = np.random.default_rng(4)
    pred, gt = random_normals(rng, (6, 5, 3))
    update = jax.jit(M.update_normals)
    angles_fn = jax.jit(M.normal_angles)
    state, coll = M.init_normals(), M.init_angle_collector()
    batches = ((0, 2), (2, 4), (4, 6))
    seen = []
    for lo, hi in batches:
        state = update(state, pred[lo:hi], gt[lo:hi])
        a, v = angles_fn(pred[lo:hi], gt[lo:hi])
        coll = M.collect_angles(coll, a, v)
        seen.append(np.asarray(a)[np.asarray(v)])
    out = M.finalize_normals(state, coll)
    # exactly np.median over the concatenation of the very same angles
    assert out["angle_median"] == float(np.median(np.concatenate(seen)))
    oracle = oracle_normal_values(pred, gt)
    ang = np.array([a for a, _ in oracle])
    assert out["angle_median"] == pytest.approx(np.median(ang), abs=2e-3)
    assert out["angle_mean"] == pytest.approx(ang.mean(), abs=1e-3)
    for t in M.NORMAL_THRESHOLDS:
        assert out[f"within_{t:g}"] == pytest.approx(np.mean(ang < t), abs=1e-12)
    assert out["one_minus_abs_cos"] == pytest.approx(np.mean([d for _, d in oracle]), abs=1e-6)
    assert int(state.count) == len(oracle)

    # per-batch (MTAN) aggregation: mean over batches of per-batch statistics
    per = []
    for lo, hi in batches:
        o = oracle_normal_values(pred[lo:hi], gt[lo:hi])
        a = np.array([x for x, _ in o])
        per.append([a.mean(), np.median(a), *(np.mean(a < t) for t in M.NORMAL_THRESHOLDS),
                    np.mean([d for _, d in o])])
    want = np.mean(per, axis=0)
    b = M.finalize_normals(state, aggregation="batch")
    got = [b["angle_mean"], b["angle_median"], b["within_11.25"], b["within_22.5"],
           b["within_30"], b["one_minus_abs_cos"]]
    np.testing.assert_allclose(got, want, atol=2e-3)
    # without a collector the pooled median is not reported
    assert "angle_median" not in M.finalize_normals(state)


@pytest.mark.parametrize("n_valid", [1, 4, 7])
def test_masked_median_even_and_odd(n_valid):
    rng = np.random.default_rng(n_valid)
    x = rng.normal(size=9).astype(np.float32)
    valid = np.zeros(9, bool)
    valid[rng.permutation(9)[:n_valid]] = True
    assert float(jax.jit(_masked_median)(x, valid)) == pytest.approx(np.median(x[valid]))


def test_normals_mask_and_bad_input():
    pred = np.ones((1, 2, 3), np.float32)
    gt = np.array([[[0, 0, 1], [0, 1, 0]]], np.float32)
    _, valid = M.normal_angles(pred, gt, mask=np.array([[True, False]]))
    np.testing.assert_array_equal(np.asarray(valid), [[True, False]])
    with pytest.raises(ValueError, match="same shape"):
        M.normal_angles(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="float"):
        M.normal_angles(np.ones((2, 3), int), np.ones((2, 3), int))
    with pytest.raises(ValueError, match="same shape"):
        M.collect_angles(M.init_angle_collector(), np.ones(3), np.ones(2, bool))
    with pytest.raises(ValueError, match="boolean"):
        M.collect_angles(M.init_angle_collector(), np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="no angle"):
        M.exact_median(M.init_angle_collector())
    with pytest.raises(ValueError, match="no valid pixel"):
        M.finalize_normals(M.init_normals())
    state = M.update_normals(M.init_normals(), pred, gt)
    with pytest.raises(ValueError, match="collector holds 0"):
        M.finalize_normals(state, M.init_angle_collector())
    with pytest.raises(ValueError, match="aggregation"):
        M.finalize_normals(state, aggregation="median")


def _rotated(g, axis, degrees):
    """Unit vector at ``degrees`` from unit ``g``, rotated towards the unit ``axis`` (axis _|_ g)."""
    t = math.radians(degrees)
    return [math.cos(t) * a + math.sin(t) * b for a, b in zip(g, axis)]


# gt normals: valid, missing (all-zero), valid with components summing to 0, valid;
# predictions at 10, (any), 40 and 20 degrees from them
VALID_PIXELS_GT = [(0.0, 0.0, 1.0), (0.0, 0.0, 0.0), (SQRT1_2, -SQRT1_2, 0.0), (0.0, 1.0, 0.0)]
VALID_PIXELS_PRED = [_rotated((0, 0, 1), (1, 0, 0), 10), [0.3, -0.2, 0.9],
                     _rotated((SQRT1_2, -SQRT1_2, 0), (0, 0, 1), 40), _rotated((0, 1, 0), (0, 0, 1), 20)]


def valid_pixels_example(shape=(1, 4)):
    pred = np.asarray(VALID_PIXELS_PRED, np.float32).reshape(shape + (3,))
    gt = np.asarray(VALID_PIXELS_GT, np.float32).reshape(shape + (3,))
    return pred, gt


def _pooled_normals(pred, gt, batches, **kw):
    state, coll = M.init_normals(), M.init_angle_collector()
    for lo, hi in batches:
        state = M.update_normals(state, pred[lo:hi], gt[lo:hi], **kw)
        coll = M.collect_angles(coll, *M.normal_angles(pred[lo:hi], gt[lo:hi], **kw))
    return state, coll


def test_normals_a_valid_normal_whose_components_sum_to_zero_counts():
    """Only an all-zero gt normal is missing; (1/sqrt2, -1/sqrt2, 0) is a valid normal (hand example)."""
    pred, gt = valid_pixels_example((2, 2))  # batches: pixels {10 deg, missing}, {40 deg, 20 deg}
    _, valid = M.normal_angles(pred, gt)
    np.testing.assert_array_equal(np.asarray(valid), [[True, False], [True, True]])
    state, coll = _pooled_normals(pred, gt, ((0, 1), (1, 2)))
    out = M.finalize_normals(state, coll)
    assert int(state.count) == 3
    assert out["angle_mean"] == pytest.approx(70 / 3, abs=1e-3)  # (10 + 40 + 20) / 3 (MTAN's mask: 15)
    assert out["angle_median"] == pytest.approx(20.0, abs=1e-3)  # (MTAN's mask: 15)
    assert out["within_11.25"] == pytest.approx(1 / 3, abs=1e-12)
    assert out["within_22.5"] == pytest.approx(2 / 3, abs=1e-12)
    assert out["within_30"] == pytest.approx(2 / 3, abs=1e-12)  # (MTAN's mask: 1)
    cos = [math.cos(math.radians(a)) for a in (10, 40, 20)]
    assert out["one_minus_abs_cos"] == pytest.approx(sum(1 - c for c in cos) / 3, abs=1e-6)
    assert float(M.one_minus_abs_cos(pred, gt)) == pytest.approx(sum(1 - c for c in cos) / 3, abs=1e-6)
    # per batch (MTAN-style aggregation): batch 1 holds {10}, batch 2 {40, 20}
    b = M.finalize_normals(state, aggregation="batch")
    assert b["angle_mean"] == pytest.approx((10 + 30) / 2, abs=1e-3)
    assert b["angle_median"] == pytest.approx((10 + 30) / 2, abs=1e-3)
    assert b["within_11.25"] == pytest.approx((1 + 0) / 2, abs=1e-6)
    assert b["within_22.5"] == pytest.approx((1 + 1 / 2) / 2, abs=1e-6)
    assert b["within_30"] == pytest.approx((1 + 1 / 2) / 2, abs=1e-6)
    assert b["one_minus_abs_cos"] == pytest.approx(((1 - cos[0]) + (2 - cos[1] - cos[2]) / 2) / 2, abs=1e-6)


def test_normals_mtan_mask_is_an_explicit_option():
    """normal_mask="mtan" reproduces MTAN's "channel sum != 0", which drops the 40-degree pixel."""
    pred, gt = valid_pixels_example((2, 2))
    _, valid = M.normal_angles(pred, gt, normal_mask="mtan")
    np.testing.assert_array_equal(np.asarray(valid), [[True, False], [False, True]])
    state, coll = _pooled_normals(pred, gt, ((0, 1), (1, 2)), normal_mask="mtan")
    out = M.finalize_normals(state, coll)
    assert int(state.count) == 2
    assert out["angle_mean"] == pytest.approx(15.0, abs=1e-3)
    assert out["angle_median"] == pytest.approx(15.0, abs=1e-3)
    assert out["within_30"] == pytest.approx(1.0, abs=1e-12)
    b = M.finalize_normals(state, aggregation="batch")
    assert b["angle_mean"] == pytest.approx(15.0, abs=1e-3) and b["within_11.25"] == pytest.approx(0.5)
    cos = [math.cos(math.radians(a)) for a in (10, 20)]
    assert float(M.one_minus_abs_cos(pred, gt, normal_mask="mtan")) == pytest.approx(
        sum(1 - c for c in cos) / 2, abs=1e-6)
    # the two masks on their own
    np.testing.assert_array_equal(np.asarray(M.valid_normal_mask(gt)), [[True, False], [True, True]])
    np.testing.assert_array_equal(np.asarray(M.valid_normal_mask(gt, "mtan")), [[True, False], [False, True]])
    with pytest.raises(ValueError, match="normal_mask"):
        M.normal_angles(pred, gt, normal_mask="sum")
    with pytest.raises(ValueError, match="normal_mask"):
        M.update_normals(M.init_normals(), pred, gt, normal_mask=None)


def test_normals_random_oracle_under_both_masks():
    rng = np.random.default_rng(11)
    pred, gt = random_normals(rng, (3, 6, 5))
    for normal_mask in M.NORMAL_MASKS:
        oracle = oracle_normal_values(pred, gt, normal_mask)
        state, coll = _pooled_normals(pred, gt, ((0, 1), (1, 3)), normal_mask=normal_mask)
        out = M.finalize_normals(state, coll)
        ang = np.array([a for a, _ in oracle])
        assert int(state.count) == len(oracle)
        assert out["angle_mean"] == pytest.approx(ang.mean(), abs=1e-3)
        assert out["angle_median"] == pytest.approx(np.median(ang), abs=2e-3)
    assert len(oracle_normal_values(pred, gt, "mtan")) < len(oracle_normal_values(pred, gt))


def test_depth_valid_where_gt_is_nonzero():
    """Depth: a pixel is valid where gt != 0, the one rule shared with the losses (hand example)."""
    pred = np.array([[1.5, 9.0], [1.0, 4.0]], np.float32)
    gt = np.array([[1.0, 0.0], [2.0, 4.0]], np.float32)
    np.testing.assert_array_equal(np.asarray(M.valid_depth_mask(gt)), [[True, False], [True, True]])
    out = M.finalize_depth(M.update_depth(M.init_depth(), pred, gt))
    assert out["abs_err"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert out["rel_err"] == pytest.approx((0.5 / 1 + 1.0 / 2 + 0.0) / 3)
    assert out["rmse"] == pytest.approx(math.sqrt((0.25 + 1.0 + 0.0) / 3))


# --------------------------------------------------------------------------- classification

def test_classification_accuracy_and_harmonic_mean():
    labels = np.array([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]])
    pred = np.array([[0, 1, 2, 0, 0], [4, 3, 2, 1, 1]])
    assert float(M.accuracy(pred[0], labels[0])) == pytest.approx(0.6)
    logits = np.eye(5, dtype=np.float32)[pred] * 3.0
    update = jax.jit(M.update_classification)
    state = M.init_classification(2)
    state = update(state, logits[:, :2], labels[:, :2])
    state = update(state, pred[:, 2:], labels[:, 2:])
    out = M.finalize_classification(state)
    assert out["accuracy"] == pytest.approx([0.6, 0.8])
    assert out["harmonic_mean"] == pytest.approx(2 * 0.6 * 0.8 / (0.6 + 0.8))
    assert M.harmonic_mean([0.9, 0.0]) == 0.0
    assert M.harmonic_mean([0.5]) == pytest.approx(0.5)


def test_classification_bad_input():
    with pytest.raises(ValueError, match="num_tasks"):
        M.init_classification(0)
    with pytest.raises(ValueError, match="T=2"):
        M.update_classification(M.init_classification(2), np.zeros((3, 4), int), np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="pred"):
        M.accuracy(np.zeros((4, 2, 3)), np.zeros(4, int))
    with pytest.raises(ValueError, match="non-negative"):
        M.harmonic_mean([0.5, -0.1])
    with pytest.raises(ValueError, match="no example"):
        M.finalize_classification(M.init_classification(2))


# ------------------------------------------------------------------------- paper / deltas

def test_paper_nyuv2_metrics():
    out = M.paper_nyuv2_metrics({"miou": 0.337}, {"rmse": 0.775, "abs_err": 1.0},
                                {"one_minus_abs_cos": 0.051})
    assert out == pytest.approx(M.PAPER_NYUV2_SINGLE_TASK)
    assert set(out) == set(M.PAPER_NYUV2_HIGHER_IS_BETTER)
    with pytest.raises(ValueError, match="depth must contain 'rmse'"):
        M.paper_nyuv2_metrics({"miou": 0.3}, {}, {"one_minus_abs_cos": 0.05})


def test_delta_m_reproduces_published_equal_weighting():
    # Equal weighting on NYUv2 (Nash-MTL, Table 2), published Delta_m = +5.59
    ew = {"miou": 0.3929, "pixel_acc": 0.6533, "abs_err": 0.5493, "rel_err": 0.2263,
          "angle_mean": 28.15, "angle_median": 23.96, "within_11.25": 0.2209,
          "within_22.5": 0.4750, "within_30": 0.6108, "rmse": 0.7}  # extra key ignored
    assert M.delta_m(ew, M.SEGNET_NYUV2_STL, M.NYUV2_HIGHER_IS_BETTER) == pytest.approx(5.59, abs=5e-3)
    assert M.delta_m(M.SEGNET_NYUV2_STL, M.SEGNET_NYUV2_STL, M.NYUV2_HIGHER_IS_BETTER) == 0.0


def test_delta_m_hand_example():
    # acc 0.8 vs 0.5 (higher better): +60% better -> -60; err 3 vs 2 (lower better): 50% worse -> +50
    got = M.delta_m({"acc": 0.8, "err": 3.0}, {"acc": 0.5, "err": 2.0}, {"acc": True, "err": False})
    assert got == pytest.approx((-60.0 + 50.0) / 2)


def test_delta_p_libmtl_example_and_task_averaging():
    # LibMTL count_improvement docstring example: 0.7396... as a fraction
    got = M.delta_p({"A": {"a": 93, "b": 99}, "B": {"c": 0.5}},
                    {"A": {"a": 96, "b": 98}, "B": {"c": 0.2}},
                    {"A": {"a": True, "b": False}, "B": {"c": True}})
    want = 100 * ((-(96 - 93) / 96 + (98 - 99) / 98) / 2 + (0.5 - 0.2) / 0.2) / 2
    assert got == pytest.approx(want)
    assert got == pytest.approx(73.9636, abs=1e-3)
    # a single task: Delta_p = -Delta_m
    m, b, h = {"x": 2.0, "y": 1.0}, {"x": 1.0, "y": 2.0}, {"x": True, "y": False}
    assert M.delta_p({"t": m}, {"t": b}, {"t": h}) == pytest.approx(-M.delta_m(m, b, h))
    # nested constants are consistent with the flat ones
    flat = M.delta_m(m | M.SEGNET_NYUV2_STL, M.SEGNET_NYUV2_STL, M.NYUV2_HIGHER_IS_BETTER)
    nested = M.delta_p(M.SEGNET_NYUV2_STL_BY_TASK, M.SEGNET_NYUV2_STL_BY_TASK,
                       M.NYUV2_HIGHER_IS_BETTER_BY_TASK)
    assert flat == nested == 0.0


def test_delta_bad_input():
    with pytest.raises(ValueError, match="metrics lack 'b'"):
        M.delta_m({"a": 1.0}, {"a": 1.0, "b": 2.0}, {"a": True, "b": True})
    with pytest.raises(ValueError, match="higher_is_better lacks 'a'"):
        M.delta_m({"a": 1.0}, {"a": 1.0}, {})
    with pytest.raises(ValueError, match="non-zero"):
        M.delta_m({"a": 1.0}, {"a": 0.0}, {"a": True})
    with pytest.raises(ValueError, match="finite"):
        M.delta_m({"a": float("nan")}, {"a": 1.0}, {"a": True})
    with pytest.raises(ValueError, match="at least one"):
        M.delta_m({}, {}, {})
    with pytest.raises(ValueError, match="lacks task 'B'"):
        M.delta_p({"A": {"a": 1.0}}, {"A": {"a": 1.0}, "B": {"b": 1.0}},
                  {"A": {"a": True}, "B": {"b": True}})
    with pytest.raises(ValueError, match=r"metrics\['A'\] lack 'a'"):
        M.delta_p({"A": {}}, {"A": {"a": 1.0}}, {"A": {"a": True}})


# ----------------------------------------------------------------------------- package layout

_PUBLIC_NAMES = {
    "segmentation": {"SegmentationState", "confusion_matrix", "finalize_segmentation", "init_segmentation",
                     "segmentation_scores", "update_segmentation"},
    "depth": {"DepthState", "DepthStatistics", "depth_statistics", "finalize_depth", "init_depth",
              "update_depth", "valid_depth_mask"},
    "normals": {"NORMAL_MASKS", "NORMAL_THRESHOLDS", "AngleCollector", "NormalState", "collect_angles",
                "exact_median", "finalize_normals", "init_angle_collector", "init_normals", "normal_angles",
                "one_minus_abs_cos", "update_normals", "valid_normal_mask"},
    "classification": {"ClassificationState", "accuracy", "finalize_classification", "harmonic_mean",
                       "init_classification", "update_classification"},
    "scores": {"NYUV2_HIGHER_IS_BETTER", "NYUV2_HIGHER_IS_BETTER_BY_TASK", "PAPER_NYUV2_HIGHER_IS_BETTER",
               "PAPER_NYUV2_SINGLE_TASK", "SEGNET_NYUV2_STL", "SEGNET_NYUV2_STL_BY_TASK", "delta_m", "delta_p",
               "paper_nyuv2_metrics"},
}


@pytest.mark.parametrize("family", sorted(_PUBLIC_NAMES))
def test_each_task_family_module_exports_its_names_and_the_package_re_exports_them(family):
    import importlib

    module = importlib.import_module(f"orthojax.metrics.{family}")
    assert set(module.__all__) == _PUBLIC_NAMES[family]
    for name in module.__all__:
        assert getattr(M, name) is getattr(module, name), name
        assert name in M.__all__
        obj = getattr(module, name)
        if callable(obj) and not isinstance(obj, dict):  # defined in the module named after its family
            assert getattr(obj, "__module__", module.__name__) == module.__name__, name


def test_the_package_exports_exactly_the_task_family_names():
    # and the trivial predictor's entry point (orthojax.metrics.trivial keeps its per-task functions)
    assert set(M.__all__) == set().union(*_PUBLIC_NAMES.values()) | {"trivial_evaluation"}
    assert len(M.__all__) == len(set(M.__all__))
