"""Planting into a network, and merging a planted network back into plain layers.

``plant(net, layer, p)`` returns a copy of ``net`` (a ``plantops.chain.Chain``) in which
layer ``layer`` has ``p`` planted outputs, every batch norm between it and the next layer
has ``p`` (or, after a flatten, ``p`` times the spatial positions) planted features
(``PlantedBatchNorm``), and the next layer has the matching planted inputs: the layer's
outputs are a width group of the chain's modules in order (``chain_group``), planted by the
rule every network's groups are (``group_planting.plant_group``). Those planted blocks are
the only trainable parameters; everything else is frozen and runs as the parent is
evaluated. ``merge`` turns a planted chain into a plain one of the grown widths, and
``export`` into the ``nn.Sequential`` the user built, grown. A ``GraphNet`` (a network of any
shape) is dispatched to its own methods, which plant and merge by the same rule.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from plantops.chain import Chain, ChainError, conv_padding, in_features, is_conv, out_features
from plantops.inference import FrozenConv2d
from plantops.planted_batch_norm import BATCH_NORMS, PlantedBatchNorm
from plantops.planted_conv import PlantedConv2d
from plantops.planted_linear import PlantedLinear
from plantops.width_groups import WidthGroup

# How the planted outgoing weights start: the scale of the layer's default init (0: zero).
# "steepest" starts them at zero too, and chooses the new filters (plant_steepest).
PLANT_INITS = {"preserve": 0.0, "small": 0.1, "random": 1.0, "steepest": 0.0}


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
    if _is_graph(net):
        return net.plant(layer, count, init, generator)
    if not isinstance(net, Chain):
        raise TypeError(f"plant expects a Chain (plantops.Chain.of(your_sequential)) or a "
                        f"GraphNet, got {type(net).__name__}")
    if layer not in net.points:
        names = net.layer_names()
        raise ValueError(f"layer must be a planting point 0-{len(names) - 2} "
                         f"({', '.join(names[:-1])}; the last, {names[-1]}, is the "
                         f"classifier), got {layer}")
    net = merge(net)
    # The chain's layer is one width group of its modules in order, planted by the one rule
    # every network's groups are (group_planting.plant_group: the same draws in the same order).
    from plantops.group_planting import plant_group  # it plants through this module's layers
    grown = plant_group(nn.Sequential(*net.body), chain_group(net, layer), count, init,
                        generator)
    for i, m in enumerate(grown.module):
        net.body[i] = m
    return net.train(net.training)


def chain_group(net: Chain, layer: int) -> WidthGroup:
    """Layer ``layer``'s outputs as a width group of the chain's modules in order (paths "0",
    "1", ... of ``nn.Sequential(*net.body)``): the layer makes them, the batch norms up to the
    next layer carry them, and the next layer reads them, each channel as its spatial
    positions' features after a flatten (flattened channel by channel after the frozen
    channels', so they come last in the reader's input)."""
    old, reader = net.layer(layer), net.layer(layer + 1)
    frozen = out_features(old)
    runs, per_channel, carriers = {}, 1, []
    for i in net.segment_range(layer):
        m = net.body[i]
        if isinstance(m, nn.Flatten) and is_conv(old):
            per_channel, rest = divmod(in_features(reader), frozen)
            if rest or per_channel < 1:
                raise ChainError(f"{net.name}: layer {net.layer_names()[layer + 1]} reads "
                                 f"{in_features(reader)} features, not a multiple of the "
                                 f"{frozen} channels of {net.layer_names()[layer]}: its width "
                                 "cannot grow")
        elif isinstance(m, BATCH_NORMS):
            carriers.append(str(i))
            runs[str(i)] = [(True, frozen, per_channel)]
    reader_path = str(net.layer_positions[layer + 1])
    runs[reader_path] = [(True, frozen, per_channel)]
    return WidthGroup(net.layer_names()[layer], frozen,
                      producers=[str(net.layer_positions[layer])], channelwise=carriers,
                      readers=[reader_path], runs=runs)


def _is_graph(net) -> bool:
    from plantops.graph import GraphNet  # graph.py plants through this module's layers
    return isinstance(net, GraphNet)


def plant_steepest(net: Chain, layer: int, count: int, generator: torch.Generator | None,
                   batches, pool: int = 8) -> Chain:
    """``plant(net, layer, count)`` whose new filters start where the loss falls fastest:
    of ``pool * count`` filters of the layer's default init, the ``count`` whose reader
    slices get the largest gradient of the loss over ``batches`` ((images, loss of the
    logits) pairs), the slices at zero. With zero slices the candidate starts as its parent,
    and the first step moves its loss by the squared norm of that gradient times the step
    size: GradMax's criterion (Evci et al., ICLR 2022), met by choosing among random filters
    rather than by its closed form, which assumes a linear layer between the two."""
    wide = plant(net, layer, count * pool, "steepest", generator)
    device = batches[0][0].device if batches else torch.device("cpu")
    wide = wide.to(device).train()
    slices = wide.layer(layer + 1).in_weight
    total = torch.zeros_like(slices)
    for x, loss in batches:
        total += torch.autograd.grad(loss(wide(x)), [slices])[0]
    per_channel = total[0].numel() // (count * pool)
    score = total.reshape(total.shape[0], count * pool, per_channel).square().sum((0, 2))
    keep = score.topk(count).indices.sort().values.cpu()
    candidate = plant(net, layer, count, "steepest", torch.Generator())  # filters: below
    grown, drawn = candidate.layer(layer), wide.layer(layer).cpu()
    with torch.no_grad():
        grown.out_weight.copy_(drawn.out_weight[keep])
        if grown.out_bias is not None:
            grown.out_bias.copy_(drawn.out_bias[keep])
    return candidate


def planted_layer(layer):
    """A conv or linear layer as a planted one, everything frozen (a planted one as it is)."""
    if isinstance(layer, (PlantedConv2d, PlantedLinear)):
        return layer
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
    whole weights (a GraphNet's, its planted blocks merged into the user's module)."""
    if _is_graph(net):
        return net.merged()
    from plantops.group_planting import merge_planted  # it plants through this module
    out = copy.deepcopy(net)
    merge_planted(out.body)
    return out.train(net.training)


