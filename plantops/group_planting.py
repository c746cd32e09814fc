"""Planting channels into a width group of any CNN, and merging them back: the one planting
rule, for a chain's layer too (``planting.plant`` describes it as a width group of the chain's
modules in order, ``planting.chain_group``).

``plant_group(module, group, p)`` plants into a width group (plantops/width_groups.py): a
copy of the user's module in which every producer of the group
has ``p`` planted filters (``PlantedConv2d`` / ``PlantedLinear``, through the op), every
batch norm on the group's channels ``p`` planted features (``PlantedBatchNorm``), every
depthwise conv on them ``p`` planted channels (``PlantedDepthwiseConv2d``), and every reader
``p`` planted input slices (``p`` times the spatial positions after a flatten), zero under
``init="preserve"``. The module's own ``forward`` runs unchanged: each tensor of the group
carries its old channels then the new ones, so a residual add adds new to new and an
identity shortcut carries them. Only the planted blocks train, and the candidate runs as its
parent is evaluated otherwise (``GrownNetwork.train``). ``grown_module`` (``merge_planted``
for any module, a chain's modules too) merges the planted blocks back: the user's own class,
the same submodule names, wider.

After a concatenation the new channels of a branch lie in the middle of the readers' inputs,
where the planted modules read them last: a reader (or a batch norm) there takes its input
reordered (``Reordered``), and the merged module has its columns where the input has them.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plantops.planted_batch_norm import BATCH_NORMS, PlantedBatchNorm
from plantops.planted_conv import PlantedConv2d
from plantops.planted_linear import PlantedLinear
from plantops.planting import PLANT_INITS, planted_layer
from plantops.width_groups import WidthGroup


class PlantedDepthwiseConv2d(nn.Module):
    """A depthwise conv (channel ``i`` to channel ``i``) over frozen channels and ``count``
    planted ones, each planted channel with a filter of its own (the conv's default init)."""

    def __init__(self, conv: nn.Conv2d, count: int, generator: torch.Generator | None = None):
        super().__init__()
        self.register_buffer("frozen_weight", conv.weight.detach().clone())
        self.register_buffer("frozen_bias",
                             None if conv.bias is None else conv.bias.detach().clone())
        self.stride, self.padding = tuple(conv.stride), tuple(conv.padding)
        self.dilation = tuple(conv.dilation)
        w = conv.weight
        bound = 1 / math.sqrt(math.prod(w.shape[1:]))  # nn.Conv2d's default, fan-in k*k
        weight = w.new_empty((count, *w.shape[1:]))
        bias = None if conv.bias is None else w.new_empty(count)
        with torch.no_grad():
            weight.uniform_(-bound, bound, generator=generator)
            if bias is not None:
                bias.uniform_(-bound, bound, generator=generator)
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)

    @property
    def frozen_channels(self) -> int:
        return self.frozen_weight.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        n, p = self.frozen_channels, self.weight.shape[0]
        conv = lambda x, w, b, groups: F.conv2d(x, w, b, self.stride, self.padding,
                                                self.dilation, groups)
        return torch.cat([conv(x[:, :n], self.frozen_weight, self.frozen_bias, n),
                          conv(x[:, n:], self.weight, self.bias, p)], 1)

    def to_conv(self) -> nn.Conv2d:
        channels = self.frozen_channels + self.weight.shape[0]
        w = self.frozen_weight
        conv = nn.Conv2d(channels, channels, w.shape[2:], self.stride, self.padding,
                         self.dilation, channels, self.frozen_bias is not None,
                         device=w.device, dtype=w.dtype)
        with torch.no_grad():
            conv.weight.copy_(torch.cat([w, self.weight.detach()]))
            if conv.bias is not None:
                conv.bias.copy_(torch.cat([self.frozen_bias, self.bias.detach()]))
        return conv


