"""A plantable network: a chain of conv and linear layers, and what lies between them.

A ``Chain`` holds the leaf modules of an ``nn.Sequential`` in order (nested Sequentials are
walked, and their paths kept for export). Its *layers* are its ``Conv2d`` and ``Linear``
modules, numbered 0, 1, ... in order; the last one is the classifier (its outputs are the
logits) and every other layer is a *planting point*. Between two layers lies a *segment* of
modules that act on each channel alone: batch norm, activations, pooling, dropout, flatten,
identity. The paper's networks (``models.PlantNet``) are chains; so is a user's VGG-style
network with batch norm, strides, other kernels and 64x64 images.

Planting channels into a chain and merging them back live in plantops/planting.py; the
planted batch norm in plantops/planted_batch_norm.py. What a frozen chain does during
planting is what it does when it is evaluated: its batch norms normalise with their running
statistics and its dropout is off (``Chain.train``), so the old channels compute exactly
the parent's values and nothing of the parent changes (docs/method.md, "Planting on any
chain").

Anything that is not such a chain is refused before any training, by ``ChainError`` with one
line that names the module and why (residual blocks, branches, grouped convolutions, ...).
"""

from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plantops.planted_batch_norm import BATCH_NORMS, PlantedBatchNorm
from plantops.planted_conv import PlantedConv2d, planted_conv2d, trainable_conv2d
from plantops.planted_linear import PlantedLinear
from plantops.relu_pool import conv_relu_max_pool2d, relu_max_pool2d

LAYERS = (nn.Conv2d, nn.Linear)
BETWEEN = (*BATCH_NORMS, nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.MaxPool2d,
           nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Identity)
AS_GRAPH = ("plant it as a graph: plantops.GraphNet.of(net, name, (C, H, W)), which the "
           "search does for any module that is not a chain; plantops.width_groups lists where "
           "it grows")
# Modules that take (and give) an image-shaped tensor [N, C, H, W].
SPATIAL = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
SUPPORTED = ("Conv2d (groups=1, dilation=1, zero padding), Linear and, between them, "
             + ", ".join(t.__name__ for t in BETWEEN))

class ChainError(ValueError):
    """A network plantops cannot plant; the message names the module and says why."""


# ----------------------------------------------------------------------------- checks

def leaves(module: nn.Module, name: str = "network", path: str = "") -> list[tuple[str, nn.Module]]:
    """The leaf modules of an nn.Sequential (nested ones walked), with their paths;
    ChainError for anything else."""
    if isinstance(module, nn.Sequential):
        if type(module).forward is not nn.Sequential.forward:
            raise ChainError(f"{_where(name, path)} ({type(module).__name__}) has a forward of "
                             "its own: plantops plants an nn.Sequential that runs its modules "
                             "in order")
        found = []
        for child_name, child in module.named_children():
            found += leaves(child, name, f"{path}.{child_name}" if path else child_name)
        return found
    if not path:
        raise ChainError(f"{name} is a {type(module).__name__}, not an nn.Sequential: plantops "
                         f"plants a chain of layers ({SUPPORTED}); a network with residual "
                         f"blocks or branches is not a chain ({AS_GRAPH})")
    return [(path, module)]


def _where(name: str, path: str) -> str:
    return f"{name}: module {path!r}" if path else name


