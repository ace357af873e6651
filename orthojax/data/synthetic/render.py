"""Ray casting a layout from a pinhole camera into image, depth, surface normals and labels.

The camera has square pixels and a horizontal field of view ``fov_deg``; the ray through pixel
(r, c) has direction R [u_c, v_r, 1] with u_c = (c + 1/2 - W/2) / f, v_r = (r + 1/2 - H/2) / f and
f = (W/2) / tan(fov/2), so its ray parameter is the camera z-distance. Each ray hits the first of the
room's six planes and the layout's axis-aligned boxes (the slab method), and every target is read
from that one hit, so depth, normals and labels are geometrically consistent:

* depth: the z-distance in metres, 0 (invalid) on window glass, as a Kinect sees it;
* normal: the unit normal of the face hit, in the camera frame (x right, y down, z forward), facing
  the camera; all-zero (missing) exactly where depth is invalid;
* fine labels: the hit's fine id (-1 on clutter);
* image: RGB in [0, 1], the instance colour times a procedural texture (planks or tiles on the floor,
  stripes on pictures, sofas, beds and books, fine grain everywhere) times Lambertian shading from a
  point light with fall-off (no shadows), plus optional sensor noise.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from orthojax.data.synthetic.vocabulary import CLASS_COLORS, FINE_CLASSES, FINE_ID

__all__ = ["render_scene"]

_WINDOW_COLOR = (0.75, 0.88, 1.0)
_EYE3 = np.eye(3, dtype=np.float32)
_STRIPED = np.isin(np.arange(-1, len(FINE_CLASSES)), [FINE_ID[c] for c in ("picture", "sofa", "bed", "books")])


def _hash(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pseudo-random value in [0, 1) per integer lattice cell (a, b)."""
    v = np.sin(a * np.float32(12.9898) + b * np.float32(78.233)) * np.float32(43758.5453)
    return v - np.floor(v)


def _camera_rays(rot: np.ndarray, h: int, w: int, f: float) -> tuple[np.ndarray, np.ndarray]:
    """World ray directions (H, W, 3) with camera-z component 1, and their elementwise inverses."""
    u = (np.arange(w, dtype=np.float32) + 0.5 - w / 2) / f
    v = (np.arange(h, dtype=np.float32) + 0.5 - h / 2) / f
    dirs = u[None, :, None] * rot[:, 0] + v[:, None, None] * rot[:, 1] + rot[:, 2]
    dirs = np.where(np.abs(dirs) < 1e-7, np.float32(1e-7), dirs)
    return dirs, (1.0 / dirs).astype(np.float32)


def _cast_room(room: np.ndarray, eye: np.ndarray, dirs: np.ndarray, inv: np.ndarray) -> dict[str, np.ndarray]:
    """The room's planes seen from inside: ray parameter ``t``, hit ``axis``, ``fine`` label, ``inst``
    (-1 = room) and ``sign`` of the normal along the axis, all (H, W)."""
    t_far = np.maximum((room[0] - eye) * inv, (room[1] - eye) * inv)
    axis = np.argmin(t_far, axis=-1)
    t = np.take_along_axis(t_far, axis[..., None], -1)[..., 0]
    going_up = dirs[..., 1] > 0
    fine = np.where(axis == 1, np.where(going_up, FINE_ID["ceiling"], FINE_ID["floor"]), FINE_ID["wall"])
    return {"t": t, "axis": axis, "fine": fine.astype(np.int32), "inst": np.full(t.shape, -1, dtype=np.int32),
            "sign": -np.sign(np.take_along_axis(dirs, axis[..., None], -1)[..., 0]).astype(np.float32)}


