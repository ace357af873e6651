"""The layout of a synthetic room: its size, the camera, and the furniture as labelled boxes.

A room is the box [-width/2, width/2] x [0, height] x [0, depth] (metres, y up). Objects are built
from templates (beds, tables with legs, chairs, sofas, cabinets, shelves of books, lamps, doors,
windows, pictures, TVs and unlabelled clutter) as axis-aligned parts in a local frame, turned by a
multiple of 90 degrees and placed against a wall or free-standing in front of the camera. Every
random draw comes from the one ``np.random.Generator`` passed in, in a fixed order, so a layout is a
pure function of the generator's state.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from orthojax.data.synthetic.vocabulary import CLASS_COLORS, FINE_CLASSES, FINE_ID, VOID

__all__ = ["scene_layout"]

_CLUTTER_COLOR = (0.5, 0.5, 0.5)
_WALL_OBJECTS = ("bed", "cabinet", "bookshelf", "desk", "sofa")
_FREE_OBJECTS = ("table", "chair", "chair", "box", "lamp", "clutter", "sofa", "table")
_WALL_ITEMS = ("window", "picture", "door", "wall_tv", "picture", "window")

_Part = tuple[int, np.ndarray]


def _rot(box: np.ndarray, k: int) -> np.ndarray:
    """Rotate a local (2, 3) min/max box by k quarter turns about the vertical axis."""
    corners = np.array([[x, z] for x in box[:, 0] for z in box[:, 2]])
    x, z = corners[:, 0], corners[:, 1]
    xz = {0: (x, z), 1: (z, -x), 2: (-x, -z), 3: (-z, x)}[k % 4]
    return np.array([[xz[0].min(), box[0, 1], xz[1].min()], [xz[0].max(), box[1, 1], xz[1].max()]])


def _part(label: int, x0: float, x1: float, y0: float, y1: float, z0: float, z1: float) -> _Part:
    """One labelled part: its fine id and (2, 3) min/max corners."""
    return (label, np.array([[x0, y0, z0], [x1, y1, z1]], dtype=np.float64))


# ----------------------------------------------------------------------------- object templates
# Parts of an object in a local frame: x centred, y from 0 up, back at z = +depth/2.


def _bed(rng: np.random.Generator) -> list[_Part]:
    u = rng.uniform
    w, d = u(1.3, 1.8), u(1.9, 2.1)
    parts = [_part(FINE_ID["bed"], -w / 2, w / 2, 0, 0.5, -d / 2, d / 2),
             _part(FINE_ID["bed"], -w / 2, w / 2, 0, u(0.9, 1.2), d / 2 - 0.08, d / 2)]
    for s in (-1, 1):
        parts.append(_part(FINE_ID["pillow"], s * w / 4 - 0.25, s * w / 4 + 0.25, 0.5, 0.64, d / 2 - 0.45, d / 2 - 0.1))
    return parts


def _table_or_desk(name: str, rng: np.random.Generator) -> list[_Part]:
    """A table (four legs) or a desk (two side panels), sometimes with books and a box on top."""
    u = rng.uniform
    w, d, h = u(0.9, 1.6), u(0.6, 0.9), u(0.70, 0.76)
    label = FINE_ID[name]
    parts = [_part(label, -w / 2, w / 2, h - 0.04, h, -d / 2, d / 2)]
    for sx in (-1, 1):
        if name == "desk":
            parts.append(_part(label, sx * w / 2 - 0.03 * (sx + 1), sx * w / 2 + 0.03 * (1 - sx), 0, h - 0.04, -d / 2, d / 2))
        else:
            for sz in (-1, 1):
                cx, cz = sx * (w / 2 - 0.06), sz * (d / 2 - 0.06)
                parts.append(_part(label, cx - 0.025, cx + 0.025, 0, h - 0.04, cz - 0.025, cz + 0.025))
    if rng.random() < 0.6:
        n = int(rng.integers(2, 6))
        x = u(-w / 2 + 0.1, w / 2 - 0.4)
        for _ in range(n):
            t = u(0.03, 0.06)
            parts.append(_part(FINE_ID["books"], x, x + t, h, h + u(0.15, 0.25), -0.1, 0.1))
            x += t + 0.005
    if rng.random() < 0.4:
        s = u(0.15, 0.3)
        parts.append(_part(FINE_ID["box"], w / 2 - 0.05 - s, w / 2 - 0.05, h, h + s, -d / 4, -d / 4 + s))
    return parts


def _chair(rng: np.random.Generator) -> list[_Part]:
    u = rng.uniform
    s, h = u(0.42, 0.5), u(0.43, 0.48)
    parts = [_part(FINE_ID["chair"], -s / 2, s / 2, h - 0.05, h, -s / 2, s / 2),
             _part(FINE_ID["chair"], -s / 2, s / 2, h, h + u(0.4, 0.5), s / 2 - 0.05, s / 2)]
    for sx in (-1, 1):
        for sz in (-1, 1):
            cx, cz = sx * (s / 2 - 0.03), sz * (s / 2 - 0.03)
            parts.append(_part(FINE_ID["chair"], cx - 0.02, cx + 0.02, 0, h - 0.05, cz - 0.02, cz + 0.02))
    return parts


def _sofa(rng: np.random.Generator) -> list[_Part]:
    u = rng.uniform
    w, d = u(1.5, 2.2), u(0.8, 0.95)
    sofa = FINE_ID["sofa"]
    return [_part(sofa, -w / 2, w / 2, 0, 0.42, -d / 2, d / 2),
            _part(sofa, -w / 2, w / 2, 0.42, 0.85, d / 2 - 0.2, d / 2),
            _part(sofa, -w / 2, -w / 2 + 0.2, 0.42, 0.62, -d / 2, d / 2),
            _part(sofa, w / 2 - 0.2, w / 2, 0.42, 0.62, -d / 2, d / 2)]


def _cabinet(rng: np.random.Generator) -> list[_Part]:
    u = rng.uniform
    w, h, d = u(0.5, 1.3), u(0.6, 1.0), u(0.4, 0.6)
    parts = [_part(FINE_ID["cabinet"], -w / 2, w / 2, 0, h, -d / 2, d / 2)]
    if rng.random() < 0.5:
        tw = min(w - 0.05, u(0.6, 1.0))
        parts.append(_part(FINE_ID["tv"], -tw / 2, tw / 2, h, h + tw * 0.58, 0.0, 0.06))
    return parts


def _bookshelf(rng: np.random.Generator) -> list[_Part]:
    u = rng.uniform
    w, h, d = u(0.8, 1.2), u(1.5, 2.0), 0.35
    parts = [_part(FINE_ID["bookshelf"], -w / 2, w / 2, 0, h, -d / 2 + 0.02, d / 2)]
    for shelf_y in np.arange(0.3, h - 0.3, 0.4):
        x = -w / 2 + 0.05
        while x < w / 2 - 0.12:
            t = u(0.03, 0.07)
            parts.append(_part(FINE_ID["books"], x, x + t, shelf_y, shelf_y + u(0.18, 0.3), -d / 2, -d / 2 + 0.02))
            x += t + u(0.0, 0.08)
    return parts


def _box(rng: np.random.Generator) -> list[_Part]:
    u = rng.uniform
    s = u(0.2, 0.5)
    return [_part(FINE_ID["box"], -s / 2, s / 2, 0, s * u(0.6, 1.2), -s / 2, s / 2)]


def _lamp(rng: np.random.Generator) -> list[_Part]:
    h = rng.uniform(1.2, 1.6)
    return [_part(FINE_ID["lamp"], -0.02, 0.02, 0, h, -0.02, 0.02),
            _part(FINE_ID["lamp"], -0.18, 0.18, h, h + 0.3, -0.18, 0.18)]


def _clutter(rng: np.random.Generator) -> list[_Part]:
    a, b, c = rng.uniform(0.1, 0.7, size=3)
    return [_part(VOID, -a / 2, a / 2, 0, b, -c / 2, c / 2)]


def _wall_item(name: str, rng: np.random.Generator) -> list[_Part]:
    """A thin panel on the wall: window, picture, door or wall-mounted TV.

    The sizes of all four kinds are drawn whatever ``name`` is, so the random stream (and every
    scene after this one's draws) does not depend on which kind was chosen.
    """
    u = rng.uniform
    w, y0, h = {"window": (u(0.8, 1.6), u(0.8, 1.1), u(0.9, 1.3)), "picture": (u(0.3, 1.0), u(1.2, 1.5), u(0.3, 0.7)),
                "door": (u(0.8, 0.95), 0.0, u(1.95, 2.1)), "wall_tv": (u(0.8, 1.3), u(1.0, 1.3), 0.0)}[name]
    h = h if name != "wall_tv" else w * 0.58
    label = FINE_ID["tv"] if name == "wall_tv" else FINE_ID[name]
    return [_part(label, -w / 2, w / 2, y0, y0 + h, 0.5 - 0.04, 0.5)]


_TEMPLATES: dict[str, Callable[[np.random.Generator], list[_Part]]] = {
    "bed": _bed, "chair": _chair, "sofa": _sofa, "cabinet": _cabinet, "bookshelf": _bookshelf, "box": _box,
    "lamp": _lamp, "clutter": _clutter,
    "table": lambda rng: _table_or_desk("table", rng), "desk": lambda rng: _table_or_desk("desk", rng),
    **{name: (lambda rng, name=name: _wall_item(name, rng)) for name in ("window", "picture", "door", "wall_tv")},
}


def _template(name: str, rng: np.random.Generator) -> list[_Part]:
    """The parts of a random instance of object ``name`` in its local frame."""
    if name not in _TEMPLATES:
        raise ValueError(f"unknown object template {name!r}; expected one of {sorted(_TEMPLATES)}")
    return _TEMPLATES[name](rng)


# ----------------------------------------------------------------------------- placement


def _placement(ext_at: Callable[[int], np.ndarray], k: int | None, room: np.ndarray, eye: np.ndarray,
               rng: np.random.Generator) -> tuple[int, float, float]:
    """Quarter turns k and floor position (tx, tz) of an object whose turned extent is ``ext_at(k)``.

    ``k`` None: free-standing, turned at random, at least 1 m in front of the camera. Otherwise its
    back against wall k (0: the far wall z = depth, 1: x = +width/2, 3: x = -width/2).
    """
    if k is None:
        k = int(rng.integers(4))
        ext = ext_at(k)
        tx = rng.uniform(room[0, 0] - ext[0, 0] + 0.05, max(room[0, 0] - ext[0, 0] + 0.05, room[1, 0] - ext[1, 0] - 0.05))
        tz = rng.uniform(eye[2] + 1.0 - ext[0, 2], max(eye[2] + 1.0 - ext[0, 2], room[1, 2] - ext[1, 2] - 0.05))
        return k, tx, tz
    ext = ext_at(k)
    if k == 0:
        tz = room[1, 2] - ext[1, 2]
        tx = rng.uniform(room[0, 0] - ext[0, 0], max(room[0, 0] - ext[0, 0], room[1, 0] - ext[1, 0]))
    else:
        pos = room[1, 0] if k == 1 else room[0, 0]
        tx = pos - (ext[1, 0] if pos > 0 else ext[0, 0])
        tz = rng.uniform(eye[2] + 1.0 - ext[0, 2], max(eye[2] + 1.0 - ext[0, 2], room[1, 2] - ext[1, 2]))
    return k, tx, tz


def _place(name: str, k: int | None, room: np.ndarray, eye: np.ndarray,
           rng: np.random.Generator) -> list[tuple[np.ndarray, int, np.ndarray]]:
    """One object ``name`` placed in the room: a list of (world box (2, 3), fine id, colour (3,))."""
    parts = _template(name, rng)
    local = np.stack([p[1] for p in parts])
    lo, hi = local[:, 0].min(0), local[:, 1].max(0)
    k, tx, tz = _placement(lambda turns: _rot(np.stack([lo, hi]), turns), k, room, eye, rng)
    base = np.array(CLASS_COLORS[FINE_CLASSES[parts[0][0]]] if parts[0][0] >= 0 else _CLUTTER_COLOR)
    tint = np.clip(base * rng.uniform(0.75, 1.2) + rng.normal(0, 0.06, 3), 0.02, 1.0)
    if name == "clutter":
        tint = rng.uniform(0.1, 0.9, 3)
    placed = []
    for label, box in parts:
        world = _rot(box, k) + np.array([tx, 0.0, tz])
        own = np.array(CLASS_COLORS[FINE_CLASSES[label]]) if label >= 0 else tint
        color = tint if label == parts[0][0] else np.clip(own * rng.uniform(0.7, 1.2, 3), 0, 1)
        placed.append((world, label, color))
    return placed


def scene_layout(rng: np.random.Generator) -> dict:
    """Random room, camera and furniture.

    The camera stands 1.1-1.6 m high near the near wall, turned by a yaw in [-35, 35] degrees and a
    pitch in [-25, 0] degrees; the room holds 2-4 wall items (windows, pictures, doors, TVs), 1-3
    objects against the walls and 1-4 free-standing ones.

    Args:
      rng: the source of every random draw (consumed in a fixed order).

    Returns:
      dict with ``room`` (2, 3) min/max, ``eye`` (3,), ``rotation`` (3, 3)
      (columns: camera x right, y down, z forward in world coordinates, y up),
      ``boxes`` (B, 2, 3), ``labels`` (B,) fine ids (-1 void), ``colors`` (B, 3),
      ``wall_color`` (3,), ``floor_color`` (3,) and ``light`` (3,) (a point light below the ceiling).
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

    placed = []
    for _ in range(int(rng.integers(2, 5))):
        placed += _place(str(rng.choice(_WALL_ITEMS)), int(rng.choice([0, 1, 3])), room, eye, rng)
    for _ in range(int(rng.integers(1, 4))):
        placed += _place(str(rng.choice(_WALL_OBJECTS)), int(rng.choice([0, 1, 3])), room, eye, rng)
    for _ in range(int(rng.integers(1, 5))):
        placed += _place(str(rng.choice(_FREE_OBJECTS)), None, room, eye, rng)
    return {"room": room, "eye": eye, "rotation": rotation,
            "boxes": np.array([p[0] for p in placed]).reshape(-1, 2, 3),
            "labels": np.array([p[1] for p in placed], dtype=np.int32),
            "colors": np.array([p[2] for p in placed]).reshape(-1, 3),
            "wall_color": np.clip(np.array(CLASS_COLORS["wall"]) * rng.uniform(0.8, 1.15, 3), 0, 1),
            "floor_color": np.clip(np.array(CLASS_COLORS["floor"]) * rng.uniform(0.7, 1.3, 3), 0, 1),
            "light": np.array([rng.uniform(-1, 1), height - 0.05, rng.uniform(1.0, depth - 0.5)])}
