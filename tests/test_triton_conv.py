"""The Triton backend against the float64 reference, gradients included.

On a machine without a GPU the kernels run on the CPU under TRITON_INTERPRET=1, which this
module sets before triton is imported (small shapes: the interpreter is slow). On a GPU the
same checks run on CUDA tensors in float32, bfloat16 and float16.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

from plantops.kernels import triton_conv  # noqa: E402

from helpers import SHAPES, assert_close, check_against_reference, make_inputs  # noqa: E402
from plantops import planted_conv2d, reference_planted_conv2d  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not triton_conv._interpret():
    pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set",
                allow_module_level=True)

# Interpreter-sized subset of the shared shapes (odd sizes, stride 2, kernel 1/5, empty blocks).
INTERP_SHAPES = [SHAPES[i] for i in (0, 1, 3, 4, 5, 6)]
DTYPES = [torch.float32] + ([torch.bfloat16, torch.float16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 2e-3, torch.bfloat16: 3e-2, torch.float16: 5e-3}  # relative to max |ref|


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", INTERP_SHAPES, ids=[str(s) for s in INTERP_SHAPES])
def test_triton_matches_reference(shape, dtype):
    check_against_reference("triton", shape, dtype, DEVICE, TOL[dtype])


def test_triton_float32_is_exact_without_tf32():
    if DEVICE == "cuda":
        torch.backends.cudnn.allow_tf32 = False
    try:
        tensors64, conv_args = make_inputs(SHAPES[0])
        ref = reference_planted_conv2d(**tensors64, **conv_args)
        low = {k: (None if v is None else v.to(DEVICE, torch.float32)) for k, v in tensors64.items()}
        out = planted_conv2d(**low, **conv_args, backend="triton")
        assert_close(out, ref, atol=1e-4, rtol=1e-4, name="triton float32 (ieee)")
    finally:
        torch.backends.cudnn.allow_tf32 = True


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[3]], ids=str)
def test_triton_split_input_gives_planted_input_gradient(shape):
    """x_planted: the input-gradient kernel runs over the planted channel range only."""
    check_against_reference("triton", shape, torch.float32, DEVICE, TOL[torch.float32],
                            split=True)


def test_round_op_on_triton():
    """The round op with its planted convolutions on Triton: every candidate's logits and
    planted gradients as its own network gives them (a small network, batch 2:
    the interpreter is slow)."""
    from plantops import models, planting
    from plantops.planted_round import PlantedRound
    torch.manual_seed(0)
    parent = models.PlantNet([3, 2, 3, 2, 2]).to(DEVICE)
    candidates = {layer: planting.plant(parent.cpu(), layer, 1, "random",
                                      torch.Generator().manual_seed(layer)).to(DEVICE)
                  for layer in (0, 2, 4)}
    round_op = PlantedRound(parent.to(DEVICE), candidates, backend="triton")
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    logits = round_op(x)
    grads = torch.autograd.grad(logits.square().sum(), round_op.parameters())
    expected = [(net(x), torch.autograd.grad(net(x).square().sum(), planting.planted_parameters(net)))
                for net in candidates.values()]
    for i, (want, want_grads) in enumerate(expected):
        assert_close(logits[2 * i:2 * (i + 1)], want, atol=2e-3, rtol=2e-3, name="logits")
        for got, ref in zip(grads[3 * i:3 * (i + 1)], want_grads):
            scale = max(ref.abs().max().item(), 1.0)
            assert_close(got, ref, atol=2e-3 * scale, rtol=0, name="planted gradient")