class Reordered(nn.Module):
    """A planted module whose input holds the new channels mid-way (a concatenation's branch
    was planted): it takes its input's channels in ``order`` (old ones, then new ones, as the
    planted module reads them), and, with ``back``, gives its output in the input's order
    again (a batch norm or depthwise conv, whose output is the channels it took in)."""

    def __init__(self, module: nn.Module, order: list[int], back: bool):
        super().__init__()
        self.module, self.back = module, back
        self.register_buffer("order", torch.tensor(order), persistent=False)
        self.register_buffer("inverse", torch.argsort(self.order), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.module(x.index_select(1, self.order))
        return y.index_select(1, self.inverse) if self.back else y

    def merged(self, plain: nn.Module) -> nn.Module:
        """``plain`` (the merged module) with its input channels in the input's order."""
        with torch.no_grad():
            for tensor in [*plain.parameters(), *plain.buffers()]:
                if self.back and tensor.dim() >= 1 and tensor.shape[0] == len(self.order):
                    tensor.copy_(tensor[self.inverse])  # per channel: weight, bias, statistics
                elif not self.back and tensor.dim() >= 2 and tensor.shape[1] == len(self.order):
                    tensor.copy_(tensor[:, self.inverse])  # a reader's input columns
        return plain


class GrownNetwork(nn.Module):
    """A user's module with planted channels (``plant_group``). In training only the planted
    parts train: every other module runs as it is evaluated (batch norms on their running
    statistics, dropout off), so the old channels compute exactly the parent's values."""

    def __init__(self, module: nn.Module, group: WidthGroup, count: int):
        super().__init__()
        self.module, self.group, self.count = module, group, count

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def train(self, mode: bool = True):
        super().train(mode)
        self.module.eval()
        for m in self.module.modules():
            if isinstance(m, PlantedBatchNorm):
                m.planted.train(mode)
        return self


def plant_group(module: nn.Module, group: WidthGroup, count: int, init: str = "preserve",
                generator: torch.Generator | None = None) -> GrownNetwork:
    """A copy of ``module`` with ``count`` channels planted into ``group`` (see the module's
    docstring); ``module`` itself is not changed. ValueError, in one line, for a group that
    cannot grow."""
    if init not in PLANT_INITS:
        raise ValueError(f"plant init must be one of {', '.join(PLANT_INITS)}, got {init!r}")
    if not group.plantable:
        raise ValueError(f"{group.name} cannot grow: {group.why_not}")
    net = copy.deepcopy(module)
    for p in net.parameters():
        p.requires_grad_(False)
    planted: dict[str, nn.Module] = {}
    for path in group.producers:
        planted[path] = planted_layer(net.get_submodule(path)).plant_outputs(count, generator)
    for path in group.channelwise:
        m = net.get_submodule(path)
        if isinstance(m, BATCH_NORMS):
            planted[path] = PlantedBatchNorm(m, group.planted_features(path, count))
        else:  # a depthwise conv
            planted[path] = PlantedDepthwiseConv2d(m, count, generator)
    for path in group.readers:
        reader = planted.get(path) or planted_layer(net.get_submodule(path))
        planted[path] = reader.plant_inputs(group.planted_features(path, count))
        if PLANT_INITS[init]:
            bound = PLANT_INITS[init] / reader._fan_in() ** 0.5
            with torch.no_grad():
                reader.in_weight.uniform_(-bound, bound, generator=generator)
    for path, m in planted.items():
        order = group.input_order(path, count)  # after a concatenation: new ones mid-way
        if order is not None:
            m = Reordered(m, order, back=path in group.channelwise)
        net.set_submodule(path, m)
    return GrownNetwork(net, group, count).train(module.training)


def grown_module(net: GrownNetwork) -> nn.Module:
    """The user's module, grown: its own class and submodule names, the planted blocks merged
    into plain layers of the new widths (loadable without plantops), every parameter
    trainable again."""
    return merge_planted(copy.deepcopy(net.module)).train(net.training)


def merge_planted(module: nn.Module) -> nn.Module:
    """``module`` itself (a network of any shape, or a chain's modules) with every planted
    block merged into a plain layer of the grown width, every parameter trainable."""
    out = module
    replaced: list[str] = []
    for path, m in list(out.named_modules()):
        if any(path.startswith(done + ".") for done in replaced):
            continue  # inside a module merged already (a Reordered's)
        inner = m.module if isinstance(m, Reordered) else m
        if isinstance(inner, PlantedConv2d):
            plain = inner.to_conv()
        elif isinstance(inner, PlantedLinear):
            plain = inner.to_linear()
        elif isinstance(inner, PlantedBatchNorm):
            plain = inner.to_batch_norm()
        elif isinstance(inner, PlantedDepthwiseConv2d):
            plain = inner.to_conv()
        else:
            continue
        out.set_submodule(path, m.merged(plain) if isinstance(m, Reordered) else plain)
        replaced.append(path)
    for p in out.parameters():
        p.requires_grad_(True)
    return out


__all__ = ["GrownNetwork", "PlantedDepthwiseConv2d", "Reordered", "grown_module",
           "plant_group"]
