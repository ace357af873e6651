"""Resizing, cropping and flipping of dense multi-task samples (NumPy).

All functions work on one image-like array whose two leading axes are (H, W)
(optionally followed by channels). Boxes are given in normalised coordinates
(top, left, height, width) in [0, 1], so the same box selects the same scene
region in an input image and in its lower-resolution targets.

Conventions (half-pixel centres, no antialiasing; the same grid as
``jax.image.resize`` and PyTorch ``align_corners=False``):

* ``nearest`` for labels and depth (values are never mixed);
* ``bilinear`` for RGB and surface normals; normals are re-normalised
  afterwards and invalid (all-zero) normals stay zero.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

Box = tuple[float, float, float, float]
FULL_BOX: Box = (0.0, 0.0, 1.0, 1.0)


def _source_coords(n_in: int, n_out: int, start: float, extent: float) -> np.ndarray:
    """Continuous source pixel coordinates of the ``n_out`` output pixel centres."""
    scale = extent * n_in / n_out
    return start * n_in + (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5


def _check(x: np.ndarray, out_hw: Sequence[int], box: Box) -> tuple[int, int]:
    if x.ndim < 2:
        raise ValueError(f"expected an array with leading (H, W) axes, got shape {x.shape}")
    h, w = (int(v) for v in out_hw)
    if h <= 0 or w <= 0:
        raise ValueError(f"output size must be positive, got {tuple(out_hw)}")
    top, left, bh, bw = box
    if bh <= 0 or bw <= 0 or top < 0 or left < 0 or top + bh > 1 + 1e-9 or left + bw > 1 + 1e-9:
        raise ValueError(f"box {box} is not inside the unit square")
    return h, w


def crop_resize_nearest(x: np.ndarray, out_hw: Sequence[int], box: Box = FULL_BOX) -> np.ndarray:
    """Nearest-neighbour resample of the region ``box`` of ``x`` to ``out_hw``.

    Args:
      x: array (H, W, ...), any dtype.
      out_hw: output (h, w).
      box: normalised (top, left, height, width) region of ``x``.

    Returns:
      Array (h, w, ...) with the dtype of ``x``; every value is a value of ``x``.
    """
    h, w = _check(x, out_hw, box)
    rows = np.floor(_source_coords(x.shape[0], h, box[0], box[2]) + 0.5).astype(np.int64)
    cols = np.floor(_source_coords(x.shape[1], w, box[1], box[3]) + 0.5).astype(np.int64)
    rows = np.clip(rows, 0, x.shape[0] - 1)
    cols = np.clip(cols, 0, x.shape[1] - 1)
    return x[rows[:, None], cols[None, :]]


def _linear_weights(n_in: int, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = np.clip(coords, 0.0, n_in - 1)
    lo = np.floor(c).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (c - lo).astype(np.float32)


def crop_resize_bilinear(x: np.ndarray, out_hw: Sequence[int], box: Box = FULL_BOX) -> np.ndarray:
    """Bilinear resample (edge-clamped) of the region ``box`` of ``x`` to ``out_hw``.

    Args:
      x: array (H, W, ...), converted to float32.
      out_hw: output (h, w).
      box: normalised (top, left, height, width) region of ``x``.

    Returns:
      float32 array (h, w, ...).
    """
    h, w = _check(x, out_hw, box)
    x = np.asarray(x, dtype=np.float32)
    r0, r1, fr = _linear_weights(x.shape[0], _source_coords(x.shape[0], h, box[0], box[2]))
    c0, c1, fc = _linear_weights(x.shape[1], _source_coords(x.shape[1], w, box[1], box[3]))
    extra = (1,) * (x.ndim - 2)
    fr = fr.reshape((h, 1) + extra)
    fc = fc.reshape((1, w) + extra)
    top = x[r0][:, c0] * (1 - fc) + x[r0][:, c1] * fc
    bottom = x[r1][:, c0] * (1 - fc) + x[r1][:, c1] * fc
    return (top * (1 - fr) + bottom * fr).astype(np.float32)


def normalize_normals(n: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Rescale normals (..., 3) to unit length; vectors shorter than ``eps`` become zero."""
    n = np.asarray(n, dtype=np.float32)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    return np.where(norm > eps, n / np.maximum(norm, eps), 0.0).astype(np.float32)


