"""PyTorch twins of MultiDigitCNN and SegNet and their train steps, to time JAX against in the same run.

The twins have the same layers, shapes and FLOPs as :class:`orthojax.models.MultiDigitCNN` and
:class:`orthojax.models.SegNet` (not the same initial weights: only speed is compared). The CosReg step is
the way the paper's method is written in PyTorch: one ``torch.autograd.grad(L_t, W, create_graph=True)``
per task, the cosine penalty of those gradients, then ``backward()`` through it (double backward).

Needs ``torch`` (``pip install -e ".[torch]"``); :func:`available` says whether it is importable.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

__all__ = ["available", "device", "make_cnn", "make_segnet", "make_step", "to_torch"]


def device() -> str:
    """"cuda" when PyTorch sees a GPU, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def make_cnn(num_tasks: int, features: int = 20, dense_features: int = 50, num_classes: int = 5):
    """The paper's MultiDigitMNIST CNN (64x64x1 input); returns ``(model, last_shared_weight, losses_fn)``."""
    import torch
    from torch import nn

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(features, features, 3, stride=2, padding=1, bias=False)
            self.dense1 = nn.Linear(8 * 8 * features, dense_features)
            self.dense2 = nn.Linear(dense_features, num_classes)

        def forward(self, z):
            h = torch.relu(self.conv(z)).flatten(1)
            return self.dense2(torch.relu(self.dense1(h)))

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, features, 3, stride=2, padding=1, bias=False)
            self.conv2 = nn.Conv2d(features, features, 3, stride=2, padding=1, bias=False)
            self.decoders = nn.ModuleList(Decoder() for _ in range(num_tasks))

        def forward(self, x):
            z = torch.relu(self.conv2(torch.relu(self.conv1(x))))
            return [dec(z) for dec in self.decoders]

    model = CNN()

    def losses_fn(outputs, batch):
        return [nn.functional.cross_entropy(out, batch["label"][:, t]) for t, out in enumerate(outputs)]

    return model, model.conv2.weight, losses_fn


_VGG16 = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def make_segnet(heads: Sequence[tuple[str, int]], width: float, output_size: int):
    """SegNet (VGG16-BN encoder, one unpooling decoder per head); returns ``(model, W, losses_fn)``."""
    from torch import nn

    def block(c_in, c_out):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            stages, c_in = [], 3
            for chans in _VGG16:
                layers = []
                for c in chans:
                    layers.append(block(c_in, _scaled(c, width)))
                    c_in = _scaled(c, width)
                stages.append(nn.Sequential(*layers))
            self.stages = nn.ModuleList(stages)
            self.pool = nn.MaxPool2d(2, return_indices=True)

        def forward(self, x):
            indices = []
            for stage in self.stages:
                x, ix = self.pool(stage(x))
                indices.append(ix)
            return x, indices

    class Decoder(nn.Module):
        def __init__(self, channels):
            super().__init__()
            stages = []
            for s in range(len(_VGG16), 0, -1):
                chans, layers = _VGG16[s - 1], []
                for i in range(len(chans), 0, -1):
                    out = chans[0] if s == 1 else (_VGG16[s - 2][-1] if i == 1 else chans[i - 1])
                    layers.append(block(_scaled(chans[i - 1], width), _scaled(out, width)))
                stages.append(nn.Sequential(*layers))
            self.stages = nn.ModuleList(stages)
            self.unpool = nn.MaxUnpool2d(2)
            self.out = nn.Conv2d(_scaled(_VGG16[0][0], width), channels, 1)

        def forward(self, z, indices):
            for stage, ix in zip(self.stages, reversed(indices)):
                z = stage(self.unpool(z, ix))
            return self.out(z)

    class SegNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = Encoder()
            self.decoders = nn.ModuleList(Decoder(c) for _, c in heads)

        def forward(self, x):
            z, indices = self.encoder(x)
            outs = []
            for (kind, _), dec in zip(heads, self.decoders):
                y = nn.functional.adaptive_avg_pool2d(dec(z, indices), output_size)
                outs.append(nn.functional.normalize(y, dim=1) if kind == "normal" else y)
            return outs

    model = SegNet()

    def losses_fn(outputs, batch):
        losses = []
        for (kind, _), out in zip(heads, outputs):
            if kind == "seg":
                losses.append(nn.functional.cross_entropy(out, batch["seg"], ignore_index=-1))
            elif kind == "depth":
                losses.append(((out - batch["depth"]) ** 2).mean())
            else:
                losses.append(((out - batch["normal"]) ** 2).sum(1).mean())
        return losses

    return model, model.encoder.stages[-1][-1][0].weight, losses_fn


def make_step(model, weight, losses_fn: Callable, *, alpha: float | None, learning_rate: float = 1e-3):
    """One Adam step; ``alpha=None``: sum of task losses; else CosReg by double backward on ``weight``.

    The model must already be on its device; the step returns the total as a float (a device sync).
    """
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)

    def step(batch):
        losses = losses_fn(model(batch["image"]), batch)
        total = sum(losses)
        if alpha is not None:
            grads = [torch.autograd.grad(loss, weight, create_graph=True)[0].flatten() for loss in losses]
            g = torch.stack(grads)
            u = g / g.norm(dim=1, keepdim=True).clamp_min(1e-30)
            cosine = u @ u.T
            t = len(losses)
            eye = torch.eye(t, device=cosine.device, dtype=cosine.dtype)
            total = total + alpha * ((cosine - eye) ** 2).sum() / (t * (t - 1))
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return float(total.detach())

    return step


def to_torch(batch: dict, on: str = "cpu") -> dict:
    """NHWC NumPy batch -> NCHW torch tensors on device ``on`` (labels as int64)."""
    import torch

    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.ndim == 4:
            value = np.ascontiguousarray(value.transpose(0, 3, 1, 2))
        tensor = torch.from_numpy(value)
        out[key] = (tensor.long() if value.dtype.kind == "i" else tensor).to(on)
    return out
