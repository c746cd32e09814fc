"""A trained module of the user's, for inference through the planted kernels.

``for_inference(module)`` is how the search runs a teacher of the user's (a ResNet, say): a
copy traced by ``torch.fx``, each convolution with the batch norm after it folded in (torch's
``fuse_conv_bn_eval``, as for evaluation), and every convolution then run through
``planted_conv2d`` with its whole weight frozen, whose ``auto`` choice takes the C++ kernels
where they beat oneDNN (plantops.kernels). What follows a convolution is folded into it where
that saves a pass over memory: a ReLU and 2x2 max pool (``conv_relu_max_pool2d``, inside the
kernel), or a residual add and a ReLU (``conv_add_relu``: on the CPU kernels, on each band of
outputs as it is written). The rest of the module (pooling, its classifier) runs as it is.
The result is the module's own, up to float rounding.

A batch runs in chunks whose largest activation fits in about ``CHUNK_BYTES`` (found once
per image shape by propagating one image through the graph): at the search's passes of 1,024
64x64 images a ResNet's activations are 128 MB each, and every pass over them goes to main
memory; in chunks of 8 MB they stay in cache (on a 2-core AMD EPYC the ResNet of examples/
ran 1.9x faster in chunks of 64 images than at once, and chunks of 128 were 0-25% slower).
A convolution read only by other convolutions writes every chunk's output into one tensor
(``FrozenConv2d.reuse_output``) rather than asking the system for fresh pages each time.

A module ``torch.fx`` cannot trace runs as it is; ``for_inference`` then says why, in
``InferenceModule.note`` (None when it was converted).
"""

from __future__ import annotations

import copy
import operator
import time

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils.fusion import fuse_conv_bn_eval

from plantops.graph_ops import ELEMENTWISE_OPS, attribute, is_relu, only_user, pooled_relu
from plantops import kernels
from plantops.kernels import autotune
from plantops.kernels._native import dims
from plantops.kernels.autotune import measured_shape
from plantops.planted_conv import planted_conv2d
from plantops.relu_pool import conv_add_relu, conv_relu_max_pool2d

_ADDS = (operator.add, torch.add)
CHUNK_BYTES = 8 << 20  # a chunk's largest activation (see the module's docstring)
CHUNK_STEP = 16  # chunks of whole SIMD vectors of images (the Winograd kernels' lanes)


