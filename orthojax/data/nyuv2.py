"""NYUv2 (795 train / 654 test) for segmentation, depth and surface normals.

Sources:

* the MTAN preprocessing, ``<root>/{train,val}/{image,label,depth,normal}/{i}.npy``
  (its "val" folder is the official test split; returned here as "test");
* the official ``nyu_depth_v2_labeled.mat`` (HDF5) with ``splits.mat`` and a
  894 -> 40 mapping (``classMapping40.mat`` key ``mapClass``, or a .npy of 894
  ints); 40 -> 13 is built in. Normals are not in the .mat: pass
  ``normals_dir`` or the "normal" task is dropped (and the info says so);
* synthetic scenes (:mod:`orthojax.data.synthetic`) when no data directory is given.

Protocols (``PROTOCOLS``):

* "paper" (CosReg): 320x320 input, 80x80 targets, 14 classes: void becomes
  class 0 "background" and the 13 classes become 1..13 (the paper counts
  background as a class, so nothing is ignored);
* "mtan": 288x384 input and targets, 13 classes 0..12, void = -1 ignored.

Resizing: bilinear for the image, nearest for labels and depth, bilinear then
re-normalised for normals, with masks recomputed (see :mod:`orthojax.data.resize`).
Output keys: ``image`` float32 (N, H, W, 3) RGB in [0, 1], ``seg`` int32 (N, h, w)
(-1 = ignore), ``depth`` float32 (N, h, w, 1) metres (0 = invalid), ``normal``
float32 (N, h, w, 3) unit (all-zero = invalid).

Valid pixels follow one rule everywhere (readers, losses, metrics): depth is missing where
it is 0, a normal only where it is all-zero. A normal whose components sum to 0, such as
(1/sqrt2, -1/sqrt2, 0), is valid and kept; MTAN's own code masks normals by "channel sum
!= 0" and drops it (``orthojax.metrics.NORMAL_MASKS`` offers that rule for comparisons).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from orthojax.data.resize import resize_dense

PROTOCOLS = {
    "paper": {"image_size": (320, 320), "target_size": (80, 80), "num_classes": 14},
    "mtan": {"image_size": (288, 384), "target_size": (288, 384), "num_classes": 13},
}
NYU13_CLASSES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa", "table",
                 "tv", "wall", "window")
"""The NYU 13 classes (Couprie et al. 2013), index = 13-class id - 1."""
NYU40_CLASSES = ("wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
                 "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
                 "floor_mat", "clothes", "ceiling", "books", "fridge", "tv", "paper", "towel", "shower_curtain",
                 "box", "whiteboard", "person", "night_stand", "toilet", "sink", "lamp", "bathtub", "bag",
                 "otherstructure", "otherfurniture", "otherprop")
"""The NYU40 classes (Gupta et al. 2013), index = NYU40 id - 1."""
NYU40_TO_13 = np.array([12, 5, 6, 1, 4, 9, 10, 12, 13, 6, 8, 6, 13, 10, 6, 13, 6, 7, 7, 5,
                        7, 3, 2, 6, 11, 7, 7, 7, 7, 7, 7, 6, 7, 7, 7, 7, 7, 7, 6, 7], dtype=np.int32)
"""NYU40 id (1..40) - 1 -> 13-class id (1..13, order of :data:`NYU13_CLASSES`)."""
MTAN_KEYS = ("image", "label", "depth", "normal")


def class_names(protocol: str) -> tuple[str, ...]:
    """Segmentation class names of a protocol (index = class id)."""
    _check_protocol(protocol)
    return (("background",) + NYU13_CLASSES) if protocol == "paper" else NYU13_CLASSES


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")


def _protocol_sizes(protocol: str, image_size: Sequence[int] | None,
                    target_size: Sequence[int] | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(image_size, target_size) as int tuples, the protocol's where None (ValueError: unknown protocol)."""
    _check_protocol(protocol)
    image_size = tuple(int(s) for s in (image_size or PROTOCOLS[protocol]["image_size"]))
    target_size = tuple(int(s) for s in (target_size or PROTOCOLS[protocol]["target_size"]))
    return image_size, target_size


