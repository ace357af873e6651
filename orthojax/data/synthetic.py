"""Procedural indoor scenes: the default data of the NYUv2 and SUN RGB-D experiments.

A room (floor, walls, ceiling) furnished with axis-aligned boxes (beds, tables
with legs, chairs, sofas, cabinets, shelves, books, lamps, doors, windows,
pictures, TVs and unlabelled clutter) is ray-cast from a pinhole camera
(horizontal field of view 60 degrees, square pixels). Every target comes from
the same ray hit, so they are geometrically consistent:

* ``depth``: camera z-distance in metres; 0 (invalid) on window glass, as with
  a Kinect;
* ``normal``: unit surface normal in the camera frame (x right, y down,
  z forward), facing the camera; all-zero (missing, the rule of the losses and
  metrics) exactly where depth is invalid;
* fine labels: the 18 :data:`FINE_CLASSES` (NYU40 names; -1 = unlabelled clutter);
* coarse labels: the NYU 13 classes via the official 40 -> 13 mapping.

``image`` is RGB in [0, 1] with per-class colours, per-instance jitter,
procedural textures (planks, tiles, grain, noise) and Lambertian shading from a
ceiling light. Scene ``i`` of a split depends only on (seed, split, i).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from orthojax.data.resize import crop_resize_bilinear, crop_resize_nearest

NYU13_CLASSES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects",
                 "picture", "sofa", "table", "tv", "wall", "window")
FINE_CLASSES = ("wall", "floor", "ceiling", "door", "window", "picture", "tv", "cabinet", "bookshelf",
                "bed", "pillow", "chair", "sofa", "table", "desk", "books", "box", "lamp")
_FINE_TO_13 = {"wall": "wall", "floor": "floor", "ceiling": "ceiling", "door": "wall", "window": "window",
               "picture": "picture", "tv": "tv", "cabinet": "furniture", "bookshelf": "furniture", "bed": "bed",
               "pillow": "objects", "chair": "chair", "sofa": "sofa", "table": "table", "desk": "table",
               "books": "books", "box": "objects", "lamp": "objects"}
FINE_TO_COARSE = np.array([NYU13_CLASSES.index(_FINE_TO_13[c]) for c in FINE_CLASSES], dtype=np.int32)
"""Fine class index -> NYU 13-class index (0..12)."""

_F = {name: i for i, name in enumerate(FINE_CLASSES)}
VOID = -1
_SPLIT_IDS = {"train": 1, "val": 2, "test": 3}
_COLORS = {
    "wall": (0.78, 0.74, 0.68), "floor": (0.55, 0.40, 0.26), "ceiling": (0.92, 0.92, 0.90),
    "door": (0.50, 0.33, 0.20), "window": (0.70, 0.85, 1.00), "picture": (0.60, 0.30, 0.30),
    "tv": (0.08, 0.08, 0.10), "cabinet": (0.62, 0.48, 0.32), "bookshelf": (0.45, 0.30, 0.18),
    "bed": (0.75, 0.75, 0.85), "pillow": (0.95, 0.93, 0.85), "chair": (0.35, 0.22, 0.15),
    "sofa": (0.30, 0.40, 0.55), "table": (0.58, 0.42, 0.25), "desk": (0.40, 0.40, 0.42),
    "books": (0.70, 0.20, 0.20), "box": (0.72, 0.58, 0.38), "lamp": (0.90, 0.85, 0.60),
}
_CLUTTER_COLOR = (0.5, 0.5, 0.5)
_WINDOW_COLOR = (0.75, 0.88, 1.0)
_EYE3 = np.eye(3, dtype=np.float32)
_STRIPED = np.isin(np.arange(-1, len(FINE_CLASSES)), [_F[c] for c in ("picture", "sofa", "bed", "books")])


# ----------------------------------------------------------------------------- scene layout
def _rot(box: np.ndarray, k: int) -> np.ndarray:
    """Rotate a local (2, 3) min/max box by k quarter turns about the vertical axis."""
    corners = np.array([[x, z] for x in box[:, 0] for z in box[:, 2]])
    x, z = corners[:, 0], corners[:, 1]
    xz = {0: (x, z), 1: (z, -x), 2: (-x, -z), 3: (-z, x)}[k % 4]
    return np.array([[xz[0].min(), box[0, 1], xz[1].min()], [xz[0].max(), box[1, 1], xz[1].max()]])


def _template(name: str, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """Parts of an object in a local frame: x centred, y from 0 up, back at z = +depth/2."""
    u = rng.uniform

    def part(label, x0, x1, y0, y1, z0, z1):
        return (label, np.array([[x0, y0, z0], [x1, y1, z1]], dtype=np.float64))

    if name == "bed":
        w, d = u(1.3, 1.8), u(1.9, 2.1)
        parts = [part(_F["bed"], -w / 2, w / 2, 0, 0.5, -d / 2, d / 2),
                 part(_F["bed"], -w / 2, w / 2, 0, u(0.9, 1.2), d / 2 - 0.08, d / 2)]
        for s in (-1, 1):
            parts.append(part(_F["pillow"], s * w / 4 - 0.25, s * w / 4 + 0.25, 0.5, 0.64, d / 2 - 0.45, d / 2 - 0.1))
        return parts
    if name in ("table", "desk"):
        w, d, h = u(0.9, 1.6), u(0.6, 0.9), u(0.70, 0.76)
        parts = [part(_F[name], -w / 2, w / 2, h - 0.04, h, -d / 2, d / 2)]
        for sx in (-1, 1):
            if name == "desk":
                parts.append(part(_F[name], sx * w / 2 - 0.03 * (sx + 1), sx * w / 2 + 0.03 * (1 - sx), 0, h - 0.04, -d / 2, d / 2))
            else:
                for sz in (-1, 1):
                    cx, cz = sx * (w / 2 - 0.06), sz * (d / 2 - 0.06)
                    parts.append(part(_F[name], cx - 0.025, cx + 0.025, 0, h - 0.04, cz - 0.025, cz + 0.025))
        if rng.random() < 0.6:
            n = int(rng.integers(2, 6))
            x = u(-w / 2 + 0.1, w / 2 - 0.4)
            for _ in range(n):
                t = u(0.03, 0.06)
                parts.append(part(_F["books"], x, x + t, h, h + u(0.15, 0.25), -0.1, 0.1))
                x += t + 0.005
        if rng.random() < 0.4:
            s = u(0.15, 0.3)
            parts.append(part(_F["box"], w / 2 - 0.05 - s, w / 2 - 0.05, h, h + s, -d / 4, -d / 4 + s))
        return parts
    if name == "chair":
        s, h = u(0.42, 0.5), u(0.43, 0.48)
        parts = [part(_F["chair"], -s / 2, s / 2, h - 0.05, h, -s / 2, s / 2),
                 part(_F["chair"], -s / 2, s / 2, h, h + u(0.4, 0.5), s / 2 - 0.05, s / 2)]
        for sx in (-1, 1):
            for sz in (-1, 1):
                cx, cz = sx * (s / 2 - 0.03), sz * (s / 2 - 0.03)
                parts.append(part(_F["chair"], cx - 0.02, cx + 0.02, 0, h - 0.05, cz - 0.02, cz + 0.02))
        return parts
    if name == "sofa":
        w, d = u(1.5, 2.2), u(0.8, 0.95)
        return [part(_F["sofa"], -w / 2, w / 2, 0, 0.42, -d / 2, d / 2),
                part(_F["sofa"], -w / 2, w / 2, 0.42, 0.85, d / 2 - 0.2, d / 2),
                part(_F["sofa"], -w / 2, -w / 2 + 0.2, 0.42, 0.62, -d / 2, d / 2),
                part(_F["sofa"], w / 2 - 0.2, w / 2, 0.42, 0.62, -d / 2, d / 2)]
    if name == "cabinet":
        w, h, d = u(0.5, 1.3), u(0.6, 1.0), u(0.4, 0.6)
        parts = [part(_F["cabinet"], -w / 2, w / 2, 0, h, -d / 2, d / 2)]
        if rng.random() < 0.5:
            tw = min(w - 0.05, u(0.6, 1.0))
            parts.append(part(_F["tv"], -tw / 2, tw / 2, h, h + tw * 0.58, 0.0, 0.06))
        return parts
    if name == "bookshelf":
        w, h, d = u(0.8, 1.2), u(1.5, 2.0), 0.35
        parts = [part(_F["bookshelf"], -w / 2, w / 2, 0, h, -d / 2 + 0.02, d / 2)]
        for shelf_y in np.arange(0.3, h - 0.3, 0.4):
            x = -w / 2 + 0.05
            while x < w / 2 - 0.12:
                t = u(0.03, 0.07)
                parts.append(part(_F["books"], x, x + t, shelf_y, shelf_y + u(0.18, 0.3), -d / 2, -d / 2 + 0.02))
                x += t + u(0.0, 0.08)
        return parts
    if name == "box":
        s = u(0.2, 0.5)
        return [part(_F["box"], -s / 2, s / 2, 0, s * u(0.6, 1.2), -s / 2, s / 2)]
    if name == "lamp":
        h = u(1.2, 1.6)
        return [part(_F["lamp"], -0.02, 0.02, 0, h, -0.02, 0.02),
                part(_F["lamp"], -0.18, 0.18, h, h + 0.3, -0.18, 0.18)]
    if name == "clutter":
        a, b, c = u(0.1, 0.7, size=3)
        return [part(VOID, -a / 2, a / 2, 0, b, -c / 2, c / 2)]
    if name in ("window", "picture", "door", "wall_tv"):
        w, y0, h = {"window": (u(0.8, 1.6), u(0.8, 1.1), u(0.9, 1.3)), "picture": (u(0.3, 1.0), u(1.2, 1.5), u(0.3, 0.7)),
                    "door": (u(0.8, 0.95), 0.0, u(1.95, 2.1)), "wall_tv": (u(0.8, 1.3), u(1.0, 1.3), 0.0)}[name]
        h = h if name != "wall_tv" else w * 0.58
        label = _F["tv"] if name == "wall_tv" else _F[name]
        return [part(label, -w / 2, w / 2, y0, y0 + h, 0.5 - 0.04, 0.5)]
    raise ValueError(f"unknown object template {name!r}")


_WALL_OBJECTS = ("bed", "cabinet", "bookshelf", "desk", "sofa")
_FREE_OBJECTS = ("table", "chair", "chair", "box", "lamp", "clutter", "sofa", "table")
_WALL_ITEMS = ("window", "picture", "door", "wall_tv", "picture", "window")


def scene_layout(rng: np.random.Generator) -> dict:
    """Random room, camera and furniture.

    Returns:
      dict with ``room`` (2, 3) min/max, ``eye`` (3,), ``rotation`` (3, 3)
      (columns: camera x right, y down, z forward in world coordinates, y up),
      ``boxes`` (B, 2, 3), ``labels`` (B,) fine ids (-1 void), ``colors`` (B, 3).
    """
    width, depth, height = rng.uniform(3.0, 6.0), rng.uniform(3.5, 7.0), rng.uniform(2.5, 3.0)
    room = np.array([[-width / 2, 0.0, 0.0], [width / 2, height, depth]])
    eye = np.array([rng.uniform(-width / 6, width / 6), rng.uniform(1.1, 1.6), rng.uniform(0.2, 0.6)])
    yaw, pitch = math.radians(rng.uniform(-35, 35)), math.radians(rng.uniform(-25, 0))
    fw = np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
    right = np.cross([0.0, 1.0, 0.0], fw)
    right /= np.linalg.norm(right)
    down = np.cross(right, fw)
    rotation = np.stack([right, down, fw], axis=1)

    walls = {0: ("z", room[1, 2]), 1: ("x", room[1, 0]), 3: ("x", room[0, 0])}  # k -> wall facing the room
    boxes, labels, colors = [], [], []

    def place(name: str, k: int | None) -> None:
        parts = _template(name, rng)
        local = np.stack([p[1] for p in parts])
        lo, hi = local[:, 0].min(0), local[:, 1].max(0)
        if k is None:  # free-standing, in front of the camera
            k = int(rng.integers(4))
            ext = _rot(np.stack([lo, hi]), k)
            tx = rng.uniform(room[0, 0] - ext[0, 0] + 0.05, max(room[0, 0] - ext[0, 0] + 0.05, room[1, 0] - ext[1, 0] - 0.05))
            tz = rng.uniform(eye[2] + 1.0 - ext[0, 2], max(eye[2] + 1.0 - ext[0, 2], room[1, 2] - ext[1, 2] - 0.05))
        else:  # back against wall k
            ext = _rot(np.stack([lo, hi]), k)
            axis, pos = walls[k]
            if axis == "z":
                tz = pos - ext[1, 2]
                tx = rng.uniform(room[0, 0] - ext[0, 0], max(room[0, 0] - ext[0, 0], room[1, 0] - ext[1, 0]))
            else:
                tx = pos - (ext[1, 0] if pos > 0 else ext[0, 0])
                tz = rng.uniform(eye[2] + 1.0 - ext[0, 2], max(eye[2] + 1.0 - ext[0, 2], room[1, 2] - ext[1, 2]))
        base = np.array(_COLORS[FINE_CLASSES[parts[0][0]]] if parts[0][0] >= 0 else _CLUTTER_COLOR)
        tint = np.clip(base * rng.uniform(0.75, 1.2) + rng.normal(0, 0.06, 3), 0.02, 1.0)
        if name == "clutter":
            tint = rng.uniform(0.1, 0.9, 3)
        for label, box in parts:
            world = _rot(box, k) + np.array([tx, 0.0, tz])
            boxes.append(world)
            labels.append(label)
            own = np.array(_COLORS[FINE_CLASSES[label]]) if label >= 0 else tint
            colors.append(tint if label == parts[0][0] else np.clip(own * rng.uniform(0.7, 1.2, 3), 0, 1))

    for _ in range(int(rng.integers(2, 5))):
        place(str(rng.choice(_WALL_ITEMS)), int(rng.choice([0, 1, 3])))
    for _ in range(int(rng.integers(1, 4))):
        place(str(rng.choice(_WALL_OBJECTS)), int(rng.choice([0, 1, 3])))
    for _ in range(int(rng.integers(1, 5))):
        place(str(rng.choice(_FREE_OBJECTS)), None)
    return {"room": room, "eye": eye, "rotation": rotation, "boxes": np.array(boxes).reshape(-1, 2, 3),
            "labels": np.array(labels, dtype=np.int32), "colors": np.array(colors).reshape(-1, 3),
            "wall_color": np.clip(np.array(_COLORS["wall"]) * rng.uniform(0.8, 1.15, 3), 0, 1),
            "floor_color": np.clip(np.array(_COLORS["floor"]) * rng.uniform(0.7, 1.3, 3), 0, 1),
            "light": np.array([rng.uniform(-1, 1), height - 0.05, rng.uniform(1.0, depth - 0.5)])}


# ----------------------------------------------------------------------------- ray casting
def _hash(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pseudo-random value in [0, 1) per integer lattice cell (a, b)."""
    v = np.sin(a * np.float32(12.9898) + b * np.float32(78.233)) * np.float32(43758.5453)
    return v - np.floor(v)