class FrozenConv2d(nn.Module):
    """A trained ``nn.Conv2d`` (its batch norm folded in) through ``planted_conv2d``, frozen,
    and what follows it folded in: with ``pool``, a ReLU and 2x2 max pool
    (``conv_relu_max_pool2d``); otherwise, with ``residual``, a second input added to its
    output, then with ``relu`` a ReLU (``conv_add_relu``)."""

    def __init__(self, conv: nn.Conv2d, pool: bool = False, residual: bool = False,
                 relu: bool = False):
        super().__init__()
        self.register_buffer("weight", conv.weight.detach().clone())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        self.stride, self.padding = tuple(conv.stride), tuple(conv.padding)
        self.pool, self.residual, self.relu = pool, residual, relu
        # Whether each call may write its output over the last call's: set by for_inference
        # where no tensor of a call outlives the next (see _reuse_outputs).
        self.reuse_output, self._last = False, None
        # The backend for inputs of a shape (by autotune.measured_shape of its key), measured
        # in place by InferenceModule; "auto" for the others.
        self.backends: dict[tuple, str] = {}
        # The parameters of the conv (and batch norm) it came from, as count_params counts.
        self.source_params = getattr(conv, "source_params",
                                     sum(p.numel() for p in conv.parameters()))

    def shape_key(self, shape) -> tuple:
        """The key of the convolution on inputs of ``shape``, as planted_conv2d chooses its
        backend by (batch, channels, outputs, height, width, kernel, stride, padding)."""
        return kernels.shape_key(shape, shape[1], self.weight.shape[0], self.weight.shape[2:],
                                 self.stride, self.padding)

    def backend_for(self, x: Tensor) -> str:
        return self.backends.get(measured_shape(self.shape_key(x.shape)), "auto") \
            if self.backends else "auto"

    def output_shape(self, shape) -> torch.Size:
        """The shape of the convolution's output (before any pool) on inputs of ``shape``."""
        w = self.weight  # the whole weight frozen: no planted blocks
        g = dims(shape, w.shape, w[:, :0].shape, w[:0].shape, self.stride, self.padding)
        return torch.Size((g["N"], g["O"], g["OH"], g["OW"]))

    def output_numel(self, shape) -> int:
        """The elements of the convolution's output (before any pool) on inputs of shape."""
        return self.output_shape(shape).numel()

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        x = x.contiguous()  # the planted kernels read NCHW
        backend = self.backend_for(x)
        if self.pool:
            return conv_relu_max_pool2d(x, self.weight, self.bias, self.stride, self.padding,
                                        backend)
        shape = self.output_shape(x.shape)
        if residual is None or (residual.shape == shape and residual.dtype == x.dtype):
            return conv_add_relu(x, self.weight, self.bias, self.stride, self.padding, residual,
                                 self.relu, backend, out=self._buffer(shape, x))
        # broadcasting or type promotion: as the module wrote it
        y = planted_conv2d(x, self.weight, self.bias, stride=self.stride,
                           padding=self.padding, backend=backend) + residual
        return torch.relu(y) if self.relu else y

    def _buffer(self, shape, x: Tensor) -> Tensor | None:
        """Where this call's output goes when ``reuse_output`` (see there): the tensor of the
        last call, where it has this call's shape, dtype and device; otherwise None (a new
        one)."""
        if not self.reuse_output or torch.is_grad_enabled():
            return None
        last = self._last
        if last is None or last.shape != shape or last.dtype != x.dtype or last.device != x.device:
            last = self._last = x.new_empty(shape)
        return last

    def extra_repr(self) -> str:
        out, cin, kh, kw = self.weight.shape
        fused = ", relu + max pool 2x2" if self.pool else (
            (" + residual" if self.residual else "") + (", relu" if self.relu else ""))
        return (f"{cin}, {out}, kernel_size=({kh}, {kw}), stride={self.stride}, "
                f"padding={self.padding}{fused}")


def _plantable(conv) -> bool:
    """Whether planted_conv2d computes this convolution (it has no groups, dilation or
    padding mode of its own)."""
    return (type(conv) is nn.Conv2d and conv.groups == 1 and tuple(conv.dilation) == (1, 1)
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


def _is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ADDS and not node.kwargs
            and len(node.args) == 2 and all(isinstance(a, fx.Node) for a in node.args))


