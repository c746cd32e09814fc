"""Planting into a chain, and merging a planted chain back into plain layers.

``plant(net, layer, p)`` returns a copy of ``net`` (a ``plantops.chain.Chain``) in which
layer ``layer`` has ``p`` planted outputs, every batch norm between it and the next layer
has ``p`` (or, after a flatten, ``p`` times the spatial positions) planted features
(``PlantedBatchNorm``), and the next layer has the matching planted inputs. Those planted
blocks are the only trainable parameters; everything else is frozen and runs as the parent
is evaluated. ``merge`` turns a planted chain into a plain one of the grown widths, and
``export`` into the ``nn.Sequential`` the user built, grown.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from plantops.chain import Chain, ChainError, conv_padding, in_features, is_conv, out_features
from plantops.planted_batch_norm import BATCH_NORMS, PlantedBatchNorm
from plantops.planted_conv import PlantedConv2d
from plantops.planted_linear import PlantedLinear

# How the planted outgoing weights start: the scale of the layer's default init (0: zero).
PLANT_INITS = {"preserve": 0.0, "small": 0.1, "random": 1.0}


def plant(net: Chain, layer: int, count: int, init: str = "preserve",
          generator: torch.Generator | None = None) -> Chain:
    """A copy of ``net`` with ``count`` channels planted into ``layer`` (a planting point).

    Only the planted blocks are trainable. ``init="preserve"`` starts the new outgoing
    weights (the next layer's planted input slices) at zero, so the candidate computes
    exactly its parent's function before training; ``"random"`` gives them the layer's
    default initialization too, and ``"small"`` a tenth of it: the candidate starts near its
    parent, and the new filters get a gradient from the first step (with zero outgoing
    weights they get none until the slices have moved). A batch norm between the layer and
    the next grows by the planted features (PlantedBatchNorm).
    """
    if init not in PLANT_INITS:
        raise ValueError(f"plant init must be one of {', '.join(PLANT_INITS)}, got {init!r}")
    if not isinstance(net, Chain):
        raise TypeError(f"plant expects a Chain (plantops.Chain.of(your_sequential)), got "
                        f"{type(net).__name__}")
    if layer not in net.points:
        names = net.layer_names()
        raise ValueError(f"layer must be a planting point 0-{len(names) - 2} "
                         f"({', '.join(names[:-1])}; the last, {names[-1]}, is the "
                         f"classifier), got {layer}")
    net = merge(net)
    for p in net.parameters():
        p.requires_grad_(False)
    old = net.layer(layer)
    reader_old = net.layer(layer + 1)
    frozen = out_features(old)
    grown = _to_planted(old).plant_outputs(count, generator)
    net.set_layer(layer, grown)
    # After a flatten, each planted channel is its spatial positions' features, flattened
    # channel by channel after the frozen channels' (so they come last in the reader's input).
    per_channel = 1
    for i in net.segment_range(layer):
        m = net.body[i]
        if isinstance(m, nn.Flatten) and is_conv(old):
            per_channel, rest = divmod(in_features(reader_old), frozen)
            if rest or per_channel < 1:
                raise ChainError(f"{net.name}: layer {net.layer_names()[layer + 1]} reads "
                                 f"{in_features(reader_old)} features, not a multiple of the "
                                 f"{frozen} channels of {net.layer_names()[layer]}: its width "
                                 "cannot grow")
        elif isinstance(m, BATCH_NORMS):
            net.body[i] = PlantedBatchNorm(m, count * per_channel)
    reader = _to_planted(reader_old).plant_inputs(count * per_channel)
    net.set_layer(layer + 1, reader)
    if init != "preserve":
        bound = PLANT_INITS[init] / reader._fan_in() ** 0.5
        with torch.no_grad():
            reader.in_weight.uniform_(-bound, bound, generator=generator)
    return net.train(net.training)


def _to_planted(layer):
    if isinstance(layer, nn.Conv2d):
        return PlantedConv2d(layer.weight, layer.bias, layer.stride, conv_padding(layer))
    return PlantedLinear.from_linear(layer)


def planted_parameters(net: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters (the non-empty planted blocks)."""
    return [p for p in net.parameters() if p.requires_grad and p.numel()]


def planted_buffers(net: nn.Module) -> list[Tensor]:
    """What training the planted channels changes besides their parameters: their batch
    norms' running statistics."""
    return [b for m in net.modules() if isinstance(m, PlantedBatchNorm)
            for b in m.planted.buffers()]


def planted_state(net: nn.Module) -> list:
    """The planted parameters and buffers of ``net`` as CPU copies (what training changed)."""
    return [t.detach().cpu().clone() for t in planted_parameters(net) + planted_buffers(net)]


def load_planted_state(net: nn.Module, state: list):
    with torch.no_grad():
        for t, saved in zip(planted_parameters(net) + planted_buffers(net), state, strict=True):
            t.copy_(saved)


def merge(net: Chain) -> Chain:
    """A plain copy: planted layers become nn.Conv2d / nn.Linear / batch norms with their
    whole weights."""
    out = copy.deepcopy(net)
    for i, m in enumerate(out.body):
        if isinstance(m, PlantedConv2d):
            out.body[i] = m.to_conv()
        elif isinstance(m, PlantedLinear):
            out.body[i] = m.to_linear()
        elif isinstance(m, PlantedBatchNorm):
            out.body[i] = m.to_batch_norm()
    for p in out.parameters():
        p.requires_grad_(True)
    return out.train(net.training)


def export(net: Chain) -> nn.Sequential:
    """The network as the user built it, grown: the same modules in the same nn.Sequential
    nesting (plain torch layers, loadable without plantops), planted layers merged."""
    plain = merge(net)
    root = nn.Sequential()
    for path, module in zip(plain.paths, plain.body):
        *parents, leaf = path.split(".")
        node = root
        for part in parents:
            if not hasattr(node, part):
                node.add_module(part, nn.Sequential())
            node = getattr(node, part)
        node.add_module(leaf, copy.deepcopy(module))
    return root.train(net.training)


def count_params(model: nn.Module) -> int:
    """Parameters of the network as the paper counts them: every weight and bias, planted or
    not (batch norms' affine included, their running statistics not)."""
    return sum(t.numel() for t in merge(model).parameters()) if isinstance(model, Chain) \
        else sum(t.numel() for t in model.parameters())