def resize_normals(n: np.ndarray, out_hw: Sequence[int], box: Box = FULL_BOX) -> np.ndarray:
    """Bilinear resample of unit normals (H, W, 3), re-normalised, validity mask recomputed.

    A pixel is valid where the nearest source pixel is valid (non-zero), the
    same rule as for depth, so depth and normal masks stay aligned.
    """
    valid = crop_resize_nearest(np.any(n != 0, axis=-1), out_hw, box)
    out = normalize_normals(crop_resize_bilinear(n, out_hw, box))
    return np.where(valid[..., None], out, 0.0).astype(np.float32)


def resize_dense(
    sample: Mapping[str, np.ndarray],
    image_hw: Sequence[int],
    target_hw: Sequence[int],
    box: Box = FULL_BOX,
    depth_scale: float = 1.0,
) -> dict[str, np.ndarray]:
    """Resample one dense sample (no batch axis) by key convention.

    ``image`` -> bilinear to ``image_hw``; ``normal`` -> :func:`resize_normals`;
    ``depth`` -> nearest, divided by ``depth_scale``; every other key (labels)
    -> nearest. Targets go to ``target_hw``.

    Args:
      sample: dict of arrays (H, W, ...) sharing one field of view.
      image_hw: output size of ``image``.
      target_hw: output size of all other keys.
      box: normalised crop box applied to every key.
      depth_scale: divisor of depth (a zoom by ``s`` brings the scene ``s`` times closer).

    Returns:
      New dict with the same keys.
    """
    out = {}
    for key, value in sample.items():
        if key == "image":
            out[key] = crop_resize_bilinear(value, image_hw, box)
        elif key == "normal":
            out[key] = resize_normals(value, target_hw, box)
        elif key == "depth":
            out[key] = (crop_resize_nearest(value, target_hw, box) / np.float32(depth_scale)).astype(np.float32)
        else:
            out[key] = crop_resize_nearest(value, target_hw, box)
    return out


def hflip(sample: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Mirror one unbatched sample (arrays (H, W, ...)) left-right.

    The x component of ``normal`` is negated (camera frame with x to the right).
    """
    out = {k: np.ascontiguousarray(v[:, ::-1]) for k, v in sample.items()}
    if "normal" in out:
        out["normal"] = out["normal"] * np.array([-1.0, 1.0, 1.0], dtype=np.float32)
        out["normal"] = np.where(out["normal"] == 0, np.float32(0), out["normal"])  # no -0.0
    return out


def random_scale_crop_box(rng: np.random.Generator, scales: Sequence[float] = (1.0, 1.2, 1.5)) -> tuple[Box, float]:
    """Draw a scale ``s`` from ``scales`` and a box of side 1/s at a uniform position.

    Returns:
      (box, s).
    """
    s = float(scales[int(rng.integers(len(scales)))])
    if s < 1:
        raise ValueError(f"scales must be >= 1, got {s}")
    side = 1.0 / s
    top, left = rng.uniform(0.0, 1.0 - side, size=2) if side < 1 else (0.0, 0.0)
    return (float(top), float(left), side, side), s


def dense_augment(
    scales: Sequence[float] = (1.0, 1.2, 1.5), flip: bool = True
) -> Callable[[dict[str, np.ndarray], np.random.Generator], dict[str, np.ndarray]]:
    """Batch transform: random scale-crop (depth / s) and horizontal flip, per sample.

    The returned function ``transform(batch, rng)`` keeps each array's shape;
    it is meant for :func:`orthojax.data.loader.iterate_batches`, which passes a
    Generator seeded from (seed, epoch, step).
    """
    scales = tuple(float(s) for s in scales)

    def transform(batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        n = len(next(iter(batch.values())))
        samples = []
        for i in range(n):
            sample = {k: v[i] for k, v in batch.items()}
            image_hw = sample["image"].shape[:2] if "image" in sample else None
            target_hw = next((v.shape[:2] for k, v in sample.items() if k != "image"), image_hw)
            image_hw = image_hw or target_hw
            box, s = random_scale_crop_box(rng, scales)
            if s != 1.0:
                sample = resize_dense(sample, image_hw, target_hw, box, depth_scale=s)
            if flip and rng.random() < 0.5:
                sample = hflip(sample)
            samples.append(sample)
        return {k: np.stack([s[k] for s in samples]).astype(batch[k].dtype) for k in batch}

    return transform
