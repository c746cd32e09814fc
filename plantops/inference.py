"""A trained module of the user's, for inference through the planted kernels.

``for_inference(module)`` is how the search runs a teacher of the user's (a ResNet, say): a
copy traced by ``torch.fx``, each convolution with the batch norm after it folded in (torch's
``fuse_conv_bn_eval``, as for evaluation), and every convolution then run through ``planted_conv2d`` with
its whole weight frozen, whose ``auto`` choice takes the C++ kernels where they beat oneDNN
(plantops.kernels), a ReLU and 2x2 max pool after a convolution folded into it where the
kernels can (``conv_relu_max_pool2d``). The rest of the module (residual adds, pooling, its
classifier) runs as it is. The result is the module's own, up to float rounding.

A module ``torch.fx`` cannot trace runs as it is; ``for_inference`` then says why, in
``InferenceModule.note`` (None when it was converted).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from plantops.planted_conv import planted_conv2d
from plantops.relu_pool import conv_relu_max_pool2d

_RELUS = (F.relu, torch.relu)


class FrozenConv2d(nn.Module):
    """A trained ``nn.Conv2d`` (its batch norm folded in) through ``planted_conv2d``, frozen,
    or, with ``pool``, through ``conv_relu_max_pool2d`` (the ReLU and 2x2 max pool after it)."""

    def __init__(self, conv: nn.Conv2d, pool: bool = False):
        super().__init__()
        self.register_buffer("weight", conv.weight.detach().clone())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        self.stride, self.padding, self.pool = tuple(conv.stride), tuple(conv.padding), pool

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous()  # the planted kernels read NCHW
        if self.pool:
            return conv_relu_max_pool2d(x, self.weight, self.bias, self.stride, self.padding)
        return planted_conv2d(x, self.weight, self.bias, stride=self.stride,
                              padding=self.padding)

    def extra_repr(self) -> str:
        out, cin, kh, kw = self.weight.shape
        return (f"{cin}, {out}, kernel_size=({kh}, {kw}), stride={self.stride}, "
                f"padding={self.padding}{', relu + max pool 2x2' if self.pool else ''}")


def _plantable(conv) -> bool:
    """Whether planted_conv2d computes this convolution (it has no groups, dilation or
    padding mode of its own)."""
    return (type(conv) is nn.Conv2d and conv.groups == 1 and tuple(conv.dilation) == (1, 1)
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


def _is_relu(node: fx.Node, modules: dict) -> bool:
    if node.op == "call_module":
        return type(modules[node.target]) is nn.ReLU
    return node.op == "call_function" and node.target in _RELUS and not node.kwargs


def _is_pool2x2(node: fx.Node, modules: dict) -> bool:
    if node.op != "call_module" or type(modules[node.target]) is not nn.MaxPool2d:
        return False
    pool = modules[node.target]
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    return (pair(pool.kernel_size) == (2, 2) and pair(pool.stride) == (2, 2)
            and pair(pool.padding) == (0, 0) and pair(pool.dilation) == (1, 1)
            and not pool.ceil_mode and not pool.return_indices)


class InferenceModule(nn.Module):
    """``module`` as ``for_inference`` runs it: frozen, in eval mode, without gradients."""

    def __init__(self, module: nn.Module, note: str | None):
        super().__init__()
        self.module, self.note = module, note

    @property
    def reads_nchw(self) -> bool:
        """Whether its convolutions run through the planted kernels, which read NCHW."""
        return self.note is None

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)

    def train(self, mode: bool = True):
        return super().train(False)  # a frozen module evaluates, whatever it is asked


def for_inference(module: nn.Module) -> InferenceModule:
    """A frozen copy of ``module`` whose convolutions run through the planted kernels (see the
    module's docstring); ``module`` itself is not changed."""
    module = copy.deepcopy(module).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        graph = fx.symbolic_trace(module)
    except Exception as err:  # any module: what fx cannot trace runs as it is
        return InferenceModule(module, f"torch.fx cannot trace it ({type(err).__name__}: "
                                       f"{str(err).splitlines()[0][:120]})")
    modules = dict(graph.named_modules())
    _fold_batch_norms(graph, modules)
    converted = 0
    for node in list(graph.graph.nodes):
        if node.op != "call_module" or not _plantable(modules[node.target]):
            continue
        conv, users = modules[node.target], list(node.users)
        pool_node = None
        if len(users) == 1 and _is_relu(users[0], modules) and len(users[0].users) == 1 \
                and _is_pool2x2(next(iter(users[0].users)), modules):
            pool_node = next(iter(users[0].users))
        _set_module(graph, node.target, FrozenConv2d(conv, pool=pool_node is not None))
        converted += 1
        if pool_node is not None:  # the conv's node now gives the pooled activation
            relu = users[0]
            pool_node.replace_all_uses_with(node)
            graph.graph.erase_node(pool_node)
            graph.graph.erase_node(relu)
    graph.graph.lint()
    graph.recompile()
    graph.delete_all_unused_submodules()
    note = None if converted else "it has no convolution the planted kernels compute"
    return InferenceModule(graph if converted else module, note)


def _fold_batch_norms(graph: fx.GraphModule, modules: dict):
    """Each batch norm (with running statistics) whose input is a convolution's output, and
    that output's only use, folded into the convolution (torch's fusion for evaluation)."""
    for node in list(graph.graph.nodes):
        if node.op != "call_module" or type(modules[node.target]) is not nn.BatchNorm2d:
            continue
        conv_node = node.args[0]
        if not (isinstance(conv_node, fx.Node) and conv_node.op == "call_module"
                and type(modules[conv_node.target]) is nn.Conv2d
                and len(conv_node.users) == 1 and modules[node.target].track_running_stats):
            continue
        fused = fuse_conv_bn_eval(modules[conv_node.target], modules[node.target])
        _set_module(graph, conv_node.target, fused)
        modules[conv_node.target] = fused
        node.replace_all_uses_with(conv_node)
        graph.graph.erase_node(node)


def _set_module(graph: fx.GraphModule, target: str, new: nn.Module):
    *parents, name = target.split(".")
    owner = graph
    for part in parents:
        owner = getattr(owner, part)
    setattr(owner, name, new)


__all__ = ["FrozenConv2d", "InferenceModule", "for_inference"]
