"""The example networks of examples/: the VGG-style student plants on 64x64 images, the
ResNet teacher is taken as a teacher (and refused as a student), and a teacher saved with
torch.save(model) loads where its module imports, with a hint where it does not."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from plantops import Chain, ChainError, plant
from plantops.search.networks import check_student, check_teacher_output, load_module

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from examples.resnet import resnet  # noqa: E402


def test_vgg_student_plants_on_64x64():
    net, name = load_module(f"{ROOT}/examples/vgg_bn.py:student", "--student")
    chain = Chain.of(net, name)
    assert chain.layer_names()[:3] == ["conv1", "conv2", "conv3"]
    check_student(chain, 3, 64, 10)
    x = torch.rand(2, 3, 64, 64)
    chain.eval()
    for layer in range(3):   # every planting point: the candidate starts as its parent
        cand = plant(chain, layer, 4).eval()
        assert torch.allclose(cand(x), chain(x), atol=1e-5)


def test_resnet_is_a_teacher_not_a_student():
    teacher = resnet(4, 10, image_size=64).eval()
    check_teacher_output(teacher, "resnet", torch.rand(2, 3, 64, 64), 10)
    with pytest.raises(ValueError, match="outputs .*expected logits \\[2, 7\\]"):
        check_teacher_output(teacher, "resnet", torch.rand(2, 3, 64, 64), 7)
    with pytest.raises(ChainError, match="ResNet.*Sequential"):
        Chain.of(teacher, "resnet")


def test_a_saved_teacher_loads_where_its_module_imports(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save(resnet(4, 10, image_size=64).eval(), path)
    code = ("from plantops.search.networks import load_module; "
            f"net, name = load_module({str(path)!r}, '--teacher'); print(type(net).__name__, name)")
    here = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert here.stdout.split() == ["ResNet", "resnet"], here.stderr
    elsewhere = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                               text=True)
    assert "must import; run from the folder it imports from" in elsewhere.stderr
    assert "NetworkFileError" in elsewhere.stderr
