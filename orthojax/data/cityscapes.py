"""Cityscapes in MTAN's preprocessed layout (7-class segmentation and disparity), with a synthetic default.

Layout (lorenmt/mtan, used unchanged by CAGrad, Nash-MTL, FAMO)::

    <root>/{train,val}/image/{i}.npy      (H, W, 3) RGB in [0, 1] (uint8 0..255 is also accepted)
    <root>/{train,val}/label_7/{i}.npy    (H, W) 7 classes 0..6, -1 = void (LibMTL's copy names it label/)
    <root>/{train,val}/label_19/{i}.npy   (H, W) the 19 Cityscapes train ids 0..18, -1 = void (optional)
    <root>/{train,val}/depth/{i}.npy      (H, W, 1) disparity (inverse depth), 0 = invalid

``i`` runs from 0; the number of items is the number of ``image/*.npy`` files. 2975 train / 500 val at
128 x 256 (the release linked by CAGrad and LibMTL; a 256 x 512 release exists). "val" is the test split
of every MTAN-family paper and is returned here as "test". The depth target is the dataset's disparity,
not metres (lorenmt/mtan issues #15, #25); a pixel is valid where it is non-zero, as for every depth
target in this library (:func:`orthojax.metrics.valid_depth_mask`).

Output of :func:`load_cityscapes`: ``{"train", "test"}`` dicts with ``image`` float32 (N, H, W, 3),
``seg`` int32 (N, H, W) (-1 = ignore) and ``depth`` float32 (N, H, W, 1), and an info record whose
``tasks`` are ["seg", "depth"].

Without a data directory the splits are synthetic street scenes (:func:`synthetic_cityscapes`): a road
with sidewalks, building facades, a far backdrop, cars, buses, pedestrians, poles with signs and
lights, trees and sky, ray-cast from a pinhole camera, so labels and disparity come from the same ray
hit. Scene ``i`` of a split depends only on (seed, split, i).

Metrics (:func:`init_cityscapes_metrics` / :func:`update_cityscapes_metrics` /
:func:`finalize_cityscapes_metrics`): mIoU and pixel accuracy from the accumulated confusion matrix,
disparity abs and rel error over valid pixels, from :mod:`orthojax.metrics`. The published numbers
average abs / rel error per test batch (``aggregation="batch"``); "pooled" (default) is exact.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from orthojax.data.nyuv2 import _index_split, _split_dir, load_npy
from orthojax.data.resize import hflip, random_scale_crop_box, resize_dense
from orthojax.metrics import (
    DepthState,
    SegmentationState,
    finalize_depth,
    finalize_segmentation,
    init_depth,
    init_segmentation,
    update_depth,
    update_segmentation,
)

__all__ = [
    "CITYSCAPES_7_CLASSES",
    "CITYSCAPES_19_CLASSES",
    "CITYSCAPES_HIGHER_IS_BETTER",
    "CITYSCAPES_STL",
    "TRAIN_ID_TO_CATEGORY",
    "CityscapesMetrics",
    "cityscapes_augment",
    "cityscapes_info",
    "finalize_cityscapes_metrics",
    "init_cityscapes_metrics",
    "load_cityscapes",
    "read_cityscapes_split",
    "render_street",
    "synthetic_cityscapes",
    "update_cityscapes_metrics",
]

CITYSCAPES_7_CLASSES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
"""The 7 Cityscapes categories (official category ids 1..7 less one). The preprocessed release does not
document its class list; this order is the official one."""

CITYSCAPES_19_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                         "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
                         "bus", "train", "motorcycle", "bicycle")
"""The 19 Cityscapes train ids 0..18."""

TRAIN_ID_TO_CATEGORY = np.array([0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 6, 6, 6, 6, 6, 6], dtype=np.int32)
"""Train id (0..18) -> 7-class category id (0..6), from the official Cityscapes label table."""

CITYSCAPES_STL: dict[str, float] = {"miou": 0.7401, "pixel_acc": 0.9316, "abs_err": 0.0125, "rel_err": 27.77}
"""Single-task SegNet baseline of the Delta_m comparisons (FAMO experiments/cityscapes/utils.py)."""

CITYSCAPES_HIGHER_IS_BETTER: dict[str, bool] = {"miou": True, "pixel_acc": True, "abs_err": False, "rel_err": False}

_LABEL_FOLDERS = {7: ("label_7", "label"), 19: ("label_19",)}
_SPLIT_IDS = {"train": 1, "val": 2, "test": 2}


def _class_names(num_classes: int) -> tuple[str, ...]:
    if num_classes not in _LABEL_FOLDERS:
        raise ValueError(f"num_classes must be 7 or 19, got {num_classes!r}")
    return CITYSCAPES_7_CLASSES if num_classes == 7 else CITYSCAPES_19_CLASSES


def cityscapes_info(source: str, num_classes: int, image_size: Sequence[int], split_sizes: Mapping[str, int],
                    synthetic: bool = False, notes: Sequence[str] = ()) -> dict:
    """JSON-serialisable metadata record of a Cityscapes dataset (the keys of the other datasets' records)."""
    names = _class_names(num_classes)
    size = [int(s) for s in image_size]
    return {"name": "cityscapes", "protocol": "mtan", "source": str(source), "synthetic": bool(synthetic),
            "tasks": ["seg", "depth"], "num_classes": {"seg": len(names)}, "class_names": {"seg": list(names)},
            "void": "-1, ignored", "depth": "disparity (inverse depth), 0 = invalid",
            "image_size": size, "target_size": size, "split_sizes": dict(split_sizes), "notes": list(notes)}


# ----------------------------------------------------------------------------- reader
def _check_image(a: np.ndarray, path: Path, hw: tuple[int, int] | None) -> np.ndarray:
    if a.ndim != 3 or a.shape[-1] != 3 or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{path}: expected an RGB image (H, W, 3) of numbers, got {a.dtype} {a.shape}")
    if hw is not None and a.shape[:2] != hw:
        raise ValueError(f"{path}: expected an image of size {hw} like the split's first image, got {a.shape[:2]}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{path}: contains NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 or hi > 1:
        raise ValueError(f"{path}: expected image values in [0, 1], got {lo:g}..{hi:g}")
    return a


def _check_label(a: np.ndarray, path: Path, hw: tuple[int, int], num_classes: int) -> np.ndarray:
    if a.shape != hw or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{path}: expected labels of shape {hw} (matching the image), got {a.dtype} {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
        raise ValueError(f"{path}: labels must be integers")
    lo, hi = int(a.min()), int(a.max())
    if lo < -1 or hi >= num_classes:
        raise ValueError(f"{path}: label values must be in -1..{num_classes - 1} (-1 = void), got {lo}..{hi}")
    return a.astype(np.int32)


def _check_depth(a: np.ndarray, path: Path, hw: tuple[int, int]) -> np.ndarray:
    if a.shape not in (hw + (1,), hw) or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{path}: expected disparity of shape {hw + (1,)} (matching the image), got {a.dtype} {a.shape}")
    a = a.astype(np.float32).reshape(hw + (1,))
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{path}: contains NaN or infinite values")
    if a.min() < 0:
        raise ValueError(f"{path}: disparity must be >= 0 (0 = invalid), got minimum {float(a.min()):g}")
    return a


def _label_folder(split_dir: Path, num_classes: int) -> Path:
    for name in _LABEL_FOLDERS[num_classes]:
        if (split_dir / name).is_dir():
            return split_dir / name
    present = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and p.name.startswith("label"))
    wanted = " or ".join(f"{split_dir / n}/" for n in _LABEL_FOLDERS[num_classes])
    raise FileNotFoundError(f"{wanted}: missing {num_classes}-class label folder (found {present or 'none'})")


def read_cityscapes_split(root: str | os.PathLike, split: str, num_classes: int = 7,
                          max_items: int | None = None) -> dict[str, np.ndarray]:
    """Read one split of the MTAN layout (see the module docstring).

    Args:
      root: folder holding ``train/`` and ``val/``.
      split: "train" or "val".
      num_classes: 7 (``label_7/``, or LibMTL's ``label/``) or 19 (``label_19/``).
      max_items: read only the first items (quick runs).

    Returns:
      ``image`` float32 (N, H, W, 3) in [0, 1], ``seg`` int32 (N, H, W) in -1..num_classes-1 and
      ``depth`` float32 (N, H, W, 1) disparity >= 0.

    Raises:
      FileNotFoundError: a missing root, split or folder (the message names it).
      ValueError: files that do not pair up (0.npy..N-1.npy in every folder), an unreadable or
        pickled .npy, a wrong shape or dtype, non-finite values, image values outside [0, 1], labels
        outside -1..num_classes-1 or not integers, negative disparity (each names the file).
    """
    _class_names(num_classes)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    split_dir = _split_dir(root, split, "Cityscapes")
    folders = {}
    for key in ("image", "depth"):
        folders[key] = split_dir / key
        if not folders[key].is_dir():
            raise FileNotFoundError(f"{folders[key]}: missing folder (expected {split_dir}/{{image,label_7,depth}}/<i>.npy)")
    folders["label"] = _label_folder(split_dir, num_classes)
    files, n = _index_split(folders)
    n = n if max_items is None else min(n, int(max_items))
    images, labels, depths = [], [], []
    hw = None
    for i in range(n):
        image = _check_image(load_npy(files["image"][i]), files["image"][i], hw)
        hw = image.shape[:2]
        images.append(image)
        labels.append(_check_label(load_npy(files["label"][i]), files["label"][i], hw, num_classes))
        depths.append(_check_depth(load_npy(files["depth"][i]), files["depth"][i], hw))
    return {"image": np.stack(images), "seg": np.stack(labels), "depth": np.stack(depths)}


# ----------------------------------------------------------------------------- synthetic streets
_COLORS = {  # train id -> base RGB
    0: (0.33, 0.32, 0.34), 1: (0.62, 0.58, 0.56), 2: (0.55, 0.45, 0.38), 5: (0.45, 0.45, 0.47),
    6: (0.12, 0.12, 0.10), 7: (0.85, 0.75, 0.10), 8: (0.20, 0.42, 0.15), 9: (0.45, 0.55, 0.25),
    11: (0.60, 0.25, 0.25), 13: (0.20, 0.25, 0.55), 15: (0.80, 0.65, 0.15),
}
_SKY_TOP, _SKY_HORIZON = np.array([0.35, 0.55, 0.85]), np.array([0.78, 0.85, 0.92])
_SUN = np.array([0.5, -0.75, 0.35]) / np.linalg.norm([0.5, -0.75, 0.35])


def _noise(a: np.ndarray, b: np.ndarray, salt: int) -> np.ndarray:
    """Pseudo-random value in [0, 1) per integer lattice cell (a, b)."""
    h = (a.astype(np.int64) * 73856093) ^ (b.astype(np.int64) * 19349663) ^ (salt * 83492791)
    return ((h * 2654435761) % 4294967296) / 4294967296.0


def _street_layout(rng: np.random.Generator) -> dict:
    """Random street: camera, road geometry and a list of (train id, kind, geometry, colour)."""
    u = rng.uniform
    cam_h, center = u(1.1, 1.6), u(-1.5, 1.5)
    road, walk = u(3.5, 7.0), u(1.5, 4.0)
    edge = road + walk
    objects: list[tuple[int, str, np.ndarray, np.ndarray]] = []

    def box(tid, x0, x1, top, z0, z1, color=None, bottom=0.0):
        """Box between heights ``bottom`` and ``top`` above the ground (y points down, ground y = cam_h)."""
        geom = np.array([[x0, cam_h - top, z0], [x1, cam_h - bottom, z1]])
        col = np.asarray(_COLORS.get(tid, (0.5, 0.5, 0.5)) if color is None else color) * u(0.8, 1.15)
        objects.append((tid, "box", geom, col))

    for side in (-1, 1):  # facades as thin boxes along z with gaps
        x = center + side * (edge + u(0.0, 1.5))
        z = u(-5, 5)
        while z < 110:
            length = u(8, 25)
            if rng.random() < 0.85:
                lo, hi = sorted((x, x + side * 15))
                box(2, lo, hi, u(6, 25), z, z + length, np.array(_COLORS[2]) * rng.uniform(0.6, 1.4, 3))
            z += length + (u(2, 8) if rng.random() < 0.3 else 0.0)
        for _ in range(rng.integers(1, 5)):  # trees on the sidewalk's outer half
            tx, tz, r = center + side * (edge - u(0.3, 1.0)), u(6, 60), u(1.2, 2.5)
            box(8, tx - 0.15, tx + 0.15, u(2.0, 3.0), tz - 0.15, tz + 0.15, (0.30, 0.22, 0.12))
            objects.append((8, "sphere", np.array([tx, cam_h - u(3.5, 4.5) - r / 2, tz, r]),
                            np.asarray(_COLORS[8]) * u(0.7, 1.3)))
        for k in range(rng.integers(1, 4)):  # poles near the curb, some with a sign or a light
            px, pz, ph = center + side * (road + u(0.3, 0.8)), u(5, 50), u(4, 7)
            box(5, px - 0.08, px + 0.08, ph, pz - 0.08, pz + 0.08)
            if rng.random() < 0.6:
                tid = 7 if rng.random() < 0.6 else 6
                box(tid, px - 0.35, px + 0.35, ph + 0.4, pz - 0.05, pz + 0.05, bottom=ph - 0.4)
        for _ in range(rng.integers(0, 5)):  # pedestrians on the sidewalk
            hx, hz = center + side * u(road + 0.5, edge - 0.3), u(4, 40)
            box(11, hx - 0.25, hx + 0.25, u(1.5, 1.9), hz - 0.2, hz + 0.2, rng.uniform(0.1, 0.9, 3))
    for _ in range(rng.integers(2, 8)):  # cars and an occasional bus on the road
        lane = rng.choice([-0.75, -0.25, 0.25, 0.75]) * road
        cx, cz = center + lane, u(5, 70)
        if rng.random() < 0.12:
            box(15, cx - 1.25, cx + 1.25, 3.2, cz, cz + 11)
        else:
            box(13, cx - 0.9, cx + 0.9, u(1.4, 1.7), cz, cz + u(3.8, 4.8), rng.uniform(0.05, 0.9, 3))
    backdrop = u(70, 130)
    box(2, center - 400, center + 400, u(8, 30), backdrop, backdrop + 1, np.array(_COLORS[2]) * 0.9)
    return {"cam_h": cam_h, "center": center, "road": road, "edge": edge, "objects": objects,
            "horizon": u(0.38, 0.48), "fov": np.deg2rad(u(45, 55))}


def _hit_box(inv: tuple[np.ndarray, ...], geom: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ray (from the origin, direction d; ``inv`` = 1 / d per axis) / axis-aligned box (slab test).

    Returns the distance along d to the entry point (inf on a miss) and the axis of the entry face.
    """
    near, far = [], []
    for k in range(3):
        t0, t1 = geom[0, k] * inv[k], geom[1, k] * inv[k]
        near.append(np.fmin(t0, t1))
        far.append(np.fmax(t0, t1))
    t_near = np.fmax(np.fmax(near[0], near[1]), near[2])
    t_far = np.fmin(np.fmin(far[0], far[1]), far[2])
    axis = np.where(near[0] >= t_near, 0, np.where(near[1] >= t_near, 1, 2))
    return np.where((t_near <= t_far) & (t_near > 0), t_near, np.inf), axis


def _hit_sphere(d: np.ndarray, geom: np.ndarray) -> np.ndarray:
    """Ray (from the origin, direction d (H, W, 3)) / sphere (cx, cy, cz, r): distance, inf on a miss."""
    c, r = geom[:3], geom[3]
    a = np.einsum("...i,...i->...", d, d)
    b = d @ c
    disc = b * b - a * (c @ c - r * r)
    t = (b - np.sqrt(np.maximum(disc, 0))) / a
    return np.where((disc >= 0) & (t > 0), t, np.inf)


def render_street(layout: dict, image_size: Sequence[int], noise_seed: int = 0) -> dict[str, np.ndarray]:
    """Ray-cast one street layout with a pinhole camera (x right, y down, z forward).

    Returns:
      ``image`` float32 (H, W, 3) in [0, 1], ``label19`` int32 (H, W) train ids (sky included, no
      void), ``depth`` float32 (H, W, 1) disparity ``1 / z`` in 1/metres (0 on sky, the invalid value).
    """
    h, w = (int(s) for s in image_size)
    f = w / (2 * np.tan(layout["fov"] / 2))
    v, u_ = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    d = np.stack([(u_ - w / 2) / f, (v - layout["horizon"] * h) / f, np.ones_like(u_)], axis=-1)
    cam_h, center = layout["cam_h"], layout["center"]
    # ground plane y = cam_h: road, sidewalk, then terrain
    with np.errstate(divide="ignore"):
        t_best = np.where(d[..., 1] > 0, cam_h / d[..., 1], np.inf)
    lateral = np.abs(t_best * d[..., 0] - center)
    tid = np.where(lateral < layout["road"], 0, np.where(lateral < layout["edge"], 1, 9))
    tid = np.where(np.isfinite(t_best), tid, 10).astype(np.int32)
    color = np.zeros((h, w, 3))
    normal = np.zeros((h, w, 3))
    normal[..., 1] = -1.0
    obj = np.full((h, w), -1)
    with np.errstate(divide="ignore"):
        inv = tuple(1.0 / d[..., k] for k in range(3))
    for k, (obj_tid, kind, geom, _) in enumerate(layout["objects"]):
        if kind == "box":
            t, axis = _hit_box(inv, geom)
        else:
            t = _hit_sphere(d, geom)
        closer = t < t_best
        if not closer.any():
            continue
        t_best = np.where(closer, t, t_best)
        tid[closer] = obj_tid
        obj[closer] = k
        if kind == "box":  # the face normal points against the ray along the entry axis
            ax = axis[closer]
            n = np.zeros((ax.size, 3))
            n[np.arange(ax.size), ax] = -np.sign(d[closer][np.arange(ax.size), ax])
        else:
            n = (t[closer][:, None] * d[closer] - geom[:3]) / geom[3]
        normal[closer] = n
    sky = ~np.isfinite(t_best)
    point = np.where(sky[..., None], 0.0, t_best[..., None] * d)
    for k, (_, _, _, col) in enumerate(layout["objects"]):
        color[obj == k] = col
    for t_id in (0, 1, 9):
        ground = (obj < 0) & (tid == t_id)
        color[ground] = _COLORS[t_id]
    # textures: lane dashes, paving, windows, foliage
    px, py, pz = point[..., 0], point[..., 1], point[..., 2]
    dash = (obj < 0) & (tid == 0) & (np.abs(px - center) < 0.08) & (np.mod(pz, 6) < 3)
    color[dash] = (0.9, 0.9, 0.85)
    tile = (obj < 0) & (tid == 1) & ((np.mod(pz, 1.0) < 0.05) | (np.mod(px, 1.0) < 0.05))
    color[tile] *= 0.85
    window = (tid == 2) & (np.mod(pz + px, 3.0) > 1.2) & (np.mod(cam_h - py, 3.2) > 1.4) & (cam_h - py > 1.0)
    color[window] = color[window] * 0.35 + np.array([0.10, 0.15, 0.25])
    foliage = tid == 8
    color[foliage] *= 0.75 + 0.5 * _noise(np.floor(px * 6), np.floor(py * 6 + pz * 3), noise_seed)[foliage, None]
    # Lambertian sun + ambient, haze towards the horizon colour, sky gradient
    shade = 0.55 + 0.6 * np.clip(normal @ _SUN, 0, None)
    color = color * shade[..., None]
    haze = 1 - np.exp(-np.where(sky, 0.0, pz) / 180.0)
    color = color * (1 - haze[..., None]) + _SKY_HORIZON * haze[..., None]
    frac = np.clip((v / h) / max(layout["horizon"], 1e-3), 0, 1)[..., None]
    color = np.where(sky[..., None], _SKY_TOP * (1 - frac) + _SKY_HORIZON * frac, color)
    rng = np.random.default_rng(noise_seed)
    image = np.clip(color + rng.normal(0, 0.015, color.shape), 0, 1).astype(np.float32)
    depth = np.where(sky, 0.0, 1.0 / np.where(sky, 1.0, pz)).astype(np.float32)[..., None]
    return {"image": image, "label19": tid, "depth": depth}


def synthetic_cityscapes(num_train: int = 2975, num_test: int = 500, image_size: Sequence[int] = (128, 256),
                         seed: int = 0, num_classes: int = 7) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Synthetic street scenes in the Cityscapes format (see the module docstring).

    Args:
      num_train, num_test: scenes per split.
      image_size: (H, W) of images and targets.
      seed: scene i of a split depends only on (seed, split, i).
      num_classes: 7 (categories, via :data:`TRAIN_ID_TO_CATEGORY`) or 19 (train ids).

    Returns:
      (splits, info): ``{"train", "test"}`` with ``image`` float32 (N, H, W, 3) in [0, 1], ``seg`` int32
      (N, H, W), ``depth`` float32 (N, H, W, 1) disparity (1 / metres; 0 = invalid on the sky); the info
      record says ``synthetic``.
    """
    _class_names(num_classes)
    size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be a pair of positive ints, got {image_size!r}")
    def scene(split: str, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([int(seed), _SPLIT_IDS[split], i])
        item = render_street(_street_layout(rng), size, noise_seed=int(rng.integers(2**31)))
        seg = item["label19"] if num_classes == 19 else TRAIN_ID_TO_CATEGORY[item["label19"]]
        return item["image"], seg.astype(np.int32), item["depth"]

    splits = {}
    for split, n in (("train", int(num_train)), ("test", int(num_test))):
        with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:  # NumPy releases the GIL
            items = list(pool.map(lambda i, split=split: scene(split, i), range(n)))
        splits[split] = {key: (np.stack([it[j] for it in items]) if items else np.zeros((0,) + shape, dtype))
                         for j, (key, shape, dtype) in enumerate((("image", size + (3,), np.float32),
                                                                  ("seg", size, np.int32),
                                                                  ("depth", size + (1,), np.float32)))}
    info = cityscapes_info("synthetic", num_classes, size, {"train": int(num_train), "test": int(num_test)},
                           synthetic=True,
                           notes=["synthetic data: procedural street scenes (orthojax.data.cityscapes), "
                                  "not the real Cityscapes"])
    return splits, info


# ----------------------------------------------------------------------------- entry point
def load_cityscapes(data_dir: str | os.PathLike | None = None, *, num_classes: int = 7,
                    max_items: int | None = None, synthetic_sizes: Sequence[int] = (2975, 500),
                    image_size: Sequence[int] = (128, 256),
                    seed: int = 0) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Cityscapes train / test splits and their metadata.

    Args:
      data_dir: None (synthetic streets) or an MTAN root with ``train/`` and ``val/``.
      num_classes: 7 (``label_7/``) or 19 (``label_19/``, when the release has it).
      max_items: per split, for quick runs on real data.
      synthetic_sizes, image_size, seed: (train, test) scene counts, (H, W) and seed of the synthetic
        source (real data keeps its own size).

    Returns:
      (splits, info): ``{"train", "test"}`` dicts of arrays ("test" is the release's val/) and the
      metadata record.

    Raises:
      FileNotFoundError, ValueError: see :func:`read_cityscapes_split`; train and val images of
        different sizes.
    """
    _class_names(num_classes)
    if data_dir is None:
        return synthetic_cityscapes(*synthetic_sizes, image_size=image_size, seed=seed, num_classes=num_classes)
    root = Path(data_dir)
    splits = {"train": read_cityscapes_split(root, "train", num_classes, max_items),
              "test": read_cityscapes_split(root, "val", num_classes, max_items)}
    sizes = {k: v["image"].shape[1:3] for k, v in splits.items()}
    if sizes["train"] != sizes["test"]:
        raise ValueError(f"{root}: train images are {sizes['train']} but val images are {sizes['test']}")
    info = cityscapes_info(f"mtan:{root}", num_classes, sizes["train"],
                           {k: len(v["image"]) for k, v in splits.items()})
    return splits, info


def cityscapes_augment(scales: Sequence[float] = (1.0, 1.2, 1.5),
                       flip: bool = True) -> Callable[[dict[str, np.ndarray], np.random.Generator], dict[str, np.ndarray]]:
    """Batch transform: random scale-crop and horizontal flip, per sample, for disparity targets.

    A crop of side 1/s resized back to full size brings the scene s times closer, so disparity is
    multiplied by s (Auto-Lambda's rule; CAGrad and FAMO divide, which is right only for metric depth).
    Image bilinear, labels and disparity nearest (:func:`orthojax.data.resize.resize_dense`).

    Returns:
      ``transform(batch, rng) -> batch`` for :func:`orthojax.data.loader.iterate_batches`.
    """
    scales = tuple(float(s) for s in scales)
    if not scales or min(scales) < 1:
        raise ValueError(f"scales must be a non-empty sequence of values >= 1, got {scales}")

    def transform(batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        n = len(batch["image"])
        hw = batch["image"].shape[1:3]
        samples = []
        for i in range(n):
            sample = {k: v[i] for k, v in batch.items()}
            box, s = random_scale_crop_box(rng, scales)
            if s != 1.0:
                sample = resize_dense(sample, hw, hw, box, depth_scale=1.0 / s)
            if flip and rng.random() < 0.5:
                sample = hflip(sample)
            samples.append(sample)
        return {k: np.stack([s[k] for s in samples]).astype(batch[k].dtype) for k in batch}

    return transform


# ----------------------------------------------------------------------------- metrics
class CityscapesMetrics(NamedTuple):
    """Accumulators of the Cityscapes metrics: a confusion matrix and disparity error sums."""

    seg: SegmentationState
    depth: DepthState


def init_cityscapes_metrics(num_classes: int = 7) -> CityscapesMetrics:
    """Empty accumulators (see :func:`orthojax.metrics.init_segmentation`, :func:`orthojax.metrics.init_depth`)."""
    _class_names(num_classes)
    return CityscapesMetrics(init_segmentation(num_classes), init_depth())


def update_cityscapes_metrics(state: CityscapesMetrics, seg_pred: Any, depth_pred: Any,
                              batch: Mapping[str, Any]) -> CityscapesMetrics:
    """Add one test batch; jittable.

    Args:
      state: accumulators.
      seg_pred: class scores (N, H, W, K) (argmax taken) or labels (N, H, W).
      depth_pred: predicted disparity (N, H, W, 1).
      batch: with ``seg`` (N, H, W) int (-1 = void) and ``depth`` (N, H, W, 1) (0 = invalid).

    Returns:
      The updated accumulators.
    """
    return CityscapesMetrics(update_segmentation(state.seg, seg_pred, batch["seg"]),
                             update_depth(state.depth, depth_pred, batch["depth"]))


def finalize_cityscapes_metrics(state: CityscapesMetrics, aggregation: str = "pooled") -> dict[str, float]:
    """``{"miou", "pixel_acc", "abs_err", "rel_err"}`` (host side).

    mIoU and pixel accuracy come from the whole confusion matrix; abs_err = mean |pred - gt| and
    rel_err = mean |pred - gt| / gt over valid pixels (raw ratio, no x100), pooled over the test set or
    averaged per batch (``aggregation="batch"``, as the published MTAN-family numbers).
    """
    seg = finalize_segmentation(state.seg)
    depth = finalize_depth(state.depth, aggregation)
    return {"miou": seg["miou"], "pixel_acc": seg["pixel_acc"], "abs_err": depth["abs_err"], "rel_err": depth["rel_err"]}
