"""`import plantops` is light: it loads no compiler stack and touches no GPU."""

import subprocess
import sys


def test_import_loads_neither_triton_nor_dynamo_nor_cuda():
    code = ("import sys, torch, plantops; "
            "print(sorted(m for m in ('triton', 'torch._dynamo') if m in sys.modules), "
            "torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "False"], out.stdout + out.stderr


def test_the_test_extra_brings_what_the_triton_tests_need():
    """`pip install -e ".[test]"` installs Triton 3.6 and numpy < 2.3 on Linux x86_64, so the
    Triton interpreter tests run on a CPU instead of being skipped."""
    import platform

    import numpy
    import pytest
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        pytest.skip("the test extra brings Triton on Linux x86_64 only")
    import triton
    assert triton.__version__.startswith("3.6")
    assert tuple(map(int, numpy.__version__.split(".")[:2])) < (2, 3)
