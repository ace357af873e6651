"""Cityscapes in MTAN's layout (7-class segmentation + disparity): the configuration and its presets.

    quick: synthetic street scenes at 32x64, SegNet-MTAN at 1/16 width without BatchNorm, 2 epochs, three rows
      (single task, equal weights, CosReg): minutes on a 2-core CPU, most of it compilation.
    paper: the field's protocol (MTAN, Nash-MTL, FAMO): 128x256, SegNet-MTAN, batch 8, Adam 1e-4 halved
      after 100 epochs (MTAN's StepLR(100, 0.5)), 200 epochs, the mean of the last 10 epochs' evaluations.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

from experiments.configs import ConfigError, ExperimentConfig, Train, preset_getter
from experiments.configs.dense import check_sizes

__all__ = ["ARCHITECTURES", "CityscapesData", "CityscapesModel", "PRESETS", "QUICK_ROWS", "TABLE_ROWS", "get_config"]

TABLE_ROWS = ("single_task", "equal", "uncertainty", "cosreg")
"""The default rows: the single-task reference, equal weights, uncertainty weighting and CosReg."""

QUICK_ROWS = ("single_task", "equal", "cosreg")
"""The quick preset's rows (each row compiles its own programs, which is most of a CPU run's time)."""

PRESETS = ("quick", "paper")

ARCHITECTURES = ("mtan", "segnet")
"""``mtan``: :class:`orthojax.models.SegNetMTAN` (the field's model); ``segnet``: :class:`orthojax.models.SegNet`
(a shared encoder, one decoder per task)."""


@dataclasses.dataclass(frozen=True)
class CityscapesData:
    """Cityscapes data and evaluation options.

    Attributes:
      data_dir: MTAN's preprocessed layout (``<root>/{train,val}/{image,label_7,depth}/<i>.npy``, see
        :func:`orthojax.data.load_cityscapes`); None: synthetic street scenes.
      synthetic_sizes: (train, test) numbers of synthetic scenes.
      image_size: (height, width) of the synthetic scenes, multiples of 32 (real data keeps its own size).
      max_items: at most this many items per split of the real data (None: all).
      augment: random scale-crop (1, 1.2, 1.5; disparity x s) and horizontal flips of the training batches.
      last_epochs: the reported numbers are the mean of the last this many epochs' evaluations (10: MTAN's
        protocol; 1: the final epoch).
    """

    data_dir: Optional[str] = None
    synthetic_sizes: tuple[int, int] = (2975, 500)
    image_size: tuple[int, int] = (128, 256)
    max_items: Optional[int] = None
    augment: bool = False
    last_epochs: int = 10

    def __post_init__(self):
        check_sizes("data.synthetic_sizes", self.synthetic_sizes, 2)
        check_sizes("data.image_size", self.image_size, 2)
        if any(v % 32 for v in self.image_size):
            raise ConfigError(f"data.image_size must be multiples of 32 (SegNet pools five times); got "
                              f"{self.image_size!r}")
        if self.max_items is not None and (isinstance(self.max_items, bool) or not isinstance(self.max_items, int)
                                           or self.max_items < 1):
            raise ConfigError(f"data.max_items must be an integer >= 1 or none; got {self.max_items!r}")
        if not isinstance(self.augment, bool):
            raise ConfigError(f"data.augment must be true or false; got {self.augment!r}")
        if isinstance(self.last_epochs, bool) or not isinstance(self.last_epochs, int) or self.last_epochs < 1:
            raise ConfigError(f"data.last_epochs must be an integer >= 1; got {self.last_epochs!r}")


@dataclasses.dataclass(frozen=True)
class CityscapesModel:
    """The Cityscapes model.

    Attributes:
      arch: "mtan" (SegNet-MTAN) or "segnet" (SegNet, a decoder per task).
      width: channel multiplier, > 0 (1 = VGG16's channels).
      batchnorm: BatchNorm after every convolution.
    """

    arch: str = dataclasses.field(default="mtan", metadata={"choices": ARCHITECTURES})
    width: float = 1.0
    batchnorm: bool = True

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"model.arch must be one of {', '.join(ARCHITECTURES)}; got {self.arch!r}")
        if isinstance(self.width, bool) or not isinstance(self.width, (int, float)) or not (
                math.isfinite(self.width) and self.width > 0):
            raise ConfigError(f"model.width must be a finite number > 0; got {self.width!r}")
        if not isinstance(self.batchnorm, bool):
            raise ConfigError(f"model.batchnorm must be true or false; got {self.batchnorm!r}")


def quick() -> ExperimentConfig:
    """The quick preset: a CPU-sized run of SegNet-MTAN on small synthetic street scenes."""
    return ExperimentConfig(
        experiment="cityscapes", preset="quick",
        train=Train(epochs=2, batch_size=8, lr=1e-3, seeds=(0,), eval_batch_size=16),
        data=CityscapesData(synthetic_sizes=(32, 16), image_size=(32, 64), last_epochs=1),
        model=CityscapesModel(width=1 / 16, batchnorm=False), rows=QUICK_ROWS, methods={"cosreg": {"alpha": 10.0}})


def paper() -> ExperimentConfig:
    """The paper preset: the published protocol."""
    return ExperimentConfig(
        experiment="cityscapes", preset="paper",
        train=Train(epochs=200, batch_size=8, lr=1e-4, seeds=(0,), eval_batch_size=8, lr_decay_every_epochs=100,
                    lr_decay_factor=0.5),
        data=CityscapesData(synthetic_sizes=(2975, 500), image_size=(128, 256), last_epochs=10),
        model=CityscapesModel(width=1.0), rows=TABLE_ROWS, methods={"cosreg": {"alpha": 10.0}})


get_config = preset_getter("cityscapes", {"quick": quick, "paper": paper})
