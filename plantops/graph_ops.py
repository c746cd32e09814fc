"""What the round op (plantops/planted_round.py) knows of the operations of a traced graph:
which act on each sample of the batch alone (so they can run once on several candidates'
values stacked along the batch), a ReLU whose only reader is a 2x2 max pool (the two run as
one pass), which convolutions the planted kernels compute, and how to call a node's
operation without writing into its input (the parent's values are kept and reused)."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from plantops.chain import is_pool2x2
from plantops.width_groups import (CHANNELWISE_FUNCTIONS, CHANNELWISE_METHODS,
                                   CHANNELWISE_MODULES, CONCATS)

FLATTENS = {torch.flatten, "flatten"}
REDUCTIONS = {torch.mean, torch.sum, torch.amax, "mean", "sum", "amax"}
RELUS = {F.relu, torch.relu, "relu"}
ELEMENTWISE_OPS = {operator.add: operator.add, torch.add: operator.add, "add": operator.add,
                   operator.sub: operator.sub, torch.sub: operator.sub, "sub": operator.sub,
                   operator.mul: operator.mul, torch.mul: operator.mul, "mul": operator.mul,
                   operator.truediv: operator.truediv, torch.div: operator.truediv,
                   "div": operator.truediv}


def acts_per_sample(node: fx.Node, modules: dict) -> bool:
    """Whether ``node`` acts on each sample alone, so that it can run once on several
    candidates' values stacked along the batch."""
    args, kwargs = node.args, node.kwargs
    if node.op == "call_module":
        m = modules[node.target]
        return (len(args) == 1 and not kwargs
                and type(m) in (nn.Conv2d, nn.Linear, nn.Flatten, *CHANNELWISE_MODULES))
    if node.op not in ("call_function", "call_method"):
        return False
    target = target_of(node)
    if target in CHANNELWISE_FUNCTIONS or (node.op == "call_method"
                                           and target in CHANNELWISE_METHODS):
        return True
    if target in ELEMENTWISE_OPS:
        return len(args) == 2 and not kwargs
    if target in FLATTENS:
        return list(args[1:]) in ([1], [1, -1]) and not kwargs
    if target in REDUCTIONS:
        return spatial_dims(args[1:], kwargs)
    if target in CONCATS:
        return kwargs.get("dim", args[1] if len(args) > 1 else 0) == 1
    return False


def is_relu(node: fx.Node, modules: dict) -> bool:
    """Whether ``node`` is a ReLU of one tensor (a module, a function or a method)."""
    if node.op == "call_module":
        return type(modules[node.target]) is nn.ReLU
    return (node.op in ("call_function", "call_method") and target_of(node) in RELUS
            and len(node.args) == 1 and set(node.kwargs) <= {"inplace"})


def pooled_relu(node: fx.Node, modules: dict) -> fx.Node | None:
    """The 2x2 max pool that is the only reader of ReLU ``node``, or None."""
    user = only_user(node)
    if is_relu(node, modules) and is_pool2x2(module_at(user, modules)) \
            and user.args == (node,) and not user.kwargs:
        return user
    return None


def module_at(node: fx.Node | None, modules: dict):
    return modules.get(node.target) if node is not None and node.op == "call_module" else None


def only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def no_inplace(module: nn.Module):
    """The parent's values are kept and reused: no module may overwrite its input."""
    for m in module.modules():
        if getattr(m, "inplace", False):
            m.inplace = False


def kwargs_no_inplace(kwargs: dict) -> dict:
    return dict(kwargs, inplace=False) if kwargs.get("inplace") else kwargs


def target_of(node: fx.Node):
    """A call_function node's function, a call_method node's method name (``relu_`` as
    ``relu``: the round op never writes in place)."""
    return node.target if node.op == "call_function" else method_name(node.target)


def method_name(name: str) -> str:
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


def call_node(node: fx.Node, module: nn.Module | None, args, kwargs):
    """``node``'s operation on ``args``, ``kwargs`` (``module``: a call_module node's), never
    in place."""
    if node.op == "call_module":
        return module(*args, **kwargs)
    kwargs = kwargs_no_inplace(kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    this, *rest = args
    return getattr(this, method_name(node.target))(*rest, **kwargs)


def spatial_dims(rest, kwargs) -> bool:
    """Whether a reduction's dims (positional or ``dim=``) are all past the channels."""
    dims = kwargs.get("dim", rest[0] if rest else None)
    dims = [dims] if isinstance(dims, int) else dims
    return isinstance(dims, (list, tuple)) and bool(dims) and all(
        isinstance(d, int) and d >= 2 for d in dims)


def kernels_compute(conv: nn.Conv2d) -> bool:
    """Whether the planted op computes ``conv`` (no groups, dilation or padding mode)."""
    return (conv.groups == 1 and tuple(conv.dilation) == (1, 1)
            and conv.padding_mode == "zeros")


def attribute(module: nn.Module, target: str):
    *path, name = target.split(".")
    owner = module.get_submodule(".".join(path)) if path else module
    return getattr(owner, name)