def nyuv2_info(protocol: str, source: str, tasks: Sequence[str], image_size: Sequence[int],
               target_size: Sequence[int], split_sizes: dict[str, int], synthetic: bool = False,
               notes: Sequence[str] = ()) -> dict:
    """JSON-serialisable metadata record of a NYUv2 dataset."""
    names = class_names(protocol)
    return {"name": "nyuv2", "protocol": protocol, "source": str(source), "synthetic": bool(synthetic),
            "tasks": list(tasks), "num_classes": {"seg": len(names)}, "class_names": {"seg": list(names)},
            "void": "class 0 'background'" if protocol == "paper" else "-1, ignored",
            "image_size": [int(s) for s in image_size], "target_size": [int(s) for s in target_size],
            "split_sizes": dict(split_sizes), "notes": list(notes)}


def load_npy(path: Path) -> np.ndarray:
    """``np.load`` without pickle; errors name the file."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise ValueError(f"{path}: cannot read .npy file ({e})") from e
    if magic != b"\x93NUMPY":
        raise ValueError(f"{path}: not a valid .npy file (missing the NUMPY header)")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise ValueError(f"{path}: contains pickled objects; only plain numeric .npy files are accepted") from e
        raise ValueError(f"{path}: not a valid .npy file ({e})") from e
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read .npy file ({e})") from e


def apply_protocol(item: dict[str, np.ndarray], protocol: str, image_size: Sequence[int],
                   target_size: Sequence[int]) -> dict[str, np.ndarray]:
    """Resize one raw item (MTAN conventions, label -1..12) and map its labels to ``protocol``.

    Returns:
      dict with ``image``, ``seg`` and, if present, ``depth`` (h, w, 1) and ``normal``.
    """
    _check_protocol(protocol)
    sample = {"image": item["image"], "seg": item["label"], "depth": item["depth"][..., 0]}
    if "normal" in item:
        sample["normal"] = item["normal"]
    out = resize_dense(sample, image_size, target_size)
    seg = out["seg"].astype(np.int32)
    out["seg"] = seg + 1 if protocol == "paper" else seg
    out["depth"] = out["depth"][..., None]
    return out


# ----------------------------------------------------------------------------- MTAN layout
def _index_files(folder: Path) -> dict[int, Path]:
    files = {}
    for p in folder.iterdir():
        m = re.fullmatch(r"(\d+)\.npy", p.name)
        if m:
            files[int(m.group(1))] = p
    return files


def _split_dir(root: str | os.PathLike, split: str, dataset: str) -> Path:
    """``root/split`` of an MTAN-layout dataset (FileNotFoundError naming ``dataset`` and the missing folder)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset} root {root} does not exist")
    split_dir = root / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir}: missing {dataset} split folder (expected {root}/{{train,val}}/)")
    return split_dir


def _index_split(folders: dict[str, Path]) -> tuple[dict[str, dict[int, Path]], int]:
    """The ``<i>.npy`` files of every folder of one split (MTAN layout) and their number N.

    Raises:
      ValueError: ``folders["image"]`` holds no ``<i>.npy`` file, or a folder does not hold exactly
        0.npy..N-1.npy (the message names the folder and the missing and unexpected indices).
    """
    files = {key: _index_files(folder) for key, folder in folders.items()}
    n = len(files["image"])
    if n == 0:
        raise ValueError(f"{folders['image']}: no <i>.npy files")
    for key, found in files.items():
        if set(found) != set(range(n)):
            missing = sorted(set(range(n)) - set(found))[:5]
            extra = sorted(set(found) - set(range(n)))[:5]
            raise ValueError(f"{folders[key]}: {len(found)} files, but {folders['image']} has {n} "
                             f"(expected 0.npy..{n - 1}.npy; missing {missing}, unexpected {extra})")
    return files, n


