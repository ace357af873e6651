"""Synthetic scenes: geometric consistency of depth, normals and labels; determinism; label maps."""

import ast
import hashlib
import inspect

import numpy as np
import pytest

from orthojax.data.synthetic import (FINE_CLASSES, FINE_TO_COARSE, NYU13_CLASSES, render_scene, scene_layout,
                                     synthetic_nyuv2, synthetic_scenes, synthetic_sunrgbd)

FLOOR, CEILING, WINDOW = FINE_CLASSES.index("floor"), FINE_CLASSES.index("ceiling"), FINE_CLASSES.index("window")


def backproject(depth, rot, eye, fov_deg=60.0):
    h, w = depth.shape
    f = 0.5 * w / np.tan(np.radians(fov_deg) / 2)
    u = (np.arange(w) + 0.5 - w / 2) / f
    v = (np.arange(h) + 0.5 - h / 2) / f
    cam = np.stack(np.broadcast_arrays(u[None, :], v[:, None], np.ones((h, w))), -1) * depth[..., None]
    return cam, eye + cam @ rot.T  # camera and world points


def test_depth_normals_labels_are_consistent():
    agree, total = 0, 0
    for i in range(3):
        layout = scene_layout(np.random.default_rng(i))
        out = render_scene(layout, (64, 64))
        depth, normal, fine = out["depth"], out["normal"], out["fine"]
        cam, world = backproject(depth, layout["rotation"], layout["eye"])
        floor = (fine == FLOOR) & (depth > 0)
        np.testing.assert_allclose(world[floor][:, 1], 0, atol=1e-3)  # floor points lie on y = 0
        np.testing.assert_allclose(world[fine == CEILING][:, 1], layout["room"][1, 1], atol=1e-3)
        up_in_camera = layout["rotation"].T @ [0, 1, 0]
        np.testing.assert_allclose(normal[floor], np.tile(up_in_camera, (floor.sum(), 1)), atol=1e-5)
        # normals against an independent estimate from depth: cross product of neighbouring 3D points
        dx, dy = cam[1:-1, 2:] - cam[1:-1, :-2], cam[2:, 1:-1] - cam[:-2, 1:-1]
        est = np.cross(dx, dy)
        est /= np.linalg.norm(est, axis=-1, keepdims=True) + 1e-12
        n = normal[1:-1, 1:-1]
        same = np.ones_like(n[..., 0], bool)  # interior of one planar face: identical normals around
        for a, b in ((0, 1), (2, 1), (1, 0), (1, 2)):
            same &= np.all(normal[a:a + 62, b:b + 62] == n, axis=-1)
        same &= depth[1:-1, 1:-1] > 0
        with np.errstate(divide="ignore"):
            inv = 1.0 / depth.astype(np.float64)  # affine in (u, v) on a plane: no second difference
        flat_x = np.abs(inv[1:-1, 2:] - 2 * inv[1:-1, 1:-1] + inv[1:-1, :-2]) < 1e-3 * inv[1:-1, 1:-1]
        flat_y = np.abs(inv[2:, 1:-1] - 2 * inv[1:-1, 1:-1] + inv[:-2, 1:-1]) < 1e-3 * inv[1:-1, 1:-1]
        same &= flat_x & flat_y
        cos = np.abs((est * n).sum(-1))[same]
        agree, total = agree + (cos > 0.99).sum(), total + same.sum()
        valid = depth > 0
        np.testing.assert_array_equal(valid, np.any(normal != 0, axis=-1))
        assert np.all(fine[~valid] == WINDOW)
        np.testing.assert_allclose(np.linalg.norm(normal[valid], axis=-1), 1, atol=1e-5)
        assert np.all((normal[valid] * cam[valid]).sum(-1) < 0)  # facing the camera
    assert total > 5000 and agree / total > 0.99


def test_deterministic_by_seed_and_index():
    a = synthetic_scenes(3, (24, 24), (6, 6), seed=5, split="train")
    b = synthetic_scenes(3, (24, 24), (6, 6), seed=5, split="train", workers=1)
    c = synthetic_scenes(2, (24, 24), (6, 6), seed=6, split="train")
    d = synthetic_scenes(2, (24, 24), (6, 6), seed=5, split="test")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(a["image"][:2], synthetic_scenes(2, (24, 24), (6, 6), seed=5)["image"])
    assert not np.array_equal(a["image"][:2], c["image"]) and not np.array_equal(a["image"][:2], d["image"])


