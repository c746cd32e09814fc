import os
import random
import sys
from pathlib import Path

import pytest
import torch

# The baselines the engine and the round op are checked against (benchmarks/baselines/).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
# The backends auto takes on a CPU are the fixed rule's in the tests (and their subprocesses),
# not this machine's measurements: the same on every machine, the same from run to run.
# tests/test_autotune.py measures.
os.environ["PLANTOPS_AUTOTUNE"] = "0"


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """A tiny image folder of three classes, 10 training and 3 test images each."""
    from helpers import write_image_folder
    return write_image_folder(tmp_path_factory.mktemp("data") / "imgs", per_class=(10, 3))


@pytest.fixture(scope="module")
def reference_run(image_folder, tmp_path_factory):
    """(out folder, result) of the tiny search (helpers.tiny_config), run once per module."""
    from helpers import tiny_config
    from plantops import search
    out = tmp_path_factory.mktemp("ref") / "run"
    return out, search.run_search(tiny_config(image_folder, out))


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
