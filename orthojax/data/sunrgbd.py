"""SUN RGB-D (5285 train / 5050 test): 13- and 37-class segmentation and depth.

Real data uses the reorganised layout (chrischoy/SUN_RGBD)::

    <root>/image/{train,test}/*.jpg   <root>/depth/{train,test}/*.png
    <root>/label13/{train,test}/*.png <root>/label37/{train,test}/*.png
    <root>/{train,test}13.txt         <root>/{train,test}37.txt

where each list-file line is "image depth label" (relative paths). Label PNGs
use 0 = ignore and 1..C for the classes; here they are shifted to 0..C-1 with
-1 = ignore. Depth PNGs (uint16) are decoded by one of :data:`DEPTH_FORMATS`:

* "png10000" (repackaged data, ankurhanda/sunrgbd-meta-data): metres = png / 10000;
* "toolbox" (the SUN RGB-D toolbox): ``(png >> 3) | (png << 13)`` as uint16,
  / 1000, clipped at 10 m.

0 stays 0 (invalid) in both, and no other PNG value decodes to 0, so depth is
missing exactly where ``gt == 0``, the rule of the losses and metrics. Output
keys: ``image`` float32 (N, H, W, 3), ``seg13`` / ``seg37`` int32 (N, h, w),
``depth`` float32 (N, h, w, 1).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from orthojax.data.resize import crop_resize_bilinear, crop_resize_nearest
from orthojax.data.synthetic import NYU13_CLASSES, synthetic_sunrgbd

SUN37_CLASSES = ("wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
                 "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
                 "floor_mat", "clothes", "ceiling", "books", "fridge", "tv", "paper", "towel", "shower_curtain",
                 "box", "whiteboard", "person", "night_stand", "toilet", "sink", "lamp", "bathtub", "bag")
SUN13_CLASSES = NYU13_CLASSES
DEPTH_FORMATS = ("png10000", "toolbox")
DEFAULT_IMAGE_SIZE = (320, 320)
DEFAULT_TARGET_SIZE = (80, 80)


def sunrgbd_info(source: str, image_size: Sequence[int], target_size: Sequence[int], split_sizes: dict[str, int],
                 synthetic: bool = False, depth_format: str | None = None,
                 class_names: dict[str, Sequence[str]] | None = None, notes: Sequence[str] = ()) -> dict:
    """JSON-serialisable metadata record of a SUN RGB-D dataset."""
    names = class_names or {"seg13": SUN13_CLASSES, "seg37": SUN37_CLASSES}
    return {"name": "sunrgbd", "protocol": "paper", "source": str(source), "synthetic": bool(synthetic),
            "tasks": ["seg13", "seg37", "depth"], "num_classes": {k: len(v) for k, v in names.items()},
            "class_names": {k: list(v) for k, v in names.items()}, "void": "-1, ignored",
            "depth_format": depth_format, "image_size": [int(s) for s in image_size],
            "target_size": [int(s) for s in target_size], "split_sizes": dict(split_sizes), "notes": list(notes)}


def decode_depth(png: np.ndarray, depth_format: str = "png10000") -> np.ndarray:
    """Metric depth (float32 metres, 0 = invalid) from a uint16 depth PNG array."""
    if depth_format not in DEPTH_FORMATS:
        raise ValueError(f"depth_format must be one of {DEPTH_FORMATS}, got {depth_format!r}")
    png = np.asarray(png)
    if png.ndim != 2 or not np.issubdtype(png.dtype, np.integer):
        raise ValueError(f"expected a single-channel integer depth PNG, got {png.dtype} {png.shape}")
    d = png.astype(np.uint16)
    if depth_format == "png10000":
        return (d.astype(np.float32) / 10000).astype(np.float32)
    shifted = ((d >> 3) | (d << 13)).astype(np.uint16)
    return np.minimum(shifted.astype(np.float32) / 1000, 10.0).astype(np.float32)


def read_list_file(path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """Parse a ``train13.txt``-style list: one "image depth label" triple per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SUN RGB-D list file {path} does not exist")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3:
            raise ValueError(f"{path}:{number}: expected 3 space-separated paths (image depth label), got {line!r}")
        rows.append((parts[0], parts[1], parts[2]))
    if not rows:
        raise ValueError(f"{path}: empty list file (expected lines 'image depth label')")
    return rows


def _read_png(path: Path, what: str) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing {what} file")
    try:
        with Image.open(path) as im:
            if what == "image":
                return np.asarray(im.convert("RGB"))
            return np.asarray(im)
    except OSError as e:
        raise ValueError(f"{path}: cannot decode {what} ({e})") from e