class InferenceModule(nn.Module):
    """``module`` as ``for_inference`` runs it: frozen, in eval mode, without gradients, a
    converted graph in chunks of images (see the module's docstring)."""

    def __init__(self, module: nn.Module, note: str | None):
        super().__init__()
        self.module, self.note = module, note
        self._chunks: dict[tuple, int] = {}  # images per chunk, by image shape and dtype
        self._tuned: set[tuple] = set()      # the chunks whose backends are chosen (_tune)

    @property
    def reads_nchw(self) -> bool:
        """Whether its convolutions run through the planted kernels, which read NCHW."""
        return self.note is None

    def images_per_chunk(self, x: Tensor) -> int:
        """How many images of ``x``'s shape run at once: all of them for a module that runs
        as it is; for a converted graph, as many as keep its largest activation within
        ``CHUNK_BYTES``, in steps of ``CHUNK_STEP``."""
        if not self.reads_nchw:
            return max(1, len(x))
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        if key not in self._chunks:
            nodes = self.module.graph.nodes
            with autotune.paused():  # one image, for the shapes: nothing to measure
                ShapeProp(self.module).propagate(x[:1])
            metas = [n.meta.get("tensor_meta") for n in nodes]
            out = metas[-1]
            if not (_is_tensor(out) and len(out.shape) > 0 and out.shape[0] == 1):
                self._chunks[key] = 0  # an output that is not one tensor per image: whole
            else:
                largest = max(m.dtype.itemsize * m.shape.numel() for m in metas if _is_tensor(m))
                self._chunks[key] = max(CHUNK_STEP,
                                        CHUNK_BYTES // largest // CHUNK_STEP * CHUNK_STEP)
        return self._chunks[key] or max(1, len(x))

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if len(x) <= CHUNK_STEP or len(x) <= (per := self.images_per_chunk(x)):
            self._tune(x)
            return self.module(x)
        self._tune(x[:per])
        return torch.cat([self.module(part) for part in x.split(per)])

    def _tune(self, chunk: Tensor):
        """On a CPU, with measuring on (kernels.autotune), each convolution's backend for
        chunks like ``chunk``, measured in place the first time such a chunk runs: the
        convolution's own time as the whole chunk runs with it on each backend in turn (its
        input where the layer before left it, in cache), the others as chosen so far
        (``autotune.TUNER.choose_in_place``; kept on disk, so a second run measures
        nothing). examples/resnet.py at 64x64 (benchmarks/test_bench_teacher.py) ran
        0.53-0.56 ms an image with the backends as measured alone, 0.38-0.39 with them
        measured in place, on a 2-core AMD EPYC."""
        key = (tuple(chunk.shape[1:]), chunk.dtype, chunk.device,
               measured_shape((len(chunk),))[0])
        if key in self._tuned or not self.reads_nchw:
            return
        self._tuned.add(key)
        if (chunk.device.type != "cpu" or not autotune.enabled()
                or kernels.get("cpu").unavailable_reason("cpu", chunk.dtype) is not None):
            return
        convs = [m for m in self.module.modules() if isinstance(m, FrozenConv2d)]
        keys, fixed = {}, {}

        def first_pass(conv, args):  # each conv's shape; the fixed rule's backend meanwhile
            if args[0].dim() == 4 and conv not in keys:
                keys[conv] = conv.shape_key(args[0].shape)
                fixed[conv] = "cpu" if kernels.cpu_kernels_win(keys[conv], "forward") else "torch"
                conv.backends[measured_shape(keys[conv])] = fixed[conv]

        hooks = [m.register_forward_pre_hook(first_pass) for m in convs]
        try:
            self.module(chunk)
        finally:
            for hook in hooks:
                hook.remove()
        for conv, shape_key in keys.items():
            def run_with(name, conv=conv, shape=measured_shape(shape_key)) -> float:
                conv.backends[shape] = name
                spans = []  # the conv's own time, within the whole chunk's run
                hooks = (conv.register_forward_pre_hook(
                             lambda *_: spans.append(-time.perf_counter())),
                         conv.register_forward_hook(
                             lambda *_: spans.append(time.perf_counter())))
                try:
                    self.module(chunk)
                finally:
                    for hook in hooks:
                        hook.remove()
                return sum(spans)

            conv.backends[measured_shape(shape_key)] = autotune.TUNER.choose_in_place(
                "forward", chunk.dtype, shape_key, ["cpu", "torch"], run_with, fixed[conv])

    def train(self, mode: bool = True):
        return super().train(False)  # a frozen module evaluates, whatever it is asked


def _is_tensor(meta) -> bool:
    """Whether a node's ``tensor_meta`` (ShapeProp) is one tensor's (not a tuple's)."""
    return meta is not None and hasattr(meta, "shape") and hasattr(meta, "dtype")


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
    _fold_affine_chains(graph)
    modules = dict(graph.named_modules())
    _fold_batch_norms(graph, modules)
    converted = 0
    for node in list(graph.graph.nodes):
        if node.op != "call_module" or not _plantable(modules[node.target]):
            continue
        graph.set_submodule(node.target, _fuse_after(graph, node, modules))
        converted += 1
    graph.graph.lint()
    graph.recompile()
    graph.delete_all_unused_submodules()
    _reuse_outputs(graph)
    note = None if converted else "it has no convolution the planted kernels compute"
    return InferenceModule(graph if converted else module, note)


def _fuse_after(graph: fx.GraphModule, node: fx.Node, modules: dict) -> FrozenConv2d:
    """The FrozenConv2d of the conv at ``node``, with what follows it folded in and those
    nodes taken out of the graph: a ReLU and 2x2 max pool; or a residual add (the conv's node
    moves to the add's place and takes the add's other input), a ReLU after either."""
    conv, user = modules[node.target], only_user(node)
    pool = pooled_relu(user, modules) if user is not None else None
    if pool is not None:
        pool.replace_all_uses_with(node)
        graph.graph.erase_node(pool)
        graph.graph.erase_node(user)
        return FrozenConv2d(conv, pool=True)
    residual = False
    if user is not None and _is_add(user) and user.args.count(node) == 1:
        other = user.args[1] if user.args[0] is node else user.args[0]
        with graph.graph.inserting_before(user):  # where every input of the add exists
            fused = graph.graph.call_module(node.target, (node.args[0], other))
        user.replace_all_uses_with(fused)
        graph.graph.erase_node(user)
        graph.graph.erase_node(node)
        node, user, residual = fused, only_user(fused), True
    relu = user is not None and is_relu(user, modules)
    if relu:
        user.replace_all_uses_with(node)
        graph.graph.erase_node(user)
    return FrozenConv2d(conv, residual=residual, relu=relu)


def _reuse_outputs(graph: fx.GraphModule):
    """Marks each FrozenConv2d whose output may go where its last call's went: a module the
    graph calls once, whose output only other FrozenConv2d read (as input or residual), which
    keep no reference to it. Its output of one chunk is then dead before the next chunk's is
    written, and the chunks of a pass reuse one tensor instead of allocating each: at 64x64
    a ResNet's 8 MB activations were new pages from the system at every chunk (a page fault
    for each 4 KB, 96,000 per pass of 1,024 images, a sixth of the pass on a 2-core AMD EPYC).
    Only where the CPU kernels compute the layer; other backends allocate their own."""
    modules = dict(graph.named_modules())
    calls: dict[str, list[fx.Node]] = {}
    for node in graph.graph.nodes:
        if node.op == "call_module":
            calls.setdefault(node.target, []).append(node)
    module_of = lambda n: modules.get(n.target) if n.op == "call_module" else None

    def read_by_convs_only(node: fx.Node) -> bool:  # through nn.Identity, which passes it on
        return bool(node.users) and all(
            isinstance(module_of(user), FrozenConv2d)
            or (type(module_of(user)) is nn.Identity and read_by_convs_only(user))
            for user in node.users)

    for target, nodes in calls.items():
        if len(nodes) == 1 and isinstance(modules[target], FrozenConv2d) \
                and read_by_convs_only(nodes[0]):
            modules[target].reuse_output = True


class ChannelAffine(nn.Module):
    """``x * scale + shift`` in one pass (``torch.addcmul``): a chain of multiplications,
    additions, subtractions and divisions by constants, folded by ``_fold_affine_chains``
    (an input's normalisation, say, and an adapter's conversion before it: four passes over
    the images become one). The constants are composed in float64 and cast to the dtype the
    chain computed in (``like``: a tensor of the constants' dtype and dimensions, or None for
    Python numbers), so the result is the chain's up to float rounding."""

    def __init__(self, scale: Tensor, shift: Tensor, like: Tensor | None):
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)
        self.register_buffer("like", like)

    def forward(self, x: Tensor) -> Tensor:
        dtype = torch.result_type(x, 1.0 if self.like is None else self.like)
        return torch.addcmul(self.shift.to(dtype), x.to(dtype), self.scale.to(dtype))


