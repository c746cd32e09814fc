"""The round op: every candidate of a planting round, computed from one pass of the parent,
and the frozen work after the candidates run once for all of them, stacked along the batch.

A candidate is its parent with ``p`` channels planted into one planting point
(``planting.plant``): a layer of a chain (the paper's networks, a user's nn.Sequential) or a
width group of a network of any shape (plantops/graph.py, plantops/width_groups.py). The op
sees either as its torch.fx graph (a chain's is its modules in order, the graph's simplest
case). Run on one batch, most of a candidate's tensors are its parent's: every tensor before
the point's producers is the parent's exactly, and every tensor of the planted width holds
the parent's channels and then ``p`` new ones. So the round runs the parent once, without
gradients (a batch norm after a conv folded into its weights, and a ReLU + 2x2 max pool
after that into the convolution where the kernels can, relu_pool.conv_relu_max_pool2d), and
then walks the graph once, keeping for each candidate at each node one of:

- ``parent``: the candidate's value is the parent's (nothing planted is upstream);
- ``extended``: the parent's channels, then the new ones: only the new ones are computed
  (a producer's planted filters over the parent's input, through ``planted_conv2d`` with no
  frozen filters; a planted batch norm's or depthwise conv's new channels; an activation,
  pool, flatten, reduction or residual add of new channels);
- ``split``: changed channels, then the new ones, kept apart: where the planted width meets
  values that already differ from the parent's (a producer over a changed input runs its
  frozen filters and its planted ones apart);
- ``changed``: computed in full, from where a reader adds its planted input slices' term
  (``planted_conv2d`` with ``x_planted``) to the parent's output, or over split channels to
  its frozen filters over the old ones.

Where several candidates are ``changed`` at a node, its frozen operation runs once over their
values stacked along the batch: a frozen conv through ``planted_conv2d`` (an input gradient,
no weight gradient) with the batch norm after it folded in, a ReLU + 2x2 max pool through
``relu_max_pool2d``. In a chain, candidate ``j`` joins the stack at its reader ``j + 1`` and
stays in it to the logits, so every later layer runs once for all the candidates before it.
Anything the walk does not know to split or stack (a view, an operation on sizes) runs in full
on each candidate's assembled tensors, which is always that candidate's own value.

The logits of all the candidates come out stacked along the batch, in the order of their
points. A candidate's frozen channels are never recomputed, no gradient is computed for a
frozen weight, and backward stops at each candidate's producers. Training them all together is
training each alone: their parameters are disjoint, the loss is the sum of theirs, and SGD
acts on each parameter alone (tests/test_planted_round.py, tests/test_graph_round.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from plantops.chain import Chain, bn_scale, conv_padding, fold_batch_norm
from plantops.graph import GraphNet
from plantops.graph_ops import (ELEMENTWISE_OPS, FLATTENS, REDUCTIONS, acts_per_sample,
                                attribute, call_node, kernels_compute, kwargs_no_inplace,
                                module_at, no_inplace, only_user, pooled_relu, spatial_dims,
                                target_of)
from plantops.group_planting import PlantedDepthwiseConv2d
from plantops.planted_batch_norm import PlantedBatchNorm
from plantops.planted_conv import PlantedConv2d, planted_conv2d
from plantops.planted_linear import PlantedLinear
from plantops.planting import merge, planted_buffers, planted_parameters
from plantops.relu_pool import conv_relu_max_pool2d, relu_max_pool2d
from plantops.width_groups import (CHANNELWISE_FUNCTIONS, CHANNELWISE_METHODS,
                                   CHANNELWISE_MODULES)

PARENT, EXTENDED, SPLIT, CHANGED = "parent", "extended", "split", "changed"


class PlantedRound:
    """A parent (a ``Chain`` or a ``GraphNet``) and its candidates ``{point: network}`` (each
    ``planting.plant(parent, point, p)``), as one function: ``round_(x)`` is every candidate's
    logits, ``[k * N, classes]`` for ``k`` candidates in the order of their points. Training it
    trains the candidates' own planted parameters (the same tensors, shared). The parent runs
    as it is evaluated (batch norms on their running statistics, dropout off); each
    candidate's planted batch norms follow ``train()`` / ``eval()``. ``backend`` is every
    convolution's (``planted_conv2d``'s)."""

    def __init__(self, parent, candidates: dict, backend: str = "auto"):
        plain = merge(parent)
        # NCHW: the planted kernels' layout (a channels-last parent would be copied per call).
        self.parent = _module(plain).to(memory_format=torch.contiguous_format).eval()
        for p in self.parent.parameters():
            p.requires_grad_(False)
        no_inplace(self.parent)
        self.graph = fx.symbolic_trace(self.parent)
        self.nodes = list(self.graph.graph.nodes)
        self.backend = backend
        self.layers = sorted(candidates)
        self.candidates = {point: candidates[point] for point in self.layers}
        self.modules = {}
        for point, net in self.candidates.items():
            _check_candidate(plain, point, net)
            module = _module(net)
            no_inplace(module)
            module.to(memory_format=torch.contiguous_format)  # its parameters stay the same
            self.modules[point] = dict(module.named_modules())
        self.planted_paths = {point: [path for path, m in self.modules[point].items()
                                      if _is_planted(m)] for point in self.layers}
        self.parent_modules = dict(self.graph.named_modules())
        self._plan()

    def __len__(self):
        return len(self.layers)

    def parameters(self) -> list[nn.Parameter]:
        """The planted parameters, candidate by candidate in the order of their points."""
        return [p for net in self.candidates.values() for p in planted_parameters(net)]

    def buffers(self) -> list[Tensor]:
        """The planted batch norms' running statistics (what training changes besides the
        parameters), candidate by candidate."""
        return [b for net in self.candidates.values() for b in planted_buffers(net)]

    def train(self, mode: bool = True):
        for net in self.candidates.values():
            net.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def _plan(self):
        """What the graph says once for every batch: which values the parent's pass keeps,
        what runs fused, what runs stacked, and where each candidate differs from the
        parent."""
        modules = self.parent_modules
        # A reader adds its planted term to the parent's output of its conv (of the batch
        # norm after it, folded in): the parent's pass keeps that value.
        self.readers = {node for node in self.nodes if node.op == "call_module" and any(
            _is_reader(self.modules[point].get(node.target)) for point in self.layers)}
        # A plain conv whose only reader is an evaluated batch norm: where it runs frozen (the
        # parent's pass, the stacked candidates) the batch norm is folded into its weights,
        # and where a reader adds its planted term, the batch norm scales the term alone.
        self.conv_bn, self.folded, self.scale = {}, {}, {}
        for node in self.nodes:
            conv, user = module_at(node, modules), only_user(node)
            bn = module_at(user, modules)
            if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d \
                    and bn.track_running_stats and user.args == (node,) and not user.kwargs:
                self.conv_bn[node] = user
                self.scale[user] = bn_scale(bn).view(-1, 1, 1, 1)  # on a weight's rows
                if kernels_compute(conv):
                    self.folded[node] = fold_batch_norm(conv.weight, conv.bias, bn)
        # A ReLU whose only reader is a 2x2 max pool: the two run as one pass.
        self.relu_pool = {}
        for node in self.nodes:
            pool = pooled_relu(node, modules)
            if pool is not None:
                self.relu_pool[node] = pool
        self.batched = set()  # the nodes whose values come from the input, batch first
        for node in self.nodes:
            if node.op == "placeholder" or any(a in self.batched for a in node.all_input_nodes):
                self.batched.add(node)
        self.stackable = {node for node in self.nodes if acts_per_sample(node, modules)}
        # Of those, a conv or linear layer runs once on all of them joined; anything else
        # (activations, pools, batch norms, adds) on the runs of candidates whose values lie
        # together already, so that candidates are joined (copied) only where a layer reads them.
        self.joined = {node for node in self.stackable
                       if isinstance(module_at(node, modules), (nn.Conv2d, nn.Linear))}
        # Each candidate's nodes at or after its planted modules: elsewhere it is the parent.
        self.affected = {}
        for point in self.layers:
            planted = lambda node: (node.op in ("call_module", "get_attr") and any(
                node.target == path or node.target.startswith(path + ".")
                for path in self.planted_paths[point]))
            affected = self.affected[point] = set()
            for node in self.nodes:
                if planted(node) or any(a in affected for a in node.all_input_nodes):
                    affected.add(node)

    # ------------------------------------------------------------------ the parent

    @torch.no_grad()
    def _parent_values(self, x: Tensor) -> "_ParentValues":
        """Every node's value in the parent, for ``x``. A conv, its batch norm, ReLU and pool
        run as one where they can (the last one's value); a value skipped so is computed when
        a candidate asks for it."""
        values = _ParentValues(self._parent_node)
        values[self.nodes[0]] = x
        inside = set()  # nodes run within a later one's pass: computed only if asked for
        for node in self.nodes[1:]:
            if node in values or node in inside:
                continue
            fused = self._parent_fused(node, values)
            if fused is None:
                values[node] = self._parent_node(node, values)
                continue
            last, values[last] = fused
            while node is not last:
                node = only_user(node)
                inside.add(node)
        return values

    def _parent_fused(self, node, values):
        """``node``'s value with what follows it folded in: (the last node, its value), or
        None. A conv (not a reader's) with its batch norm and a ReLU + 2x2 max pool after
        them; a ReLU with its max pool."""
        m = module_at(node, self.parent_modules)
        if node in self.relu_pool and values[node.args[0]].dim() == 4:
            return self.relu_pool[node], relu_max_pool2d(values[node.args[0]])
        if type(m) is not nn.Conv2d or not kernels_compute(m):
            return None
        last, weight, bias = self._frozen_weights(node)
        x, kw = values[node.args[0]], dict(stride=m.stride, padding=conv_padding(m))
        relu = only_user(last)
        if relu in self.relu_pool and x.dim() == 4 and node not in self.readers:
            return self.relu_pool[relu], conv_relu_max_pool2d(x, weight, bias, **kw,
                                                              backend=self.backend)
        return last, planted_conv2d(x, weight, bias, **kw, backend=self.backend)

    def _frozen_weights(self, node: fx.Node):
        """(the last node it computes, weight, bias) of the parent's conv at ``node`` run
        frozen: with the batch norm after it folded in where there is one."""
        m = self.parent_modules[node.target]
        if node in self.folded:
            return (self.conv_bn[node], *self.folded[node])
        return node, m.weight, m.bias

    def _parent_node(self, node: fx.Node, values: dict):
        """The parent's value of ``node`` alone, from its inputs' ``values``."""
        load = lambda a: fx.node.map_arg(a, lambda n: values[n])
        if node.op == "placeholder":
            raise ValueError(f"{node.name}: the round op runs networks of one input")
        if node.op == "get_attr":
            return attribute(self.graph, node.target)
        if node.op == "output":
            return load(node.args[0])
        m = module_at(node, self.parent_modules)
        if type(m) is nn.Conv2d and kernels_compute(m):  # the planted kernels' choice
            return planted_conv2d(values[node.args[0]], m.weight, m.bias, stride=m.stride,
                                  padding=conv_padding(m), backend=self.backend)
        return call_node(node, m, load(node.args), load(node.kwargs))

    # ------------------------------------------------------------------ the candidates

    def __call__(self, x: Tensor) -> Tensor:
        walk = _Walk(self.layers, self._parent_values(x), x.shape[0], self.batched)
        for node in self.nodes:
            if node.op == "output":
                if isinstance(node.args[0], fx.Node):
                    return walk.stacked(node.args[0], self.layers)
                return torch.cat([fx.node.map_arg(node.args[0], lambda n: walk.full(point, n))
                                  for point in self.layers])
            together = []  # the candidates for which node runs frozen, stacked
            for point in self.layers:
                if node not in self.affected[point]:
                    walk.states[point][node] = PARENT, None, None
                    continue
                if node in walk.done[point]:
                    continue
                state = self._step(point, node, walk)
                if state is None:
                    together.append(point)
                else:
                    walk.states[point][node] = state
            if together:
                self._stacked(node, together, walk)
        raise AssertionError("a traced graph ends in its output node")

    def _step(self, point: int, node: fx.Node, walk: "_Walk"):
        """Candidate ``point``'s (kind, old channels, new channels) at ``node``: (PARENT, -, -):
        the parent's; (EXTENDED, -, new): the parent's channels, then ``new``; (SPLIT, old,
        new): changed channels ``old``, then ``new``; (CHANGED, value, -): its own value
        (value None: in a stack, ``_Walk``). None where node runs frozen on its value with the
        other candidates' stacked (``_stacked``)."""
        modules, state, parent = self.modules[point], walk.states[point], walk.parent
        if node.op == "get_attr" and any(node.target.startswith(path + ".")
                                         for path in self.planted_paths[point]):
            return CHANGED, attribute(modules[""], node.target), None
        planted = node.op == "call_module" and _is_planted(modules[node.target])
        if not planted and all(state[a][0] == PARENT for a in node.all_input_nodes):
            return PARENT, None, None  # a placeholder, a frozen attribute too
        if node.op == "call_module" and len(node.args) == 1 and not node.kwargs \
                and isinstance(node.args[0], fx.Node):
            got = self._layer(node, modules, state, parent, lambda n: walk.full(point, n))
            if got is not None:
                got, after = got
                if after is not None:  # the batch norm after it, computed with it
                    state[self.conv_bn[node]] = after
                    walk.done[point].add(self.conv_bn[node])
                return got
        split = self._split(node, modules, state, parent)
        if split is not None:
            pool = self.relu_pool.get(node)
            if pool is not None:  # the pool's value (_split), also node's: its only reader
                state[pool] = split
                walk.done[point].add(pool)
            return split
        if node in self.stackable and not planted and all(
                a in self.batched or state[a][0] == PARENT for a in node.all_input_nodes):
            return None
        m = modules[node.target] if node.op == "call_module" else None
        load = lambda a: fx.node.map_arg(a, lambda n: walk.full(point, n))
        return CHANGED, call_node(node, m, load(node.args), load(node.kwargs)), None

    def _stacked(self, node: fx.Node, points: list[int], walk: "_Walk"):
        """``node`` of the parent, frozen, on the values of the candidates ``points`` stacked
        along the batch (a conv with its batch norm folded in, a ReLU with its max pool)."""
        if node not in self.joined:
            runs = walk.runs([a for a in node.all_input_nodes if a in self.batched], points)
            if len(runs) > 1:
                for run in runs:
                    self._stacked(node, run, walk)
                return
        m = module_at(node, self.parent_modules)
        load = lambda a: fx.node.map_arg(a, lambda n: walk.stacked(n, points))
        args, kwargs = load(node.args), load(node.kwargs)
        last = node
        if type(m) is nn.Conv2d and kernels_compute(m):
            last, weight, bias = self._frozen_weights(node)
            out = planted_conv2d(args[0], weight, bias, stride=m.stride,
                                 padding=conv_padding(m), backend=self.backend)
        elif node in self.relu_pool and args[0].dim() == 4:
            last, out = self.relu_pool[node], relu_max_pool2d(args[0])
        else:
            out = call_node(node, m, args, kwargs)
        walk.stack(last, points, out)
        if last is not node:
            for point in points:
                walk.done[point].add(last)

    def _layer(self, node, modules, state, parent, full):
        """A planted conv or linear layer of the candidate: (its state, the state of the
        batch norm after it where that is computed with it, else None), or None where the
        layer runs otherwise. Frozen weights run through ``planted_conv2d`` (an input
        gradient only)."""
        m, (kind, old, new) = modules[node.target], state[node.args[0]]
        if not isinstance(m, (PlantedConv2d, PlantedLinear)):
            return None
        bn = self.conv_bn.get(node)
        bn_module = None if bn is None else modules[bn.target]
        if m.planted_out and not m.planted_in and kind in (PARENT, CHANGED):  # a producer
            h = parent[node.args[0]] if kind == PARENT else full(node.args[0])
            new_out = planted_filters(m, h, self.backend)
            if kind == PARENT:
                return (EXTENDED, None, new_out), None
            if isinstance(bn_module, PlantedBatchNorm) and node in self.folded:
                # its frozen part folded into the frozen filters
                return (SPLIT, None, new_out), (SPLIT, _frozen(m, h, *self.folded[node],
                                                               self.backend),
                                                bn_module.planted_part(new_out))
            return (SPLIT, _frozen(m, h, m.frozen_weight, m.frozen_bias, self.backend),
                    new_out), None
        if m.planted_in and not m.planted_out and kind in (EXTENDED, SPLIT):  # a reader
            # An evaluated batch norm after it is folded in: its scale on the planted slices,
            # added to the parent's (or the frozen filters') output with it folded in.
            plain_bn = type(bn_module) is nn.BatchNorm2d and node in self.folded
            term = planted_term(m, new, self.backend,
                                m.in_weight * self.scale[bn] if plain_bn else None)
            if kind == EXTENDED:
                out = parent[bn if plain_bn else node] + term
            else:  # two convolutions, not one over the channels joined: the frozen one
                # computes no weight gradient at all
                out = _frozen(m, old, *(self.folded[node] if plain_bn
                                        else (m.frozen_weight, m.frozen_bias)),
                              self.backend) + term
            return ((CHANGED, None, None), (CHANGED, out, None)) if plain_bn else \
                ((CHANGED, out, None), None)
        return None

    def _split(self, node, modules, state, parent):
        """(kind, old, new) of ``node`` computed on the old and new channels apart, or None
        (it then runs in full). A ReLU with a 2x2 max pool after it: the pool's value."""
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

        if node in self.relu_pool:
            pool = self.parent_modules[self.relu_pool[node].target]
            return both(lambda x: relu_max_pool2d(x) if x.dim() == 4 else pool(F.relu(x)))
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
        target = target_of(node)
        rest, kwargs = args[1:], kwargs_no_inplace(dict(node.kwargs))
        call = ((lambda x: target(x, *rest, **kwargs)) if node.op == "call_function"
                else (lambda x: getattr(x, target)(*rest, **kwargs)))
        if target in CHANNELWISE_FUNCTIONS or (node.op == "call_method"
                                               and target in CHANNELWISE_METHODS):
            return None if others else both(call)
        if target in REDUCTIONS and not others and spatial_dims(rest, node.kwargs):
            return both(call)
        if target in FLATTENS and list(rest) in ([1], [1, -1]) and not node.kwargs:
            return both(lambda x: x.flatten(1))
        op = ELEMENTWISE_OPS.get(target)
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


class _Walk:
    """One batch's walk through the candidates: each one's state at each node
    (``PlantedRound._step``), the parent's values, and the stacks: at a node, the values of
    candidates that ran together, ``(points, tensor [len(points) * batch, ...])``."""

    def __init__(self, points: list[int], parent: "_ParentValues", batch: int, batched: set):
        self.parent, self.batch = parent, batch
        self.batched = batched  # the nodes whose values come from the input, batch first
        self.states = {point: {} for point in points}
        self.done = {point: set() for point in points}  # computed with a node before them
        self.stacks: dict[fx.Node, list[tuple[tuple, Tensor]]] = {}

    def stack(self, node: fx.Node, points: list[int], value: Tensor):
        self.stacks.setdefault(node, []).append((tuple(points), value))
        for point in points:
            self.states[point][node] = (CHANGED, None, None)

    def _in_stack(self, point: int, node: fx.Node) -> tuple[tuple, Tensor] | None:
        kind, old, _ = self.states[point][node]
        if kind != CHANGED or old is not None:
            return None
        return next(s for s in self.stacks[node] if point in s[0])

    def full(self, point: int, node: fx.Node):
        """Candidate ``point``'s value of ``node``, assembled."""
        kind, old, new = self.states[point][node]
        if kind == PARENT:
            return self.parent[node]
        if kind in (EXTENDED, SPLIT):
            return torch.cat([self.parent[node] if kind == EXTENDED else old, new], 1)
        if old is not None:
            return old
        points, value = self._in_stack(point, node)
        i = points.index(point)
        return value[i * self.batch:(i + 1) * self.batch]

    def _runs_of(self, node: fx.Node, points: list[int]) -> list[tuple[tuple, tuple | None]]:
        """``points`` in runs: each run that lies in one stack of ``node``'s in this order
        (with that stack's points), each other point alone (with None)."""
        runs, i = [], 0
        while i < len(points):
            found = self._in_stack(points[i], node)
            if found is None:
                runs.append(((points[i],), None))
                i += 1
                continue
            held = found[0]
            start = end = held.index(points[i])
            while i < len(points) and end < len(held) and held[end] == points[i]:
                end, i = end + 1, i + 1
            runs.append((held[start:end], found))
        return runs

    def pieces(self, node: fx.Node, points: list[int]) -> list[Tensor]:
        """The values of ``node`` of the candidates ``points``: a tensor for each run of them
        that lies in one stack in this order (a view of it), each other one's alone."""
        pieces = []
        for run, found in self._runs_of(node, points):
            if found is None:
                pieces.append(self.full(run[0], node))
                continue
            held, value = found
            start = held.index(run[0])
            pieces.append(value if len(run) == len(held) else
                          value[start * self.batch:(start + len(run)) * self.batch])
        return pieces

    def runs(self, nodes: list[fx.Node], points: list[int]) -> list[list[int]]:
        """``points`` cut into runs that lie together in every one of ``nodes``' values."""
        cuts = {0, len(points)}
        for node in nodes:
            at = 0
            for run, _ in self._runs_of(node, points):
                at += len(run)
                cuts.add(at)
        cuts = sorted(cuts)
        return [points[a:b] for a, b in zip(cuts, cuts[1:])]

    def stacked(self, node: fx.Node, points: list[int]):
        """The values of ``node`` of the candidates ``points`` stacked along the batch (a
        stack's own tensor where it holds them in this order; a value that is not the
        batch's, such as a weight or a size, as it is)."""
        if all(self.states[p][node][0] == PARENT for p in points):
            value = self.parent[node]
            if not isinstance(value, Tensor) or node not in self.batched:
                return value
        parts = self.pieces(node, points)
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class _ParentValues(dict):
    """The parent's node values; one not computed in the pass (run within a later node's) is
    computed from its inputs when first asked for."""

    def __init__(self, compute):
        super().__init__()
        self.compute = compute

    def __missing__(self, node):
        with torch.no_grad():
            value = self[node] = self.compute(node, self)
        return value


def _module(net) -> nn.Module:
    """The module the round traces and walks: a chain's modules in order (the same
    objects), a graph network's own module (a planted one's, its planted parts inside)."""
    if isinstance(net, Chain):
        return nn.Sequential(*net.body)
    if isinstance(net, GraphNet):
        return net.net.module if net.planted is not None else net.net
    raise TypeError(f"the round op plants a Chain or a GraphNet, got {type(net).__name__}")


def _check_candidate(parent, point: int, net):
    """ValueError unless ``net`` is ``parent`` planted at ``point``."""
    if isinstance(parent, GraphNet):
        if not isinstance(net, GraphNet) or net.planted is None or net.planted[0] != point:
            raise ValueError(f"candidate for group {point} is not its parent planted there "
                             "(build it with GraphNet.plant)")
        return
    fits = isinstance(net, Chain) and point + 1 < net.num_layers
    if fits:
        grown, reader = net.layer(point), net.layer(point + 1)
        widths = lambda chain: [_frozen_out(chain.layer(j)) for j in range(chain.num_layers)]
        fits = (_planted(grown, "out") and not _planted(grown, "in")
                and not _planted(reader, "out") and _planted(reader, "in")
                and widths(net) == widths(parent))
    if not fits:
        raise ValueError(f"candidate for layer {point} is not its parent plus channels "
                         "planted into that one layer (build it with plantops.plant)")


def planted_filters(grown, h: Tensor, backend: str = "auto") -> Tensor:
    """A grown layer's planted filters over its input ``h`` (a parent's): its new channels
    alone, without its frozen filters."""
    if isinstance(grown, PlantedConv2d):
        no_frozen = grown.frozen_weight[:0]  # [0, C, kh, kw]: the planted filters alone
        return planted_conv2d(h, no_frozen, None, out_weight=grown.out_weight,
                              out_bias=grown.out_bias, stride=grown.stride,
                              padding=grown.padding, backend=backend)
    return F.linear(h, grown.out_weight, grown.out_bias)


def planted_term(reader, planted: Tensor, backend: str = "auto",
                 in_weight: Tensor | None = None) -> Tensor:
    """What a reader's planted input slices (``in_weight``, its own unless given) add to its
    output, over the planted channels ``planted`` (the frozen slices' term is the parent's)."""
    in_weight = reader.in_weight if in_weight is None else in_weight
    if isinstance(reader, PlantedConv2d):
        frozen_channels = planted[:, :0]                   # [N, 0, H, W]
        no_frozen = reader.frozen_weight[:, :0]            # [O_f, 0, kh, kw]
        return planted_conv2d(frozen_channels, no_frozen, None, in_weight=in_weight,
                              stride=reader.stride, padding=reader.padding,
                              backend=backend, x_planted=planted)
    return F.linear(planted, in_weight)


def _frozen(layer, x: Tensor, weight: Tensor, bias: Tensor | None, backend: str) -> Tensor:
    """A planted layer's frozen part (``weight``, ``bias``: its frozen block, or that with a
    batch norm folded in) over ``x``: an input gradient only."""
    if isinstance(layer, PlantedConv2d):
        return planted_conv2d(x, weight, bias, stride=layer.stride, padding=layer.padding,
                              backend=backend)
    return F.linear(x, weight, bias)


def _is_reader(m) -> bool:
    return _planted(m, "in") > 0 and not _planted(m, "out")


def _is_planted(m: nn.Module) -> bool:
    inner = getattr(m, "module", m)  # a Reordered's
    return isinstance(inner, (PlantedConv2d, PlantedLinear, PlantedBatchNorm,
                              PlantedDepthwiseConv2d))


def _planted(layer, side: str) -> int:
    return getattr(layer, f"planted_{side}", 0)  # 0: a plain layer


def _frozen_out(layer) -> int:
    """Outputs of a layer without its planted ones."""
    if hasattr(layer, "frozen_out"):
        return layer.frozen_out
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


__all__ = ["PlantedRound", "planted_filters", "planted_term"]
