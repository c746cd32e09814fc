"""Faults on disk: corrupt caches and checkpoints, a full disk. Caches are rebuilt with a
warning; an epoch checkpoint that does not load costs at most one epoch; a network checkpoint
that does not load is one line and exit code 2, the file left where it is; a full disk is one
line and exit code 1 with nothing left behind, and --resume then ends with the uninterrupted
run's result."""

import errno
import os
import shutil
import subprocess
import uuid

import numpy as np
import pytest
import torch

from plantops import data, models, search
from plantops.search import checkpoints

from helpers import same_result, tiny_config

# Ways a file goes bad: cut short, emptied, overwritten with noise.
DAMAGE = {
    "truncated": lambda b: b[:len(b) // 2],
    "zero-length": lambda b: b"",
    "random bytes": lambda b: np.random.default_rng(0).integers(0, 256, len(b), np.uint8).tobytes(),
}


def damage(path, how):
    path.write_bytes(DAMAGE[how](path.read_bytes()))


def no_temporary_files(folder):
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def resume(out):
    return search.run_search(search.parse_args(["--resume", str(out)]))


# ----------------------------------------------------------------------------- caches

@pytest.mark.parametrize("how", [*DAMAGE, "wrong contents"])
def test_a_bad_decoded_data_cache_is_rebuilt_with_a_warning(image_folder, tmp_path, capsys, how):
    cache = tmp_path / "cache"
    first = data.load("folder", image_folder, cache_dir=cache)
    cached, = cache.glob("folder-*.npz")
    if how == "wrong contents":  # a valid archive of other arrays
        np.savez(cached.with_suffix(".tmp.npz"), train_images=np.zeros((2, 3), np.float32),
                 train_labels=np.zeros(2, np.int64), test_images=first.test_images,
                 test_labels=first.test_labels, classes=np.asarray(first.classes))
        os.replace(cached.with_suffix(".tmp.npz"), cached)
    else:
        damage(cached, how)
    capsys.readouterr()
    again = data.load("folder", image_folder, cache_dir=cache)
    err = capsys.readouterr().err
    assert err.count("warning: the decoded-data cache") == 1 and str(cached) in err, err
    assert np.array_equal(again.train_images, first.train_images) and again.classes == first.classes
    # Rebuilt: the next load reads it without a word.
    data.load("folder", image_folder, cache_dir=cache)
    assert "warning" not in capsys.readouterr().err


def test_a_decoded_data_cache_that_cannot_be_written_is_skipped(image_folder, tmp_path, capsys,
                                                                monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    loaded = data.load("folder", image_folder, cache_dir=tmp_path / "cache")
    assert len(loaded.train_images) == 30
    assert "warning: cannot keep the decoded images in" in capsys.readouterr().err
    assert not list((tmp_path / "cache").glob("*"))


@pytest.mark.parametrize("how", [*DAMAGE, "other views", "other shapes"])
def test_a_bad_teacher_logits_file_is_computed_anew_and_the_result_is_the_same(
        reference_run, tmp_path, capsys, how):
    ref_out, reference = reference_run
    out = tmp_path / "run"
    shutil.copytree(ref_out, out)
    # Resume as if the search had stopped before round 2: it needs the teacher's logits again.
    for stale in [out / "round_2.pt", *(out / "candidates").glob("r2_*")]:
        stale.unlink()
    table, = (out / "teacher_logits").glob("epochs_*.pt")
    if how == "other views":
        payload = torch.load(table, weights_only=True)
        payload["fingerprint"] = "0" * 16   # as a table of another seed or training set
        torch.save(payload, table)
    elif how == "other shapes":
        payload = torch.load(table, weights_only=True)
        payload["tables"] = {k: t[:, :2] for k, t in payload["tables"].items()}
        torch.save(payload, table)
    else:
        damage(table, how)
    capsys.readouterr()
    resumed = resume(out)
    err = capsys.readouterr().err
    assert err.count("warning: the teacher-logits cache") == 1 and str(table) in err, err
    same_result(resumed, reference)
    rebuilt, = (out / "teacher_logits").glob("epochs_*.pt")  # of the epochs still needed
    assert torch.load(rebuilt, weights_only=True)["fingerprint"] != "0" * 16
    assert not no_temporary_files(out)


# ----------------------------------------------------------------------------- checkpoints

def killed_after_epoch(monkeypatch, phase: str, epochs_done: int):
    """Makes the search die right after it saved ``phase``'s checkpoint of ``epochs_done``."""
    real = checkpoints.save_partial

    def save_then_die(path, done, states):
        real(path, done, states)
        if path.stem == phase and done == epochs_done:
            raise KeyboardInterrupt

    monkeypatch.setattr("plantops.search.run_folder.save_partial", save_then_die)


@pytest.mark.parametrize("how", [*DAMAGE, "another run's shapes", "both bad"])
def test_a_bad_epoch_checkpoint_costs_at_most_an_epoch(reference_run, image_folder, tmp_path,
                                                        capsys, monkeypatch, how):
    _, reference = reference_run
    out = tmp_path / "run"
    killed_after_epoch(monkeypatch, "initial", 3)
    with pytest.raises(KeyboardInterrupt):
        search.run_search(tiny_config(image_folder, out))
    monkeypatch.undo()
    latest = out / "partial" / "initial.pt"
    previous = checkpoints.previous_partial(latest)
    assert torch.load(previous, weights_only=True)["epochs_done"] == 2  # kept until the next
    if how == "another run's shapes":
        teacher_state = torch.load(out / "teacher.pt", weights_only=False)["state_dict"]
        torch.save(dict(epochs_done=3, states={0: dict(params=list(teacher_state.values()),
                                                       sgd=dict(buffers=[]))}), latest)
    else:
        damage(latest, "truncated" if how == "both bad" else how)
        if how == "both bad":
            damage(previous, "random bytes")
    capsys.readouterr()
    resumed = resume(out)
    captured = capsys.readouterr()
    assert "warning: the epoch checkpoint" in captured.err and str(latest) in captured.err
    # Back to the checkpoint before it (epoch 2), or to the start when both are bad.
    expected = "initial: epoch 1/4 done" if how == "both bad" else "initial: resuming after epoch 2/4"
    assert expected in captured.out, captured.out
    same_result(resumed, reference)
    assert not (out / "partial" / "initial.pt").exists() and not previous.exists()


@pytest.mark.parametrize("name, held", [("initial.pt", "the initial network"),
                                        ("teacher.pt", "the teacher"),
                                        ("round_1.pt", "round 1's accepted network"),
                                        ("round 2's choice", "round 2's candidate for ")])
@pytest.mark.parametrize("how", [*DAMAGE, "wrong contents"])
def test_a_network_checkpoint_that_does_not_load_is_one_line_and_exit_code_2(
        reference_run, tmp_path, capsys, name, held, how):
    ref_out, reference = reference_run
    out = tmp_path / "run"
    shutil.copytree(ref_out, out)
    for later in ("result.json", "round_2.pt"):
        (out / later).unlink()   # as if stopped before round 2 was chosen
    if name == "round 2's choice":  # the candidate the resumed round 2 loads
        layer = models.LAYER_NAMES.index(reference["rounds"][1]["layer"])
        name, held = f"candidates/r2_l{layer}.pt", held + models.LAYER_NAMES[layer]
    path = out / name
    if how == "wrong contents":  # a loadable file that is no network of ours
        torch.save(dict(epochs_done=1, states={}), path)
    else:
        damage(path, how)
    before = path.read_bytes()
    capsys.readouterr()
    assert search.main(["--resume", str(out)]) == 2
    err, = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert err.startswith(f"error: {path} "), err
    assert f"it held {held}" in err and "--resume trains it again" in err
    assert path.read_bytes() == before  # never deleted or changed


# ----------------------------------------------------------------------------- a full disk

@pytest.mark.parametrize("fail_at", [1, 4, 12])
def test_a_full_disk_is_one_line_exit_code_1_and_resume_finishes(reference_run, image_folder,
                                                                 tmp_path, capsys, monkeypatch,
                                                                 fail_at):
    """ENOSPC from the fail_at-th file written (simulated), then --resume with room again."""
    _, reference = reference_run
    out = tmp_path / "run"
    real = torch.save
    writes = []

    def save(obj, f, *args, **kwargs):
        writes.append(f)
        if len(writes) == fail_at:
            with open(f, "wb") as half:
                half.write(b"PK\x03\x04 half a file")
            raise RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter "
                               "failed writing file data/0: file write failed")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    capsys.readouterr()
    assert search.main(cli_args(tiny_config(image_folder, out))) == 1
    err, = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert err.startswith("error: cannot write ") and f" to {out}" in err \
        and "bytes free there" in err and "--resume" in err
    assert not no_temporary_files(out)
    monkeypatch.setattr(torch, "save", real)
    same_result(resume(out), reference)


def can_mount_tmpfs() -> str | None:
    """Why a real full filesystem cannot be made here (None: it can)."""
    if os.geteuid() != 0:
        return "making a small tmpfs needs root"
    if shutil.which("mount") is None:
        return "no mount command"
    probe = f"/tmp/plantops-tmpfs-probe-{uuid.uuid4().hex[:8]}"
    os.makedirs(probe)
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", probe], check=True)
        return None if ok else "mount -t tmpfs is not permitted here"
    finally:
        os.rmdir(probe)


@pytest.fixture
def small_filesystem(tmp_path):
    why = can_mount_tmpfs()
    if why:
        pytest.skip(why)
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def test_a_real_full_filesystem_then_resume_with_room(reference_run, image_folder, tmp_path,
                                                      small_filesystem, capsys):
    _, reference = reference_run
    out = small_filesystem / "run"
    cfg = tiny_config(image_folder, out, cache_dir=str(tmp_path / "cache"))
    capsys.readouterr()
    assert search.main(cli_args(cfg)) == 1
    err, = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert err.startswith("error: cannot write "), err
    assert "No space left on device" in err or "the write failed" in err, err
    assert not no_temporary_files(out)
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_filesystem)], check=True)
    same_result(resume(out), reference)


