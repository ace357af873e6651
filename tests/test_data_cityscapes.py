"""Cityscapes (MTAN layout) reader on tiny fixtures and its errors; synthetic streets; augmentation; metrics."""

from __future__ import annotations

import numpy as np
import pytest

from orthojax.data.cityscapes import (
    CITYSCAPES_7_CLASSES,
    CITYSCAPES_19_CLASSES,
    TRAIN_ID_TO_CATEGORY,
    cityscapes_augment,
    finalize_cityscapes_metrics,
    init_cityscapes_metrics,
    load_cityscapes,
    read_cityscapes_split,
    render_street,
    synthetic_cityscapes,
    update_cityscapes_metrics,
)

H, W = 8, 16


def write_cityscapes(root, counts=(3, 2), size=(H, W), label_19=False, label_dir="label_7"):
    """{train,val}/{image,label_7,depth}/{i}.npy (+ label_19/), values drawn here, not by the reader."""
    h, w = size
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), counts):
        keys = ["image", label_dir, "depth"] + (["label_19"] if label_19 else [])
        for key in keys:
            (root / split / key).mkdir(parents=True)
        for i in range(n):
            np.save(root / split / "image" / f"{i}.npy", rng.random((h, w, 3)))
            np.save(root / split / label_dir / f"{i}.npy", rng.integers(-1, 7, (h, w)).astype(np.float32))
            depth = rng.uniform(0.01, 0.45, (h, w, 1)).astype(np.float32)
            depth[0, :4] = 0
            np.save(root / split / "depth" / f"{i}.npy", depth)
            if label_19:
                np.save(root / split / "label_19" / f"{i}.npy", rng.integers(-1, 19, (h, w)))
    return root


# ---------------------------------------------------------------- reader
def test_reads_the_mtan_layout_unchanged(tmp_path):
    root = write_cityscapes(tmp_path)
    splits, info = load_cityscapes(root)
    assert len(splits["train"]["image"]) == 3 and len(splits["test"]["image"]) == 2
    for split, folder in (("train", "train"), ("test", "val")):
        s = splits[split]
        for i in range(len(s["image"])):
            np.testing.assert_array_equal(s["seg"][i], np.load(root / folder / "label_7" / f"{i}.npy"))
            np.testing.assert_array_equal(s["depth"][i], np.load(root / folder / "depth" / f"{i}.npy"))
            np.testing.assert_allclose(s["image"][i], np.load(root / folder / "image" / f"{i}.npy"), rtol=1e-6)
    t = splits["train"]
    assert t["image"].dtype == np.float32 and t["seg"].dtype == np.int32 and t["depth"].dtype == np.float32
    assert t["image"].shape == (3, H, W, 3) and t["seg"].shape == (3, H, W) and t["depth"].shape == (3, H, W, 1)
    assert info["tasks"] == ["seg", "depth"] and info["num_classes"] == {"seg": 7} and not info["synthetic"]
    assert info["class_names"]["seg"] == list(CITYSCAPES_7_CLASSES) and info["image_size"] == [H, W]
    assert info["split_sizes"] == {"train": 3, "test": 2}
    assert len(read_cityscapes_split(root, "train", max_items=2)["image"]) == 2


def test_label_19_when_present_and_asked_for_and_libmtl_label_folder(tmp_path):
    root = write_cityscapes(tmp_path / "a", label_19=True)
    splits, info = load_cityscapes(root, num_classes=19)
    np.testing.assert_array_equal(splits["train"]["seg"][1], np.load(root / "train/label_19/1.npy"))
    assert info["num_classes"] == {"seg": 19} and info["class_names"]["seg"] == list(CITYSCAPES_19_CLASSES)
    with pytest.raises(FileNotFoundError, match=r"label_19/: missing 19-class label folder \(found \['label_7'\]\)"):
        load_cityscapes(write_cityscapes(tmp_path / "b"), num_classes=19)
    libmtl = write_cityscapes(tmp_path / "c", label_dir="label")
    np.testing.assert_array_equal(load_cityscapes(libmtl)[0]["train"]["seg"][0], np.load(libmtl / "train/label/0.npy"))
    with pytest.raises(ValueError, match="num_classes must be 7 or 19"):
        load_cityscapes(root, num_classes=13)


