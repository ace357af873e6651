"""NYUv2 readers (MTAN layout, official .mat) on tiny fixtures, protocols and error messages."""

import h5py
import numpy as np
import pytest
from scipy.io import savemat

from orthojax.data.nyuv2 import NYU40_TO_13, load_nyuv2, read_mtan_split

from _data_fixtures import write_mtan

H, W = 12, 16


def test_mtan_protocol_at_native_size(tmp_path):
    root = write_mtan(tmp_path, size=(H, W))
    splits, info = load_nyuv2(root, "mtan", image_size=(H, W), target_size=(H, W))
    assert len(splits["train"]["image"]) == 3 and len(splits["test"]["image"]) == 2
    for i in range(3):
        np.testing.assert_array_equal(splits["train"]["seg"][i], np.load(root / "train/label" / f"{i}.npy"))
        np.testing.assert_allclose(splits["train"]["depth"][i], np.load(root / "train/depth" / f"{i}.npy"), rtol=1e-6)
        np.testing.assert_allclose(splits["train"]["image"][i], np.load(root / "train/image" / f"{i}.npy"), rtol=1e-6)
    t = splits["train"]
    assert t["seg"].dtype == np.int32 and t["depth"].dtype == np.float32 and t["normal"].shape == (3, H, W, 3)
    assert info["num_classes"] == {"seg": 13} and info["synthetic"] is False and info["tasks"] == ["seg", "depth", "normal"]


def test_paper_protocol_void_is_background_and_resizing(tmp_path):
    root = write_mtan(tmp_path, size=(H, W))
    splits, info = load_nyuv2(root, "paper", image_size=(8, 8), target_size=(6, 8))
    t = splits["train"]
    assert t["image"].shape == (3, 8, 8, 3) and t["seg"].shape == (3, 6, 8) and t["depth"].shape == (3, 6, 8, 1)
    label = np.load(root / "train/label/0.npy")
    rows = np.floor((np.arange(6) + 0.5) * H / 6).astype(int)
    cols = np.floor((np.arange(8) + 0.5) * W / 8).astype(int)
    np.testing.assert_array_equal(t["seg"][0], label[rows][:, cols] + 1)
    assert t["seg"].min() >= 0 and t["seg"].max() <= 13
    assert info["num_classes"] == {"seg": 14} and info["class_names"]["seg"][0] == "background"
    valid_n = np.any(t["normal"] != 0, axis=-1)
    np.testing.assert_array_equal(valid_n, t["depth"][..., 0] > 0)
    np.testing.assert_allclose(np.linalg.norm(t["normal"][valid_n], axis=-1), 1, atol=1e-5)


def test_max_items_and_without_normals(tmp_path):
    root = write_mtan(tmp_path, size=(H, W))
    splits, info = load_nyuv2(root, "mtan", image_size=(H, W), target_size=(H, W), max_items=1, with_normals=False)
    assert len(splits["train"]["image"]) == 1 and "normal" not in splits["train"]
    assert "normal" not in info["tasks"] and any("disabled" in n for n in info["notes"])