def check_mtan_item(item: dict[str, np.ndarray], paths: dict[str, Path], num_classes: int = 13) -> dict[str, np.ndarray]:
    """Validate and normalise one MTAN item; errors name the offending file.

    Returns:
      image float32 (H, W, 3), label int32 (H, W) in -1..num_classes-1, depth float32
      (H, W, 1), normal float32 (H, W, 3).
    """
    image = item["image"]
    if image.ndim != 3 or image.shape[-1] != 3 or not np.issubdtype(image.dtype, np.number):
        raise ValueError(f"{paths['image']}: expected an RGB image (H, W, 3), got {image.dtype} {image.shape}")
    hw = image.shape[:2]
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255
    image = image.astype(np.float32)
    if not np.all(np.isfinite(image)):
        raise ValueError(f"{paths['image']}: contains NaN or infinite values")
    out = {"image": image}
    expected = {"label": (hw, hw), "depth": (hw + (1,), hw), "normal": (hw + (3,), hw + (3,))}
    for key in ("label", "depth", "normal"):
        if key not in item:
            continue
        a = item[key]
        if a.shape not in expected[key] or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise ValueError(f"{paths[key]}: expected {key} of shape {expected[key][0]} (matching the image), "
                             f"got {a.dtype} {a.shape}")
        if key == "label":
            if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
                raise ValueError(f"{paths[key]}: labels must be integers")
            lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
            if lo < -1 or hi >= num_classes:
                raise ValueError(f"{paths[key]}: label values must be in -1..{num_classes - 1}, got {lo}..{hi}")
            out[key] = a.astype(np.int32)
        else:
            a = a.astype(np.float32).reshape(expected[key][0])
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{paths[key]}: contains NaN or infinite values")
            if key == "depth" and a.min(initial=0) < 0:
                raise ValueError(f"{paths[key]}: depth must be >= 0 metres (0 = invalid)")
            out[key] = a
    return out


def read_mtan_split(root: str | os.PathLike, split: str, protocol: str = "paper",
                    image_size: Sequence[int] | None = None, target_size: Sequence[int] | None = None,
                    max_items: int | None = None, with_normals: bool = True) -> dict[str, np.ndarray]:
    """Read and convert one split of the MTAN layout.

    Args:
      root: folder holding ``train/`` and ``val/``.
      split: "train" or "val" (the official test split).
      protocol, image_size, target_size: see :func:`load_nyuv2`.
      max_items: read only the first items (quick runs).
      with_normals: read the ``normal`` folder.

    Returns:
      dict of stacked arrays (see the module docstring).
    """
    image_size, target_size = _protocol_sizes(protocol, image_size, target_size)
    split_dir = _split_dir(root, split, "NYUv2")
    keys = MTAN_KEYS if with_normals else MTAN_KEYS[:3]
    folders = {key: split_dir / key for key in keys}
    for folder in folders.values():
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: missing folder (expected {split_dir}/{{{','.join(keys)}}}/<i>.npy)")
    files, n = _index_split(folders)
    n = n if max_items is None else min(n, int(max_items))
    items = []
    for i in range(n):
        paths = {key: files[key][i] for key in keys}
        raw = check_mtan_item({key: load_npy(p) for key, p in paths.items()}, paths)
        items.append(apply_protocol(raw, protocol, image_size, target_size))
    return {key: np.stack([it[key] for it in items]) for key in items[0]}


# ----------------------------------------------------------------------------- official .mat
def _loadmat(path: Path) -> dict:
    try:
        from scipy.io import loadmat
    except ImportError as e:
        raise ImportError(f"reading {path} needs scipy (pip install scipy)") from e
    try:
        return loadmat(str(path))
    except Exception as e:
        raise ValueError(f"{path}: cannot read MATLAB file ({e})") from e


