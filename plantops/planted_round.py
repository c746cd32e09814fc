"""The round op: every candidate of a planting round, computed layer by layer in a few calls.

A candidate of a round is its parent plus ``p`` channels planted into one layer ``l``
(``planting.plant``, on any chain: the paper's networks or a user's): ``p`` new filters in layer
``l``, their batch norm where one follows, and their ``p`` new input slices in layer ``l + 1``
(the reader); everything else is the parent's and frozen. So for one batch, at each layer
``j`` of the network:

1. the parent's layer ``j`` runs once, without gradients (its activations feed everything;
   where only they are needed, a batch norm, ReLU and pool after a conv are folded into it);
2. candidate ``j``'s planted filters run over the parent's input to ``j``: a planted
   convolution with no frozen filters (``planted_conv2d``, gradients for the filters only),
   then the segment after ``j`` on those channels alone (their own batch norm);
3. the candidates planted before ``j - 1`` have all their channels from here on, and layer
   ``j`` is frozen for them: it runs once over their activations stacked along the batch,
   with an input gradient and no weight gradient;
4. candidate ``j - 1``'s reader adds its planted term to the parent's output of ``j``: the
   frozen filters' planted input slices over the planted channels (``planted_conv2d`` with
   ``x_planted``, gradients for the slices and the planted channels only), then the candidate
   joins the stack.

The logits of all the candidates come out stacked along the batch, in the order of their
layers. A candidate's frozen channels are never recomputed, no gradient is computed for a
frozen weight, and backward stops at each candidate's planted layer. The convolutions go
through ``planted_conv2d``, whose ``auto`` rule picks each one's backend (the C++ kernels on
a CPU, cuDNN or the GPU kernels where measured faster); the ReLU + 2x2 max pools through
``relu_max_pool2d``. Training all the candidates together is training each alone: their
parameters are disjoint, the loss is the sum of theirs, and SGD acts on each parameter alone
(tests/test_planted_round.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plantops.chain import Chain, conv_padding, fold_batch_norm, run_modules
from plantops.planted_batch_norm import PlantedBatchNorm
from plantops.planted_conv import PlantedConv2d, planted_conv2d
from plantops.planting import merge, planted_buffers, planted_parameters


class RoundCandidates:
    """What a round op holds of its candidates (``self.candidates``, ``{point: network}`` in
    the order of ``self.layers``): their planted parameters and statistics, and their mode.
    The chain's round op below and the graph's (plantops/graph_round.py) share it."""

    layers: list[int]
    candidates: dict

    def __len__(self):
        return len(self.layers)

    def parameters(self) -> list[nn.Parameter]:
        """The planted parameters, candidate by candidate in the order of their layers."""
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


class PlantedRound(RoundCandidates):
    """A parent and its candidates ``{layer: network}`` (each ``planting.plant(parent,
    layer, p)``), as one function: ``round_(x)`` is every candidate's logits, ``[k * N, classes]``
    for ``k`` candidates in the order of their layers. Training it trains the candidates'
    own planted parameters (the same tensors, shared). The parent runs as it is evaluated
    (batch norms on their running statistics, dropout off); each candidate's planted
    channels pass through its own segment, whose planted batch norms follow ``train()`` /
    ``eval()``."""

    def __init__(self, parent: Chain, candidates: dict[int, Chain], backend: str = "auto"):
        # NCHW: the planted kernels' layout (a channels-last parent would be copied per call).
        self.parent = merge(parent).to(memory_format=torch.contiguous_format).eval()
        for p in self.parent.parameters():
            p.requires_grad_(False)
        self.backend = backend
        self.layers = sorted(candidates)
        self.candidates = {layer: candidates[layer] for layer in self.layers}
        self.segments = {}
        # A batch norm right after a frozen conv, folded into its weights once (the parent is
        # frozen): the stacked candidates then skip its pass and its backward.
        self.folded = {}
        for j in range(self.parent.num_layers):
            layer, segment = self.parent.layer(j), self.parent.segment(j)
            if isinstance(layer, nn.Conv2d) and segment and type(segment[0]) is nn.BatchNorm2d:
                self.folded[j] = fold_batch_norm(layer.weight, layer.bias, segment[0])
        parent_widths = [_frozen_out(self.parent.layer(j)) for j in range(self.parent.num_layers)]
        for layer, net in self.candidates.items():
            grown, reader = net.layer(layer), net.layer(layer + 1)
            frozen_widths = [_frozen_out(net.layer(j)) for j in range(net.num_layers)]
            if not (_planted(grown, "out") and not _planted(grown, "in")
                    and not _planted(reader, "out") and _planted(reader, "in")
                    and frozen_widths == parent_widths):
                raise ValueError(f"candidate for layer {layer} is not its parent plus channels "
                                 "planted into that one layer (build it with plantops.plant)")
            # Each candidate's segment after its planted layer, for its planted channels
            # alone: its planted batch norms' own parts, the other modules as they are.
            self.segments[layer] = [m.planted if isinstance(m, PlantedBatchNorm) else m
                                    for m in net.segment(layer)]

    # The parent's frozen layer j on x (input gradient only, where x needs one).
    def _frozen(self, j: int, x: Tensor) -> Tensor:
        return self.parent.frozen_layer(j, x, self.backend)

    # The stacked candidates through the parent's frozen layer j and the segment after it.
    def _stacked(self, j: int, x: Tensor) -> Tensor:
        if j not in self.folded:
            return self.parent.activate(j, self._frozen(j, x))
        layer = self.parent.layer(j)
        weight, bias = self.folded[j]
        h = planted_conv2d(x, weight, bias, stride=layer.stride, padding=conv_padding(layer),
                           backend=self.backend)
        return run_modules(self.parent.segment(j)[1:], h)

    # Candidate j's planted filters over the parent's input h to layer j.
    def _planted_filters(self, j: int, h: Tensor) -> Tensor:
        return planted_filters(self.candidates[j].layer(j), h, self.backend)

    # Candidate j-1's term in layer j: its reader's planted input slices over its planted
    # channels (the frozen slices' term is the parent's output).
    def _planted_term(self, j: int, planted: Tensor) -> Tensor:
        return planted_term(self.candidates[j - 1].layer(j), planted, self.backend)

    def __call__(self, x: Tensor) -> Tensor:
        net = self.parent
        last = net.num_layers - 1
        with torch.no_grad():
            h = run_modules(net.prefix, x)  # the parent's input to layer j
        stack = None          # the stacked candidates' input to layer j
        planted = None        # candidate j-1's planted channels, activated
        for j in range(net.num_layers):
            # The parent's output of layer j is needed by candidate j-1's reader; otherwise
            # only its activation is, and a batch norm, ReLU and pool after a conv fold into
            # the convolution (Chain.frozen_activated).
            parent_out = h_next = None
            if j - 1 in self.candidates:
                with torch.no_grad():
                    parent_out = self._frozen(j, h)
            elif j < last:
                h_next = net.frozen_activated(j, h, self.backend)
            new = self._planted_filters(j, h) if j in self.candidates else None
            # Every module of a segment acts on each sample alone: the stacked candidates and
            # the one that joins are activated apart, then stacked.
            parts = [] if stack is None else [self._stacked(j, stack)]
            if j - 1 in self.candidates:
                parts.append(net.activate(j, parent_out + self._planted_term(j, planted)))
            out = None if not parts else parts[0] if len(parts) == 1 else torch.cat(parts)
            if j == last:
                return out
            stack = out
            planted = None if new is None else run_modules(
                self.segments[j], new)
            if h_next is None:
                with torch.no_grad():
                    h_next = net.activate(j, parent_out)
            h = h_next


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


def _planted(layer, side: str) -> int:
    return getattr(layer, f"planted_{side}", 0)  # 0: a plain layer


def _frozen_out(layer) -> int:
    """Outputs of a layer without its planted ones."""
    if hasattr(layer, "frozen_out"):
        return layer.frozen_out
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
