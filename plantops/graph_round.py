"""The round op of a network of any shape: every candidate of a round, each planted into one
width group, computed from one pass of the parent.

A candidate (``GraphNet.plant``) is its parent with ``p`` channels planted into one width
group (plantops/width_groups.py). Run on the same batch, most of its tensors are the
parent's: every tensor before the group's producers is the parent's exactly, and every
tensor of the group holds the parent's channels and then ``p`` new ones. So the round runs
the parent's traced graph once, without gradients, keeping every node's value, and then,
for each candidate, walks the same graph keeping for each node one of:

- ``parent``: the candidate's value is the parent's (nothing planted is upstream);
- ``extended``: the parent's channels, then the new ones: only the new ones are computed
  (a producer's planted filters over the parent's input, through ``planted_conv2d``; a
  planted batch norm's or depthwise conv's new channels; an activation, pool, flatten or
  residual add of new channels);
- ``changed``: computed in full, from where a reader adds its planted input slices' term to
  the parent's output (``planted_conv2d`` with ``x_planted``, as the chain's round op) on.

Anything else (a concatenation, a view, an operation the walk does not split) runs in full
on the tensors assembled, which is always the candidate's own value. The logits of all the
candidates come out stacked along the batch, in the order of their groups, and one backward
trains them all (their parameters are disjoint). No gradient is computed for a frozen
weight, and backward stops at each candidate's producers (tests/test_graph_round.py).
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from plantops.graph import GraphNet
from plantops.group_planting import PlantedDepthwiseConv2d
from plantops.planted_batch_norm import PlantedBatchNorm
from plantops.planted_conv import PlantedConv2d, planted_conv2d
from plantops.planted_linear import PlantedLinear
from plantops.planting import planted_buffers, planted_parameters
from plantops.width_groups import (CHANNELWISE_FUNCTIONS, CHANNELWISE_METHODS,
                                   CHANNELWISE_MODULES, ELEMENTWISE)

PARENT, EXTENDED, CHANGED = "parent", "extended", "changed"
FLATTENS = {torch.flatten, "flatten"}
REDUCTIONS = {torch.mean, torch.sum, torch.amax, "mean", "sum", "amax"}


def _no_inplace(module: nn.Module):
    """The parent's values are kept and reused: no module may overwrite its input."""
    for m in module.modules():
        if getattr(m, "inplace", False):
            m.inplace = False


def _kwargs_no_inplace(kwargs: dict) -> dict:
    return dict(kwargs, inplace=False) if kwargs.get("inplace") else kwargs


def _method(name: str) -> str:
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


