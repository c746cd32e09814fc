"""The search on networks of any shape, planted by width groups (plantops/graph.py): a
ResNet, a MobileNetV2-style network and an Inception-style one from the command line and from
Python, their final.pt the user's own class of the grown widths, loadable without plantops,
a resumed search that ends where the uninterrupted one does, and one-line refusals."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from plantops import search
from helpers import same_result, tiny_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))
import inception  # noqa: E402
import mobilenet  # noqa: E402
import resnet  # noqa: E402

# A tiny search of a user's network: every option but the student is the chain's.
OPTIONS = dict(plant_channels=2, max_rounds=2, plant_epochs=1, finetune_epochs=1,
               init_epochs=2, teacher_epochs=2, retrain=True)


def cli(args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "plantops.search", *args], capture_output=True,
                          text=True, cwd=cwd)


@pytest.mark.parametrize("example, build, cls", [
    ("resnet", "resnet.student(4, 3)", "ResNet"),
    ("mobilenet", "mobilenet.student(4, 3, se=True)", "MobileNet"),
    ("inception", "inception.student(3, 3)", "Inception"),
])
def test_an_example_plants_from_the_command_line_and_its_final_network_loads_without_plantops(
        image_folder, tmp_path, example, build, cls):
    out = tmp_path / example
    nets = tmp_path / "three_classes.py"  # the example's student, for the folder's 3 classes
    nets.write_text(f"import sys\nsys.path.insert(0, {str(EXAMPLES)!r})\nimport {example}\n\n"
                    f"def student():\n    return {build}\n")
    run = cli(["--dataset", "folder", "--data", str(image_folder), "--out", str(out),
               "--student", f"{nets}:student", "--teacher-width", "4",
               "--teacher-epochs", "2", "--init-epochs", "2", "--plant-channels", "2",
               "--plant-epochs", "1", "--finetune-epochs", "1", "--max-rounds", "2",
               "--val-size", "6", "--train-subset", "0", "--batch-size", "8",
               "--cache-dir", str(tmp_path / "cache"), "--no-download"])
    assert run.returncode == 0, run.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["student_name"] == "student" and result["rounds"]
    assert "candidate r1 +2 " in run.stdout
    assert result["final"]["params"] > result["initial"]["params"]
    # final.pt: the user's class, grown, loaded without plantops where its file imports.
    code = ("import sys, torch; net = torch.load(sys.argv[1], weights_only=False).eval(); "
            "assert 'plantops' not in sys.modules; x = torch.rand(2, 3, 32, 32); "
            "print(type(net).__name__, sum(p.numel() for p in net.parameters()), "
            "tuple(net(x).shape))")
    for name, row in (("final.pt", "final"), ("final_retrained.pt", "retrained")):
        loaded = subprocess.run([sys.executable, "-c", code, str(out / name)],
                                capture_output=True, text=True,
                                env={"PYTHONPATH": str(EXAMPLES), "PATH": "/usr/bin:/bin"})
        assert loaded.returncode == 0, loaded.stderr
        assert loaded.stdout.split() == [cls, str(result[row]["params"]), "(2,", "3)"]


@pytest.mark.parametrize("make", [lambda: mobilenet.student(4, 3, se=True),
                                  lambda: inception.student(3, 3)], ids=["mobilenet", "inception"])
def test_a_module_plants_from_python_and_the_users_module_is_not_changed(image_folder, tmp_path,
                                                                         make):
    student = make()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    result = search.run_search(tiny_config(image_folder, tmp_path / "run", **OPTIONS),
                               student=student)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())
    final = torch.load(tmp_path / "run" / "final.pt", weights_only=False)
    assert type(final) is type(student)
    assert sum(p.numel() for p in final.parameters()) == result["final"]["params"]
    names = [g.name for g in search.networks.GraphNet.of(student, "s", (3, 32, 32)).groups]
    assert all(r["layer"] in names for r in result["rounds"])
    if result["rounds"]:  # a round accepted: some width grew
        assert result["final"]["widths"] != result["initial"]["widths"]


def seeded_resnet():
    torch.manual_seed(1)  # the same initial weights each time
    return resnet.student(3, 3)


def test_a_resumed_search_ends_where_the_uninterrupted_one_does(image_folder, tmp_path):
    whole = search.run_search(tiny_config(image_folder, tmp_path / "whole", **OPTIONS),
                              student=seeded_resnet())
    first = dict(OPTIONS, max_rounds=1)  # stopped after its first round
    search.run_search(tiny_config(image_folder, tmp_path / "parts", **first),
                      student=seeded_resnet())
    again = search.run_search(tiny_config(image_folder, tmp_path / "parts", **OPTIONS),
                              student=seeded_resnet())
    assert len(whole["rounds"]) == 2
    same_result(again, whole)


def test_a_network_with_nothing_to_grow_is_refused_in_one_line(image_folder, tmp_path):
    nets = tmp_path / "nets.py"
    nets.write_text("import torch\nfrom torch import nn\n\n"
                    "class Tied(nn.Module):\n"
                    "    def __init__(self):\n"
                    "        super().__init__()\n"
                    "        self.conv = nn.Conv2d(3, 3, 3, padding=1)\n"
                    "        self.fc = nn.Linear(3, 3)\n\n"
                    "    def forward(self, x):\n"
                    "        return self.fc((self.conv(x) + x).mean((2, 3)))\n\n"
                    "def student():\n    return Tied()\n")
    run = cli(["--dataset", "folder", "--data", str(image_folder), "--out",
               str(tmp_path / "o"), "--student", f"{nets}:student", "--val-size", "6",
               "--train-subset", "0", "--cache-dir", str(tmp_path / "cache"), "--no-download"])
    assert run.returncode == 2, run.stderr
    assert "student has no width the search can grow: conv" in run.stderr, run.stderr
    assert "input" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
