"""Synthetic scenes: geometric consistency of depth, normals and labels; determinism; label maps."""

import numpy as np

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