# The round op's elementwise functions and methods (by the node's own target: an in-place
# method such as mul_ writes into its input, which other readers may see, and is not folded).
_AFFINE_OPS = {**ELEMENTWISE_OPS, torch.true_divide: operator.truediv}


def _affine_step(node: fx.Node, graph: fx.GraphModule):
    """(op, constant, data node, constant first) where ``node`` is one of _AFFINE_OPS of a
    tensor and a constant (a number, or a floating tensor attribute of the module), else
    None."""
    op = _AFFINE_OPS.get(node.target) if node.op in ("call_function", "call_method") else None
    if op is None:
        return None
    if node.kwargs or len(node.args) != 2:
        return None
    consts = []
    for arg in node.args:
        if isinstance(arg, (int, float)) and not isinstance(arg, bool):
            consts.append(float(arg))
        elif isinstance(arg, fx.Node) and arg.op == "get_attr":
            value = attribute(graph, arg.target)
            consts.append(value if isinstance(value, Tensor) and value.is_floating_point()
                          else None)
        else:
            consts.append(None)
    data = [i for i, c in enumerate(consts) if c is None]
    if len(data) != 1 or not isinstance(node.args[data[0]], fx.Node):
        return None
    if op is operator.truediv and data[0] == 1:
        return None  # c / x is not affine in x
    return op, consts[1 - data[0]], node.args[data[0]], data[0] == 1


