"""The paper's networks (METHOD.md) and planting on them.

``PlantNet(widths, arch)`` is the plain CNN of the poster: five 3x3 convs (stride 1, pad 1,
bias, ReLU), max pooling after conv1, conv2, conv5 (CIFAR, 32x32) or conv1, conv2, conv3,
conv5 (STL-10, 96x96), then fc1 (128 wide) and fc2. ``Student[k]`` has every conv k wide;
the parameter counts of METHOD.md's table are checked in tests/test_models.py.

Planting ``p`` channels into layer ``l`` (0-4: conv1-conv5, 5: fc1) returns a copy whose
layer ``l`` has ``p`` planted outputs and whose next layer has ``p`` planted inputs (conv5's
planted channels reach fc1 as ``p * s * s`` flattened features); every other parameter is
frozen. ``merge`` folds the planted blocks back into plain layers.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from plantops.planted_conv import PlantedConv2d, planted_conv2d
from plantops.planted_linear import PlantedLinear
from plantops.relu_pool import conv_relu_max_pool2d, relu_max_pool2d

ARCHS = {
    # input size, convs followed by a 2x2 max pool, spatial size at fc1
    "cifar": dict(size=32, pools=(0, 1, 4), final=4),
    "stl": dict(size=96, pools=(0, 1, 2, 4), final=6),
}
FC_WIDTH = 128
LAYER_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc1")


class PlantNet(nn.Module):
    def __init__(self, widths: Sequence[int], arch: str = "cifar", num_classes: int = 10,
                 fc_width: int = FC_WIDTH, in_channels: int = 3):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}: expected one of {sorted(ARCHS)}")
        if len(widths) != 5 or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths must be five positive conv widths, got {list(widths)}")
        self.arch, self.num_classes = arch, num_classes
        spec = ARCHS[arch]
        chans = [in_channels, *map(int, widths)]
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, padding=1)
                                   for i in range(5))
        self.fc1 = nn.Linear(chans[5] * spec["final"] ** 2, fc_width)
        self.fc2 = nn.Linear(fc_width, num_classes)

    @property
    def pools(self):
        return ARCHS[self.arch]["pools"]

    @property
    def final_size(self) -> int:
        return ARCHS[self.arch]["final"]

    @property
    def widths(self) -> list[int]:
        return [_out_features(c) for c in self.convs]

    @property
    def fc_width(self) -> int:
        return _out_features(self.fc1)

    # Layers are numbered 0-4 (conv1-conv5), 5 (fc1), 6 (fc2: its output is the logits).
    def layer(self, index: int) -> nn.Module:
        return self.convs[index] if index < 5 else (self.fc1 if index == 5 else self.fc2)

    def activate(self, index: int, pre):
        """What layer ``index + 1`` reads, from layer ``index``'s output ``pre``: ReLU, then the
        2x2 max pool after pooling convs and the flatten after conv5. Works channel by
        channel, so it also maps a subset of the channels (the planted ones) on its own."""
        # relu_max_pool2d: F.max_pool2d(F.relu(pre), 2) exactly, in one pass where its C++
        # kernel runs (NCHW CPU tensors: ATen's pool is 8-16x slower there).
        h = relu_max_pool2d(pre) if index < 5 and index in self.pools else F.relu(pre)
        return h.flatten(1) if index == 4 else h

    def forward_from(self, index: int, pre):
        """The logits, given layer ``index``'s output ``pre`` (index -1: ``pre`` is the image)."""
        h = pre if index < 0 else self.activate(index, pre)
        for j in range(index + 1, 6):
            h = self.activate(j, self.layer(j)(h))
        return self.fc2(h) if index < 6 else pre

    def forward(self, x):
        return self.forward_from(-1, x)

    def frozen_layer(self, index: int, x, backend: str = "auto"):
        """Layer ``index`` of a plain (merged) network as a frozen layer: its convolutions go
        through ``planted_conv2d`` with the whole weight frozen (the planted kernels where its
        auto rule takes them; a gradient for ``x`` only, if it needs one), fc1 and fc2 through
        F.linear."""
        layer = self.layer(index)
        if index < 5:
            return planted_conv2d(x, layer.weight, layer.bias, stride=layer.stride,
                                  padding=layer.padding, backend=backend)
        return F.linear(x, layer.weight, layer.bias)

    @torch.no_grad()
    def frozen_forward(self, x, backend: str = "auto"):
        """The logits of a plain network without gradients, through its frozen layers: how
        the search runs a trained network it only evaluates (the teacher's logits, every
        evaluation). The teacher's inference ran 1.4x faster so than with oneDNN in
        channels-last on a 2-core CPU (Teacher[128], the planted kernels' Winograd)."""
        h = x
        for j in range(6):
            h = self.frozen_activated(j, h, backend)
        return self.frozen_layer(6, h, backend)

    @torch.no_grad()
    def frozen_activated(self, index: int, x, backend: str = "auto"):
        """``activate(index, frozen_layer(index, x))`` without gradients: a pooling conv's
        ReLU and max pool fold into its convolution where the kernels can
        (relu_pool.conv_relu_max_pool2d)."""
        if index < 5 and index in self.pools:
            layer = self.convs[index]
            h = conv_relu_max_pool2d(x, layer.weight, layer.bias, layer.stride, layer.padding,
                                     backend)
            return h.flatten(1) if index == 4 else h
        return self.activate(index, self.frozen_layer(index, x, backend))

    def activations(self, x) -> tuple[list, list]:
        """Every layer's input and output, as lists indexed by layer (0-6)."""
        inputs, outputs = [], []
        for j in range(7):
            inputs.append(x if j == 0 else self.activate(j - 1, outputs[-1]))
            outputs.append(self.layer(j)(inputs[-1]))
        return inputs, outputs

    def describe(self) -> str:
        return f"[{','.join(map(str, self.widths))}|{self.fc_width}]"

    def to_sequential(self, mean=None, std=None) -> nn.Sequential:
        """The network as an nn.Sequential of standard torch layers (loadable without plantops).

        With the per-channel ``mean`` and ``std`` it was trained with, its first layer
        normalizes, so it takes images as a user has them: float in [0, 1] (uint8 / 255),
        [N, 3, H, W]. The normalization is a 1x1 convolution (weight 1/std, bias -mean/std),
        a layer every torch version loads."""
        net = merge(self)
        layers: list[nn.Module] = []
        if mean is not None:
            mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
            std = torch.as_tensor(std, dtype=torch.float32).flatten()
            normalize = nn.Conv2d(len(mean), len(mean), 1)
            with torch.no_grad():
                normalize.weight.copy_(torch.diag(1 / std).view(len(mean), len(mean), 1, 1))
                normalize.bias.copy_(-mean / std)
            layers.append(normalize)
        for i, conv in enumerate(net.convs):
            layers += [copy.deepcopy(conv), nn.ReLU()]
            if i in net.pools:
                layers.append(nn.MaxPool2d(2))
        layers += [nn.Flatten(), copy.deepcopy(net.fc1), nn.ReLU(), copy.deepcopy(net.fc2)]
        return nn.Sequential(*layers)


