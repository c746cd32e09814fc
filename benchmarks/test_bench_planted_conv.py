"""Speed of planted_conv2d against what a user would write instead, side by side in one run.

    pytest benchmarks/test_bench_planted_conv.py --benchmark-only
    PLANTOPS_BENCH_FULL=1 ...   # also batch 512 and the larger channel counts

Shapes are the search's: batch 128 (and 512), maps 32x32 / 16x16 / 8x8, 8 to 128 channels,
4 or 8 planted. The table printed at the end gives each implementation's median and its
speedup over the best baseline of the same shape (see conftest.py).
"""

import os

import pytest
import torch

from planted_conv_cases import implementations, make_case

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FULL = os.environ.get("PLANTOPS_BENCH_FULL") == "1"

# (batch, channels, map size, planted)
SHAPES = [(128, 8, 32, 4), (128, 16, 16, 4), (128, 32, 8, 4), (128, 32, 32, 8), (128, 64, 16, 8),
          (128, 128, 8, 8)]
if FULL or DEVICE == "cuda":
    SHAPES += [(512, 8, 32, 4), (512, 32, 16, 8), (512, 64, 16, 8), (512, 128, 8, 8)]
# The GPU target is bfloat16; PLANTOPS_BENCH_DTYPES=bfloat16,float32 adds others.
DTYPES = os.environ.get("PLANTOPS_BENCH_DTYPES", "bfloat16" if DEVICE == "cuda" else "float32")
DTYPES = [getattr(torch, name) for name in DTYPES.split(",")]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("impl", implementations(DEVICE))
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("case", ["outputs", "inputs", "reader"])
@pytest.mark.parametrize("shape", SHAPES, ids=["N{}-C{}-{}x{}-p{}".format(n, c, s, s, p)
                                                for n, c, s, p in SHAPES])
def test_planted_conv(benchmark, record, shape, case, mode, impl, dtype):
    batch, channels, size, planted = shape
    fn, flops, nbytes = make_case(case, impl, batch, channels, size, planted, mode, DEVICE, dtype)
    kind = str(dtype).replace("torch.", "")
    benchmark.group = f"{case}-{mode}-{kind}-N{batch}-C{channels}-{size}x{size}-p{planted}"
    # On the GPU the first calls autotune (Triton) or pick algorithms (cuDNN): warm up more.
    # On the shared 2-core CPU single calls vary by up to 2x: 21 rounds steady the median.
    benchmark.pedantic(fn, warmup_rounds=2 if DEVICE == "cpu" else 5,
                       rounds=21 if DEVICE == "cpu" else 50)
    record(f"{case} {mode} {kind}", f"N{batch} C{channels} {size}x{size} p{planted}", impl,
           flops, nbytes, dtype)