class GraphRound:
    """A parent ``GraphNet`` and its candidates ``{point: GraphNet}`` (each
    ``parent.plant(point, p)``), as one function: ``round_(x)`` is every candidate's logits,
    ``[k * N, classes]`` in the order of their points. Training it trains the candidates'
    planted parameters (the same tensors)."""

    def __init__(self, parent: GraphNet, candidates: dict[int, GraphNet]):
        plain = parent.merged()
        self.parent = plain.net.eval()
        for p in self.parent.parameters():
            p.requires_grad_(False)
        _no_inplace(self.parent)
        self.graph = fx.symbolic_trace(self.parent)
        self.nodes = list(self.graph.graph.nodes)
        self.layers = sorted(candidates)
        self.candidates = {point: candidates[point] for point in self.layers}
        self.modules = {}
        for point, net in self.candidates.items():
            if net.planted is None or net.planted[0] != point:
                raise ValueError(f"candidate for group {point} is not its parent planted "
                                 "there (build it with GraphNet.plant)")
            _no_inplace(net.net)
            self.modules[point] = dict(net.net.module.named_modules())
        self.planted_paths = {point: [path for path, m in self.modules[point].items()
                                      if _is_planted(m)] for point in self.layers}

    def __len__(self):
        return len(self.layers)

    def parameters(self) -> list[nn.Parameter]:
        return [p for net in self.candidates.values() for p in planted_parameters(net)]

    def buffers(self) -> list[Tensor]:
        return [b for net in self.candidates.values() for b in planted_buffers(net)]

    def train(self, mode: bool = True):
        for net in self.candidates.values():
            net.train(mode)
        return self

    def eval(self):
        return self.train(False)

    # ------------------------------------------------------------------ the parent

    @torch.no_grad()
    def _parent_values(self, x: Tensor) -> dict:
        values = {}
        load = lambda a: fx.node.map_arg(a, lambda n: values[n])
        modules = dict(self.graph.named_modules())
        for node in self.nodes:
            if node.op == "placeholder":
                values[node] = x
            elif node.op == "get_attr":
                values[node] = _attr(self.graph, node.target)
            elif node.op == "call_module":
                values[node] = modules[node.target](*load(node.args), **load(node.kwargs))
            elif node.op == "call_function":
                values[node] = node.target(*load(node.args), **_kwargs_no_inplace(
                    load(node.kwargs)))
            elif node.op == "call_method":
                this, *rest = load(node.args)
                values[node] = getattr(this, _method(node.target))(*rest, **_kwargs_no_inplace(
                    load(node.kwargs)))
            else:  # output
                values[node] = load(node.args[0])
        return values

    # ------------------------------------------------------------------ one candidate

    def _candidate(self, point: int, parent: dict) -> Tensor:
        modules = self.modules[point]
        state: dict[fx.Node, tuple[str, object]] = {}

        def full(node):
            """The candidate's value of ``node``, assembled."""
            kind, value = state[node]
            if kind == PARENT:
                return parent[node]
            if kind == EXTENDED:
                return torch.cat([parent[node], value], 1)
            return value

        def load(a):
            return fx.node.map_arg(a, full)

        for node in self.nodes:
            inputs = [a for a in node.all_input_nodes]
            kinds = {state[a][0] for a in inputs}
            planted = node.op == "call_module" and _is_planted(modules[node.target])
            if node.op == "output":
                return load(node.args[0])
            if node.op == "get_attr" and any(node.target.startswith(path + ".")
                                             for path in self.planted_paths[point]):
                state[node] = (CHANGED, _attr(self.candidates[point].net.module, node.target))
                continue
            if kinds <= {PARENT} and not planted:  # a placeholder, a frozen attribute too
                state[node] = (PARENT, None)
                continue
            split = self._split(node, modules, state, parent)
            if split is not None:
                state[node] = split
                continue
            # Not split: the whole operation on the candidate's tensors.
            args, kwargs = load(node.args), load(node.kwargs)
            if node.op == "call_module":
                out = modules[node.target](*args, **kwargs)
            elif node.op == "call_function":
                out = node.target(*args, **_kwargs_no_inplace(kwargs))
            else:
                this, *rest = args
                out = getattr(this, _method(node.target))(*rest, **_kwargs_no_inplace(kwargs))
            state[node] = (CHANGED, out)
        raise AssertionError("a traced graph ends in its output node")

    def _split(self, node, modules, state, parent):
        """(kind, value) of ``node`` computed from the new channels alone, or None."""
        args = node.args
        first = state.get(args[0]) if args and isinstance(args[0], fx.Node) else None
        others = [a for a in list(args[1:]) + list(node.kwargs.values())
                  if isinstance(a, fx.Node)]
        if node.op == "call_module":
            m = modules[node.target]
            if len(args) != 1 or node.kwargs or first is None:
                return None
            kind, new = first
            if isinstance(m, (PlantedConv2d, PlantedLinear)):
                if m.planted_out and not m.planted_in and kind == PARENT:
                    return EXTENDED, _planted_filters(m, parent[args[0]])
                if m.planted_in and not m.planted_out and kind == EXTENDED:
                    return CHANGED, parent[node] + _planted_term(m, new)
                return None
            if kind != EXTENDED:
                return None
            if isinstance(m, PlantedBatchNorm):
                return EXTENDED, m.planted_part(new)
            if isinstance(m, PlantedDepthwiseConv2d):
                return EXTENDED, F.conv2d(new, m.weight, m.bias, m.stride, m.padding,
                                          m.dilation, new.shape[1])
            if type(m) in CHANNELWISE_MODULES:
                return EXTENDED, m(new)
            if isinstance(m, nn.Flatten) and (m.start_dim, m.end_dim) == (1, -1):
                return EXTENDED, new.flatten(1)
            return None
        if first is None or first[0] != EXTENDED:
            return None
        new = first[1]
        target = node.target if node.op == "call_function" else _method(node.target)
        rest = args[1:]
        if target in CHANNELWISE_FUNCTIONS or (node.op == "call_method"
                                               and target in CHANNELWISE_METHODS):
            if others:
                return None
            call = target if node.op == "call_function" else getattr(new, target)
            extra = _kwargs_no_inplace(dict(node.kwargs))
            return EXTENDED, (call(new, *rest, **extra) if node.op == "call_function"
                              else call(*rest, **extra))
        if target in REDUCTIONS and not others and _spatial_dims(rest, node.kwargs):
            if node.op == "call_function":
                return EXTENDED, target(new, *rest, **node.kwargs)
            return EXTENDED, getattr(new, target)(*rest, **node.kwargs)
        if target in FLATTENS and list(rest) in ([1], [1, -1]) and not node.kwargs:
            return EXTENDED, new.flatten(1)
        if target in ELEMENTWISE and len(args) == 2 and not node.kwargs:
            b = args[1]
            if isinstance(b, fx.Node):
                if state[b][0] != EXTENDED:
                    return None
                b = state[b][1]
            elif not isinstance(b, (int, float)):
                return None
            op = _ELEMENTWISE_OPS.get(target)
            return None if op is None else (EXTENDED, op(new, b))
        return None

    def __call__(self, x: Tensor) -> Tensor:
        parent = self._parent_values(x)
        return torch.cat([self._candidate(point, parent) for point in self.layers])


