"""Synthetic NYUv2- and SUN RGB-D-style datasets: rendered scenes, resized and labelled per protocol.

Scene ``i`` of a split is rendered from a generator seeded by (seed, split, i) alone, so a dataset
does not depend on its size, on the rendering threads or on the order of rendering. The image is
rendered at the larger of the input and target sizes and crop-resized (bilinear for the image,
nearest for the targets, :mod:`orthojax.data.resize`).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from orthojax.data.resize import crop_resize_bilinear, crop_resize_nearest
from orthojax.data.synthetic.layout import scene_layout
from orthojax.data.synthetic.render import render_scene
from orthojax.data.synthetic.vocabulary import FINE_CLASSES, FINE_TO_COARSE, NYU13_CLASSES

__all__ = ["render_example", "synthetic_nyuv2", "synthetic_scenes", "synthetic_sunrgbd"]

_SPLIT_IDS = {"train": 1, "val": 2, "test": 3}


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


def _coarse(fine: np.ndarray) -> np.ndarray:
    """NYU 13-class ids (0..12) of fine ids, -1 (void) kept."""
    return np.where(fine >= 0, FINE_TO_COARSE[np.maximum(fine, 0)], -1)


def _info(name: str, protocol: str, tasks: dict[str, tuple[str, ...]], image_size, target_size, sizes) -> dict:
    """The metadata record of a synthetic dataset (the keys of the real readers' records)."""
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
        coarse = _coarse(raw["fine"])
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
        coarse = _coarse(raw["fine"])
        splits[split] = {"image": raw["image"], "seg13": coarse.astype(np.int32), "seg37": raw["fine"],
                         "depth": raw["depth"]}
    info = _info("sunrgbd", "paper", {"seg13": NYU13_CLASSES, "seg37": FINE_CLASSES}, image_size, target_size,
                 {"train": num_train, "test": num_test})
    return splits, info
