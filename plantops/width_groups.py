"""Where a CNN of any shape can grow: its width groups, found on its ``torch.fx`` graph.

A chain grows one layer at a time: a conv's new filters make new channels, and the next layer
reads them. In a ResNet or a MobileNet, channels are tied together. A residual add makes one
set of channels out of two producers' (the block's last conv and the shortcut, or whatever fed
the block), so both must grow, and the new channels ride every identity shortcut of the
stage. A depthwise conv carries each of its input channels to one output channel, so it grows
with the conv before it. A concatenation lays its inputs' channels side by side, so each
branch grows on its own, and the layers after the concatenation read the new channels at
that branch's offset. A *width group* is such a set: the channels that must grow together.
Planting ``p`` channels into a group gives every *producer* (a conv with ``groups=1``, or a
linear layer, whose outputs are the group's channels) ``p`` new filters, every *channelwise*
module in between (batch norm, depthwise conv) ``p`` new channels, and every *reader* (a
conv or linear layer that takes the group's channels in) ``p`` new input slices.

``width_groups(module, example)`` traces ``module`` with ``torch.fx``, runs ``example`` (one
input, shapes only matter) through the graph to learn each tensor's shape, and follows the
channel dimension through every node, with a union-find over *channel spaces*: each producer
makes a space; an operation that acts on each channel alone passes its input's space on; an
elementwise operation of two tensors with channels (add, multiply: residual blocks,
squeeze-and-excitation) unites their spaces; a concatenation along channels lays spaces side
by side. Each united set of spaces is one group. It cannot grow (and says why) where it holds
the network's input channels or its outputs, where an operation the analysis does not know
touches it, or where a view hard-codes its width.

The paper's networks and any ``nn.Sequential`` chain are the simplest case: one group per
layer but the classifier, in the chain's order (``tests/test_width_groups.py`` holds it).
"""

from __future__ import annotations

import contextlib
import copy
import io
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

# Modules and functions that act on each channel alone (their output's channels are their
# input's, one by one).
CHANNELWISE_MODULES = (nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU, nn.ReLU6, nn.LeakyReLU,
                       nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
                       nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout,
                       nn.Identity)
CHANNELWISE_FUNCTIONS = {F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.hardswish,
                         F.hardsigmoid, F.sigmoid, F.max_pool2d, F.avg_pool2d,
                         F.adaptive_avg_pool2d, F.dropout, torch.relu, torch.sigmoid,
                         torch.tanh}
CHANNELWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone"}
RESHAPES = {torch.flatten, "flatten", "view", "reshape", "squeeze", "unsqueeze"}
REDUCTIONS = {"mean", "sum", "amax"}
ELEMENTWISE = {operator.add, operator.mul, operator.sub, operator.truediv, torch.add,
               torch.mul, torch.sub, torch.div, "add", "mul", "sub", "div", "add_", "mul_"}
SUMS = {operator.add, operator.sub, torch.add, torch.sub, "add", "sub", "add_"}
CONCATS = {torch.cat, torch.concat}


@dataclass
class WidthGroup:
    """Channels that grow together (see the module's docstring). Module paths are the
    user's own (``layer1.0.conv1``)."""

    name: str
    width: int
    producers: list[str] = field(default_factory=list)
    channelwise: list[str] = field(default_factory=list)  # batch norms, depthwise convs
    readers: list[str] = field(default_factory=list)
    why_not: str | None = None  # None: it can grow; else why not, in a few words
    # What a reader or channelwise module takes in, run by run along the channels:
    # (this group's?, channels, features per channel: 1, or H*W after a flatten); after a
    # concatenation, other groups' runs too.
    runs: dict[str, list[tuple[bool, int, int]]] = field(default_factory=dict)

    def planted_features(self, path: str, count: int) -> int:
        """The features ``count`` new channels of the group add to ``path``'s input."""
        return count * sum(per for mine, _, per in self.runs.get(path, [(True, 0, 1)]) if mine)

    def input_order(self, path: str, count: int) -> list[int] | None:
        """Where ``path``'s inputs lie once ``count`` channels are planted, old ones first,
        then the new ones (each run of the group keeps its new channels right after its
        old ones); None where that is already their order (the group's run comes last)."""
        old, new, at = [], [], 0
        for mine, width, per in self.runs.get(path, []):
            old.extend(range(at, at + width * per))
            at += width * per
            if mine:
                new.extend(range(at, at + count * per))
                at += count * per
        order = old + new
        return None if order == list(range(len(order))) else order

    @property
    def plantable(self) -> bool:
        return self.why_not is None


