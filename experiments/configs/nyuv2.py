"""NYUv2 (CosReg paper, section 5.1, Table 2): the configuration and its presets.

    quick: procedural scenes at 64x64 -> 16x16, SegNet at 1/16 width, batch 8, Adam 3e-3 halved every 3 epochs,
      10 epochs (120 steps per run), CosReg alpha 1 x mean task loss: the default command in minutes on a CPU.
      At a constant 3e-3 the last iterate's depth RMSE jumped between 0.85 and 1.4 from one epoch to the next
      (equal weights ended above the trivial predictor's 1.23); the decay settles it.
    paper: 320x320 -> 80x80, full SegNet, batch 2, Adam 1e-4 constant, 25 epochs, alpha 10 x mean task loss.

The quick preset's alpha is not the paper's: at alpha 10 (x mean task loss) CosReg stays at the trivial
predictor's level in 120 steps of this small network, while alpha 1 and 0.1 both learn (alpha 1 had the
lower depth and normal errors). ``--preset paper`` uses the paper's alpha 10.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from experiments.configs import ConfigError, ExperimentConfig, Train, preset_getter
from experiments.configs.dense import SegNetModel, check_scene_sizes

__all__ = ["NYUv2Data", "PRESETS", "TABLE_ROWS", "get_config"]

TABLE_ROWS = ("single_task", "equal", "gradnorm", "uncertainty", "cosreg")
"""The rows of the paper's Table 2."""

PRESETS = ("quick", "paper")


@dataclasses.dataclass(frozen=True)
class NYUv2Data:
    """NYUv2 data options.

    Attributes:
      data_dir: the MTAN preprocessed layout or the official labelled .mat (see
        :func:`orthojax.data.load_nyuv2`); None: procedural indoor scenes.
      protocol: "paper" (14 classes, void = background, ``target_size`` targets) or "mtan" (13 classes,
        void ignored; real data at its own size).
      synthetic_sizes: (train, test) sizes of the procedural scenes.
      image_size: input (height, width).
      target_size: target (height, width).
      augment: random scale-crop (1, 1.2, 1.5; depth / s) and horizontal flips (normal x negated).
      normal_mask: which gt normals the evaluation counts as missing: "all_zero" (the losses' rule) or "mtan"
        (MTAN's channel sum == 0; only to compare with MTAN-family code).
    """

    data_dir: Optional[str] = None
    protocol: str = dataclasses.field(default="paper", metadata={"choices": ("paper", "mtan")})
    synthetic_sizes: tuple[int, int] = (795, 654)
    image_size: tuple[int, int] = (320, 320)
    target_size: tuple[int, int] = (80, 80)
    augment: bool = False
    normal_mask: str = dataclasses.field(default="all_zero", metadata={"choices": ("all_zero", "mtan")})

    def __post_init__(self):
        for name in ("protocol", "normal_mask"):
            choices = next(f for f in dataclasses.fields(self) if f.name == name).metadata["choices"]
            if getattr(self, name) not in choices:
                raise ConfigError(f"data.{name} must be one of {', '.join(choices)}; got {getattr(self, name)!r}")
        check_scene_sizes(self)


def quick() -> ExperimentConfig:
    """The quick preset: a small CPU-sized run on the embedded synthetic scenes."""
    return ExperimentConfig(
        experiment="nyuv2", preset="quick",
        train=Train(epochs=10, batch_size=8, lr=3e-3, seeds=(0,), eval_batch_size=16, lr_decay_every_epochs=3,
                    lr_decay_factor=0.5),
        data=NYUv2Data(synthetic_sizes=(96, 48), image_size=(64, 64), target_size=(16, 16)),
        model=SegNetModel(width=1 / 16), rows=TABLE_ROWS,
        methods={"cosreg": {"alpha": 1.0, "scale_alpha_by_loss": True}})


def paper() -> ExperimentConfig:
    """The paper preset: the published protocol."""
    return ExperimentConfig(
        experiment="nyuv2", preset="paper",
        train=Train(epochs=25, batch_size=2, lr=1e-4, seeds=(0,), eval_batch_size=2),
        data=NYUv2Data(synthetic_sizes=(795, 654), image_size=(320, 320), target_size=(80, 80)),
        model=SegNetModel(width=1.0), rows=TABLE_ROWS,
        methods={"cosreg": {"alpha": 10.0, "scale_alpha_by_loss": True}})


get_config = preset_getter("nyuv2", {"quick": quick, "paper": paper})
