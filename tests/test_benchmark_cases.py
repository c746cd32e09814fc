"""The op benchmark compares like with like: every implementation of a case computes the
same output and the same input gradient (benchmarks/planted_conv_cases.py)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from planted_conv_cases import implementations, make_case  # noqa: E402


@pytest.mark.parametrize("case", ["outputs", "inputs", "reader"])
def test_every_implementation_computes_the_same(case):
    # Triton (float32 only, and here only under its interpreter) is checked in test_triton_conv.py.
    impls = [i for i in implementations("cpu") if i != "plantops-triton"]
    # Batch 9: the cpu backend's own choice is Winograd (float64 groups of 8, one partial),
    # plantops-cpu-direct the direct kernels.
    results = {impl: make_case(case, impl, 9, 6, 7, 3, "fwdbwd", dtype=torch.float64)[0].result()
               for impl in impls}
    (ref_out, ref_grad), *others = results.values()
    assert (ref_grad is None) == (case == "outputs")
    for impl, (out, grad) in results.items():
        torch.testing.assert_close(out, ref_out, msg=f"{impl} output")
        if grad is not None:
            torch.testing.assert_close(grad, ref_grad, msg=f"{impl} input gradient")
    assert len(results) >= 3  # the torch backend and the two baselines at least
