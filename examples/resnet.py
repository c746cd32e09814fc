"""A small ResNet: as a teacher (``resnet``, trained with ``python examples/train_teacher.py``;
the search loads the saved module from the repository's root, where ``examples.resnet``
imports), or as a student the search plants by its width groups (``student``, a ResNet-8):

    python -m plantops.search --dataset folder --data ../shared/data/cifar10-jpeg.tar.gz \
        --student examples/resnet.py:student --table --out runs/resnet8

It takes float [0, 1] images [N, 3, H, W] of any size and normalises them inside, as the
search's input convention asks.
"""

import torch
from torch import nn

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class Block(nn.Module):
    """Two 3x3 convs with batch norm and a shortcut (a 1x1 conv where the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    """stem (stride ``stem_stride``), three stages of one block (``width``, 2x, 4x channels,
    the last two at stride 2), global average pool, linear classifier."""

    def __init__(self, width: int = 32, classes: int = 10, stem_stride: int = 1,
                 mean=CIFAR_MEAN, std=CIFAR_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, stem_stride, 1, bias=False),
                                  nn.BatchNorm2d(w), nn.ReLU())
        self.stages = nn.Sequential(Block(w, w, 1), Block(w, 2 * w, 2), Block(2 * w, 4 * w, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, classes))

    def forward(self, x):
        return self.head(self.stages(self.stem((x - self.mean) / self.std)))


def resnet(width: int = 32, classes: int = 10, image_size: int = 32) -> ResNet:
    """A ResNet for ``image_size`` images: from 64x64 up the stem halves the resolution, so
    that the blocks see the same 32x32 (and smaller) maps as on CIFAR-10."""
    return ResNet(width, classes, stem_stride=2 if image_size >= 64 else 1)


def student(width: int = 8, classes: int = 10) -> ResNet:
    """A ResNet-8 (a stem, three basic blocks, a classifier) at ``width`` channels, for
    32x32 images: a student the search plants by its width groups."""
    return ResNet(width, classes)