def read_mapping40(path: str | os.PathLike) -> np.ndarray:
    """The 894 -> 40 class mapping (``classMapping40.mat`` key ``mapClass`` or a .npy/.txt of 894 ints).

    Returns:
      int32 (895,) lookup: index = 894-class id (0 = void), value = NYU40 id (0 = void).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"894 -> 40 class mapping {path} does not exist")
    if path.suffix == ".mat":
        mat = _loadmat(path)
        if "mapClass" not in mat:
            raise ValueError(f"{path}: expected key 'mapClass', found {sorted(k for k in mat if not k.startswith('__'))}")
        m = np.asarray(mat["mapClass"]).ravel()
    elif path.suffix == ".npy":
        m = load_npy(path).ravel()
    else:
        m = np.loadtxt(path).ravel()
    if m.shape != (894,) or m.min() < 0 or m.max() > 40:
        raise ValueError(f"{path}: expected 894 values in 0..40, got shape {m.shape}, range {m.min()}..{m.max()}")
    return np.concatenate([[0], m]).astype(np.int32)


def read_splits(path: str | os.PathLike, num_images: int = 1449) -> dict[str, np.ndarray]:
    """``splits.mat``: 1-based ``trainNdxs`` / ``testNdxs`` -> 0-based index arrays."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NYUv2 splits file {path} does not exist")
    mat = _loadmat(path)
    out = {}
    for split, key in (("train", "trainNdxs"), ("test", "testNdxs")):
        if key not in mat:
            raise ValueError(f"{path}: missing key {key!r}")
        idx = np.asarray(mat[key]).ravel().astype(np.int64) - 1
        if idx.size == 0 or idx.min() < 0 or idx.max() >= num_images:
            raise ValueError(f"{path}: {key} must hold 1-based indices in 1..{num_images}")
        out[split] = idx
    return out


def _read_normal(normals_dir: Path, split: str, pos: int, frame: int) -> np.ndarray:
    """Normals of one frame: MTAN layout (<dir>/<train|val>/normal/<pos>.npy) or <dir>/<frame>.npy."""
    mtan = normals_dir / ("train" if split == "train" else "val") / "normal" / f"{pos}.npy"
    path = mtan if mtan.parent.is_dir() else normals_dir / f"{frame}.npy"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing normal map (expected {mtan} or {normals_dir}/<frame>.npy)")
    n = load_npy(path).astype(np.float32)
    if n.ndim != 3 or n.shape[-1] != 3:
        raise ValueError(f"{path}: expected normals (H, W, 3), got {n.shape}")
    if not np.all(np.isfinite(n)):
        raise ValueError(f"{path}: contains NaN or infinite values")
    return n