_ELEMENTWISE_OPS = {operator.add: operator.add, torch.add: operator.add, "add": operator.add,
                    operator.sub: operator.sub, torch.sub: operator.sub, "sub": operator.sub,
                    operator.mul: operator.mul, torch.mul: operator.mul, "mul": operator.mul,
                    operator.truediv: operator.truediv, torch.div: operator.truediv,
                    "div": operator.truediv}


def _spatial_dims(rest, kwargs) -> bool:
    """Whether a reduction's dims (positional or ``dim=``) are all past the channels."""
    dims = kwargs.get("dim", rest[0] if rest else None)
    dims = [dims] if isinstance(dims, int) else dims
    return isinstance(dims, (list, tuple)) and bool(dims) and all(
        isinstance(d, int) and d >= 2 for d in dims)


def _attr(module: nn.Module, target: str):
    *path, name = target.split(".")
    owner = module.get_submodule(".".join(path)) if path else module
    return getattr(owner, name)


def _is_planted(m: nn.Module) -> bool:
    inner = getattr(m, "module", m)  # a Reordered's
    return isinstance(inner, (PlantedConv2d, PlantedLinear, PlantedBatchNorm,
                              PlantedDepthwiseConv2d))


def _planted_filters(layer, h: Tensor) -> Tensor:
    """A producer's planted filters over its (the parent's) input: its new channels."""
    if isinstance(layer, PlantedConv2d):
        return planted_conv2d(h, layer.frozen_weight[:0], None, out_weight=layer.out_weight,
                              out_bias=layer.out_bias, stride=layer.stride,
                              padding=layer.padding, backend=layer.backend)
    return F.linear(h, layer.out_weight, layer.out_bias)


def _planted_term(layer, new: Tensor) -> Tensor:
    """A reader's planted input slices over the new channels: what they add to its output."""
    if isinstance(layer, PlantedConv2d):
        return planted_conv2d(new[:, :0], layer.frozen_weight[:, :0], None,
                              in_weight=layer.in_weight, stride=layer.stride,
                              padding=layer.padding, backend=layer.backend, x_planted=new)
    return F.linear(new, layer.in_weight)


__all__ = ["GraphRound"]