def test_nyuv2_and_sun_views_share_one_scene():
    nyu, info = synthetic_nyuv2(6, 2, (32, 32), (8, 8), seed=1)
    sun, sinfo = synthetic_sunrgbd(6, 2, (32, 32), (8, 8), seed=1)
    mtan, _ = synthetic_nyuv2(6, 2, (32, 32), (8, 8), seed=1, protocol="mtan")
    t = nyu["train"]
    assert t["image"].shape == (6, 32, 32, 3) and t["seg"].shape == (6, 8, 8) and t["normal"].shape == (6, 8, 8, 3)
    assert t["image"].dtype == np.float32 and t["seg"].dtype == np.int32 and t["depth"].shape == (6, 8, 8, 1)
    assert 0 <= t["seg"].min() and t["seg"].max() <= 13 and 0 <= t["image"].min() and t["image"].max() <= 1
    np.testing.assert_array_equal(t["seg"], mtan["train"]["seg"] + 1)
    fine = sun["train"]["seg37"]
    np.testing.assert_array_equal(sun["train"]["seg13"], np.where(fine >= 0, FINE_TO_COARSE[np.maximum(fine, 0)], -1))
    np.testing.assert_array_equal(sun["train"]["seg13"], mtan["train"]["seg"])
    np.testing.assert_array_equal(sun["train"]["depth"], t["depth"])
    assert info["synthetic"] and sinfo["synthetic"] and info["num_classes"]["seg"] == 14
    assert sinfo["num_classes"] == {"seg13": 13, "seg37": len(FINE_CLASSES)}


def test_fine_to_coarse_uses_nyu_names():
    pairs = {FINE_CLASSES[i]: NYU13_CLASSES[c] for i, c in enumerate(FINE_TO_COARSE)}
    assert pairs["door"] == "wall" and pairs["desk"] == "table" and pairs["cabinet"] == "furniture"
    assert set(FINE_TO_COARSE) == set(range(13))


def test_classes_appear_over_many_scenes():
    fine = synthetic_scenes(40, (48, 48), (48, 48), seed=0)["fine"]
    seen = set(np.unique(fine))
    assert {FLOOR, FINE_CLASSES.index("wall")} <= seen and len(seen) >= 14


def test_fine_to_coarse_matches_the_nyu13_names_of_each_fine_class():
    # the 40 -> 13 assignment of these 18 classes, written out by name (Couprie et al. 2013)
    by_name = {"wall": "wall", "floor": "floor", "ceiling": "ceiling", "door": "wall", "window": "window",
               "picture": "picture", "tv": "tv", "cabinet": "furniture", "bookshelf": "furniture", "bed": "bed",
               "pillow": "objects", "chair": "chair", "sofa": "sofa", "table": "table", "desk": "table",
               "books": "books", "box": "objects", "lamp": "objects"}
    assert [NYU13_CLASSES[c] for c in FINE_TO_COARSE] == [by_name[c] for c in FINE_CLASSES]
    assert FINE_TO_COARSE.dtype == np.int32


def test_the_class_vocabulary_belongs_to_the_nyuv2_reader():
    from orthojax.data import nyuv2
    from orthojax.data.synthetic import vocabulary

    assert vocabulary.NYU13_CLASSES is nyuv2.NYU13_CLASSES
    assert set(FINE_CLASSES) <= set(nyuv2.NYU40_CLASSES)
    # the reader imports the generator only inside load_nyuv2 (the generator imports the reader)
    top = [node for node in ast.parse(inspect.getsource(nyuv2)).body if isinstance(node, ast.ImportFrom)]
    assert not any("synthetic" in (node.module or "") for node in top)


def test_unknown_object_template_names_the_known_ones():
    from orthojax.data.synthetic.layout import _template

    with pytest.raises(ValueError, match=r"unknown object template 'piano'.*'bed'"):
        _template("piano", np.random.default_rng(0))


def _digest(tree) -> str:
    """SHA-256 of the keys, dtypes, shapes and bytes of the arrays of a nested dict."""
    h = hashlib.sha256()

    def walk(x, prefix=""):
        if isinstance(x, dict):
            for k in sorted(x):
                walk(x[k], f"{prefix}/{k}")
        else:
            a = np.asarray(x)
            h.update(prefix.encode()), h.update(str(a.dtype).encode()), h.update(str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())

    walk(tree)
    return h.hexdigest()


# Digests of the generator's output recorded on x86-64 Linux (NumPy 2, OpenBLAS). The scenes are a
# pure function of the seed; the float arrays go through np.sin and small matmuls, so another libm
# or BLAS may change their last bits and these digests with them (the label maps would stay).
_DIGESTS = {
    "layout": "93cea28a748dfc8456e9443e3547f88d828c7ba31a7460da3aebceca5f8863c0",
    "render": "3ee2fe254da0f9d51e50d2eedd5f93509408bf07763197f13e800e48eb1a736c",
    "scenes": "b88e044e9fc81782e60a813bbb58030f68afd49f46aba71985e668f8d716a958",
    "nyuv2": "014924c2d146b9356622b2481a4c5d15524aa5744a546ca5c23d2c256f510eea",
    "sunrgbd": "b6fa9fd77f4ff5a6d35f51eb958fd185200855b649a109595673449327308451",
}


def test_generated_data_is_bit_for_bit_the_recorded_data():
    layout = scene_layout(np.random.default_rng(11))
    got = {
        "layout": _digest(layout),
        "render": _digest(render_scene(layout, (30, 40), rng=np.random.default_rng(5))),
        "scenes": _digest(synthetic_scenes(5, (24, 32), (16, 20), 3, "train", workers=1)),
        "nyuv2": _digest(synthetic_nyuv2(4, 3, (24, 24), (12, 12), seed=1, protocol="paper")[0]),
        "sunrgbd": _digest(synthetic_sunrgbd(4, 3, (24, 24), (12, 12), seed=2)[0]),
    }
    assert got == _DIGESTS