class WidthGroupError(ValueError):
    """A network torch.fx cannot trace, or that fails on the example: one line, naming it and
    why."""


class _Spaces:
    """A union-find over channel spaces, each with what it has learnt about its group."""

    def __init__(self):
        self.parent: list[int] = []
        self.info: list[dict] = []

    def new(self, width: int, producer: tuple | None = None, fixed: str | None = None) -> int:
        """A space of ``width`` channels, made by ``producer`` ((order, path)) if any."""
        self.parent.append(len(self.parent))
        self.info.append(dict(width=width, producers=[producer] if producer else [],
                              channelwise=[], readers=[], fixed=[fixed] if fixed else [],
                              residual=[], runs=[]))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int):
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        self.parent[b] = a
        for key, found in self.info[b].items():
            if isinstance(found, list):  # what was learnt, joined (the width is the same)
                self.info[a][key] += found

    def note(self, space: int, key: str, value: tuple):
        """Records ``value`` ((graph order, what)) under ``key`` for ``space``'s group."""
        self.info[self.find(space)][key].append(value)


# A tensor's channel layout: None (no channel dimension the analysis tracks), or a list of
# runs (space, width, features per channel) along its dimension 1, in order.
Layout = list
SHAPES = {"size", "dim"}  # methods (and getattr, x.shape) that read a shape, not channels