def _out_features(layer) -> int:
    if isinstance(layer, (PlantedConv2d, PlantedLinear)):
        return layer.total_out
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def count_params(model: nn.Module) -> int:
    """Parameters of the network as the paper counts them: every weight and bias, planted or not."""
    return sum(t.numel() for t in merge(model).parameters()) if isinstance(model, PlantNet) \
        else sum(t.numel() for t in model.parameters())


def student(width: int, arch: str = "cifar", num_classes: int = 10) -> PlantNet:
    """Student[k] / Teacher[k]: every conv k wide, fc1 128 wide."""
    return PlantNet([width] * 5, arch, num_classes)


def plantable_layers(include_fc1: bool) -> list[int]:
    return list(range(6 if include_fc1 else 5))


# How the planted outgoing weights start: the scale of the layer's default init (0: zero).
PLANT_INITS = {"preserve": 0.0, "small": 0.1, "random": 1.0}


def plant(net: PlantNet, layer: int, count: int, init: str = "preserve",
          generator: torch.Generator | None = None) -> PlantNet:
    """A copy of ``net`` with ``count`` channels planted into ``layer`` (0-4 convs, 5 fc1).

    Only the planted blocks are trainable. ``init="preserve"`` starts the new outgoing
    weights (the next layer's planted input slices) at zero, so the candidate computes
    exactly its parent's function before training; ``"random"`` gives them the layer's
    default initialization too, and ``"small"`` a tenth of it: the candidate starts near its
    parent, and the new filters get a gradient from the first step (with zero outgoing
    weights they get none until the slices have moved).
    """
    if init not in PLANT_INITS:
        raise ValueError(f"plant init must be one of {', '.join(PLANT_INITS)}, got {init!r}")
    if layer not in range(6):
        raise ValueError(f"layer must be 0-4 (conv1-conv5) or 5 (fc1), got {layer}")
    net = merge(net)
    for p in net.parameters():
        p.requires_grad_(False)
    if layer < 5:
        grown = PlantedConv2d.from_conv(net.convs[layer]).plant_outputs(count, generator)
        net.convs[layer] = grown
        if layer < 4:
            reader = PlantedConv2d.from_conv(net.convs[layer + 1]).plant_inputs(count)
            net.convs[layer + 1] = reader
        else:
            reader = PlantedLinear.from_linear(net.fc1).plant_inputs(count * net.final_size ** 2)
            net.fc1 = reader
    else:
        grown = PlantedLinear.from_linear(net.fc1).plant_outputs(count, generator)
        net.fc1 = grown
        reader = PlantedLinear.from_linear(net.fc2).plant_inputs(count)
        net.fc2 = reader
    if init != "preserve":
        bound = PLANT_INITS[init] / reader._fan_in() ** 0.5
        with torch.no_grad():
            reader.in_weight.uniform_(-bound, bound, generator=generator)
    return net


def planted_parameters(net: PlantNet) -> list[nn.Parameter]:
    """The trainable parameters (the non-empty planted blocks)."""
    return [p for p in net.parameters() if p.requires_grad and p.numel()]


def planted_state(net: PlantNet) -> list:
    """The planted parameters of ``net`` as CPU copies (what training changed)."""
    return [p.detach().cpu().clone() for p in planted_parameters(net)]


def load_planted_state(net: PlantNet, state: list):
    with torch.no_grad():
        for p, saved in zip(planted_parameters(net), state, strict=True):
            p.copy_(saved)


def merge(net: PlantNet) -> PlantNet:
    """A plain copy: planted layers become nn.Conv2d / nn.Linear with their whole weight."""
    out = copy.deepcopy(net)
    for i, conv in enumerate(out.convs):
        if isinstance(conv, PlantedConv2d):
            out.convs[i] = conv.to_conv()
    for name in ("fc1", "fc2"):
        layer = getattr(out, name)
        if isinstance(layer, PlantedLinear):
            setattr(out, name, layer.to_linear())
    for p in out.parameters():
        p.requires_grad_(True)
    return out