def test_uint8_images_are_scaled_and_2d_disparity_gets_a_channel(tmp_path):
    root = write_cityscapes(tmp_path, counts=(1, 1))
    img = np.random.default_rng(1).integers(0, 256, (H, W, 3)).astype(np.uint8)
    np.save(root / "train/image/0.npy", img)
    disp = np.load(root / "train/depth/0.npy")[..., 0]
    np.save(root / "train/depth/0.npy", disp)
    s = read_cityscapes_split(root, "train")
    np.testing.assert_allclose(s["image"][0], img / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(s["depth"][0, ..., 0], disp)


def test_missing_root_split_folder_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Cityscapes root .*nowhere does not exist"):
        load_cityscapes(tmp_path / "nowhere")
    root = write_cityscapes(tmp_path / "r")
    (root / "val" / "depth" / "1.npy").unlink()
    with pytest.raises(ValueError, match=r"val/depth: 1 files, but .*val/image has 2 .*missing \[1\]"):
        load_cityscapes(root)
    import shutil
    shutil.rmtree(root / "val")
    with pytest.raises(FileNotFoundError, match=r"r/val: missing Cityscapes split folder"):
        load_cityscapes(root)
    shutil.rmtree(root / "train" / "depth")
    with pytest.raises(FileNotFoundError, match=r"train/depth: missing folder"):
        read_cityscapes_split(root, "train")
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        read_cityscapes_split(root, "test")


@pytest.mark.parametrize("key, value, message", [
    ("image", np.zeros((H, W)), r"image/0.npy: expected an RGB image \(H, W, 3\)"),
    ("image", np.full((H, W, 3), 2.0), r"image/0.npy: expected image values in \[0, 1\], got 2..2"),
    ("image", np.full((H, W, 3), np.nan), "image/0.npy: contains NaN"),
    ("label_7", np.zeros((H, W + 1)), r"label_7/0.npy: expected labels of shape \(8, 16\)"),
    ("label_7", np.full((H, W), 7), r"label_7/0.npy: label values must be in -1..6 \(-1 = void\), got 7..7"),
    ("label_7", np.full((H, W), -2), "label values must be in -1..6"),
    ("label_7", np.full((H, W), 0.5), "label_7/0.npy: labels must be integers"),
    ("label_7", np.array(["a"] * (H * W)).reshape(H, W), r"label_7/0.npy: expected labels of shape .* got <U1"),
    ("depth", np.zeros((H, W, 2)), r"depth/0.npy: expected disparity of shape \(8, 16, 1\)"),
    ("depth", np.full((H, W, 1), -0.1), "depth/0.npy: disparity must be >= 0"),
    ("depth", np.full((H, W, 1), np.inf), "depth/0.npy: contains NaN or infinite values"),
])
def test_broken_files_are_named(tmp_path, key, value, message):
    root = write_cityscapes(tmp_path, counts=(1, 1))
    np.save(root / "train" / key / "0.npy", value)
    with pytest.raises(ValueError, match=message):
        read_cityscapes_split(root, "train")


def test_unreadable_pickled_and_mismatched_sizes(tmp_path):
    root = write_cityscapes(tmp_path, counts=(2, 1))
    (root / "train/depth/1.npy").write_bytes(b"not a numpy file")
    with pytest.raises(ValueError, match=r"depth/1.npy: not a valid .npy file"):
        read_cityscapes_split(root, "train")
    np.save(root / "train/depth/1.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"depth/1.npy: contains pickled objects"):
        read_cityscapes_split(root, "train")
    np.save(root / "train/depth/1.npy", np.zeros((H, W, 1)))
    np.save(root / "train/image/1.npy", np.zeros((H, W + 2, 3)))
    with pytest.raises(ValueError, match=r"image/1.npy: expected an image of size \(8, 16\)"):
        read_cityscapes_split(root, "train")
    big = write_cityscapes(tmp_path / "big", counts=(1, 1))
    for key, shape in (("image", (H, 2 * W, 3)), ("label_7", (H, 2 * W)), ("depth", (H, 2 * W, 1))):
        np.save(big / "val" / key / "0.npy", np.zeros(shape))
    with pytest.raises(ValueError, match=r"train images are \(8, 16\) but val images are \(8, 32\)"):
        load_cityscapes(big)


# ---------------------------------------------------------------- synthetic default
def test_synthetic_streets_are_deterministic_and_in_range():
    a, info = synthetic_cityscapes(3, 2, image_size=(32, 64), seed=3)
    b, _ = synthetic_cityscapes(3, 2, image_size=(32, 64), seed=3)
    c, _ = synthetic_cityscapes(4, 1, image_size=(32, 64), seed=3)
    for split in ("train", "test"):
        for key in ("image", "seg", "depth"):
            np.testing.assert_array_equal(a[split][key], b[split][key])
    np.testing.assert_array_equal(a["train"]["image"], c["train"]["image"][:3])  # scene i depends on (seed, split, i)
    assert not np.array_equal(a["train"]["image"][0], a["test"]["image"][0])
    d, _ = synthetic_cityscapes(1, 0, image_size=(32, 64), seed=4)
    assert not np.array_equal(d["train"]["image"][0], a["train"]["image"][0])
    t = a["train"]
    assert t["image"].shape == (3, 32, 64, 3) and t["image"].dtype == np.float32
    assert t["seg"].dtype == np.int32 and t["depth"].shape == (3, 32, 64, 1) and t["depth"].dtype == np.float32
    assert t["image"].min() >= 0 and t["image"].max() <= 1
    assert t["seg"].min() >= 0 and t["seg"].max() <= 6 and len(np.unique(t["seg"])) >= 4
    assert np.all(t["depth"] >= 0) and t["depth"].max() < 1.0
    sky = t["seg"] == CITYSCAPES_7_CLASSES.index("sky")
    np.testing.assert_array_equal(t["depth"][..., 0] == 0, sky)  # invalid disparity exactly on the sky
    assert info["synthetic"] and info["tasks"] == ["seg", "depth"] and info["split_sizes"] == {"train": 3, "test": 2}
    assert a["test"]["image"].shape[0] == 2 and synthetic_cityscapes(0, 0, image_size=(8, 8))[0]["test"]["seg"].shape == (0, 8, 8)


def test_synthetic_19_classes_map_to_the_7_categories_and_geometry_is_consistent():
    rng = np.random.default_rng([0, 1, 0])
    from orthojax.data.cityscapes import _street_layout
    layout = _street_layout(rng)
    item = render_street(layout, (64, 128))
    s7, _ = synthetic_cityscapes(1, 0, image_size=(64, 128), seed=0)
    s19, info = synthetic_cityscapes(1, 0, image_size=(64, 128), seed=0, num_classes=19)
    np.testing.assert_array_equal(TRAIN_ID_TO_CATEGORY[s19["train"]["seg"][0]], s7["train"]["seg"][0])
    assert info["num_classes"] == {"seg": 19}
    # the road and sidewalk are the ground plane y = cam_h: disparity = (v - horizon) / (f cam_h)
    h, w = 64, 128
    f = w / (2 * np.tan(layout["fov"] / 2))
    v = np.arange(h)[:, None] + 0.5 - layout["horizon"] * h
    ground = np.isin(item["label19"], (0, 1))
    expected = np.broadcast_to(v / (f * layout["cam_h"]), (h, w))
    np.testing.assert_allclose(item["depth"][..., 0][ground], expected[ground], rtol=1e-5)
    assert ground.mean() > 0.2
    # 19-class names -> categories follow the official table
    cats = dict(zip(CITYSCAPES_19_CLASSES, (CITYSCAPES_7_CLASSES[i] for i in TRAIN_ID_TO_CATEGORY)))
    assert cats["road"] == "flat" and cats["traffic sign"] == "object" and cats["terrain"] == "nature"
    assert cats["rider"] == "human" and cats["bicycle"] == "vehicle" and cats["fence"] == "construction"


def test_load_without_data_dir_is_synthetic():
    splits, info = load_cityscapes(None, synthetic_sizes=(2, 1), image_size=(32, 64), seed=1)
    assert info["synthetic"] and info["source"] == "synthetic" and len(splits["test"]["image"]) == 1


# ---------------------------------------------------------------- augmentation
def test_augmentation_multiplies_disparity_by_the_zoom_and_flips_consistently():
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((2, 16, 16, 3)).astype(np.float32),
             "seg": rng.integers(-1, 7, (2, 16, 16)).astype(np.int32),
             "depth": np.full((2, 16, 16, 1), 0.2, np.float32)}
    out = cityscapes_augment(scales=(2.0,), flip=False)(batch, np.random.default_rng(1))
    np.testing.assert_allclose(out["depth"], 0.4, rtol=1e-6)  # a 2x zoom halves the distance
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == {k: (v.shape, v.dtype) for k, v in batch.items()}
    assert set(np.unique(out["seg"])) <= set(np.unique(batch["seg"]))
    flipped = cityscapes_augment(scales=(1.0,), flip=True)(batch, np.random.default_rng(2))
    for i in range(2):
        same = np.array_equal(flipped["seg"][i], batch["seg"][i])
        mirrored = np.array_equal(flipped["seg"][i], batch["seg"][i][:, ::-1])
        assert same or mirrored
        ref = batch["image"][i] if same else batch["image"][i][:, ::-1]
        np.testing.assert_array_equal(flipped["image"][i], ref)
    with pytest.raises(ValueError, match="scales must be"):
        cityscapes_augment(scales=(0.5,))


# ---------------------------------------------------------------- metrics
def test_metrics_against_numpy():
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(2):
        seg = rng.integers(-1, 7, (2, 4, 6)).astype(np.int32)
        gt = rng.uniform(0.01, 0.4, (2, 4, 6, 1)).astype(np.float32)
        gt[0, 0] = 0
        batches.append(({"seg": seg, "depth": gt}, rng.normal(size=(2, 4, 6, 7)).astype(np.float32),
                        rng.uniform(0.0, 0.4, (2, 4, 6, 1)).astype(np.float32)))
    state = init_cityscapes_metrics()
    for batch, logits, disp in batches:
        state = update_cityscapes_metrics(state, logits, disp, batch)
    pooled = finalize_cityscapes_metrics(state)
    per_batch = finalize_cityscapes_metrics(state, "batch")
    # NumPy oracle
    conf = np.zeros((7, 7))
    abs_all, rel_all, abs_b, rel_b = [], [], [], []
    for batch, logits, disp in batches:
        t, p = batch["seg"].ravel(), logits.argmax(-1).ravel()
        for ti, pi in zip(t[t >= 0], p[t >= 0]):
            conf[ti, pi] += 1
        g = batch["depth"]
        valid = g != 0
        e = np.abs(disp - g)[valid]
        abs_all.append(e), rel_all.append(e / g[valid])
        abs_b.append(e.mean()), rel_b.append((e / g[valid]).mean())
    iou = np.diag(conf) / (conf.sum(0) + conf.sum(1) - np.diag(conf))
    assert pooled["miou"] == pytest.approx(np.nanmean(iou), rel=1e-9)
    assert pooled["pixel_acc"] == pytest.approx(np.trace(conf) / conf.sum(), rel=1e-9)
    assert pooled["abs_err"] == pytest.approx(np.concatenate(abs_all).mean(), rel=1e-5)
    assert pooled["rel_err"] == pytest.approx(np.concatenate(rel_all).mean(), rel=1e-5)
    assert per_batch["abs_err"] == pytest.approx(np.mean(abs_b), rel=1e-5)
    assert per_batch["rel_err"] == pytest.approx(np.mean(rel_b), rel=1e-5)
    assert set(pooled) == {"miou", "pixel_acc", "abs_err", "rel_err"}
    with pytest.raises(ValueError, match="num_classes must be 7 or 19"):
        init_cityscapes_metrics(5)