def check(modules: Sequence[nn.Module], paths: Sequence[str], name: str = "network"):
    """ChainError, naming the first module that cannot be planted and why."""
    dims = 4  # the image [N, C, H, W]; 2 after a flatten or a linear layer
    layers = 0
    for path, m in zip(paths, modules):
        where = f"{_where(name, path)} ({type(m).__name__})"
        if isinstance(m, (PlantedConv2d, PlantedLinear, PlantedBatchNorm)):
            pass
        elif type(m) not in LAYERS + BETWEEN:
            hint = (f" (a residual block or a branch: not a chain; {AS_GRAPH})"
                    if any(True for _ in m.children()) else "")
            raise ChainError(f"{where} is not a layer plantops can plant{hint}: it plants "
                             f"{SUPPORTED}")
        if isinstance(m, nn.Conv2d):
            for attr, expected in (("groups", 1), ("dilation", (1, 1)),
                                   ("padding_mode", "zeros")):
                got = getattr(m, attr)
                if (tuple(got) if isinstance(got, tuple) else got) != expected:
                    why = ("grouped and depthwise convolutions cannot grow one channel at a time"
                           if attr == "groups" else "the planted kernels do not run it")
                    raise ChainError(f"{where} has {attr}={got!r}: plantops plants convolutions "
                                     f"with {attr}={expected!r} ({why})")
            if isinstance(m.padding, str) and m.padding != "valid" and any(
                    k % 2 == 0 for k in m.kernel_size):
                raise ChainError(f"{where} has padding='same' with an even kernel "
                                 f"{tuple(m.kernel_size)}: give it numeric padding")
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) and not m.track_running_stats:
            raise ChainError(f"{where} keeps no running statistics "
                             "(track_running_stats=False): a frozen channel's normalisation "
                             "would change with every batch; build it with running statistics")
        if isinstance(m, nn.MaxPool2d) and m.return_indices:
            raise ChainError(f"{where} returns indices: a chain passes one tensor on")
        if isinstance(m, nn.Flatten) and (m.start_dim, m.end_dim) != (1, -1):
            raise ChainError(f"{where} flattens dims {m.start_dim}..{m.end_dim}: plantops "
                             "plants a flatten of every dim but the batch (Flatten())")
        if isinstance(m, SPATIAL) and dims != 4:
            raise ChainError(f"{where} needs an image-shaped input [N, C, H, W] but comes "
                             "after a flatten or a linear layer")
        if isinstance(m, nn.Linear) and dims != 2:
            raise ChainError(f"{where} would act on the last (width) dim of an image-shaped "
                             "tensor: put an nn.Flatten() before it")
        if isinstance(m, (nn.Flatten, nn.Linear, PlantedLinear)):
            dims = 2
        layers += isinstance(m, LAYERS + (PlantedConv2d, PlantedLinear))
    if layers < 2:
        raise ChainError(f"{name} has {layers} conv or linear layer{'s' * (layers != 1)}: "
                         "planting needs at least two (a layer to grow and one that reads it)")


# ----------------------------------------------------------------------------- running modules

def is_pool2x2(m) -> bool:
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    return (type(m) is nn.MaxPool2d and pair(m.kernel_size) == (2, 2)
            and pair(m.stride) == (2, 2) and pair(m.padding) == (0, 0)
            and pair(m.dilation) == (1, 1) and not m.ceil_mode and not m.return_indices)


def run_modules(modules: Sequence[nn.Module], x: Tensor) -> Tensor:
    """``x`` through ``modules`` in order, out of place (a tensor the round op reuses is never
    overwritten by an inplace activation); a ReLU followed by a 2x2 max pool runs as one
    pass (relu_pool.relu_max_pool2d, exactly their result, on its own backend rule)."""
    i = 0
    while i < len(modules):
        m = modules[i]
        if type(m) is nn.ReLU and i + 1 < len(modules) and is_pool2x2(modules[i + 1]) \
                and x.dim() == 4:
            x = relu_max_pool2d(x)
            i += 2
            continue
        if type(m) is nn.ReLU:
            x = F.relu(x)
        elif type(m) is nn.LeakyReLU:
            x = F.leaky_relu(x, m.negative_slope)
        elif type(m) is nn.SiLU:
            x = F.silu(x)
        elif type(m) is nn.Dropout:
            x = F.dropout(x, m.p, m.training)
        else:
            x = m(x)
        i += 1
    return x


def bn_scale(bn: nn.Module) -> Tensor:
    """What an evaluated batch norm multiplies its input by, per channel."""
    scale = bn.running_var.add(bn.eps).rsqrt()
    return scale * bn.weight if bn.weight is not None else scale


def fold_batch_norm(weight: Tensor, bias: Optional[Tensor], bn: nn.Module):
    """A conv's weight and bias with an evaluated batch norm after it folded in."""
    scale = bn_scale(bn)
    shift = -bn.running_mean * scale
    if bias is not None:
        shift = shift + bias * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return weight * scale.view(-1, 1, 1, 1), shift


def out_features(layer) -> int:
    if isinstance(layer, (PlantedConv2d, PlantedLinear)):
        return layer.total_out
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def in_features(layer) -> int:
    if isinstance(layer, (PlantedConv2d, PlantedLinear)):
        return layer.total_in
    return layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features


def is_conv(layer) -> bool:
    return isinstance(layer, (nn.Conv2d, PlantedConv2d))


