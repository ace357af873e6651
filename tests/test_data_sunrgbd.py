"""SUN RGB-D reorganised layout: list files, label shift, both depth conventions, errors."""

import numpy as np
import pytest
from PIL import Image

from orthojax.data.sunrgbd import decode_depth, load_sunrgbd, read_list_file, read_sunrgbd_split

from _data_fixtures import write_sun

H, W = 6, 8


def test_decode_depth_conventions():
    png = np.array([[0, 8, 12345, 65535]], dtype=np.uint16)
    np.testing.assert_allclose(decode_depth(png, "png10000"), png / 10000, rtol=1e-6)
    expected = [min((((int(v) >> 3) | (int(v) << 13)) & 0xFFFF) / 1000, 10.0) for v in png.ravel()]
    np.testing.assert_allclose(decode_depth(png, "toolbox").ravel(), expected, rtol=1e-6)
    assert decode_depth(png, "toolbox")[0, 1] == pytest.approx(0.001)
    with pytest.raises(ValueError, match="depth_format"):
        decode_depth(png, "mm")


def test_read_split_native_size(tmp_path):
    truth = write_sun(tmp_path, size=(H, W))
    for depth_format in ("png10000", "toolbox"):
        out = read_sunrgbd_split(tmp_path, "train", (H, W), (H, W), depth_format)
        for i in range(2):
            rgb, depth, lab13, lab37 = truth[("train", i)]
            np.testing.assert_allclose(out["image"][i], rgb / 255, atol=1e-6)
            np.testing.assert_array_equal(out["seg13"][i], lab13.astype(int) - 1)
            np.testing.assert_array_equal(out["seg37"][i], lab37.astype(int) - 1)
            np.testing.assert_allclose(out["depth"][i, ..., 0], decode_depth(depth, depth_format))
    assert out["seg13"].dtype == np.int32 and out["depth"].shape == (2, H, W, 1)


def test_load_resized_and_info(tmp_path):
    write_sun(tmp_path, size=(H, W))
    splits, info = load_sunrgbd(tmp_path, image_size=(4, 4), target_size=(3, 4))
    assert splits["train"]["image"].shape == (2, 4, 4, 3) and splits["test"]["seg37"].shape == (1, 3, 4)
    assert info["num_classes"] == {"seg13": 13, "seg37": 37} and info["synthetic"] is False
    assert splits["train"]["seg13"].min() >= -1 and splits["train"]["seg37"].max() <= 36


def test_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_sunrgbd_split(tmp_path / "none", "train")
    truth = write_sun(tmp_path, size=(H, W))
    (tmp_path / "test13.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="test13.txt: empty list file"):
        read_sunrgbd_split(tmp_path, "test")
    (tmp_path / "test13.txt").write_text("a b\n")
    with pytest.raises(ValueError, match="test13.txt:1: expected 3"):
        read_list_file(tmp_path / "test13.txt")
    lines = (tmp_path / "train37.txt").read_text().splitlines()
    (tmp_path / "train37.txt").write_text(lines[0] + "\n")
    with pytest.raises(ValueError, match="train13.txt has 2 lines but .*train37.txt has 1"):
        read_sunrgbd_split(tmp_path, "train")
    write_sun(tmp_path, size=(H, W))
    bad = np.full((H, W), 14, np.uint8)
    Image.fromarray(bad).save(tmp_path / "label13/train/img13labels-000002.png")
    with pytest.raises(ValueError, match="img13labels-000002.png: label values must be in 0..13"):
        read_sunrgbd_split(tmp_path, "train")
    write_sun(tmp_path, size=(H, W))
    (tmp_path / "depth/train/00000001.png").unlink()
    with pytest.raises(FileNotFoundError, match="00000001.png: missing depth"):
        read_sunrgbd_split(tmp_path, "train")
    write_sun(tmp_path, size=(H, W))
    Image.fromarray(np.zeros((H + 1, W), np.uint16)).save(tmp_path / "depth/train/00000001.png")
    with pytest.raises(ValueError, match="00000001.png: expected a single-channel integer depth PNG of size"):
        read_sunrgbd_split(tmp_path, "train")
    assert truth


def test_synthetic_default():
    splits, info = load_sunrgbd(None, image_size=(32, 32), target_size=(8, 8), synthetic_sizes=(3, 2))
    assert info["synthetic"] is True and info["num_classes"] == {"seg13": 13, "seg37": 18}
    assert set(splits["train"]) == {"image", "seg13", "seg37", "depth"}


@pytest.mark.parametrize("depth_format", ["png10000", "toolbox"])
def test_decode_depth_zero_is_the_only_missing_value(depth_format):
    """Depth is missing exactly where gt == 0 (the rule of the losses and metrics): every uint16 PNG value."""
    png = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    depth = decode_depth(png, depth_format)
    np.testing.assert_array_equal(depth != 0, png != 0)
    assert np.all(depth >= 0) and np.all(np.isfinite(depth))