def export(net: Chain) -> nn.Sequential:
    """The network as the user built it, grown: the same modules in the same nn.Sequential
    nesting (plain torch layers, loadable without plantops), planted layers merged; a
    GraphNet's, the user's own module of the grown widths."""
    if _is_graph(net):
        return merge(net).net
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
    not (batch norms' affine included, their running statistics not); a module run through
    plantops.inference counts those of the module it came from."""
    if isinstance(model, Chain) or _is_graph(model):
        return sum(t.numel() for t in merge(model).parameters())
    return sum(t.numel() for t in model.parameters()) + sum(
        m.source_params for m in model.modules() if isinstance(m, FrozenConv2d))


def forward_flops(net: nn.Module, channels: int, size: int) -> int:
    """The floating-point operations of one image's forward pass through the network's
    convolutions and linear layers (2 per multiply-add, the usual count), on ``channels`` x
    ``size`` x ``size`` images. Batch norms, activations and pools (a few percent of a
    network's work at most) are not counted."""
    plain = export(net) if isinstance(net, Chain) or _is_graph(net) else net
    flops = 0

    def count(module, inputs, out):
        nonlocal flops
        if isinstance(module, nn.Conv2d):
            taps = module.in_channels // module.groups * module.kernel_size[0] \
                * module.kernel_size[1]
            flops += 2 * out.numel() * taps
        elif isinstance(module, FrozenConv2d):  # its output may be pooled: count the conv's
            flops += 2 * module.output_numel(inputs[0].shape) * module.weight[0].numel()
        else:
            flops += 2 * out.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in plain.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear, FrozenConv2d))]
    was = plain.training
    try:
        with torch.no_grad():
            plain.eval()(torch.zeros(1, channels, size, size,
                                     device=next(plain.parameters()).device))
    finally:
        plain.train(was)
        for hook in hooks:
            hook.remove()
    return flops


def from_scratch(net: Chain) -> Chain:
    """A plain network of ``net``'s architecture and widths with new weights: every layer's
    and batch norm's default initialization (in the order of the chain, the order the paper's
    networks are built in), running statistics reset. Seed torch first for the same
    weights."""
    with torch.random.fork_rng():  # merging builds layers, whose init would draw numbers
        fresh = merge(net)
    modules = fresh.net.modules() if _is_graph(fresh) else fresh.body
    for module in modules:
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()  # batch norms reset their running statistics too
    return fresh