def conv_padding(conv: nn.Conv2d):
    """A conv's padding as numbers ('valid' is 0, 'same' k // 2 for an odd kernel)."""
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        return tuple(k // 2 for k in conv.kernel_size)
    return tuple(conv.padding)


# ----------------------------------------------------------------------------- the chain

class Chain(nn.Module):
    """A chain of layers (see the module's docstring). ``Chain.of(module)`` takes an
    nn.Sequential; ``name`` is what reports call it."""

    reads_nchw = True  # its convs run through the planted kernels, which read NCHW

    def __init__(self, modules: Sequence[nn.Module], paths: Optional[Sequence[str]] = None,
                 name: str = "network"):
        super().__init__()
        modules = list(modules)
        self.paths = list(paths) if paths is not None else [str(i) for i in range(len(modules))]
        self.name = name
        check(modules, self.paths, name)
        self.body = nn.ModuleList(modules)
        # Where in ``body`` each layer (conv or linear, planted or not) is.
        self.layer_positions = [i for i, m in enumerate(modules)
                                if isinstance(m, LAYERS + (PlantedConv2d, PlantedLinear))]

    @classmethod
    def of(cls, module: nn.Module, name: Optional[str] = None) -> "Chain":
        """The chain of an nn.Sequential (copied: the search never changes the user's module)."""
        if isinstance(module, Chain):
            return copy.deepcopy(module)
        name = name or type(module).__name__
        found = leaves(module, name)
        return Chain([copy.deepcopy(m) for _, m in found], [p for p, _ in found], name)

    # ------------------------------------------------------------------ structure

    @property
    def num_layers(self) -> int:
        return len(self.layer_positions)

    @property
    def points(self) -> list[int]:
        """The planting points: every layer but the classifier."""
        return list(range(self.num_layers - 1))

    def plantable_points(self, include_linear: bool = False) -> list[int]:
        """The planting points a search plants: every conv before the classifier, and the
        linear layers before it too with ``include_linear``."""
        return [j for j in self.points if include_linear or is_conv(self.layer(j))]

    def layer(self, index: int) -> nn.Module:
        return self.body[self.layer_positions[index]]

    def set_layer(self, index: int, module: nn.Module):
        self.body[self.layer_positions[index]] = module

    def segment_range(self, index: int) -> range:
        """Where in ``body`` the modules after layer ``index`` (up to the next layer) are."""
        stop = self.layer_positions[index + 1] if index + 1 < self.num_layers else len(self.body)
        return range(self.layer_positions[index] + 1, stop)

    def segment(self, index: int) -> list[nn.Module]:
        return [self.body[i] for i in self.segment_range(index)]

    @property
    def prefix(self) -> list[nn.Module]:
        return list(self.body[:self.layer_positions[0]])

    @property
    def num_classes(self) -> int:
        return out_features(self.layer(self.num_layers - 1))

    @property
    def in_channels(self) -> int:
        return in_features(self.layer(0))

    def layer_names(self) -> list[str]:
        """conv1, conv2, ..., fc1, fc2, ...: each layer by its kind and place."""
        names, counts = [], {"conv": 0, "fc": 0}
        for j in range(self.num_layers):
            kind = "conv" if is_conv(self.layer(j)) else "fc"
            counts[kind] += 1
            names.append(f"{kind}{counts[kind]}")
        return names

    @property
    def point_widths(self) -> list[int]:
        return [out_features(self.layer(j)) for j in self.points]

    def _widths(self, conv: bool) -> list[int]:
        """The widths of the conv (``conv``) or the linear planting points."""
        return [out_features(self.layer(j)) for j in self.points
                if is_conv(self.layer(j)) == conv]

    @property
    def widths(self) -> list[int]:
        """The conv planting points' widths (the linear ones' where it has no conv point)."""
        return self._widths(True) or self.point_widths

    @property
    def fc_width(self):
        """The linear planting points' width (a list where there are several; None: none,
        or no conv point, whose widths are then ``widths``)."""
        fcs = self._widths(False)
        if not fcs or len(fcs) == len(self.points):
            return None
        return fcs[0] if len(fcs) == 1 else fcs

    def describe(self) -> str:
        """The planting points' widths as the search prints them: [convs|linear layers]."""
        convs, fcs = (list(map(str, self._widths(kind))) for kind in (True, False))
        return f"[{','.join(convs)}{'|' + ','.join(fcs) if fcs else ''}]"

    def is_planted(self) -> bool:
        return any(isinstance(m, PlantedBatchNorm) or getattr(m, "planted_in", 0)
                   or getattr(m, "planted_out", 0) for m in self.body)

    def train(self, mode: bool = True):
        """A planted network trains its planted parameters only: its frozen modules stay as
        they are evaluated (batch norms on their running statistics, dropout off)."""
        super().train(mode)
        if mode and self.is_planted():
            for m in self.body:
                if isinstance(m, BATCH_NORMS + (nn.Dropout,)):
                    m.eval()
        return self

    # ------------------------------------------------------------------ running

    def activate(self, index: int, pre: Tensor) -> Tensor:
        """What layer ``index + 1`` reads, from layer ``index``'s output ``pre``: the segment
        after it. Its modules act on each channel alone, so it also maps a subset of the
        channels (the planted ones) on its own, given that subset's batch norms."""
        return run_modules(self.segment(index), pre)

    def run_layer(self, index: int, x: Tensor) -> Tensor:
        """Layer ``index`` on ``x``: a plain conv through trainable_conv2d (the planted
        kernels where their rule takes its shape), any other layer as it is."""
        layer = self.layer(index)
        if type(layer) is nn.Conv2d:
            return trainable_conv2d(x, layer.weight, layer.bias, layer.stride,
                                    conv_padding(layer))
        return layer(x)

    def forward_from(self, index: int, pre: Tensor) -> Tensor:
        """The logits, given layer ``index``'s output ``pre`` (index -1: ``pre`` is the image)."""
        h = run_modules(self.prefix, pre) if index < 0 else self.activate(index, pre)
        for j in range(index + 1, self.num_layers):
            h = self.activate(j, self.run_layer(j, h))
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_from(-1, x)

    def activations(self, x: Tensor) -> tuple[list, list]:
        """Every layer's input and output, as lists indexed by layer."""
        inputs, outputs = [], []
        for j in range(self.num_layers):
            inputs.append(run_modules(self.prefix, x) if j == 0
                          else self.activate(j - 1, outputs[-1]))
            outputs.append(self.run_layer(j, inputs[-1]))
        return inputs, outputs

    def frozen_layer(self, index: int, x: Tensor, backend: str = "auto") -> Tensor:
        """Layer ``index`` of a plain (merged) network as a frozen layer: a conv through
        ``planted_conv2d`` with the whole weight frozen (the planted kernels where its auto
        rule takes them; a gradient for ``x`` only, if it needs one), a linear layer through
        F.linear."""
        layer = self.layer(index)
        if is_conv(layer):
            return planted_conv2d(x, layer.weight, layer.bias, stride=layer.stride,
                                  padding=conv_padding(layer), backend=backend)
        return F.linear(x, layer.weight, layer.bias)

    @torch.no_grad()
    def frozen_activated(self, index: int, x: Tensor, backend: str = "auto") -> Tensor:
        """``activate(index, frozen_layer(index, x))`` of the network as it is evaluated,
        without gradients: a batch norm right after a conv is folded into its weights, and a
        ReLU + 2x2 max pool after that into the convolution where the kernels can
        (relu_pool.conv_relu_max_pool2d)."""
        layer, rest = self.layer(index), self.segment(index)
        if not is_conv(layer):
            return self.activate(index, self.frozen_layer(index, x, backend))
        weight, bias = layer.weight, layer.bias
        if rest and type(rest[0]) is nn.BatchNorm2d:
            weight, bias = fold_batch_norm(weight, bias, rest[0])
            rest = rest[1:]
        padding = conv_padding(layer)
        if len(rest) >= 2 and type(rest[0]) is nn.ReLU and is_pool2x2(rest[1]):
            h = conv_relu_max_pool2d(x, weight, bias, layer.stride, padding, backend)
            rest = rest[2:]
        else:
            h = planted_conv2d(x, weight, bias, stride=layer.stride, padding=padding,
                               backend=backend)
        return run_modules(rest, h)

    @torch.no_grad()
    def frozen_forward(self, x: Tensor, backend: str = "auto") -> Tensor:
        """The logits of a plain network as it is evaluated, without gradients, through its
        frozen layers: how the search runs a trained network it only evaluates (the
        teacher's logits, every evaluation)."""
        h = run_modules(self.prefix, x)
        for j in range(self.num_layers):
            h = self.frozen_activated(j, h, backend)
        return h
