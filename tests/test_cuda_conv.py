"""The CUDA backend: the compiled module loads and checks its arguments without a GPU;
on a GPU it matches the float64 reference, gradients included, in every dtype."""

import importlib.util

import pytest
import torch

from plantops import planted_conv2d, reference_planted_conv2d

from helpers import assert_close
from test_planted_conv import SHAPES, TRAINABLE, make_inputs, run

BUILT = importlib.util.find_spec("plantops._cuda") is not None


@pytest.mark.skipif(not BUILT, reason="plantops._cuda was not built (no CUDA toolkit)")
def test_module_loads_and_rejects_bad_geometry_without_a_gpu():
    import plantops._cuda as cuda_module

    g = cuda_module.Geometry()
    g.N, g.I_f, g.O_f, g.H, g.W, g.KH, g.KW, g.OH, g.OW = 1, 1, 1, 4, 4, 3, 3, 5, 5  # wrong OH
    with pytest.raises(ValueError, match="output size does not match"):
        cuda_module.forward(g, "float32", 0, 0, 0, 0, 0, 0, 0, 0)


TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_cuda_matches_reference(shape, dtype):
    tensors64, conv_args = make_inputs(shape)
    ref_out, _ = run(reference_planted_conv2d, tensors64, conv_args)
    grad_out = torch.randn_like(ref_out)
    ref_out, ref_grads = run(reference_planted_conv2d, tensors64, conv_args, grad_out)
    low = {k: (None if v is None else v.to("cuda", dtype)) for k, v in tensors64.items()}
    out, grads = run(planted_conv2d, low, conv_args, grad_out.to("cuda", dtype), backend="cuda")
    scale = max(ref_out.abs().max().item(), 1.0)
    assert_close(out, ref_out, atol=TOL[dtype] * scale, rtol=0, name="cuda output")
    for k in TRAINABLE:
        if ref_grads[k] is not None:
            s = max(ref_grads[k].abs().max().item(), 1.0)
            assert_close(grads[k], ref_grads[k], atol=TOL[dtype] * s, rtol=0, name=f"cuda grad {k}")
