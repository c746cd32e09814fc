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
  planted batch norm's or depthwise conv's new channels; an activation, pool, flatten,
  reduction or residual add of new channels);
- ``split``: changed channels, then the new ones, kept apart: where the group's channels
  meet values that already differ from the parent's (a producer over a changed input runs
  its frozen filters and its planted ones apart);
- ``changed``: computed in full, from where a reader adds its planted input slices' term to
  the parent's output (or, over split channels, to its frozen filters over the old ones) on,
  every frozen conv through ``planted_conv2d`` with the batch norm after it folded in.

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

from plantops.chain import bn_scale, conv_padding, fold_batch_norm
from plantops.graph import GraphNet
from plantops.group_planting import PlantedDepthwiseConv2d
from plantops.planted_batch_norm import PlantedBatchNorm
from plantops.planted_conv import PlantedConv2d, planted_conv2d
from plantops.planted_linear import PlantedLinear
from plantops.planted_round import RoundCandidates, planted_filters, planted_term
from plantops.width_groups import (CHANNELWISE_FUNCTIONS, CHANNELWISE_METHODS,
                                   CHANNELWISE_MODULES)

PARENT, EXTENDED, SPLIT, CHANGED = "parent", "extended", "split", "changed"
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


def _call(node: fx.Node, module: nn.Module | None, args, kwargs):
    """``node``'s operation on ``args``, ``kwargs`` (``module``: a call_module node's), never
    in place."""
    if node.op == "call_module":
        return module(*args, **kwargs)
    kwargs = _kwargs_no_inplace(kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    this, *rest = args
    return getattr(this, _method(node.target))(*rest, **kwargs)


class GraphRound(RoundCandidates):
    """A parent ``GraphNet`` and its candidates ``{point: GraphNet}`` (each
    ``parent.plant(point, p)``), as one function: ``round_(x)`` is every candidate's logits,
    ``[k * N, classes]`` in the order of their points. Training it trains the candidates'
    planted parameters (the same tensors)."""

    def __init__(self, parent: GraphNet, candidates: dict[int, GraphNet]):
        # NCHW: the planted kernels' layout (a channels-last parent would be copied per call).
        self.parent = parent.merged().net.to(memory_format=torch.contiguous_format).eval()
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
            net.net.to(memory_format=torch.contiguous_format)  # its parameters stay the same
            self.modules[point] = dict(net.net.module.named_modules())
        # A plain conv whose only reader is a batch norm: where a candidate computes it in
        # full, the batch norm (evaluated, frozen) is folded into its weights once, and where
        # a reader adds its planted term, the batch norm scales the term alone.
        modules = self.parent_modules = dict(self.graph.named_modules())
        self.conv_bn, self.folded, self.scale = {}, {}, {}
        for node in self.nodes:
            conv = modules.get(node.target) if node.op == "call_module" else None
            users = list(node.users)
            if not (isinstance(conv, nn.Conv2d) and len(users) == 1
                    and users[0].op == "call_module" and len(users[0].args) == 1
                    and type(modules[users[0].target]) is nn.BatchNorm2d):
                continue
            bn = modules[users[0].target]
            if not bn.track_running_stats:
                continue
            self.conv_bn[node] = users[0]
            self.scale[users[0]] = bn_scale(bn).view(-1, 1, 1, 1)  # on a weight's rows
            if _computed(conv):
                self.folded[node] = fold_batch_norm(conv.weight, conv.bias, bn)
        self.planted_paths = {point: [path for path, m in self.modules[point].items()
                                      if _is_planted(m)] for point in self.layers}

    # ------------------------------------------------------------------ the parent

    @torch.no_grad()
    def _parent_values(self, x: Tensor) -> dict:
        """Every node's value in the parent, for ``x``. A conv with a batch norm after it runs
        with the batch norm folded in (the batch norm's value); its own output is computed
        only if a candidate asks for it (``_ParentValues``)."""
        values = _ParentValues(self._parent_node)
        values[self.nodes[0]] = x
        for node in self.nodes[1:]:
            if node in values:
                continue  # a batch norm computed with its conv
            if node in self.folded:
                conv = self.parent_modules[node.target]
                values[self.conv_bn[node]] = planted_conv2d(
                    values[node.args[0]], *self.folded[node], stride=conv.stride,
                    padding=conv_padding(conv))
                continue
            values[node] = self._parent_node(node, values)
        return values

    def _parent_node(self, node: fx.Node, values: dict):
        """The parent's value of ``node``, from its inputs' ``values``."""
        load = lambda a: fx.node.map_arg(a, lambda n: values[n])
        if node.op == "placeholder":
            raise ValueError(f"{node.name}: the round op runs networks of one input")
        if node.op == "get_attr":
            return _attr(self.graph, node.target)
        if node.op == "output":
            return load(node.args[0])
        m = self.parent_modules.get(node.target) if node.op == "call_module" else None
        if type(m) is nn.Conv2d and _computed(m):  # the planted kernels' choice
            return planted_conv2d(values[node.args[0]], m.weight, m.bias, stride=m.stride,
                                  padding=conv_padding(m))
        return _call(node, m, load(node.args), load(node.kwargs))

    # ------------------------------------------------------------------ one candidate

    def _candidate(self, point: int, parent: dict) -> Tensor:
        """Candidate ``point``'s logits, walking the graph with each node's value as
        (kind, old channels, new channels): (PARENT, -, -): the parent's; (EXTENDED, -, new):
        the parent's channels, then ``new``; (SPLIT, old, new): changed channels ``old``, then
        ``new``; (CHANGED, value, -)."""
        modules = self.modules[point]
        state: dict[fx.Node, tuple] = {}

        def full(node):
            """The candidate's value of ``node``, assembled."""
            kind, old, new = state[node]
            if kind == PARENT:
                return parent[node]
            if kind in (EXTENDED, SPLIT):
                return torch.cat([parent[node] if kind == EXTENDED else old, new], 1)
            return old

        def load(a):
            return fx.node.map_arg(a, full)

        done = set()  # batch norms computed with the conv before them
        for node in self.nodes:
            if node in done:
                continue
            kinds = {state[a][0] for a in node.all_input_nodes}
            planted = node.op == "call_module" and _is_planted(modules[node.target])
            if node.op == "output":
                return load(node.args[0])
            if node.op == "get_attr" and any(node.target.startswith(path + ".")
                                             for path in self.planted_paths[point]):
                state[node] = (CHANGED, _attr(self.candidates[point].net.module, node.target),
                               None)
                continue
            if kinds <= {PARENT} and not planted:  # a placeholder, a frozen attribute too
                state[node] = (PARENT, None, None)
                continue
            if node.op == "call_module" and len(node.args) == 1 and not node.kwargs \
                    and isinstance(node.args[0], fx.Node):
                got = self._layer(node, modules, state, parent)
                if got is not None:
                    state[node], after = got
                    if after is not None:  # the batch norm after it, folded in
                        state[self.conv_bn[node]] = after
                        done.add(self.conv_bn[node])
                    continue
            split = self._split(node, modules, state, parent)
            if split is not None:
                state[node] = split
                continue
            # Not split: the whole operation on the candidate's tensors.
            m = modules[node.target] if node.op == "call_module" else None
            state[node] = (CHANGED, _call(node, m, load(node.args), load(node.kwargs)), None)
        raise AssertionError("a traced graph ends in its output node")

    def _layer(self, node, modules, state, parent):
        """A conv or linear layer of the candidate: (its state, the state of the batch norm
        after it where that is computed with it, else None), or None where the layer runs
        as it is. Frozen weights run through ``planted_conv2d`` (an input gradient only), an
        evaluated batch norm after a conv folded into them."""
        m, (kind, old, new) = modules[node.target], state[node.args[0]]
        bn = self.conv_bn.get(node)
        bn_module = None if bn is None else modules[bn.target]
        folded = self.folded.get(node)  # there is one wherever there is a batch norm after it
        if isinstance(m, (PlantedConv2d, PlantedLinear)):
            backend = getattr(m, "backend", "auto")  # (a PlantedLinear has none)
            if m.planted_out and not m.planted_in and kind in (PARENT, CHANGED):  # a producer
                h = parent[node.args[0]] if kind == PARENT else old
                new_out = planted_filters(m, h, backend)
                if kind == PARENT:
                    return (EXTENDED, None, new_out), None
                if isinstance(bn_module, PlantedBatchNorm):  # its frozen part folded in
                    return (SPLIT, None, new_out), (SPLIT, _frozen(m, h, *folded),
                                                    bn_module.planted_part(new_out))
                return (SPLIT, _frozen(m, h, m.frozen_weight, m.frozen_bias), new_out), None
            if m.planted_in and not m.planted_out and kind in (EXTENDED, SPLIT):  # a reader
                plain_bn = type(bn_module) is nn.BatchNorm2d  # folded in; its scale on the slices
                term = planted_term(m, new, backend,
                                    m.in_weight * self.scale[bn] if plain_bn else None)
                if kind == EXTENDED:
                    out = parent[bn if plain_bn else node] + term
                else:  # two convolutions, not one over the channels joined: the frozen one
                    # computes no weight gradient at all
                    out = _frozen(m, old, *(folded if plain_bn else (m.frozen_weight,
                                                                     m.frozen_bias))) + term
                return ((CHANGED, None, None), (CHANGED, out, None)) if plain_bn else \
                    ((CHANGED, out, None), None)
            return None
        if type(m) is nn.Conv2d and _computed(m) and kind == CHANGED:
            if type(bn_module) is nn.BatchNorm2d and folded is not None:
                out = planted_conv2d(old, *folded, stride=m.stride, padding=conv_padding(m))
                return (CHANGED, None, None), (CHANGED, out, None)
            return (CHANGED, planted_conv2d(old, m.weight, m.bias, stride=m.stride,
                                            padding=conv_padding(m)), None), None
        return None

    def _split(self, node, modules, state, parent):
        """(kind, old, new) of ``node`` computed on the old and new channels apart, or None
        (it then runs in full)."""
        args = node.args
        first = state.get(args[0]) if args and isinstance(args[0], fx.Node) else None
        if first is None or first[0] not in (EXTENDED, SPLIT):
            return None
        kind, old, new = first
        others = [a for a in list(args[1:]) + list(node.kwargs.values())
                  if isinstance(a, fx.Node)]

        def both(f, frozen_f=None):
            """``f`` on the new channels, and on the old ones where they changed."""
            return (kind, None if kind == EXTENDED else (frozen_f or f)(old), f(new))

        if node.op == "call_module":
            m = modules[node.target]
            if len(args) != 1 or node.kwargs:
                return None
            if isinstance(m, PlantedBatchNorm):
                return both(m.planted_part, m.frozen_part)
            if isinstance(m, PlantedDepthwiseConv2d):
                conv = lambda w, b: (lambda x: F.conv2d(x, w, b, m.stride, m.padding,
                                                        m.dilation, x.shape[1]))
                return both(conv(m.weight, m.bias), conv(m.frozen_weight, m.frozen_bias))
            if type(m) in CHANNELWISE_MODULES:
                return both(m)
            if isinstance(m, nn.Flatten) and (m.start_dim, m.end_dim) == (1, -1):
                return both(lambda x: x.flatten(1))
            return None
        target = node.target if node.op == "call_function" else _method(node.target)
        rest, kwargs = args[1:], _kwargs_no_inplace(dict(node.kwargs))
        call = ((lambda x: target(x, *rest, **kwargs)) if node.op == "call_function"
                else (lambda x: getattr(x, target)(*rest, **kwargs)))
        if target in CHANNELWISE_FUNCTIONS or (node.op == "call_method"
                                               and target in CHANNELWISE_METHODS):
            return None if others else both(call)
        if target in REDUCTIONS and not others and _spatial_dims(rest, node.kwargs):
            return both(call)
        if target in FLATTENS and list(rest) in ([1], [1, -1]) and not node.kwargs:
            return both(lambda x: x.flatten(1))
        op = _ELEMENTWISE_OPS.get(target)
        if op is not None and len(args) == 2 and not node.kwargs:
            b = args[1]
            if isinstance(b, (int, float)):
                return both(lambda x: op(x, b))
            if not isinstance(b, fx.Node) or state[b][0] not in (EXTENDED, SPLIT):
                return None
            b_kind, b_old, b_new = state[b]
            if kind == b_kind == EXTENDED:
                return EXTENDED, None, op(new, b_new)
            old_a = parent[args[0]] if kind == EXTENDED else old
            old_b = parent[b] if b_kind == EXTENDED else b_old
            return SPLIT, op(old_a, old_b), op(new, b_new)
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


class _ParentValues(dict):
    """The parent's node values; one not computed in the pass (a conv whose batch norm was
    folded into it) is computed from its inputs when first asked for."""

    def __init__(self, compute):
        super().__init__()
        self.compute = compute

    def __missing__(self, node):
        with torch.no_grad():
            value = self[node] = self.compute(node, self)
        return value


def _computed(conv: nn.Conv2d) -> bool:
    """Whether the planted op computes ``conv`` (no groups, dilation or padding mode)."""
    return (conv.groups == 1 and tuple(conv.dilation) == (1, 1)
            and conv.padding_mode == "zeros")


def _frozen(layer, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A planted layer's frozen part (``weight``, ``bias``: its frozen block, or that with a
    batch norm folded in) over ``x``: an input gradient only."""
    if isinstance(layer, PlantedConv2d):
        return planted_conv2d(x, weight, bias, stride=layer.stride, padding=layer.padding)
    return F.linear(x, weight, bias)


def _attr(module: nn.Module, target: str):
    *path, name = target.split(".")
    owner = module.get_submodule(".".join(path)) if path else module
    return getattr(owner, name)


def _is_planted(m: nn.Module) -> bool:
    inner = getattr(m, "module", m)  # a Reordered's
    return isinstance(inner, (PlantedConv2d, PlantedLinear, PlantedBatchNorm,
                              PlantedDepthwiseConv2d))


__all__ = ["GraphRound"]
