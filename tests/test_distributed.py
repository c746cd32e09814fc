"""Several processes (torchrun, torch.distributed with gloo on this CPU, 2 ranks): one search
spread over them gives the single process's choices and results; --seeds runs independent
searches over them; a rank killed mid-round ends the job with an error naming it, and
--resume finishes it with the uninterrupted result; ranks started with different options are
refused."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import TINY_SEARCH, same_result, write_image_folder

pytestmark = pytest.mark.slow
OPTIONS = TINY_SEARCH


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    folder = write_image_folder(root / "imgs", per_class=(30, 5))
    config = root / "options.json"
    config.write_text(json.dumps(dict(OPTIONS, data=str(folder))))
    env = dict(os.environ, PLANTOPS_CACHE=str(root / "cache"), OMP_NUM_THREADS="1")
    one = root / "one"
    subprocess.run([sys.executable, "-m", "plantops.search", "--config", str(config), "--out",
                    str(one)], env=env, check=True, capture_output=True)
    return root, config, env, json.loads((one / "result.json").read_text()), one


def torchrun(*args, env):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--master-port", str(free_port()), "-m", "plantops.search", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_search_over_two_ranks_is_the_single_process_search(setting):
    root, config, env, reference, one = setting
    out = root / "two"
    run = subprocess.run(torchrun("--config", str(config), "--out", str(out), env=env),
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    same_result(json.loads((out / "result.json").read_text()), reference, rel=1e-4)
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    records = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    ranks = {r["rank"] for r in records if r["kind"] == "candidate"}
    assert ranks == {0, 1}  # both ranks trained candidates
    mine = {(r["round"], r["layer"]): r["val_loss"] for r in records if r["kind"] == "candidate"}
    theirs = {(r["round"], r["layer"]): r["val_loss"]
              for r in map(json.loads, (one / "log.jsonl").read_text().splitlines())
              if r["kind"] == "candidate"}
    assert mine == pytest.approx(theirs, rel=1e-4)


def test_seeds_over_two_ranks_are_the_single_process_runs(setting):
    root, config, env, reference, _ = setting
    out = root / "seeds"
    run = subprocess.run(torchrun("--config", str(config), "--out", str(out), "--seeds", "0,1",
                                  env=env), env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    same_result(json.loads((out / "seed_0" / "result.json").read_text()), reference, rel=1e-4)
    alone = root / "seed1-alone"
    subprocess.run([sys.executable, "-m", "plantops.search", "--config", str(config), "--seed",
                    "1", "--out", str(alone)], env=env, check=True, capture_output=True)
    same_result(json.loads((out / "seed_1" / "result.json").read_text()),
                json.loads((alone / "result.json").read_text()), rel=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert [r["run"] for r in summary["runs"]] == ["seed_0", "seed_1"]
    assert summary["groups"][0]["runs"] == 2 and "±" in (out / "summary.md").read_text()


def rank_pid(out: Path, rank: int):
    """The pid of the search process of ``rank`` writing into ``out``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (str(out).encode() in cmdline and b"plantops.search" in cmdline
                and f"RANK={rank}".encode() in environ and b"torch.distributed.run" not in cmdline):
            return int(proc.name)
    return None


def test_a_killed_rank_ends_the_job_and_resume_finishes_it(setting):
    root, config, env, reference, _ = setting
    out = root / "killed"
    proc = subprocess.Popen(torchrun("--config", str(config), "--out", str(out), env=env),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("  round 1 ("):
            pid = rank_pid(out, 1)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            break
    lines += proc.stdout.readlines()
    assert proc.wait(timeout=120) != 0
    assert time.monotonic() - killed < 60  # the others stopped, within the timeout
    text = "".join(lines)
    assert "rank" in text and ": 1 (local_rank: 1)" in text, text[-3000:]  # torchrun names it
    run = subprocess.run(torchrun("--resume", str(out), env=env), env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    same_result(json.loads((out / "result.json").read_text()), reference, rel=1e-4)


def test_ranks_with_different_options_are_refused(setting):
    root, config, env, _, _ = setting
    port = str(free_port())
    procs = []
    for rank, epochs in ((0, "2"), (1, "3")):
        rank_env = dict(env, WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank),
                        MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "plantops.search", "--config", str(config), "--out",
             str(root / "mismatch"), "--plant-epochs", epochs], env=rank_env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 2 for p in procs), [(p.returncode, o[1][-1500:]) for p, o in zip(procs, outputs)]
    err = outputs[0][1]
    assert "rank 1's options differ from rank 0's" in err and "plant_epochs: 2 against 3" in err
    assert not (root / "mismatch").exists()


BN_STUDENT = '''
from torch import nn

def student():
    return nn.Sequential(
        nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 3))
'''


def test_a_student_with_batch_norm_trains_the_same_network_on_every_rank(setting):
    """The ranks share the initial network's batches, so each rank's batch norms see other
    samples: their running statistics are averaged after every epoch, and the ranks check
    that they hold the same network after each plain training (which would stop the job
    with 'differ from rank 0's' otherwise)."""
    root, config, env, _, _ = setting
    nets = root / "bn_student.py"
    nets.write_text(BN_STUDENT)
    out = root / "bn"
    run = subprocess.run(torchrun("--config", str(config), "--out", str(out), "--student",
                                  f"{nets}:student", "--max-rounds", "1",
                                  "--finetune-epochs", "1", env=env),
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["student_name"] == "student" and result["initial"]["loss_fn"] == "KD"


RESNET_STUDENT = f'''
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / "examples")!r})
import resnet

def student():
    return resnet.student(3, 3)
'''


def test_a_residual_student_plants_over_two_ranks(setting):
    """A network planted by width groups: its candidates spread over the ranks, each rank's
    trained through its own graph round op, and every rank makes the same choice (its batch
    norms see half of each batch while the plain networks train, so the numbers are not the
    single process's, as for any network with batch norm)."""
    root, config, env, _, _ = setting
    nets = root / "resnet_student.py"
    nets.write_text(RESNET_STUDENT)
    out = root / "resnet"
    run = subprocess.run(torchrun("--config", str(config), "--student", f"{nets}:student",
                                  "--max-rounds", "1", "--finetune-epochs", "1", "--out",
                                  str(out), env=env),
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 and len(result["rounds"]) <= 1
    records = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    candidates = [r for r in records if r["kind"] == "candidate"]
    assert {r["rank"] for r in candidates} == {0, 1} and len(candidates) == 6