def cli_args(cfg):
    return [f"--{k.replace('_', '-')}={v}" for k, v in vars(cfg).items()
            if v is not None and not isinstance(v, bool)] + ["--no-download"]


def test_an_output_folder_removed_mid_run_is_one_line_and_exit_code_1(image_folder, tmp_path,
                                                                      capsys, monkeypatch):
    out = tmp_path / "run"
    real = search.Search.initial

    def removed_first(self):
        shutil.rmtree(out)   # by the user, while the teacher's logits were being used
        return real(self)

    monkeypatch.setattr(search.Search, "initial", removed_first)
    assert search.main(cli_args(tiny_config(image_folder, out))) == 1
    err, = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert err.startswith("error: cannot write ") and ("No such file or directory" in err
                                                       or "the folder was removed" in err), err
    assert not out.exists()  # not made anew half-empty


def test_a_read_only_filesystem_is_one_line_and_exit_code_1_and_resume_finishes(
        reference_run, image_folder, tmp_path, small_filesystem, capsys, monkeypatch):
    _, reference = reference_run
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_filesystem)], check=True)
    out = small_filesystem / "run"
    real = search.Search.initial

    def read_only_first(self):
        subprocess.run(["mount", "-o", "remount,ro", str(small_filesystem)], check=True)
        return real(self)

    monkeypatch.setattr(search.Search, "initial", read_only_first)
    cfg = tiny_config(image_folder, out, cache_dir=str(tmp_path / "cache"))
    assert search.main(cli_args(cfg)) == 1
    err, = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert err.startswith("error: cannot write ") and "Read-only file system" in err, err
    subprocess.run(["mount", "-o", "remount,rw", str(small_filesystem)], check=True)
    monkeypatch.undo()
    assert not no_temporary_files(out)
    same_result(resume(out), reference)


def test_the_teachers_logits_check_their_room_before_the_passes(reference_run, image_folder,
                                                                tmp_path, capsys, monkeypatch):
    """The teacher-logits phase knows its size up front: with too little room it stops before
    running the teacher, saying how much it needs; --resume with room finishes."""
    _, reference = reference_run
    out = tmp_path / "run"
    passes = []
    real_free = checkpoints.free_bytes
    monkeypatch.setattr(checkpoints, "free_bytes", lambda folder: 1000
                        if folder.name == "teacher_logits" else real_free(folder))
    from plantops import engine
    real_logits = engine.teacher_logits
    monkeypatch.setattr(engine, "teacher_logits",
                        lambda *a, **k: passes.append(a[1].augment) or real_logits(*a, **k))
    assert search.main(cli_args(tiny_config(image_folder, out))) == 1
    err, = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert "cannot write the teacher's logits to" in err and "it needs " in err \
        and "1,000 bytes free there" in err, err
    assert True not in passes  # no pass over the training views was made
    monkeypatch.undo()
    same_result(resume(out), reference)
