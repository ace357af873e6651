"""NaN or Inf in an NYUv2 image is rejected by the reader, with the file named, like
NaN or Inf in its depth and normals."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _data_fixtures import write_mtan  # noqa: E402

from orthojax.data.nyuv2 import read_mtan_split  # noqa: E402


@pytest.mark.parametrize("key", ["image", "depth", "normal"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_in_an_mtan_item_are_rejected_naming_the_file(tmp_path, key, bad):
    root = write_mtan(tmp_path / "nyu", counts=(2, 1), size=(8, 8))
    path = root / "train" / key / "1.npy"
    array = np.load(path)
    array[2, 3, 0] = bad
    np.save(path, array)
    with pytest.raises(ValueError, match=f"{path}: contains NaN or infinite values"):
        read_mtan_split(root, "train", protocol="mtan")


def test_a_finite_float_image_is_accepted(tmp_path):
    root = write_mtan(tmp_path / "nyu", counts=(2, 1), size=(8, 8))
    split = read_mtan_split(root, "train", protocol="mtan")
    assert np.all(np.isfinite(split["image"])) and split["image"].shape[0] == 2
