"""A search SIGKILLed at points in every phase and resumed with --resume ends with the
uninterrupted run's result, and no finished epoch is ever trained again."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from helpers import TINY_SEARCH, write_image_folder

OPTIONS = dict(TINY_SEARCH, plant_epochs=3, table=True, table_widths="2",
               compare_with="none")
# Where to kill: a little after the first line that starts with this, in each phase in turn
# (mid-epoch, between epochs, while candidates are saved, after the teacher's logits).
KILL_AFTER = ["  teacher: epoch", "teacher logits: 4 epochs", "  initial: epoch", "  round 1 (",
              "  round 1 (", "candidate r1", "  round 1 fine-tuning: epoch", "  round 2 (",
              "  Student[2] CE: epoch", "  Student[2] KD: epoch"]
EPOCH = re.compile(r"^  (.+): epoch (\d+)/(\d+) done")
RESUMED = re.compile(r"^  (.+): resuming after epoch (\d+)/(\d+)")


def search(args, env, kill_after=None, delay=0.0):
    """Runs the search; with ``kill_after``, SIGKILLs it ``delay`` seconds after the first
    output line starting with it. Returns (exit code, output lines)."""
    proc = subprocess.Popen([sys.executable, "-m", "plantops.search", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if kill_after is not None and line.startswith(kill_after):
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            lines += proc.stdout.read().splitlines()  # what it wrote before it died
            break
    proc.stdout.close()
    return proc.wait(), lines


@pytest.mark.slow
def test_killed_anywhere_and_resumed_gives_the_uninterrupted_result(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", per_class=(10, 3))
    env = dict(os.environ, PLANTOPS_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    config = tmp_path / "options.json"
    config.write_text(json.dumps(dict(OPTIONS, data=str(folder))))
    code, _ = search(["--config", str(config), "--out", str(tmp_path / "whole")], env)
    assert code == 0
    reference = json.loads((tmp_path / "whole" / "result.json").read_text())

    out = tmp_path / "killed"
    rng = random.Random(0)
    done = {}            # phase -> epochs finished (printed) by the processes so far
    trained = {}         # phase -> epochs trained over all processes, and of how many
    kills, args = 0, ["--config", str(config), "--out", str(out)]
    for trigger in KILL_AFTER + [None]:
        code, lines = search(args, env, trigger, rng.uniform(0, 0.02))
        for line in lines:
            resumed = RESUMED.match(line)
            if resumed:  # it starts after the last epoch a killed process finished (or the
                # one after: a process can be killed between saving an epoch and saying so)
                phase, epoch = resumed.group(1), int(resumed.group(2))
                assert done.get(phase, 0) <= epoch <= done.get(phase, 0) + 1, (phase, epoch, done)
            finished = EPOCH.match(line)
            if finished:
                done[finished.group(1)] = int(finished.group(2))
                count, total = trained.get(finished.group(1), (0, 0))
                trained[finished.group(1)] = (count + 1, int(finished.group(3)))
        if trigger is None or code == 0:
            assert code == 0, "\n".join(lines[-20:])
            break
        kills += code == -signal.SIGKILL
        args = ["--resume", str(out)]
    assert kills >= 7  # most kill points were reached before the run ended
    # No epoch that a process finished was trained again by the next one.
    assert trained and all(count <= total for count, total in trained.values()), trained
    result = json.loads((out / "result.json").read_text())
    assert [r["layer"] for r in result["rounds"]] == [r["layer"] for r in reference["rounds"]]
    for key in ("final", "initial", "teacher"):
        assert result[key]["test_loss"] == pytest.approx(reference[key]["test_loss"], rel=1e-6)
        assert result[key]["widths"] == reference[key]["widths"]
    assert [r["test_loss"] for r in result["students"]] == pytest.approx(
        [r["test_loss"] for r in reference["students"]], rel=1e-6)
    records = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    keys = [(r["kind"], r["round"], r["layer"]) for r in records]
    assert len(keys) == len(set(keys)), "a network was logged twice"
    assert not list((out / "partial").glob("*.pt")), "a finished run's epoch checkpoints stay"
