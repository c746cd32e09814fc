"""Planting a network of the user's own end to end: --student and --teacher files, images of
a size the paper's networks refuse, and a final.pt of the user's architecture that loads
without plantops."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from plantops import search
from helpers import tiny_config, write_image_folder

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = '''
from torch import nn

def student():
    return nn.Sequential(
        nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 3, 5, stride=2, padding=2), nn.BatchNorm2d(3), nn.GELU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 3))

def teacher():
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(6, 3))

def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 24 * 24, 8), nn.ReLU(), nn.Linear(8, 3))

def wrong_classes():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 24 * 24, 5))
'''


@pytest.fixture(scope="module")
def folder24(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data24") / "shapes24", per_class=(10, 3),
                              size=24)


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    path = tmp_path_factory.mktemp("nets") / "nets.py"
    path.write_text(NETWORKS)
    return path


def own(folder, out, networks, **overrides):
    return tiny_config(folder, out, student=f"{networks}:student",
                       teacher=f"{networks}:teacher", **overrides)


def test_the_paper_networks_refuse_the_size(folder24, tmp_path):
    with pytest.raises(ValueError, match="24x24.*--student"):
        search.run_search(tiny_config(folder24, tmp_path / "paper"))


def test_own_student_and_teacher_plant_end_to_end(folder24, networks, tmp_path):
    out = tmp_path / "own"
    result = search.run_search(own(folder24, out, networks, max_rounds=1))
    assert result["student_name"] == "student" and result["dataset_name"] == "shapes24"
    assert result["teacher"]["network"] == "teacher"
    assert "shapes24" in (out / "results.md").read_text()
    # final.pt: the user's layers in their order, wider where planted, plain torch
    final = torch.load(out / "final.pt", weights_only=False)
    import importlib.util
    spec = importlib.util.spec_from_file_location("nets", networks)
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    assert [type(m) for m in final] == [type(m) for m in nets.student()]
    assert all(type(m).__module__.startswith("torch.nn") for m in final.modules())
    grown = sum(m.weight.numel() for m in final if isinstance(m, nn.Conv2d))
    assert grown > sum(m.weight.numel() for m in nets.student() if isinstance(m, nn.Conv2d)) \
        or not result["rounds"]
    # it takes [0, 1] images and gives the planted network's test accuracy
    from plantops import data
    ds = data.load("folder", folder24, cache_dir=out.parent / "cache")
    x = torch.from_numpy(ds.test_images).permute(0, 3, 1, 2).float() / 255
    acc = (final.eval()(x).argmax(1).numpy() == ds.test_labels).mean()
    assert acc == pytest.approx(result["final"]["test_acc"], abs=1e-6)
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, torch; sys.modules.pop('plantops', None); "
         "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
         f"m = torch.load({str(out / 'final.pt')!r}, weights_only=False); "
         "print(m(torch.rand(1, 3, 24, 24)).shape); import plantops"],
        capture_output=True, text=True, cwd="/")
    assert "torch.Size([1, 3])" in loaded.stdout, loaded.stderr


def test_the_table_trains_your_network_at_its_initial_widths_as_long_and_retrain_grown(
        folder24, networks, tmp_path):
    out = tmp_path / "table"
    result = search.run_search(own(folder24, out, networks, max_rounds=1, finetune_epochs=2,
                                   table=True, retrain=True))
    epochs = 4 + 2 * len(result["rounds"])
    student, = result["students"]
    assert student["network"] == "student (initial widths)" and student["loss_fn"] == "KD"
    assert student["widths"] == result["initial"]["widths"] and student["epochs"] == epochs
    retrained = result["retrained"]
    assert retrained["widths"] == result["final"]["widths"] and retrained["epochs"] == epochs
    # No curve of one point: the comparison is with that network, trained as long.
    advice, final, retrained = search.report.verdict(result)
    assert advice.startswith("Take final") and retrained.startswith("Retrained (found widths)")
    assert final.startswith("Planted (final), ")
    assert f"student (initial widths) KD trained {epochs} epochs" in final
    again = torch.load(out / "final_retrained.pt", weights_only=False)
    final = torch.load(out / "final.pt", weights_only=False)
    assert [type(m) for m in again] == [type(m) for m in final]
    assert [p.shape for p in again.parameters()] == [p.shape for p in final.parameters()]


def test_init_epochs_zero_takes_the_students_weights(folder24, networks, tmp_path):
    result = search.run_search(own(folder24, tmp_path / "asis", networks, init_epochs=0,
                                   max_rounds=1))
    assert result["initial"]["loss_fn"] == "given"
    # How long to retrain its widths is not known: said, not guessed.
    assert result["retrained"] is None
    assert any(w.startswith("--retrain is skipped: --init-epochs 0") for w in result["warnings"])


@pytest.mark.parametrize("flag, value, message", [
    ("--teacher", "{nets}:wrong_classes", "the teacher wrong_classes outputs \\(2, 5\\)"),
    ("--student", "{nets}:mlp", "no conv layer before its classifier"),
    ("--student", "{nets}:missing", "has no function 'missing'"),
    ("--student", "{folder}/nothing.pt", "no such file"),
])
def test_command_line_refusals_are_one_line_exit_2(folder24, networks, tmp_path, flag, value,
                                                    message):
    args = ["--dataset", "folder", "--data", str(folder24), "--out", str(tmp_path / "o"),
            "--student", f"{networks}:student", "--teacher", f"{networks}:teacher",
            "--teacher-epochs", "1", "--init-epochs", "1", "--val-size", "6",
            "--train-subset", "0", "--cache-dir", str(tmp_path / "cache"), "--no-download"]
    args[args.index(flag) + 1] = value.format(nets=networks, folder=folder24)
    run = subprocess.run([sys.executable, "-m", "plantops.search", *args], capture_output=True,
                         text=True, cwd=ROOT)
    assert run.returncode == 2, run.stderr
    import re
    assert re.search(message, run.stderr), run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert not (tmp_path / "o").exists()


def test_python_api_takes_modules(folder24, networks, tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("nets_api", networks)
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    student, teacher = nets.student(), nets.teacher()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    result = search.run_search(tiny_config(folder24, tmp_path / "api", max_rounds=1),
                               student=student, teacher=teacher)
    assert result["student_name"] == "Sequential" or result["student_name"] == "student"
    assert result["teacher"]["loss_fn"] == "given"
    # its parameters are its own, though it ran through plantops.inference
    assert result["teacher"]["params"] == sum(p.numel() for p in teacher.parameters())
    # the user's module is not changed by the search
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())