def render_scene(layout: dict, image_size: Sequence[int], fov_deg: float = 60.0,
                 rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Ray-cast one layout.

    Args:
      layout: from :func:`scene_layout`.
      image_size: (H, W).
      fov_deg: horizontal field of view.
      rng: for sensor noise in the RGB image (none if None).

    Returns:
      ``image`` float32 (H, W, 3) in [0, 1], ``depth`` float32 (H, W) metres (0 invalid),
      ``normal`` float32 (H, W, 3) camera frame (0 invalid), ``fine`` int32 (H, W) (-1 void).
    """
    h, w = int(image_size[0]), int(image_size[1])
    f = 0.5 * w / math.tan(math.radians(fov_deg) / 2)
    u = (np.arange(w, dtype=np.float32) + 0.5 - w / 2) / f
    v = (np.arange(h, dtype=np.float32) + 0.5 - h / 2) / f
    rot = layout["rotation"].astype(np.float32)
    eye = layout["eye"].astype(np.float32)
    # world ray direction with camera-z component 1, so the ray parameter is the z-depth
    dirs = u[None, :, None] * rot[:, 0] + v[:, None, None] * rot[:, 1] + rot[:, 2]
    dirs = np.where(np.abs(dirs) < 1e-7, np.float32(1e-7), dirs)
    inv = (1.0 / dirs).astype(np.float32)

    room = layout["room"].astype(np.float32)
    t_far = np.maximum((room[0] - eye) * inv, (room[1] - eye) * inv)
    axis = np.argmin(t_far, axis=-1)
    t = np.take_along_axis(t_far, axis[..., None], -1)[..., 0]
    going_up = dirs[..., 1] > 0
    fine = np.where(axis == 1, np.where(going_up, _F["ceiling"], _F["floor"]), _F["wall"]).astype(np.int32)
    inst = np.full((h, w), -1, dtype=np.int32)  # -1 room, else box index
    sign = -np.sign(np.take_along_axis(dirs, axis[..., None], -1)[..., 0]).astype(np.float32)

    for b, (box, label) in enumerate(zip(layout["boxes"].astype(np.float32), layout["labels"])):
        corners = np.array([[box[i, 0], box[j, 1], box[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
        cam = (corners - eye) @ rot
        if np.all(cam[:, 2] > 1e-3):
            px, py = f * cam[:, 0] / cam[:, 2] + w / 2, f * cam[:, 1] / cam[:, 2] + h / 2
            c0, c1 = max(int(np.floor(px.min())) - 1, 0), min(int(np.ceil(px.max())) + 1, w)
            r0, r1 = max(int(np.floor(py.min())) - 1, 0), min(int(np.ceil(py.max())) + 1, h)
            if c0 >= c1 or r0 >= r1:
                continue
        elif np.all(cam[:, 2] <= 1e-3):
            continue
        else:
            r0, r1, c0, c1 = 0, h, 0, w
        sub_inv = inv[r0:r1, c0:c1]
        ta, tb = (box[0] - eye) * sub_inv, (box[1] - eye) * sub_inv
        t_near = np.minimum(ta, tb)
        t_in = t_near.max(axis=-1)
        t_out = np.maximum(ta, tb).min(axis=-1)
        hit = (t_in <= t_out) & (t_in > 1e-3) & (t_in < t[r0:r1, c0:c1])
        if not hit.any():
            continue
        enter_axis = np.argmax(t_near[hit], axis=-1)
        d_hit = dirs[r0:r1, c0:c1][hit]
        t[r0:r1, c0:c1][hit] = t_in[hit]
        axis[r0:r1, c0:c1][hit] = enter_axis
        fine[r0:r1, c0:c1][hit] = label
        inst[r0:r1, c0:c1][hit] = b
        sign[r0:r1, c0:c1][hit] = -np.sign(d_hit[np.arange(len(d_hit)), enter_axis])

    normal_world = _EYE3[axis] * sign[..., None]
    normal = normal_world @ rot  # camera frame: n_cam = R^T n_world
    point = eye + t[..., None] * dirs

    # albedo: per instance colour times a procedural texture in the surface's own coordinates
    room_px = inst < 0
    colors = np.concatenate([layout["colors"], [layout["wall_color"]], [layout["floor_color"]],
                             [_COLORS["ceiling"]], [_WINDOW_COLOR]]).astype(np.float32)
    nb = len(layout["colors"])
    slot = np.where(room_px, nb + np.where(fine == _F["floor"], 1, np.where(fine == _F["ceiling"], 2, 0)), inst)
    slot = np.where(fine == _F["window"], nb + 3, slot)
    albedo = colors[slot]
    uv_a = np.where(axis == 0, point[..., 2], point[..., 0])
    uv_b = np.where(axis == 1, point[..., 2], point[..., 1])
    texture = np.float32(0.9) + np.float32(0.1) * _hash(np.floor(uv_a * 40), np.floor(uv_b * 40))
    floor_px = room_px & (fine == _F["floor"])
    if layout["floor_color"][0] > 0.5:  # tiles
        pattern = np.where(((np.floor(uv_a * 2) + np.floor(uv_b * 2)) % 2) == 0, np.float32(1.0), np.float32(0.9))
    else:  # planks
        pattern = np.float32(0.85) + np.float32(0.15) * _hash(np.floor(uv_a / np.float32(0.18)), np.float32(3.0))
    texture = np.where(floor_px, texture * pattern, texture)
    striped = _STRIPED[fine + 1]
    stripes = np.float32(0.85) + np.float32(0.15) * np.sin(uv_a * 25 + 3 * np.sin(uv_b * 7))
    texture = np.where(striped, texture * stripes, texture)
    # shading: ambient + point light with fall-off (no shadows); windows look lit from outside
    to_light = layout["light"].astype(np.float32) - point
    dist2 = (to_light * to_light).sum(-1)
    lambert = np.maximum((normal_world * to_light).sum(-1), 0) / np.sqrt(dist2)
    shade = np.float32(0.35) + np.float32(0.9) * lambert / (1 + np.float32(0.08) * dist2)
    window = fine == _F["window"]
    shade = np.where(window, np.float32(1.0), shade)
    image = albedo * (texture * shade)[..., None]
    if rng is not None:
        image += np.float32(0.03) * (rng.random(image.shape, dtype=np.float32) - np.float32(0.5))
    depth = np.where(window, np.float32(0), t)
    normal = np.where(window[..., None], np.float32(0), normal)
    return {"image": np.clip(image, 0, 1, out=image), "depth": depth, "normal": normal, "fine": fine}


# ----------------------------------------------------------------------------- datasets
def render_example(seed: int, split: str, index: int, image_size: Sequence[int],
                   target_size: Sequence[int]) -> dict[str, np.ndarray]:
    """Scene ``index`` of ``split``: image at ``image_size``, targets nearest-resized to ``target_size``.

    Returns:
      ``image`` (H, W, 3), ``fine`` int32 (h, w), ``depth`` (h, w, 1), ``normal`` (h, w, 3).
    """
    rng = np.random.default_rng([int(seed), _SPLIT_IDS[split], int(index), 0x5CE7E])
    hs, ws = (int(s) for s in image_size)
    ht, wt = (int(s) for s in target_size)
    render_hw = (max(hs, ht), max(ws, wt))
    scene = render_scene(scene_layout(rng), render_hw, rng=rng)
    image = scene["image"] if render_hw == (hs, ws) else crop_resize_bilinear(scene["image"], (hs, ws))
    targets = {k: scene[k] if render_hw == (ht, wt) else crop_resize_nearest(scene[k], (ht, wt))
               for k in ("fine", "depth", "normal")}
    return {"image": image, "fine": targets["fine"], "depth": targets["depth"][..., None], "normal": targets["normal"]}


def synthetic_scenes(num: int, image_size: Sequence[int], target_size: Sequence[int], seed: int,
                     split: str = "train", workers: int | None = None) -> dict[str, np.ndarray]:
    """Render scenes 0..num-1 of ``split`` (see :func:`render_example`), stacked.

    Args:
      workers: rendering threads (default: the number of CPUs; NumPy releases the GIL).
        The result does not depend on it.

    Returns:
      ``image`` float32 (N, H, W, 3), ``fine`` int32 (N, h, w), ``depth`` float32 (N, h, w, 1),
      ``normal`` float32 (N, h, w, 3).
    """
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    hs, ws = (int(s) for s in image_size)
    ht, wt = (int(s) for s in target_size)
    if min(hs, ws, ht, wt) <= 0:
        raise ValueError(f"image_size and target_size must be positive, got {image_size}, {target_size}")
    out = {"image": np.zeros((num, hs, ws, 3), np.float32), "fine": np.zeros((num, ht, wt), np.int32),
           "depth": np.zeros((num, ht, wt, 1), np.float32), "normal": np.zeros((num, ht, wt, 3), np.float32)}

    def fill(i: int) -> None:
        example = render_example(seed, split, i, image_size, target_size)
        for key, value in example.items():
            out[key][i] = value

    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers > 1 and num > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(fill, range(num)))
    else:
        for i in range(num):
            fill(i)
    return out


def _info(name: str, protocol: str, tasks: dict[str, tuple[str, ...]], image_size, target_size, sizes) -> dict:
    void = "class 0 'background'" if protocol == "paper" and name == "nyuv2" else "-1, ignored"
    return {
        "name": name, "protocol": protocol, "source": "synthetic", "synthetic": True, "void": void,
        "tasks": list(tasks) + ["depth"] + (["normal"] if name == "nyuv2" else []),
        "num_classes": {k: len(v) for k, v in tasks.items()},
        "class_names": {k: list(v) for k, v in tasks.items()},
        "image_size": [int(s) for s in image_size], "target_size": [int(s) for s in target_size],
        "split_sizes": dict(sizes),
        "notes": ["synthetic data: procedural indoor scenes (orthojax.data.synthetic), not the real dataset"],
    }


def synthetic_nyuv2(num_train: int = 795, num_test: int = 654, image_size: Sequence[int] = (320, 320),
                    target_size: Sequence[int] = (80, 80), seed: int = 0,
                    protocol: str = "paper") -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """NYUv2-style synthetic splits.

    Args:
      num_train, num_test: scenes per split.
      image_size, target_size: (H, W) of the input and of the targets.
      seed: scene i of a split depends only on (seed, split, i).
      protocol: "paper" (14 classes, void -> 0 "background", the 13 classes -> 1..13)
        or "mtan" (13 classes 0..12, void -> -1 ignored).

    Returns:
      (splits, info): ``{"train", "test"}`` each with ``image`` float32 (N, H, W, 3),
      ``seg`` int32 (N, h, w), ``depth`` float32 (N, h, w, 1), ``normal`` float32 (N, h, w, 3);
      info is the metadata record (``synthetic`` True).
    """
    if protocol not in ("paper", "mtan"):
        raise ValueError(f"protocol must be 'paper' or 'mtan', got {protocol!r}")
    splits = {}
    for split, n in (("train", num_train), ("test", num_test)):
        raw = synthetic_scenes(n, image_size, target_size, seed, split)
        coarse = np.where(raw["fine"] >= 0, FINE_TO_COARSE[np.maximum(raw["fine"], 0)], -1)
        seg = coarse + 1 if protocol == "paper" else coarse
        splits[split] = {"image": raw["image"], "seg": seg.astype(np.int32), "depth": raw["depth"], "normal": raw["normal"]}
    names = (("background",) + NYU13_CLASSES) if protocol == "paper" else NYU13_CLASSES
    info = _info("nyuv2", protocol, {"seg": names}, image_size, target_size, {"train": num_train, "test": num_test})
    return splits, info


def synthetic_sunrgbd(num_train: int = 795, num_test: int = 654, image_size: Sequence[int] = (320, 320),
                      target_size: Sequence[int] = (80, 80),
                      seed: int = 0) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """SUN RGB-D-style synthetic splits with two correlated segmentation tasks.

    ``seg37`` holds the 18 fine classes (:data:`FINE_CLASSES`, NYU40 names, as
    the real 37 classes are NYU40 ids 1..37) and ``seg13`` the 13 NYU classes
    obtained from them by the 40 -> 13 mapping; both use -1 = ignore.

    Returns:
      (splits, info): ``{"train", "test"}`` each with ``image`` float32 (N, H, W, 3),
      ``seg13`` int32 (N, h, w), ``seg37`` int32 (N, h, w), ``depth`` float32 (N, h, w, 1).
    """
    splits = {}
    for split, n in (("train", num_train), ("test", num_test)):
        raw = synthetic_scenes(n, image_size, target_size, seed, split)
        coarse = np.where(raw["fine"] >= 0, FINE_TO_COARSE[np.maximum(raw["fine"], 0)], -1)
        splits[split] = {"image": raw["image"], "seg13": coarse.astype(np.int32), "seg37": raw["fine"],
                         "depth": raw["depth"]}
    info = _info("sunrgbd", "paper", {"seg13": NYU13_CLASSES, "seg37": FINE_CLASSES}, image_size, target_size,
                 {"train": num_train, "test": num_test})
    return splits, info