def width_groups(module: nn.Module, example: torch.Tensor) -> list[WidthGroup]:
    """The width groups of ``module`` (see the module's docstring), in the order their first
    producer runs, with ``example`` an input batch (its shape is what matters)."""
    try:
        graph = fx.symbolic_trace(copy.deepcopy(module))  # its own modules, put in eval below
    except Exception as err:
        raise WidthGroupError(f"torch.fx cannot trace {type(module).__name__} "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None
    graph.eval()  # shapes only: batch norms must not update their statistics
    try:
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints
            ShapeProp(graph).propagate(example[:1])                     # a traceback
    except Exception as err:
        cause = err.__cause__ or err
        raise WidthGroupError(
            f"{type(module).__name__} fails on an input of shape {list(example.shape)} "
            f"({type(cause).__name__}: {str(cause).splitlines()[0][:120]})") from None
    modules = dict(graph.named_modules())
    spaces, layouts, first_seen = _Spaces(), {}, {}
    for order, node in enumerate(graph.graph.nodes):
        layouts[node] = _Follow(node, layouts, modules, spaces, order, first_seen).layout()
    return _groups(spaces, first_seen, dict(module.named_modules()))  # the user's classes


def _shape(node) -> tuple | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


class _Follow:
    """What one node does to the channels: its output's layout, and what it records."""

    def __init__(self, node: fx.Node, layouts: dict, modules: dict, spaces: _Spaces,
                 order: int, first_seen: dict):
        self.node, self.layouts, self.modules, self.spaces = node, layouts, modules, spaces
        self.order, self.first_seen = order, first_seen
        self.shape = _shape(node)
        self.args = [a for a in node.args if isinstance(a, fx.Node)]
        self.first = layouts.get(self.args[0]) if self.args else None
        if node.op == "call_module":
            self.where = str(node.target)
        else:
            name = getattr(node.target, "__name__", str(node.target))
            self.where = f"{name} ({node.name})"

    def layout(self) -> Layout | None:
        node, target = self.node, self.node.target
        if node.op == "placeholder":
            if self.shape is None or len(self.shape) < 2:
                return None
            width = self.shape[1]
            return [(self.spaces.new(width, fixed=(self.order, "it holds the input's channels")),
                     width, 1)]
        if node.op == "output":
            for a in _flat(node.args):
                if isinstance(a, fx.Node):
                    self.mark(self.layouts.get(a), "fixed", "it holds the network's outputs")
            return None
        if node.op == "get_attr":
            return None
        if node.op == "call_module":
            return self.module(self.modules[target])
        if target in SHAPES or target is getattr:
            return None
        if target in CONCATS:
            return self.concat()
        if target in ELEMENTWISE:
            return self.elementwise()
        if target in RESHAPES:
            return self.reshaped()
        if target in REDUCTIONS:
            return self.reduced()
        if target in CHANNELWISE_FUNCTIONS or target in CHANNELWISE_METHODS:
            return self.same_channels()
        return self.unknown()

    def mark(self, layout, key: str, value: str):
        for space, _, _ in layout or []:
            self.spaces.note(space, key, (self.order, value))

    def read(self, path: str, key: str = "readers"):
        """``path`` reads the first input's channels (``key``: as a reader, or channel by
        channel), so many features a channel."""
        for space, _, _ in self.first or []:
            self.spaces.note(space, key, (self.order, path))
            self.spaces.note(space, "runs", (self.order, (path, tuple(self.first))))

    def module(self, m: nn.Module) -> Layout | None:
        path = str(self.node.target)
        if isinstance(m, nn.Conv2d):
            depthwise = 1 < m.groups == m.in_channels == m.out_channels  # channel i makes i
            why = _not_computed(path, m, depthwise)
            if why:  # neither side of it can grow
                self.mark(self.first, "fixed", why)
                made = self.produce(path, m.out_channels)
                self.mark(made, "fixed", why)
                return made
            if depthwise:
                self.read(path, "channelwise")
                return self.first
            self.read(path)
            return self.produce(path, m.out_channels)
        if isinstance(m, nn.Linear):
            self.read(path)
            return self.produce(path, m.out_features)
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            self.read(path, "channelwise")
            return self.first
        if isinstance(m, nn.Flatten):
            return self.reshaped()
        if isinstance(m, CHANNELWISE_MODULES):
            return self.same_channels()
        return self.unknown()

    def produce(self, path: str, width: int) -> Layout:
        space = self.spaces.new(width, producer=(self.order, path))
        self.first_seen[space] = self.order
        return [(space, width, 1)]

    def width(self, layout) -> int:
        return sum(w * per for _, w, per in layout)

    def same_channels(self) -> Layout | None:
        layout = self.first
        if layout is None:
            return None
        if self.shape is None or len(self.shape) < 2 or self.shape[1] != self.width(layout):
            self.mark(layout, "fixed", f"{self.where} changes the channel dimension")
            return None
        return layout

    def concat(self) -> Layout | None:
        parts = [p for p in self.node.args[0] if isinstance(p, fx.Node)]
        dim = self.node.args[1] if len(self.node.args) > 1 else self.node.kwargs.get("dim", 0)
        ndim = len(self.shape) if self.shape else 0
        layouts = [self.layouts.get(p) for p in parts]
        if ndim >= 2 and dim % ndim == 1 and all(layouts):
            return [run for layout in layouts for run in layout]
        for layout in layouts:
            self.mark(layout, "fixed", f"{self.where} joins tensors other than along channels")
        return None

    def elementwise(self) -> Layout | None:
        """Two tensors with the same channels combined element by element (a residual add,
        a squeeze-and-excitation product) are one group; a scalar, or a tensor broadcast
        over the channels, leaves the channels as they are."""
        out = self.shape[1] if self.shape and len(self.shape) >= 2 else None
        tracked, untracked = [], []
        for a in self.args:
            shape = _shape(a)
            if shape is None or len(shape) < 2 or out is None or shape[1] != out or out == 1:
                continue
            (tracked if self.layouts.get(a) else untracked).append(a)
        if not tracked:
            return None
        base = self.layouts[tracked[0]]
        for a in untracked:  # a per-channel tensor of its own (a buffer): it cannot grow
            self.mark(base, "fixed", f"{self.where} combines it with {a.name}, "
                                     "a per-channel tensor the network holds")
        for a in tracked[1:]:
            other = self.layouts[a]
            if [w * p for _, w, p in base] == [w * p for _, w, p in other]:
                for (sa, _, _), (sb, _, _) in zip(base, other):
                    self.spaces.union(sa, sb)
                if self.node.target in SUMS:  # a residual add, not a gate's product
                    self.mark(base, "residual", self.where)
            else:
                for layout in (base, other):
                    self.mark(layout, "fixed", f"{self.where} combines channels laid out "
                                               "differently")
        return base

    def reshaped(self) -> Layout | None:
        """A flatten, view or reshape keeps the layout where dimension 1 stays the channels,
        each channel's features together ([N, C, H, W] to [N, C*H*W]; [N, C] to
        [N, C, 1, 1]); a view or reshape that writes a size as a number cannot grow."""
        layout, node = self.first, self.node
        if layout is None:
            return None
        if node.op == "call_method" and node.target in ("view", "reshape"):
            sizes = node.args[1:] if len(node.args) > 2 or not isinstance(
                node.args[1], (tuple, list)) else node.args[1]
            literal = [a for a in sizes if isinstance(a, int) and a > 1]
            if literal:
                self.mark(layout, "fixed", f"{self.where} writes the size {literal[0]} "
                                           "as a number")
                return None
        before, after = _shape(self.args[0]), self.shape
        if before is None or after is None or len(after) < 2:
            self.mark(layout, "fixed", f"{self.where} changes the channel dimension")
            return None
        if after[1] == before[1] and _numel(after[2:]) == _numel(before[2:]):
            return layout
        spread = _numel(before[2:])  # [N, C, H, W] -> [N, C*H*W]: H*W features a channel
        if after[1] == before[1] * spread and _numel(after[2:]) == 1:
            return [(s, w, p * spread) for s, w, p in layout]
        self.mark(layout, "fixed", f"{self.where} reshapes the channels")
        return None

    def reduced(self) -> Layout | None:
        """A mean, sum or max over dimensions other than the batch and the channels keeps
        the channels (a global pool); over the channels it does not."""
        layout = self.first
        if layout is None:
            return None
        before = _shape(self.args[0]) or ()
        dims = self.node.args[1] if len(self.node.args) > 1 else self.node.kwargs.get("dim")
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        if dims and before and all(d % len(before) > 1 for d in dims):
            return layout
        self.mark(layout, "fixed", f"{self.where} reduces over the channels")
        return None

    def unknown(self) -> None:
        for a in self.args:
            self.mark(self.layouts.get(a), "fixed",
                      f"{self.where} is an operation the analysis does not know")
        return None


def _not_computed(path: str, conv: nn.Conv2d, depthwise: bool) -> str | None:
    """Why planting could not grow ``conv`` (a padding mode, dilation or grouping the planted
    op does not compute), or None."""
    if conv.padding_mode != "zeros":
        return f"{path} pads with {conv.padding_mode!r}"
    if conv.groups == 1 and tuple(conv.dilation) != (1, 1):
        return f"{path} is a dilated conv"
    if conv.groups > 1 and not depthwise:
        return f"{path} is a grouped conv ({conv.groups} groups)"
    return None


def _flat(args):
    for a in args:
        if isinstance(a, (tuple, list)):
            yield from _flat(a)
        elif isinstance(a, dict):
            yield from _flat(list(a.values()))
        else:
            yield a


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _groups(spaces: _Spaces, first_seen: dict, modules: dict) -> list[WidthGroup]:
    roots: dict[int, int] = {}
    for space, order in first_seen.items():
        root = spaces.find(space)
        roots[root] = min(order, roots.get(root, order))
    groups = []
    for root, _ in sorted(roots.items(), key=lambda item: item[1]):
        info = spaces.info[root]
        paths = {key: list(dict.fromkeys(path for _, path in sorted(info[key])))
                 for key in ("producers", "channelwise", "readers")}
        why = min(info["fixed"])[1] if info["fixed"] else None
        if why is None and not paths["readers"]:
            why = "nothing reads it"
        name = (_residual_name(paths["producers"], modules)
                if info["residual"] and len(paths["producers"]) > 1
                 else paths["producers"][0])
        groups.append(WidthGroup(name, info["width"], paths["producers"],
                                 paths["channelwise"], paths["readers"], why,
                                 {path: [(spaces.find(space) == root, w, per)
                                         for space, w, per in layout]
                                  for _, (path, layout) in sorted(info["runs"])}))
    return groups


def _residual_name(producers: list[str], modules: dict) -> str:
    """A residual width by the blocks its producers lie in: ``layer2.0 (residual)`` for a
    block's last conv and its shortcut, ``conv1 + layer1.0 + layer1.1 (residual)`` for a stem
    and the blocks of a stage."""
    return " + ".join(dict.fromkeys(_block(p, modules) for p in producers)) + " (residual)"


def _block(path: str, modules: dict) -> str:
    """The innermost module of the user's own class (not a Sequential) that holds ``path``,
    or its top-level module if none does."""
    parts = path.split(".")
    for end in range(len(parts) - 1, 0, -1):
        if not isinstance(modules.get(".".join(parts[:end])), (nn.Sequential, nn.ModuleList)):
            return ".".join(parts[:end])
    return parts[0]


__all__ = ["WidthGroup", "WidthGroupError", "width_groups"]
