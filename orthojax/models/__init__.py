"""Flax models: the MultiDigitMNIST CNN, multi-task SegNet, max-unpooling and VGG16 weights."""

from orthojax.models.cnn import LAST_SHARED_LAYER as CNN_LAST_SHARED_LAYER
from orthojax.models.cnn import MultiDigitCNN, cnn_shared_layer_names
from orthojax.models.segnet import LAST_SHARED_LAYER as SEGNET_LAST_SHARED_LAYER
from orthojax.models.segnet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NYUV2_HEADS,
    SUNRGBD_HEADS,
    Head,
    SegNet,
    resize_output,
    segnet_shared_layer_names,
)
from orthojax.models.mtan import (
    CITYSCAPES_HEADS,
    MTAN_LAST_SHARED_LAYER,
    MTAN_NYUV2_HEADS,
    MTAN_SHARED,
    SegNetMTAN,
    mtan_shared_layer_names,
)
from orthojax.models.unpool import max_pool_with_indices, max_unpool
from orthojax.models.vgg import convert_state_dict, load_vgg16_weights, read_weights

__all__ = [
    "CITYSCAPES_HEADS",
    "CNN_LAST_SHARED_LAYER",
    "Head",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MTAN_LAST_SHARED_LAYER",
    "MTAN_NYUV2_HEADS",
    "MTAN_SHARED",
    "MultiDigitCNN",
    "NYUV2_HEADS",
    "SEGNET_LAST_SHARED_LAYER",
    "SUNRGBD_HEADS",
    "SegNet",
    "SegNetMTAN",
    "cnn_shared_layer_names",
    "convert_state_dict",
    "load_vgg16_weights",
    "max_pool_with_indices",
    "max_unpool",
    "mtan_shared_layer_names",
    "read_weights",
    "resize_output",
    "segnet_shared_layer_names",
]
