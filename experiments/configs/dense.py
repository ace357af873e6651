"""The SegNet options shared by the dense-prediction experiments (NYUv2, SUN RGB-D)."""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

from experiments.configs import ConfigError

__all__ = ["SegNetModel", "check_scene_sizes", "check_sizes"]


@dataclasses.dataclass(frozen=True)
class SegNetModel:
    """SegNet (:class:`orthojax.models.SegNet`) options.

    Attributes:
      width: channel multiplier, > 0 (1 = VGG16's channels).
      batchnorm: BatchNorm after every convolution (SegNet's VGG16-BN encoder) or none (plain VGG16).
      vgg16_weights: ImageNet VGG16 weights for the encoder (.npz / .safetensors written by
        ``python -m orthojax.models.convert_vgg16``; width 1 only), or None for a random initialisation.
    """

    width: float = 1.0
    batchnorm: bool = True
    vgg16_weights: Optional[str] = None

    def __post_init__(self):
        if isinstance(self.width, bool) or not isinstance(self.width, (int, float)) or not (
                math.isfinite(self.width) and self.width > 0):
            raise ConfigError(f"model.width must be a finite number > 0; got {self.width!r}")
        if not isinstance(self.batchnorm, bool):
            raise ConfigError(f"model.batchnorm must be true or false; got {self.batchnorm!r}")


def check_sizes(field: str, value, count: int, optional: bool = False) -> None:
    """``value`` is ``count`` integers >= 1 (or None when ``optional``).

    Raises:
      ConfigError: naming ``field`` and the value.
    """
    if optional and value is None:
        return
    if not (isinstance(value, tuple) and len(value) == count
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        raise ConfigError(f"{field} must be {count} integers >= 1{' or none' if optional else ''}; got {value!r}")


def check_scene_sizes(data) -> None:
    """A dense data section's ``synthetic_sizes`` (train, test), ``image_size`` and ``target_size`` (height,
    width) are each two integers >= 1.

    Raises:
      ConfigError: the first that is not (named as ``data.<field>``).
    """
    for name in ("synthetic_sizes", "image_size", "target_size"):
        check_sizes(f"data.{name}", getattr(data, name), 2)