def _fold_affine_chains(graph: fx.GraphModule):
    """Each chain of two or more affine steps by constants (``_affine_step``), each the only
    user of the one before, replaced by one ChannelAffine."""
    count, erased = 0, set()
    for node in list(graph.graph.nodes):
        step = _affine_step(node, graph) if node not in erased else None
        if step is None or (_affine_step(step[2], graph) is not None
                            and len(step[2].users) == 1):
            continue  # not a chain's first step
        chain, like, source = [], None, step[2]
        scale, shift = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        while step is not None and (not chain or len(chain[-1].users) == 1):
            op, c, _, const_first = step
            if isinstance(c, Tensor):
                like = c.new_zeros((1,) * c.dim()) if like is None else torch.zeros(
                    (1,) * max(c.dim(), like.dim()), dtype=torch.promote_types(like.dtype, c.dtype))
                c = c.detach().double()
            if op is operator.mul:
                scale, shift = scale * c, shift * c
            elif op is operator.add:
                shift = shift + c
            elif op is operator.sub:
                scale, shift = (-scale, c - shift) if const_first else (scale, shift - c)
            else:
                scale, shift = scale / c, shift / c
            chain.append(node)
            nxt = next(iter(node.users)) if len(node.users) == 1 else None
            step = _affine_step(nxt, graph) if nxt is not None else None
            if step is not None and step[2] is not node:
                step = None
            node = nxt
        if len(chain) < 2:
            continue
        name = f"channel_affine_{count}"
        count += 1
        graph.add_module(name, ChannelAffine(scale, shift, like))
        with graph.graph.inserting_after(chain[-1]):
            folded = graph.graph.call_module(name, (source,))
        chain[-1].replace_all_uses_with(folded)
        for done in reversed(chain):
            constants = [a for a in done.args if isinstance(a, fx.Node) and a.op == "get_attr"]
            graph.graph.erase_node(done)
            erased.add(done)
            for constant in constants:
                if not constant.users:
                    graph.graph.erase_node(constant)
                    erased.add(constant)


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
        conv, bn = modules[conv_node.target], modules[node.target]
        fused = fuse_conv_bn_eval(conv, bn)
        fused.source_params = sum(p.numel() for m in (conv, bn) for p in m.parameters())
        graph.set_submodule(conv_node.target, fused)
        modules[conv_node.target] = fused
        node.replace_all_uses_with(conv_node)
        graph.graph.erase_node(node)


__all__ = ["FrozenConv2d", "InferenceModule", "for_inference"]
