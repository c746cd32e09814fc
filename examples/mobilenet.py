"""A MobileNetV2-style network: inverted residual blocks (a 1x1 expansion, a 3x3 depthwise
conv, a 1x1 projection, an identity shortcut where the shape allows), optionally with
squeeze-and-excitation. It takes float [0, 1] images [N, 3, H, W] of any size and normalises
them inside, as the search's input convention asks.

The search plants it by its width groups (the residual widths, each block's expansion width
with its depthwise conv, the squeeze-and-excitation gates' hidden widths):

    python -m plantops.search --dataset folder --data ../shared/data/cifar10-jpeg.tar.gz \
        --student examples/mobilenet.py:student --out runs/mobilenet
"""

import torch
from torch import nn

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class SqueezeExcite(nn.Module):
    """Channel weights from the globally pooled map: x * sigmoid(fc2(relu(fc1(pool(x)))))."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, stride: int, se: bool = False):
        super().__init__()
        hidden = cin * expand
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False),
                                    nn.BatchNorm2d(hidden), nn.ReLU6())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6())
        self.se = SqueezeExcite(hidden, max(4, hidden // 4)) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False),
                                     nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


class MobileNet(nn.Module):
    """stem, four inverted residual blocks (two stages: ``width`` then 2x ``width``
    channels, the second at stride 2, the first block of each without shortcut), a 1x1 head
    conv, global average pool, linear classifier."""

    def __init__(self, width: int = 8, classes: int = 10, expand: int = 4, se: bool = False,
                 mean=CIFAR_MEAN, std=CIFAR_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w),
                                  nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(w, w, 1, 1, se),
                                    InvertedResidual(w, w, expand, 1, se),
                                    InvertedResidual(w, 2 * w, expand, 2, se),
                                    InvertedResidual(2 * w, 2 * w, expand, 1, se))
        self.head = nn.Sequential(nn.Conv2d(2 * w, 8 * w, 1, bias=False),
                                  nn.BatchNorm2d(8 * w), nn.ReLU6(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(8 * w, classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem((x - self.mean) / self.std)))


def student(width: int = 8, classes: int = 10, se: bool = False) -> MobileNet:
    return MobileNet(width, classes, se=se)
