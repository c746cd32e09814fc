import os
import random
import sys
from pathlib import Path

import pytest
import torch

# The baselines the engine and the round op are checked against (benchmarks/baselines/).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state."""
    random.seed(0)
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    has_data = bool(os.environ.get("PLANTOPS_DATA"))
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "data" in item.keywords and not has_data:
            item.add_marker(pytest.mark.skip(reason="set PLANTOPS_DATA to a CIFAR-10 copy"))
