"""The benchmark models, in Flax Linen and (optionally) PyTorch, with matching shapes.

- ``mlp``: 784-512-512-10, ReLU (:class:`amal_jax.distill.models.MLP`, the one MLP of the
  benchmarks and the teachers).
- ``cnn``: a small CNN on 32x32x3 (conv 32 -> conv 64 stride 2 -> conv 64 stride 2 ->
  global average pool -> dense 10).
- ``resnet18`` / ``resnet18_bn``: the CIFAR ResNet-18 (3x3 stem, four stages of two basic
  blocks, 64-128-256-512 channels) on 32x32x3 with 100 classes, without or with BatchNorm.

Every Flax model takes ``(x, train)`` and names its last layer ``head``.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from amal_jax.distill.models import MLP


class Spec(NamedTuple):
    """A benchmark model: its input shape (without batch), classes and BatchNorm use."""

    input_shape: tuple[int, ...]
    num_classes: int
    batch_norm: bool


SPECS = {
    "mlp": Spec((784,), 10, False),
    "cnn": Spec((32, 32, 3), 10, False),
    "resnet18": Spec((32, 32, 3), 100, False),
    "resnet18_bn": Spec((32, 32, 3), 100, True),
}


class CNN(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = True):
        del train
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.relu(nn.Conv(64, (3, 3), strides=(2, 2))(x))
        x = nn.relu(nn.Conv(64, (3, 3), strides=(2, 2))(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


class BasicBlock(nn.Module):
    channels: int
    stride: int
    batch_norm: bool

    @nn.compact
    def __call__(self, x, train: bool):
        def norm(y):
            if not self.batch_norm:
                return y
            return nn.BatchNorm(use_running_average=not train, momentum=0.9)(y)

        s = (self.stride, self.stride)
        y = nn.relu(norm(nn.Conv(self.channels, (3, 3), s, use_bias=not self.batch_norm)(x)))
        y = norm(nn.Conv(self.channels, (3, 3), use_bias=not self.batch_norm)(y))
        if self.stride != 1 or x.shape[-1] != self.channels:
            x = norm(nn.Conv(self.channels, (1, 1), s, use_bias=not self.batch_norm)(x))
        return nn.relu(x + y)


class ResNet18(nn.Module):
    num_classes: int = 100
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Conv(64, (3, 3), use_bias=not self.batch_norm)(x)
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        for i, channels in enumerate((64, 128, 256, 512)):
            for j in range(2):
                stride = 2 if i > 0 and j == 0 else 1
                x = BasicBlock(channels, stride, self.batch_norm)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


def flax_model(name: str) -> nn.Module:
    """The Flax module of a benchmark model."""
    if name == "mlp":
        return MLP(num_classes=10, hidden=(512, 512))
    if name == "cnn":
        return CNN()
    if name in ("resnet18", "resnet18_bn"):
        return ResNet18(batch_norm=name == "resnet18_bn")
    raise ValueError(f"unknown model {name!r}; choose from {sorted(SPECS)}.")


def torch_model(name: str):
    """The same architecture in PyTorch (NCHW images), for the eager side-by-side."""
    import torch
    from torch import nn as tnn

    if name == "mlp":
        return tnn.Sequential(
            tnn.Linear(784, 512), tnn.ReLU(), tnn.Linear(512, 512), tnn.ReLU(), tnn.Linear(512, 10)
        )
    if name == "cnn":

        class TorchCNN(tnn.Module):
            def __init__(self):
                super().__init__()
                self.c1 = tnn.Conv2d(3, 32, 3, padding=1)
                self.c2 = tnn.Conv2d(32, 64, 3, stride=2, padding=1)
                self.c3 = tnn.Conv2d(64, 64, 3, stride=2, padding=1)
                self.head = tnn.Linear(64, 10)

            def forward(self, x):
                x = torch.relu(self.c1(x))
                x = torch.relu(self.c2(x))
                x = torch.relu(self.c3(x))
                return self.head(x.mean(dim=(2, 3)))

        return TorchCNN()
    if name not in ("resnet18", "resnet18_bn"):
        raise ValueError(f"unknown model {name!r}; choose from {sorted(SPECS)}.")
    bn = name == "resnet18_bn"

    def norm(c):
        return tnn.BatchNorm2d(c, momentum=0.1) if bn else tnn.Identity()

    class Block(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=not bn)
            self.n1 = norm(cout)
            self.c2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=not bn)
            self.n2 = norm(cout)
            self.short = None
            if stride != 1 or cin != cout:
                self.short = tnn.Sequential(
                    tnn.Conv2d(cin, cout, 1, stride, bias=not bn), norm(cout)
                )

        def forward(self, x):
            y = torch.relu(self.n1(self.c1(x)))
            y = self.n2(self.c2(y))
            return torch.relu((x if self.short is None else self.short(x)) + y)

    class TorchResNet18(tnn.Module):
        def __init__(self):
            super().__init__()
            self.stem = tnn.Sequential(
                tnn.Conv2d(3, 64, 3, 1, 1, bias=not bn), norm(64), tnn.ReLU()
            )
            blocks, cin = [], 64
            for i, cout in enumerate((64, 128, 256, 512)):
                for j in range(2):
                    blocks.append(Block(cin, cout, 2 if i > 0 and j == 0 else 1))
                    cin = cout
            self.blocks = tnn.Sequential(*blocks)
            self.head = tnn.Linear(512, 100)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))

    return TorchResNet18()