def _screen_rect(box: np.ndarray, eye: np.ndarray, rot: np.ndarray, f: float, h: int,
                 w: int) -> tuple[int, int, int, int] | None:
    """Pixel rows [r0, r1) and columns [c0, c1) that can see ``box`` (None: behind the camera or off
    screen); the whole image when the box straddles the camera plane."""
    corners = np.array([[box[i, 0], box[j, 1], box[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    cam = (corners - eye) @ rot
    if np.all(cam[:, 2] <= 1e-3):
        return None
    if not np.all(cam[:, 2] > 1e-3):
        return 0, h, 0, w
    px, py = f * cam[:, 0] / cam[:, 2] + w / 2, f * cam[:, 1] / cam[:, 2] + h / 2
    c0, c1 = max(int(np.floor(px.min())) - 1, 0), min(int(np.ceil(px.max())) + 1, w)
    r0, r1 = max(int(np.floor(py.min())) - 1, 0), min(int(np.ceil(py.max())) + 1, h)
    if c0 >= c1 or r0 >= r1:
        return None
    return r0, r1, c0, c1


def _cast_boxes(hits: dict[str, np.ndarray], boxes: np.ndarray, labels: np.ndarray, eye: np.ndarray,
                rot: np.ndarray, dirs: np.ndarray, inv: np.ndarray, f: float) -> None:
    """Updates ``hits`` (from :func:`_cast_room`) in place where a box is hit before what was hit so far."""
    h, w = hits["t"].shape
    for b, (box, label) in enumerate(zip(boxes, labels)):
        rect = _screen_rect(box, eye, rot, f, h, w)
        if rect is None:
            continue
        r0, r1, c0, c1 = rect
        sub_inv = inv[r0:r1, c0:c1]
        ta, tb = (box[0] - eye) * sub_inv, (box[1] - eye) * sub_inv
        t_near = np.minimum(ta, tb)
        t_in = t_near.max(axis=-1)
        t_out = np.maximum(ta, tb).min(axis=-1)
        hit = (t_in <= t_out) & (t_in > 1e-3) & (t_in < hits["t"][r0:r1, c0:c1])
        if not hit.any():
            continue
        enter_axis = np.argmax(t_near[hit], axis=-1)
        d_hit = dirs[r0:r1, c0:c1][hit]
        hits["t"][r0:r1, c0:c1][hit] = t_in[hit]
        hits["axis"][r0:r1, c0:c1][hit] = enter_axis
        hits["fine"][r0:r1, c0:c1][hit] = label
        hits["inst"][r0:r1, c0:c1][hit] = b
        hits["sign"][r0:r1, c0:c1][hit] = -np.sign(d_hit[np.arange(len(d_hit)), enter_axis])


def _albedo_and_texture(layout: dict, hits: dict[str, np.ndarray], point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel instance colour (H, W, 3) and procedural texture factor (H, W), the texture in the
    surface's own coordinates (planks or tiles on the floor, stripes on some classes, fine grain)."""
    fine, axis, inst = hits["fine"], hits["axis"], hits["inst"]
    room_px = inst < 0
    colors = np.concatenate([layout["colors"], [layout["wall_color"]], [layout["floor_color"]],
                             [CLASS_COLORS["ceiling"]], [_WINDOW_COLOR]]).astype(np.float32)
    nb = len(layout["colors"])
    slot = np.where(room_px, nb + np.where(fine == FINE_ID["floor"], 1, np.where(fine == FINE_ID["ceiling"], 2, 0)), inst)
    slot = np.where(fine == FINE_ID["window"], nb + 3, slot)
    albedo = colors[slot]
    uv_a = np.where(axis == 0, point[..., 2], point[..., 0])
    uv_b = np.where(axis == 1, point[..., 2], point[..., 1])
    texture = np.float32(0.9) + np.float32(0.1) * _hash(np.floor(uv_a * 40), np.floor(uv_b * 40))
    floor_px = room_px & (fine == FINE_ID["floor"])
    if layout["floor_color"][0] > 0.5:  # tiles
        pattern = np.where(((np.floor(uv_a * 2) + np.floor(uv_b * 2)) % 2) == 0, np.float32(1.0), np.float32(0.9))
    else:  # planks
        pattern = np.float32(0.85) + np.float32(0.15) * _hash(np.floor(uv_a / np.float32(0.18)), np.float32(3.0))
    texture = np.where(floor_px, texture * pattern, texture)
    striped = _STRIPED[fine + 1]
    stripes = np.float32(0.85) + np.float32(0.15) * np.sin(uv_a * 25 + 3 * np.sin(uv_b * 7))
    return albedo, np.where(striped, texture * stripes, texture)


def _shading(layout: dict, normal_world: np.ndarray, point: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Ambient plus a point light with fall-off (no shadows), (H, W); windows look lit from outside."""
    to_light = layout["light"].astype(np.float32) - point
    dist2 = (to_light * to_light).sum(-1)
    lambert = np.maximum((normal_world * to_light).sum(-1), 0) / np.sqrt(dist2)
    shade = np.float32(0.35) + np.float32(0.9) * lambert / (1 + np.float32(0.08) * dist2)
    return np.where(window, np.float32(1.0), shade)


def render_scene(layout: dict, image_size: Sequence[int], fov_deg: float = 60.0,
                 rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Ray-cast one layout (see the module docstring for the camera and the targets).

    Args:
      layout: from :func:`orthojax.data.synthetic.scene_layout`.
      image_size: (H, W).
      fov_deg: horizontal field of view in degrees.
      rng: for sensor noise in the RGB image (uniform, amplitude 0.03; none if None).

    Returns:
      ``image`` float32 (H, W, 3) in [0, 1], ``depth`` float32 (H, W) metres (0 invalid),
      ``normal`` float32 (H, W, 3) camera frame (0 invalid), ``fine`` int32 (H, W) (-1 void).
    """
    h, w = int(image_size[0]), int(image_size[1])
    f = 0.5 * w / math.tan(math.radians(fov_deg) / 2)
    rot = layout["rotation"].astype(np.float32)
    eye = layout["eye"].astype(np.float32)
    dirs, inv = _camera_rays(rot, h, w, f)
    hits = _cast_room(layout["room"].astype(np.float32), eye, dirs, inv)
    _cast_boxes(hits, layout["boxes"].astype(np.float32), layout["labels"], eye, rot, dirs, inv, f)

    normal_world = _EYE3[hits["axis"]] * hits["sign"][..., None]
    normal = normal_world @ rot  # camera frame: n_cam = R^T n_world
    point = eye + hits["t"][..., None] * dirs
    window = hits["fine"] == FINE_ID["window"]
    albedo, texture = _albedo_and_texture(layout, hits, point)
    image = albedo * (texture * _shading(layout, normal_world, point, window))[..., None]
    if rng is not None:
        image += np.float32(0.03) * (rng.random(image.shape, dtype=np.float32) - np.float32(0.5))
    depth = np.where(window, np.float32(0), hits["t"])
    normal = np.where(window[..., None], np.float32(0), normal)
    return {"image": np.clip(image, 0, 1, out=image), "depth": depth, "normal": normal, "fine": hits["fine"]}
