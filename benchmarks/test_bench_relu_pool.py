"""relu_max_pool2d (ReLU + 2x2 max pool, forward and backward) against what a user writes,
F.max_pool2d(F.relu(x), 2), in NCHW and in channels-last, side by side in one run.

    pytest benchmarks/test_bench_relu_pool.py --benchmark-only

Shapes are the pooled activations of the search: conv1's output of Student[8] and [32] at
32x32, conv2's at 16x16, and a round's stack of three candidates at 8x8 (batch 384).
"""

import pytest
import torch
import torch.nn.functional as F

from plantops.relu_pool import relu_max_pool2d

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(128, 8, 32, 32), (128, 32, 32, 32), (128, 16, 16, 16), (384, 16, 8, 8)]
IMPLS = ["plantops", "torch NCHW", "torch channels-last"]


def make(impl, shape):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(DEVICE)
    if impl == "torch channels-last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    fn = relu_max_pool2d if impl == "plantops" else lambda t: F.max_pool2d(F.relu(t), 2)
    grad = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=gen).to(DEVICE)

    def run():
        torch.autograd.grad(fn(x), x, grad)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
    return run, x.numel() * x.element_size() * 2.5  # read x, write y; read grad_y, write grad_x


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_relu_pool(benchmark, record, shape, impl):
    run, nbytes = make(impl, shape)
    benchmark.group = f"relu_pool {shape}"
    benchmark.pedantic(run, warmup_rounds=2, rounds=21)
    record("relu+maxpool fwd+bwd", "x".join(map(str, shape)), impl, 0, nbytes)
