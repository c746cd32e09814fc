"""The CUDA backend: the compiled module loads and checks its arguments without a GPU;
on a GPU it matches the float64 reference, gradients included, in every dtype."""

import importlib.util

import pytest
import torch

from helpers import SHAPES, check_against_reference

BUILT = importlib.util.find_spec("plantops._cuda") is not None


@pytest.mark.skipif(not BUILT, reason="plantops._cuda was not built (no CUDA toolkit)")
def test_module_loads_and_rejects_bad_geometry_without_a_gpu():
    import plantops._cuda as cuda_module

    g = cuda_module.Geometry()
    g.N, g.I_f, g.O_f, g.H, g.W, g.KH, g.KW, g.OH, g.OW = 1, 1, 1, 4, 4, 3, 3, 5, 5  # wrong OH
    with pytest.raises(ValueError, match="output size does not match"):
        cuda_module.forward(g, "float32", 0, 0, 0, 0, 0, 0, 0, 0, 0)
    # The CUDA kernels read one input tensor: plantops/kernels/cuda.py joins x_planted first,
    # and a planted-channel pointer that reaches them anyway is refused, not ignored.
    g.OH = g.OW = 2
    with pytest.raises(ValueError, match="join x_planted"):
        cuda_module.forward(g, "float32", 0, 0, 0, 0, 0, 0, 8, 0, 0)
    with pytest.raises(ValueError, match="join x_planted"):
        cuda_module.weight_grad(g, "float32", 0, 0, 0, 1, 0, 1, 8, 0, 0, 0)


TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_cuda_matches_reference(shape, dtype):
    check_against_reference("cuda", shape, dtype, "cuda", TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[3]], ids=str)
def test_cuda_split_input_gives_planted_input_gradient(shape, dtype):
    check_against_reference("cuda", shape, dtype, "cuda", TOL[dtype], split=True)