def _read_label(path: Path, num_classes: int, hw: tuple[int, int]) -> np.ndarray:
    lab = _read_png(path, "label")
    if lab.ndim != 2 or lab.shape != hw or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"{path}: expected a single-channel integer label image of size {hw}, got {lab.dtype} {lab.shape}")
    if lab.size and lab.max() > num_classes:
        raise ValueError(f"{path}: label values must be in 0..{num_classes} (0 = ignore), got max {lab.max()}")
    return lab.astype(np.int32) - 1


def read_sunrgbd_split(root: str | os.PathLike, split: str, image_size: Sequence[int] = DEFAULT_IMAGE_SIZE,
                       target_size: Sequence[int] = DEFAULT_TARGET_SIZE, depth_format: str = "png10000",
                       max_items: int | None = None) -> dict[str, np.ndarray]:
    """Read one split ("train" or "test") of the reorganised layout.

    Returns:
      ``image`` float32 (N, H, W, 3), ``seg13`` / ``seg37`` int32 (N, h, w) with -1 = ignore,
      ``depth`` float32 (N, h, w, 1) metres.
    """
    if depth_format not in DEPTH_FORMATS:
        raise ValueError(f"depth_format must be one of {DEPTH_FORMATS}, got {depth_format!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"SUN RGB-D root {root} does not exist")
    list13, list37 = root / f"{split}13.txt", root / f"{split}37.txt"
    rows13, rows37 = read_list_file(list13), read_list_file(list37)
    if len(rows13) != len(rows37):
        raise ValueError(f"{list13} has {len(rows13)} lines but {list37} has {len(rows37)}")
    for number, (a, b) in enumerate(zip(rows13, rows37), 1):
        if a[:2] != b[:2]:
            raise ValueError(f"line {number}: {list13} and {list37} name different image/depth files ({a[:2]} vs {b[:2]})")
    if max_items is not None:
        rows13, rows37 = rows13[: int(max_items)], rows37[: int(max_items)]
    n = len(rows13)
    hi, wi = (int(s) for s in image_size)
    ht, wt = (int(s) for s in target_size)
    out = {"image": np.zeros((n, hi, wi, 3), np.float32), "seg13": np.zeros((n, ht, wt), np.int32),
           "seg37": np.zeros((n, ht, wt), np.int32), "depth": np.zeros((n, ht, wt, 1), np.float32)}
    for i, ((img_rel, depth_rel, lab13_rel), (_, _, lab37_rel)) in enumerate(zip(rows13, rows37)):
        image = _read_png(root / img_rel, "image")
        hw = image.shape[:2]
        depth_png = _read_png(root / depth_rel, "depth")
        if depth_png.shape != hw or not np.issubdtype(depth_png.dtype, np.integer):
            raise ValueError(f"{root / depth_rel}: expected a single-channel integer depth PNG of size {hw}, "
                             f"got {depth_png.dtype} {depth_png.shape}")
        out["image"][i] = crop_resize_bilinear(image.astype(np.float32) / 255, (hi, wi))
        out["depth"][i, ..., 0] = crop_resize_nearest(decode_depth(depth_png, depth_format), (ht, wt))
        out["seg13"][i] = crop_resize_nearest(_read_label(root / lab13_rel, 13, hw), (ht, wt))
        out["seg37"][i] = crop_resize_nearest(_read_label(root / lab37_rel, 37, hw), (ht, wt))
    return out


def load_sunrgbd(data_dir: str | os.PathLike | None = None, *, image_size: Sequence[int] = DEFAULT_IMAGE_SIZE,
                 target_size: Sequence[int] = DEFAULT_TARGET_SIZE, depth_format: str = "png10000",
                 max_items: int | None = None, synthetic_sizes: Sequence[int] = (795, 654),
                 seed: int = 0) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """SUN RGB-D train / test splits and their metadata.

    Args:
      data_dir: the reorganised root, or None for synthetic scenes (``seg37`` then holds
        18 fine classes and ``seg13`` the 13 NYU classes; see ``info["num_classes"]``).
      image_size, target_size: input and target sizes (paper: 320x320 and 80x80).
      depth_format: "png10000" or "toolbox".
      max_items: per split, for quick runs on real data.
      synthetic_sizes, seed: (train, test) scene counts and seed of the synthetic source.

    Returns:
      (splits, info).
    """
    if data_dir is None:
        splits, info = synthetic_sunrgbd(*synthetic_sizes, image_size=image_size, target_size=target_size, seed=seed)
        return splits, info
    splits = {s: read_sunrgbd_split(data_dir, s, image_size, target_size, depth_format, max_items)
              for s in ("train", "test")}
    info = sunrgbd_info(f"reorganised:{data_dir}", image_size, target_size,
                        {k: len(v["image"]) for k, v in splits.items()}, depth_format=depth_format)
    return splits, info
