"""A small Inception-style network: branches of 1x1, 3x3 and pooled 1x1 convolutions
concatenated along the channels, twice, then a global average pool and a linear classifier.
It takes float [0, 1] images [N, 3, H, W] of any size and normalises them inside, as the
search's input convention asks.

Each branch of a concatenation is a width of its own: the search plants it alone, and the
layers after the join read its new channels where the branch lies in the concatenation.

    python -m plantops.search --dataset folder --data ../shared/data/cifar10-jpeg.tar.gz \\
        --student examples/inception.py:student --out runs/inception
"""

import torch
from torch import nn

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class Mixed(nn.Module):
    """Three branches on one input, concatenated: a 1x1 conv, a 1x1 then 3x3 conv, and a
    3x3 max pool then 1x1 conv."""

    def __init__(self, cin: int, a: int, b: int, c: int):
        super().__init__()
        self.branch1 = conv_bn(cin, a, 1)
        self.branch3 = nn.Sequential(conv_bn(cin, b, 1), conv_bn(b, b, 3))
        self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, c, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch3(x), self.pool(x)], 1)


class Inception(nn.Module):
    """stem, a Mixed block, a 2x2 max pool, a second Mixed block, global average pool,
    linear classifier."""

    def __init__(self, width: int = 8, classes: int = 10, mean=CIFAR_MEAN, std=CIFAR_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        w = width
        self.stem = conv_bn(3, 2 * w, 3, 2)
        self.mixed1 = Mixed(2 * w, w, w, w)
        self.down = nn.MaxPool2d(2)
        self.mixed2 = Mixed(3 * w, 2 * w, 2 * w, w)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(5 * w, classes))

    def forward(self, x):
        x = self.stem((x - self.mean) / self.std)
        return self.head(self.mixed2(self.down(self.mixed1(x))))


def student(width: int = 8, classes: int = 10) -> Inception:
    return Inception(width, classes)
