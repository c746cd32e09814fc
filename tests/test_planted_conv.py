"""planted_conv2d against the float64 reference, output and every gradient, on every backend
this machine can run (Triton under TRITON_INTERPRET=1 on the CPU, see test_triton_conv.py)."""

import pytest
import torch

import plantops
from plantops import PlantedConv2d, planted_conv2d, reference_planted_conv2d

from helpers import (SHAPES, TRAINABLE, assert_close_to_reference, check_backend, check_split,
                     make_inputs, run, run_split)

# Triton runs on the CPU only under its interpreter, with its own tolerances: test_triton_conv.py.
CPU_BACKENDS = [b for b in ("torch", "cpu") if b in plantops.backends("cpu")]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_matches_reference(backend, dtype, shape):
    check_backend(backend, shape, dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "non_contiguous"])
def test_memory_layouts(backend, layout):
    def transform(x):
        if layout == "channels_last":
            return x.contiguous(memory_format=torch.channels_last)
        # same values, every stride different from a contiguous tensor's
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    check_backend(backend, (3, 5, 3, 4, 2, 7, 9, 3, 1, 1), torch.float32, transform)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_without_bias(backend):
    tensors, conv_args = make_inputs((2, 4, 2, 3, 2, 6, 6, 3, 1, 1), bias=False)
    ref = reference_planted_conv2d(**tensors, **conv_args)
    out = planted_conv2d(**tensors, **conv_args, backend=backend)
    assert_close_to_reference(out, ref, ref)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck(backend):
    tensors, conv_args = make_inputs((2, 2, 2, 2, 2, 4, 5, 3, 1, 1))
    names = list(tensors)
    leaves = [tensors[k].requires_grad_(k in TRAINABLE) for k in names]

    def fn(*args):
        return planted_conv2d(**dict(zip(names, args)), **conv_args, backend=backend)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_second_backward_fails_instead_of_missing_terms(backend):
    """With create_graph=True the first gradients are the same, but differentiating them again
    raises: the kernels' gradients carry no graph, and a silent second backward would drop
    their terms."""
    tensors, conv_args = make_inputs((2, 3, 2, 4, 2, 5, 5, 3, 1, 1))
    out_weight = tensors["out_weight"].requires_grad_(True)

    def loss():  # not linear in out_weight, so its gradient has a gradient
        return planted_conv2d(**tensors, **conv_args, backend=backend).square().sum()

    plain, = torch.autograd.grad(loss(), out_weight)
    first, = torch.autograd.grad(loss(), out_weight, create_graph=True)
    assert torch.equal(first.detach(), plain)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        first.sum().backward()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_empty_batch_gives_zero_gradients(backend, dtype):
    """Batch 0: an empty output, and gradients that are zeros, not uninitialized memory."""
    for shape in [(0, 4, 3, 5, 2, 9, 11, 3, 1, 1), (0, 3, 2, 4, 2, 8, 8, 3, 1, 1)]:
        tensors, conv_args = make_inputs(shape, dtype)
        for k in TRAINABLE:
            tensors[k].requires_grad_(True)
        out = planted_conv2d(**tensors, **conv_args, backend=backend)
        assert out.shape[0] == 0
        grads = torch.autograd.grad(out, [tensors[k] for k in TRAINABLE], torch.ones_like(out))
        for k, g in zip(TRAINABLE, grads):
            assert g.shape == tensors[k].shape and not g.any(), k


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_frozen_block_gets_no_gradient(backend):
    tensors, conv_args = make_inputs((2, 3, 2, 4, 2, 5, 5, 3, 1, 1))
    tensors["frozen_weight"].requires_grad_(True)
    tensors["frozen_bias"].requires_grad_(True)
    tensors["out_weight"].requires_grad_(True)
    planted_conv2d(**tensors, **conv_args, backend=backend).sum().backward()
    assert tensors["frozen_weight"].grad is None and tensors["frozen_bias"].grad is None
    assert tensors["out_weight"].grad is not None


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("frozen_needs_grad", [False, True], ids=["planted-grad", "both-grads"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_split_input_matches_reference(backend, dtype, shape, frozen_needs_grad):
    check_split(backend, shape, dtype, frozen_needs_grad)


def test_split_input_computes_only_the_planted_input_gradient(monkeypatch):
    """With x from frozen layers, the backend is asked for input channels [I_f, I_f + I_p)
    only, and the gradient it returns has just those channels."""
    from plantops.kernels import torch_composite

    seen = []
    original = torch_composite.backward

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        seen.append((args[7], tuple(result[0].shape)))
        return result

    monkeypatch.setattr(torch_composite, "backward", spy)
    tensors, conv_args = make_inputs((2, 5, 3, 4, 2, 6, 6, 3, 1, 1))
    out, grads, (x_frozen, _) = run_split("torch", tensors, conv_args,
                                          torch.ones(2, 6, 6, 6, dtype=torch.float64), False)
    assert seen == [((5, 8), (2, 3, 6, 6))]
    assert x_frozen.grad is None and grads["x_planted"].shape == (2, 3, 6, 6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_split_input_gradcheck(backend):
    tensors, conv_args = make_inputs((2, 2, 2, 3, 2, 4, 5, 3, 1, 1))
    x = tensors.pop("x")
    x_frozen, x_planted = x[:, :2].clone(), x[:, 2:].clone().requires_grad_()
    trainable = [tensors[k].requires_grad_() for k in TRAINABLE[1:]]

    def fn(x_planted, in_weight, out_weight, out_bias):
        return planted_conv2d(x_frozen, tensors["frozen_weight"], tensors["frozen_bias"],
                              in_weight, out_weight, out_bias, **conv_args, backend=backend,
                              x_planted=x_planted)

    assert torch.autograd.gradcheck(fn, [x_planted, *trainable], eps=1e-6, atol=1e-6)


def test_module_takes_split_input():
    layer = PlantedConv2d.from_conv(torch.nn.Conv2d(5, 4, 3, padding=1)).plant_inputs(3)
    with torch.no_grad():
        layer.in_weight.normal_()
    x = torch.randn(2, 8, 7, 7)
    torch.testing.assert_close(layer(x[:, :5], x[:, 5:]), layer(x))


def test_backward_skips_what_is_not_needed(monkeypatch):
    """Only the planted blocks that require grad reach the backend's backward."""
    from plantops.kernels import torch_composite

    seen = []
    original = torch_composite.backward

    def spy(*args, **kwargs):
        seen.append(args[-4:])
        return original(*args, **kwargs)

    monkeypatch.setattr(torch_composite, "backward", spy)
    tensors, conv_args = make_inputs((2, 3, 2, 4, 2, 5, 5, 3, 1, 1))
    tensors["out_weight"].requires_grad_(True)
    planted_conv2d(**tensors, **conv_args, backend="torch").sum().backward()
    assert seen == [((0, 0), False, True, False)]


def test_auto_picks_a_runnable_backend():
    tensors, conv_args = make_inputs((2, 3, 2, 4, 2, 5, 5, 3, 1, 1), dtype=torch.float16)
    # float16 is not a cpu-backend dtype: auto must fall back to the torch composite.
    out = planted_conv2d(**tensors, **conv_args, backend="auto")
    assert out.dtype == torch.float16


def test_backends_lists_cpu_names():
    names = plantops.backends("cpu")
    assert "torch" in names
    assert all(n in ("torch", "cpu", "triton") for n in names)


COMPILE_CHECK = """
import sys, torch
from plantops import planted_conv2d
torch.manual_seed(0)
x, fw, fb = torch.randn(2, 5, 6, 6), torch.randn(4, 3, 3, 3), torch.randn(4)
trainable = [x, torch.randn(4, 2, 3, 3), torch.randn(2, 5, 3, 3), torch.randn(2)]
for t in trainable:
    t.requires_grad_()

def loss(x, in_weight, out_weight, out_bias):
    whole = planted_conv2d(x, fw, fb, in_weight, out_weight, out_bias, padding=1,
                           backend=sys.argv[1])
    split = planted_conv2d(x[:, :3].detach(), fw, fb, in_weight, out_weight, out_bias, padding=1,
                           backend=sys.argv[1], x_planted=x[:, 3:])
    return whole.relu().sum() + split.square().sum()

compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
for got, want in zip(torch.autograd.grad(compiled(*trainable), trainable),
                     torch.autograd.grad(loss(*trainable), trainable)):
    torch.testing.assert_close(got, want)
print("ok")
"""


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_compile_traces_the_op_in_one_graph(backend):
    """The op is a torch.library custom op with fake and autograd registrations: dynamo
    captures it whole (fullgraph) and the compiled gradients equal the eager ones. In a
    fresh process: importing dynamo here would disturb the Triton interpreter tests."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", COMPILE_CHECK, backend], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_eager_path_matches_the_registered_op(backend, monkeypatch):
    """Eager calls skip torch.library's per-call dispatch (planted_conv._EagerPlantedConv2d);
    the registered custom op, which torch.compile traces, computes the same output and
    gradients bit for bit."""
    from types import SimpleNamespace

    from plantops import planted_conv as pc

    tensors, conv_args = make_inputs((3, 4, 2, 3, 2, 6, 7, 3, 1, 1))
    grad_out = torch.randn(3, 5, 6, 7, dtype=torch.float64)
    calls = []
    eager_apply = pc._EagerPlantedConv2d.apply
    monkeypatch.setattr(pc, "_EagerPlantedConv2d", SimpleNamespace(
        apply=lambda *a: calls.append(1) or eager_apply(*a)))
    eager = run(planted_conv2d, tensors, conv_args, grad_out, backend=backend)
    assert calls == [1]
    monkeypatch.setattr(pc, "_EagerPlantedConv2d", SimpleNamespace(apply=pc._planted_conv2d_op))
    registered = run(planted_conv2d, tensors, conv_args, grad_out, backend=backend)
    assert torch.equal(eager[0], registered[0])
    for k in TRAINABLE:
        assert torch.equal(eager[1][k], registered[1][k]), k


def test_fake_tensors_take_the_registered_op(monkeypatch):
    """Tensors that are not plain (here FakeTensors, as torch.export and compilers use) go
    through the custom op and its fake implementation: shapes without computing."""
    from types import SimpleNamespace

    from torch._subclasses.fake_tensor import FakeTensorMode

    from plantops import planted_conv as pc

    def refuse(*args):
        raise AssertionError("the eager path ran on fake tensors")

    monkeypatch.setattr(pc, "_EagerPlantedConv2d", SimpleNamespace(apply=refuse))
    with FakeTensorMode():
        x = torch.randn(2, 6, 5, 5)
        out = planted_conv2d(x, torch.randn(3, 4, 3, 3), None, torch.randn(3, 2, 3, 3),
                             torch.randn(2, 6, 3, 3), None, 2, 1, backend="torch")
        assert type(out) is not torch.Tensor
    assert tuple(out.shape) == (2, 5, 3, 3)