def read_nyuv2_mat(mat_path: str | os.PathLike, splits_path: str | os.PathLike, mapping40_path: str | os.PathLike,
                   protocol: str = "paper", image_size: Sequence[int] | None = None,
                   target_size: Sequence[int] | None = None, normals_dir: str | os.PathLike | None = None,
                   max_items: int | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Read the official labelled .mat (HDF5) into protocol-converted train / test splits.

    Labels go 894 -> 40 (``mapping40_path``) -> 13 (:data:`NYU40_TO_13`); 0 = void.

    Returns:
      ``{"train", "test"}`` dicts of stacked arrays; ``normal`` only if ``normals_dir`` is given.
    """
    import h5py

    image_size, target_size = _protocol_sizes(protocol, image_size, target_size)
    mat_path = Path(mat_path)
    if not mat_path.is_file():
        raise FileNotFoundError(f"NYUv2 labelled file {mat_path} does not exist")
    to40 = read_mapping40(mapping40_path)
    to13 = np.concatenate([[0], NYU40_TO_13])[to40]  # 894-id -> 13-id (0 void)
    try:
        f = h5py.File(mat_path, "r")
    except OSError as e:
        raise ValueError(f"{mat_path}: not an HDF5 (MATLAB v7.3) file ({e})") from e
    with f:
        for key in ("images", "depths", "labels"):
            if key not in f:
                raise ValueError(f"{mat_path}: missing dataset {key!r} (found {sorted(f.keys())})")
        images, depths, labels = f["images"], f["depths"], f["labels"]
        n = images.shape[0]
        if images.ndim != 4 or images.shape[1] != 3 or depths.shape != (n,) + images.shape[2:] or labels.shape != depths.shape:
            raise ValueError(f"{mat_path}: expected images (N, 3, W, H), depths and labels (N, W, H); got "
                             f"{images.shape}, {depths.shape}, {labels.shape}")
        splits = read_splits(splits_path, n)
        out = {}
        for split, frames in splits.items():
            frames = frames if max_items is None else frames[: int(max_items)]
            items = []
            for pos, frame in enumerate(frames):
                lab = np.asarray(labels[frame]).T.astype(np.int64)
                if lab.min() < 0 or lab.max() >= len(to13):
                    raise ValueError(f"{mat_path}: labels of frame {frame} must be in 0..{len(to13) - 1}, "
                                     f"got {lab.min()}..{lab.max()}")
                raw = {"image": np.asarray(images[frame]).transpose(2, 1, 0).astype(np.float32) / 255,
                       "label": to13[lab] - 1,
                       "depth": np.asarray(depths[frame]).T.astype(np.float32)[..., None]}
                for key in ("image", "depth"):
                    if not np.all(np.isfinite(raw[key])):
                        raise ValueError(f"{mat_path}: the {key} of frame {frame} contains NaN or infinite values")
                if normals_dir is not None:
                    raw["normal"] = _read_normal(Path(normals_dir), split, pos, int(frame))  # own resolution is fine
                items.append(apply_protocol(raw, protocol, image_size, target_size))
            out[split] = {key: np.stack([it[key] for it in items]) for key in items[0]}
    return out


# ----------------------------------------------------------------------------- entry point
def load_nyuv2(data_dir: str | os.PathLike | None = None, protocol: str = "paper", *,
               image_size: Sequence[int] | None = None, target_size: Sequence[int] | None = None,
               normals_dir: str | os.PathLike | None = None, splits_path: str | os.PathLike | None = None,
               mapping40_path: str | os.PathLike | None = None, with_normals: bool = True,
               max_items: int | None = None, synthetic_sizes: Sequence[int] = (795, 654),
               seed: int = 0) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """NYUv2 train / test splits and their metadata.

    Args:
      data_dir: None (synthetic scenes), an MTAN root (with ``train/`` and ``val/``), the
        ``nyu_depth_v2_labeled.mat`` file, or a folder holding it with ``splits.mat`` and
        ``classMapping40.mat``.
      protocol: "paper" or "mtan" (see the module docstring).
      image_size, target_size: override the protocol's sizes (e.g. tiny test runs).
      normals_dir: normals for the .mat source.
      splits_path, mapping40_path: for the .mat source (default: next to the .mat).
      with_normals: read the MTAN normals (False drops the task).
      max_items: per split, for quick runs on real data.
      synthetic_sizes, seed: (train, test) scene counts and seed of the synthetic source.

    Returns:
      (splits, info): ``{"train", "test"}`` dicts of arrays and the metadata record.
    """
    image_size, target_size = _protocol_sizes(protocol, image_size, target_size)
    notes = []
    if data_dir is None:
        # imported here: the synthetic generator imports this module's class vocabulary
        from orthojax.data.synthetic import synthetic_nyuv2

        splits, _ = synthetic_nyuv2(*synthetic_sizes, image_size=image_size, target_size=target_size,
                                    seed=seed, protocol=protocol)
        source = "synthetic"
        notes.append("synthetic data: procedural indoor scenes (orthojax.data.synthetic), not the real NYUv2")
    else:
        path = Path(data_dir)
        mat = path if path.suffix == ".mat" else path / "nyu_depth_v2_labeled.mat"
        if path.is_dir() and (path / "train").is_dir():
            splits = {"train": read_mtan_split(path, "train", protocol, image_size, target_size, max_items, with_normals),
                      "test": read_mtan_split(path, "val", protocol, image_size, target_size, max_items, with_normals)}
            source = f"mtan:{path}"
        elif mat.is_file():
            folder = mat.parent
            splits = read_nyuv2_mat(mat, splits_path or folder / "splits.mat",
                                    mapping40_path or folder / "classMapping40.mat", protocol, image_size,
                                    target_size, normals_dir, max_items)
            source = f"mat:{mat}"
            if normals_dir is None:
                notes.append("normals are not in the official .mat and no normals_dir was given: "
                             "the 'normal' task is disabled")
        else:
            raise FileNotFoundError(f"NYUv2 data_dir {path}: expected an MTAN root with train/ and val/ folders, "
                                    f"or nyu_depth_v2_labeled.mat")
    tasks = ["seg", "depth"] + (["normal"] if "normal" in splits["train"] else [])
    if source.startswith("mtan") and not with_normals:
        notes.append("the 'normal' task is disabled (with_normals=False)")
    info = nyuv2_info(protocol, source, tasks, image_size, target_size,
                      {k: len(v["image"]) for k, v in splits.items()}, synthetic=source == "synthetic", notes=notes)
    return splits, info
