"""Datasets (as dicts of NumPy arrays with a common leading axis) and their loader."""

from orthojax.data.loader import dataset_size, epoch_permutation, iterate_batches, prefetch, step_rng, steps_per_epoch
from orthojax.data.mnist_io import load_mnist_embedded, load_mnist_idx, load_mnist_tfds, read_idx
from orthojax.data.multidigit import multidigit_info, multidigit_mnist, split_pairs
from orthojax.data.nyuv2 import (NYU13_CLASSES, NYU40_CLASSES, NYU40_TO_13, PROTOCOLS, load_nyuv2, read_mtan_split,
                                 read_nyuv2_mat)
from orthojax.data.resize import (crop_resize_bilinear, crop_resize_nearest, dense_augment, hflip, normalize_normals,
                                  random_scale_crop_box, resize_dense, resize_normals)
from orthojax.data.sunrgbd import DEPTH_FORMATS, decode_depth, load_sunrgbd, read_list_file, read_sunrgbd_split
from orthojax.data.synthetic import (FINE_CLASSES, FINE_TO_COARSE, render_scene, scene_layout, synthetic_nyuv2,
                                     synthetic_scenes, synthetic_sunrgbd)

__all__ = [
    "DEPTH_FORMATS", "FINE_CLASSES", "FINE_TO_COARSE", "NYU13_CLASSES", "NYU40_CLASSES", "NYU40_TO_13", "PROTOCOLS",
    "crop_resize_bilinear", "crop_resize_nearest", "dataset_size", "decode_depth", "dense_augment",
    "epoch_permutation", "hflip", "iterate_batches", "load_mnist_embedded", "load_mnist_idx", "load_mnist_tfds",
    "load_nyuv2", "load_sunrgbd", "multidigit_info", "multidigit_mnist", "normalize_normals", "prefetch",
    "random_scale_crop_box", "read_idx", "read_list_file", "read_mtan_split", "read_nyuv2_mat",
    "read_sunrgbd_split", "render_scene", "resize_dense", "resize_normals", "scene_layout", "split_pairs",
    "step_rng", "steps_per_epoch", "synthetic_nyuv2", "synthetic_scenes", "synthetic_sunrgbd",
]
from orthojax.data.cityscapes import (CITYSCAPES_7_CLASSES, CITYSCAPES_19_CLASSES, cityscapes_augment,  # noqa: E402
                                      finalize_cityscapes_metrics, init_cityscapes_metrics, load_cityscapes,
                                      read_cityscapes_split, synthetic_cityscapes, update_cityscapes_metrics)
__all__ += ["CITYSCAPES_7_CLASSES", "CITYSCAPES_19_CLASSES", "cityscapes_augment", "finalize_cityscapes_metrics",
            "init_cityscapes_metrics", "load_cityscapes", "read_cityscapes_split", "synthetic_cityscapes",
            "update_cityscapes_metrics"]
