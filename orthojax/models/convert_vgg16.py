"""Convert torchvision VGG16 / VGG16-BN weights to an .npz for SegNet's encoder.

Usage::

    python -m orthojax.models.convert_vgg16 vgg16_bn-6c64b313.pth vgg16_bn.npz
    python -m orthojax.models.convert_vgg16 vgg16.safetensors vgg16.npz

A ``.pth`` state dict is read with ``torch.load(..., weights_only=True)`` (torch is needed for this
input only; no arbitrary code is unpickled); a ``.safetensors`` file needs no torch. The output layout
is described in :mod:`orthojax.models.vgg`; load it with :func:`orthojax.models.load_vgg16_weights`.
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

import numpy as np

from orthojax.models.vgg import convert_state_dict, read_weights

__all__ = ["main", "read_state_dict"]


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"reading {path} needs torch (pip install torch), or convert it to .safetensors first"
        ) from err
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {k: v.detach().cpu().numpy() for k, v in obj.items() if isinstance(v, torch.Tensor)}


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A torchvision state dict as NumPy arrays, from .safetensors (no torch) or .pth / .pt (torch).

    Args:
      path: input file.

    Returns:
      ``{torchvision key: array}``.
    """
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        return read_weights(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VGG16 state dict not found: {path}")
    return _read_torch(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: convert IN to OUT.npz; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m orthojax.models.convert_vgg16",
        description="Convert torchvision vgg16 / vgg16_bn weights (.pth or .safetensors) to an .npz for SegNet.",
    )
    parser.add_argument("input", help="torchvision state dict: .pth/.pt (needs torch) or .safetensors")
    parser.add_argument("output", help="output .npz")
    args = parser.parse_args(argv)
    if not args.output.endswith(".npz"):
        parser.error(f"output must end with .npz, got {args.output!r}")
    arrays = convert_state_dict(read_state_dict(args.input))
    np.savez(args.output, **arrays)
    kind = "vgg16_bn" if "bn1_1/mean" in arrays else "vgg16"
    print(f"wrote {args.output}: {kind}, {len(arrays)} arrays, {sum(a.size for a in arrays.values()):,} numbers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
