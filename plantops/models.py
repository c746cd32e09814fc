"""The paper's networks (docs/method.md, "The networks"), chains of plantops.chain, and how a
search keeps any chain in a checkpoint.

``PlantNet(widths, arch)`` is the plain CNN of the poster: five 3x3 convs (stride 1, pad 1,
bias, ReLU), max pooling after conv1, conv2, conv5 (CIFAR, 32x32) or conv1, conv2, conv3,
conv5 (STL-10, 96x96), then fc1 (128 wide) and fc2. ``Student[k]`` has every conv k wide;
the parameter counts of docs/method.md's table are checked in tests/test_models.py. It is a
``Chain`` like any user's network: planting, merging and the round op are the same
(plantops/planting.py).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from plantops.chain import Chain, out_features
from plantops.graph import GraphNet
from plantops.planting import export

ARCHS = {
    # input size, convs followed by a 2x2 max pool, spatial size at fc1
    "cifar": dict(size=32, pools=(0, 1, 4), final=4),
    "stl": dict(size=96, pools=(0, 1, 2, 4), final=6),
}
FC_WIDTH = 128
LAYER_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc1")


class PlantNet(Chain):
    """The poster's CNN as a chain: conv, ReLU (and a 2x2 max pool after the pooling convs)
    five times, a flatten, fc1, ReLU, fc2. Layers 0-4 are conv1-conv5, 5 is fc1, 6 is fc2."""

    def __init__(self, widths: Sequence[int], arch: str = "cifar", num_classes: int = 10,
                 fc_width: int = FC_WIDTH, in_channels: int = 3):
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}: expected one of {sorted(ARCHS)}")
        if len(widths) != 5 or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths must be five positive conv widths, got {list(widths)}")
        spec = ARCHS[arch]
        chans = [in_channels, *map(int, widths)]
        # Built in this order (convs, then fc1, fc2) so that a seed gives the same weights.
        convs = [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1) for i in range(5)]
        fc1 = nn.Linear(chans[5] * spec["final"] ** 2, fc_width)
        fc2 = nn.Linear(fc_width, num_classes)
        modules: list[nn.Module] = []
        for i, conv in enumerate(convs):
            modules += [conv, nn.ReLU()] + ([nn.MaxPool2d(2)] if i in spec["pools"] else [])
        modules += [nn.Flatten(), fc1, nn.ReLU(), fc2]
        super().__init__(modules, name="PlantNet")
        self.arch = arch

    @property
    def pools(self):
        return ARCHS[self.arch]["pools"]

    @property
    def final_size(self) -> int:
        return ARCHS[self.arch]["final"]

    @property
    def convs(self) -> list[nn.Module]:
        return [self.layer(i) for i in range(5)]

    @property
    def fc1(self) -> nn.Module:
        return self.layer(5)

    @property
    def fc2(self) -> nn.Module:
        return self.layer(6)

    @property
    def widths(self) -> list[int]:
        return [out_features(c) for c in self.convs]

    @property
    def fc_width(self) -> int:
        return out_features(self.fc1)

    def to_sequential(self, mean=None, std=None) -> nn.Sequential:
        """The network as an nn.Sequential of standard torch layers (loadable without plantops).

        With the per-channel ``mean`` and ``std`` it was trained with, its first layer
        normalizes, so it takes images as a user has them: float in [0, 1] (uint8 / 255),
        [N, 3, H, W]. The normalization is a 1x1 convolution (weight 1/std, bias -mean/std),
        a layer every torch version loads."""
        layers: list[nn.Module] = []
        if mean is not None:
            layers.append(normalizing_conv(mean, std))
        return nn.Sequential(*layers, *export(self))


def normalizing_conv(mean, std) -> nn.Conv2d:
    """A 1x1 convolution computing (x - mean) / std per channel."""
    mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
    std = torch.as_tensor(std, dtype=torch.float32).flatten()
    normalize = nn.Conv2d(len(mean), len(mean), 1)
    with torch.no_grad():
        normalize.weight.copy_(torch.diag(1 / std).view(len(mean), len(mean), 1, 1))
        normalize.bias.copy_(-mean / std)
    return normalize


def student(width: int, arch: str = "cifar", num_classes: int = 10) -> PlantNet:
    """Student[k] / Teacher[k]: every conv k wide, fc1 128 wide."""
    return PlantNet([width] * 5, arch, num_classes)


# ----------------------------------------------------------------------------- checkpoints

_PAPER_KEYS = {"widths", "arch", "num_classes", "fc_width", "state_dict"}


def to_checkpoint(plain: Chain) -> dict:
    """What a checkpoint keeps of a plain (merged) chain: the paper's networks as their
    widths and weights (a file that loads without pickled classes), any other chain as
    itself (plain torch modules in a plantops.Chain)."""
    if isinstance(plain, PlantNet):
        return dict(widths=plain.widths, fc_width=plain.fc_width, arch=plain.arch,
                    num_classes=plain.num_classes, state_dict=plain.state_dict())
    if isinstance(plain, GraphNet):
        return dict(graph=plain)
    return dict(chain=plain)


def holds_network(payload) -> bool:
    """Whether ``payload`` (a loaded file) is what to_checkpoint gave."""
    return isinstance(payload, dict) and (_PAPER_KEYS <= set(payload) or isinstance(
        payload.get("chain"), Chain) or isinstance(payload.get("graph"), GraphNet))


def from_checkpoint(payload: dict) -> Chain:
    """The network of a to_checkpoint payload (RuntimeError, ValueError, KeyError or
    TypeError if its weights do not fit its widths)."""
    if "chain" in payload or "graph" in payload:
        return payload.get("chain", payload.get("graph"))
    net = PlantNet(payload["widths"], payload["arch"], payload["num_classes"],
                   payload["fc_width"])
    net.load_state_dict(_renamed_keys(net, payload["state_dict"]))
    return net


def _renamed_keys(net: PlantNet, state: dict) -> dict:
    """A PlantNet state dict, from one of the names of the paper's network before it was a
    chain (convs.i.*, fc1.*, fc2.*) too: checkpoints of earlier searches keep loading."""
    if not any(k.startswith(("convs.", "fc1.", "fc2.")) for k in state):
        return state
    where = {f"convs.{i}": net.layer_positions[i] for i in range(5)}
    where.update({"fc1": net.layer_positions[5], "fc2": net.layer_positions[6]})
    renamed = {}
    for key, value in state.items():
        owner, _, name = key.rpartition(".")
        renamed[f"body.{where[owner]}.{name}" if owner in where else key] = value
    return renamed


def family(net: nn.Module) -> str | None:
    """The paper's network family of ``net`` ("cifar", "stl"), or None for any other."""
    return getattr(net, "arch", None)
