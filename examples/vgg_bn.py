"""A network of your own to plant: a small VGG-style CNN with batch norm, a stride-2 conv,
an adaptive average pool (which makes its classifier independent of the image size) and
dropout, and a wider teacher of the same shape. Both take float [0, 1] images [N, 3, H, W];
normalisation would go inside them.

    python -m plantops.search --dataset folder --data runs/cifar64 \
        --student examples/vgg_bn.py:student --teacher runs/resnet64.pt --out runs/vgg64

with the 64x64 images of examples/resize_images.py and the ResNet teacher of
examples/train_teacher.py (README: "Plant your own network"). ``--teacher`` takes any
trained module saved with torch.save(model), or examples/vgg_bn.py:FUNCTION returning one.
"""

from torch import nn


def vgg_bn(width: int = 8, classes: int = 10) -> nn.Sequential:
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(8 * w, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, classes))


def student() -> nn.Sequential:
    return vgg_bn(8)


def teacher(width: int = 64) -> nn.Sequential:
    return vgg_bn(width)