@pytest.mark.parametrize(
    "corrupt,match",
    [
        (lambda r: (r / "train/depth/2.npy").unlink(), r"train/depth: 2 files, but .*image has 3"),
        (lambda r: np.save(r / "train/label/1.npy", np.zeros((H + 1, W))), r"train/label/1.npy: expected label of shape"),
        (lambda r: np.save(r / "train/image/0.npy", np.zeros((H, W))), r"train/image/0.npy: expected an RGB image"),
        (lambda r: np.save(r / "train/label/0.npy", np.full((H, W), 13.0)), r"train/label/0.npy: label values must be in -1..12"),
        (lambda r: np.save(r / "train/label/0.npy", np.full((H, W), 0.5)), r"label/0.npy: labels must be integers"),
        (lambda r: np.save(r / "train/depth/0.npy", np.array(["a"] * H * W).reshape(H, W, 1)), r"depth/0.npy: expected depth"),
        (lambda r: np.save(r / "train/normal/0.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True),
         r"normal/0.npy: contains pickled objects"),
        (lambda r: (r / "train/image/0.npy").write_bytes(b"not a numpy file"), r"image/0.npy: not a valid .npy"),
        (lambda r: np.save(r / "train/depth/0.npy", -np.ones((H, W, 1))), r"depth/0.npy: depth must be >= 0"),
    ],
)
def test_mtan_bad_input(tmp_path, corrupt, match):
    root = write_mtan(tmp_path, size=(H, W))
    corrupt(root)
    with pytest.raises(ValueError, match=match):
        read_mtan_split(root, "train", "mtan", (H, W), (H, W))


def test_mtan_missing_root_split_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_mtan_split(tmp_path / "none", "train")
    root = write_mtan(tmp_path / "r", size=(H, W))
    with pytest.raises(FileNotFoundError, match="test: missing NYUv2 split folder"):
        read_mtan_split(root, "test")
    import shutil

    shutil.rmtree(root / "val" / "normal")
    with pytest.raises(FileNotFoundError, match="val/normal: missing folder"):
        read_mtan_split(root, "val")
    with pytest.raises(FileNotFoundError, match="expected an MTAN root"):
        load_nyuv2(tmp_path)
    with pytest.raises(ValueError, match="protocol"):
        load_nyuv2(root, "cityscapes")


def write_mat(folder, n=4, w=10, h=8):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, 3, w, h), dtype=np.uint8)  # h5py view of MATLAB (H, W, 3, N)
    depths = rng.uniform(0.5, 9, (n, w, h)).astype(np.float32)
    labels = rng.integers(0, 895, (n, w, h)).astype(np.uint16)
    with h5py.File(folder / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"], f["depths"], f["labels"] = images, depths, labels
    savemat(folder / "splits.mat", {"trainNdxs": np.array([[1], [3], [4]]), "testNdxs": np.array([[2]])})
    map40 = rng.integers(0, 41, 894)
    savemat(folder / "classMapping40.mat", {"mapClass": map40[None, :]})
    return images, depths, labels, map40


def test_official_mat(tmp_path):
    images, depths, labels, map40 = write_mat(tmp_path)
    splits, info = load_nyuv2(tmp_path, "mtan", image_size=(8, 10), target_size=(8, 10))
    assert len(splits["train"]["image"]) == 3 and len(splits["test"]["image"]) == 1
    assert "normal" not in splits["train"] and "normal" not in info["tasks"]
    assert any("normals are not in the official .mat" in n for n in info["notes"])
    frame = 2  # trainNdxs[1] = 3 (1-based)
    np.testing.assert_allclose(splits["train"]["image"][1], images[frame].transpose(2, 1, 0) / 255, atol=1e-6)
    np.testing.assert_allclose(splits["train"]["depth"][1, ..., 0], depths[frame].T)
    lab = labels[frame].T.astype(int)
    expected = np.zeros_like(lab) - 1
    for (r, c), v in np.ndenumerate(lab):  # 894 -> 40 -> 13 by hand, void -> -1
        c40 = 0 if v == 0 else map40[v - 1]
        expected[r, c] = -1 if c40 == 0 else NYU40_TO_13[c40 - 1] - 1
    np.testing.assert_array_equal(splits["train"]["seg"][1], expected)


def test_official_mat_with_normals_folder_and_bad_mapping(tmp_path):
    write_mat(tmp_path)
    normals = tmp_path / "normals"
    normals.mkdir()
    for frame in range(4):
        np.save(normals / f"{frame}.npy", np.tile(np.float32([0, 0, -1]), (4, 5, 1)))
    splits, info = load_nyuv2(tmp_path, "paper", image_size=(8, 8), target_size=(4, 4), normals_dir=normals)
    np.testing.assert_allclose(splits["train"]["normal"], np.tile(np.float32([0, 0, -1]), (3, 4, 4, 1)))
    assert info["tasks"] == ["seg", "depth", "normal"]
    savemat(tmp_path / "classMapping40.mat", {"mapClass": np.arange(10)[None]})
    with pytest.raises(ValueError, match="classMapping40.mat: expected 894 values"):
        load_nyuv2(tmp_path, "paper")


def test_nyu40_to_13_table():
    assert NYU40_TO_13.shape == (40,) and set(NYU40_TO_13) == set(range(1, 14))
    # wall->wall(12), floor->floor(5), bed->bed(1), ceiling(22)->ceiling(3), books(23)->books(2), tv(25)->tv(11)
    assert [NYU40_TO_13[i - 1] for i in (1, 2, 4, 22, 23, 25)] == [12, 5, 1, 3, 2, 11]


def test_nyu40_classes_that_are_nyu13_classes_map_to_themselves():
    from orthojax.data.nyuv2 import NYU13_CLASSES, NYU40_CLASSES

    assert len(NYU40_CLASSES) == 40 and len(set(NYU40_CLASSES)) == 40 and len(NYU13_CLASSES) == 13
    shared = [c for c in NYU40_CLASSES if c in NYU13_CLASSES]
    assert len(shared) == 11  # all but "furniture" and "objects", which gather several NYU40 classes
    for name in shared:
        assert NYU13_CLASSES[NYU40_TO_13[NYU40_CLASSES.index(name)] - 1] == name
    assert NYU13_CLASSES[NYU40_TO_13[NYU40_CLASSES.index("cabinet")] - 1] == "furniture"
    assert NYU13_CLASSES[NYU40_TO_13[NYU40_CLASSES.index("otherprop")] - 1] == "objects"


def test_synthetic_default(tmp_path):
    splits, info = load_nyuv2(None, "paper", image_size=(32, 32), target_size=(8, 8), synthetic_sizes=(4, 2))
    assert info["synthetic"] is True and splits["train"]["image"].shape == (4, 32, 32, 3)
    assert any("synthetic" in n for n in info["notes"])


def test_mtan_normals_summing_to_zero_stay_valid(tmp_path):
    """Only an all-zero normal is missing: (1/sqrt2, -1/sqrt2, 0) passes through the reader (and its resizing)
    as a valid unit normal, at native size and under the paper protocol."""
    root = write_mtan(tmp_path, size=(H, W))
    s = np.sqrt(0.5)
    normal = np.tile(np.array([s, -s, 0.0]), (H, W, 1))
    normal[0, :3] = 0  # missing, where the fixture's depth is missing too
    normal[1, 1] = 0  # missing, and the nearest source pixel of the resized map's (0, 0)
    np.save(root / "train/normal/0.npy", normal)
    native = read_mtan_split(root, "train", "mtan", (H, W), (H, W))["normal"][0]
    np.testing.assert_allclose(native, normal, atol=1e-7)
    paper = read_mtan_split(root, "train", "paper", (8, 8), (6, 8))["normal"][0]
    rows = np.floor((np.arange(6) + 0.5) * H / 6).astype(int)
    cols = np.floor((np.arange(8) + 0.5) * W / 8).astype(int)
    valid = np.any(normal != 0, axis=-1)[rows][:, cols]  # nearest source pixel valid
    assert valid.sum() == 6 * 8 - 1
    np.testing.assert_array_equal(np.any(paper != 0, axis=-1), valid)
    np.testing.assert_allclose(paper[valid], np.tile([s, -s, 0.0], (valid.sum(), 1)), atol=1e-6)
