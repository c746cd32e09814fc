"""A planting round on 2 ranks of 1 thread each (torchrun, gloo) against 1 process of 2
threads, on this CPU, side by side in one run; and the communication of each round.

    pytest benchmarks/test_bench_distributed.py --benchmark-only -s

Both run the same search from the same trained teacher and initial network (copied into each
output folder, so that only the round runs): Student[8], 5 candidates, one round of
PLANT_EPOCHS epochs on a synthetic image folder of TRAIN images. The time is the round's own,
from result.json (rank 0's), and the communication is rank 0's time in collectives during it
(gathering the candidates' results and weights, broadcasting what rank 0 read). With 5
candidates on 2 ranks the work splits 3 to 2. Under --benchmark-disable (CI's smoke run) the
setting shrinks.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on Linux")


def write_folder(root: Path, train: int, test: int):
    """Class templates plus noise, as PNG files in train/<class>/ and test/<class>/."""
    coarse = np.random.default_rng(1234).uniform(0, 255, (10, 4, 4, 3))
    templates = coarse.repeat(8, 1).repeat(8, 2)
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        labels = rng.integers(0, 10, count)
        for i, label in enumerate(labels):
            image = 0.5 * templates[label] + 0.5 * rng.uniform(0, 255, (32, 32, 3))
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.astype(np.uint8)).save(folder / f"{i:05d}.png")
    return root


@pytest.fixture(scope="module")
def setting(tmp_path_factory, request):
    small = request.config.getoption("benchmark_disable")
    train, test, epochs = (300, 50, 1) if small else (3000, 500, 4)
    root = tmp_path_factory.mktemp("bench_dist")
    data = write_folder(root / "imgs", train, test)
    options = dict(dataset="folder", data=str(data), device="cpu", train_subset=0, val_size=500
                   if not small else 50, teacher_width=16, teacher_epochs=2, init_width=8,
                   init_epochs=2, plant_epochs=epochs, max_rounds=0, lr=0.05, download=False,
                   finetune_epochs=0)  # the round's candidates alone
    config = root / "options.json"
    config.write_text(json.dumps(options))
    env = dict(os.environ, PLANTOPS_CACHE=str(root / "cache"))
    base = root / "base"
    subprocess.run([sys.executable, "-m", "plantops.search", "--config", str(config), "--out",
                    str(base)], env=env, check=True, capture_output=True)
    return root, config, env, base


def run_round(setting, ranks: int):
    root, config, env, base = setting
    out = root / f"ranks{ranks}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    for name in ("teacher.pt", "initial.pt"):
        shutil.copy(base / name, out / name)
    args = ["-m", "plantops.search", "--config", str(config), "--out", str(out),
            "--max-rounds", "1"]
    if ranks == 1:
        cmd, run_env = [sys.executable, *args], dict(env, OMP_NUM_THREADS="2")
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
               "--master-port", str(port), *args]
        run_env = dict(env, OMP_NUM_THREADS="1")
    run = subprocess.run(cmd, env=run_env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    return result["seconds"], [r["layer"] for r in result["rounds"]]


CHOSEN = {}


@pytest.mark.parametrize("ranks", [1, 2], ids=["1 process x 2 threads", "2 ranks x 1 thread"])
def test_round_on_ranks(benchmark, record, setting, ranks):
    seconds, chosen = benchmark.pedantic(run_round, args=(setting, ranks), rounds=1,
                                         iterations=1)
    CHOSEN[ranks] = chosen
    round_s = seconds.get("round 1", 0.0)
    comm = seconds.get("round 1 communication", 0.0)
    impl = "plantops 2 ranks x 1 thread" if ranks == 2 else "1 process x 2 threads"
    benchmark.extra_info.update(round_seconds=round_s, communication_seconds=comm)
    record("round wall time", "S[8] 5 candidates", impl, 0)
    print(f"\n{impl}: round {round_s:.2f} s, of it in collectives {comm:.3f} s")
    if len(CHOSEN) == 2:
        assert CHOSEN[1] == CHOSEN[2]
