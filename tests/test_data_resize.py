"""Resizing / cropping / flipping against jax.image.resize and direct slicing."""

import jax
import numpy as np
import pytest

from orthojax.data.resize import (crop_resize_bilinear, crop_resize_nearest, dense_augment, hflip,
                                  normalize_normals, random_scale_crop_box, resize_dense, resize_normals)



@pytest.mark.parametrize("shape,out", [((12, 16, 3), (5, 7)), ((6, 4, 3), (13, 9)), ((8, 8, 3), (2, 2))])
def test_bilinear_matches_jax(shape, out):
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    ref = jax.image.resize(x, out + (3,), method="linear", antialias=False)
    np.testing.assert_allclose(crop_resize_bilinear(x, out), np.asarray(ref), atol=1e-5)


def test_nearest_integer_factor_and_values():
    x = np.arange(24 * 36).reshape(24, 36)
    y = crop_resize_nearest(x, (4, 6))  # factor 6: centres of 6x6 blocks -> source index 6 i + 3
    np.testing.assert_array_equal(y, x[3::6, 3::6])
    up = crop_resize_nearest(np.array([[1, 2], [3, 4]]), (4, 4))
    np.testing.assert_array_equal(up, np.kron([[1, 2], [3, 4]], np.ones((2, 2), int)))


def test_box_crop_equals_slicing():
    x = np.random.default_rng(1).random((20, 40, 2)).astype(np.float32)
    box = (0.25, 0.5, 0.5, 0.25)  # rows 5..14, cols 20..29
    np.testing.assert_array_equal(crop_resize_nearest(x, (10, 10), box), x[5:15, 20:30])
    np.testing.assert_allclose(crop_resize_bilinear(x, (10, 10), box), x[5:15, 20:30], atol=1e-6)
    with pytest.raises(ValueError, match="unit square"):
        crop_resize_nearest(x, (2, 2), (0.5, 0.5, 0.6, 0.1))


def test_normals_unit_and_masks_follow_depth():
    rng = np.random.default_rng(2)
    n = normalize_normals(rng.normal(size=(16, 16, 3)))
    n[:4] = 0  # invalid band
    r = resize_normals(n, (8, 8))
    norms = np.linalg.norm(r, axis=-1)
    valid = np.any(r != 0, axis=-1)
    np.testing.assert_allclose(norms[valid], 1, atol=1e-5)
    depth = np.where(np.any(n != 0, axis=-1), 2.0, 0.0).astype(np.float32)
    np.testing.assert_array_equal(valid, crop_resize_nearest(depth, (8, 8)) > 0)
    assert not valid[:2].any() and valid[2:].all()


def test_hflip_negates_normal_x():
    rng = np.random.default_rng(3)
    sample = {"image": rng.random((4, 5, 3)), "normal": normalize_normals(rng.normal(size=(4, 5, 3)))}
    f = hflip(sample)
    np.testing.assert_array_equal(f["image"], sample["image"][:, ::-1])
    np.testing.assert_allclose(f["normal"][..., 0], -sample["normal"][:, ::-1, 0])
    np.testing.assert_allclose(f["normal"][..., 1:], sample["normal"][:, ::-1, 1:])
    np.testing.assert_array_equal(hflip(f)["normal"], sample["normal"])


def test_scale_crop_divides_depth_and_keeps_labels():
    rng = np.random.default_rng(4)
    sample = {"image": rng.random((16, 16, 3)).astype(np.float32), "seg": rng.integers(-1, 13, (8, 8)),
              "depth": np.full((8, 8), 3.0, np.float32), "normal": normalize_normals(rng.normal(size=(8, 8, 3)))}
    out = resize_dense(sample, (16, 16), (8, 8), box=(0.0, 0.0, 0.5, 0.5), depth_scale=2.0)
    np.testing.assert_allclose(out["depth"], 1.5)
    np.testing.assert_array_equal(out["seg"], np.kron(sample["seg"][:4, :4], np.ones((2, 2), int)))
    assert out["image"].shape == (16, 16, 3)
    box, s = random_scale_crop_box(np.random.default_rng(0), (1.5,))
    assert s == 1.5 and abs(box[2] - 1 / 1.5) < 1e-12 and 0 <= box[0] <= 1 - box[2] + 1e-12


def test_dense_augment_deterministic_and_shape_preserving():
    rng = np.random.default_rng(5)
    batch = {"image": rng.random((3, 16, 16, 3)).astype(np.float32), "seg": rng.integers(-1, 13, (3, 8, 8)).astype(np.int32),
             "depth": rng.uniform(0.5, 5, (3, 8, 8, 1)).astype(np.float32),
             "normal": normalize_normals(rng.normal(size=(3, 8, 8, 3)))}
    aug = dense_augment()
    a = aug(batch, np.random.default_rng(9))
    b = aug(batch, np.random.default_rng(9))
    for k in batch:
        assert a[k].shape == batch[k].shape and a[k].dtype == batch[k].dtype
        np.testing.assert_array_equal(a[k], b[k])
    assert set(np.unique(a["seg"])) <= set(np.unique(batch["seg"]))
    assert a["depth"].max() <= batch["depth"].max() + 1e-6
