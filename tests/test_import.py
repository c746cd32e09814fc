"""`import plantops` is light: it loads no compiler stack and touches no GPU."""

import subprocess
import sys


def test_import_loads_neither_triton_nor_dynamo_nor_cuda():
    code = ("import sys, torch, plantops; "
            "print(sorted(m for m in ('triton', 'torch._dynamo') if m in sys.modules), "
            "torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "False"], out.stdout + out.stderr
