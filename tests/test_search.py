"""The search end to end on a tiny image folder: outputs, determinism, resume, the paths a run
takes (caches, layouts, precision, --table), and what it shows."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from plantops import search

from helpers import tiny_config, write_image_folder


def test_outputs(reference_run):
    out, result = reference_run
    for name in ("config.json", "log.jsonl", "result.json", "results.md",
                 "accuracy_vs_params.png", "teacher.pt", "initial.pt", "final.pt"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "result.json").read_text())
    assert set(saved) >= {"final", "initial", "teacher", "rounds"}
    assert set(saved["final"]) >= {"widths", "params", "test_loss", "test_acc"}
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["plant_channels"] == 1 and config["plantops"]
    records = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    assert kinds[:2] == ["teacher", "initial"] and kinds.count("candidate") >= 5
    for r in records:
        assert {"round", "layer", "widths", "params", "val_loss", "val_acc", "seconds"} <= set(r)
    table = (out / "results.md").read_text()
    assert "| network |" in table and "Teacher[4]" in table and "Planted (final)" in table


def test_final_network_is_plain_torch_and_matches(reference_run, image_folder):
    out, result = reference_run
    seq = torch.load(out / "final.pt", weights_only=False)
    assert isinstance(seq, torch.nn.Sequential)
    assert all(type(m).__module__.startswith("torch.nn") for m in seq.modules())
    # its first layer normalizes the images; the rest is the planted network
    assert sum(p.numel() for p in seq[1:].parameters()) == result["final"]["params"]
    assert seq(torch.rand(2, 3, 32, 32)).shape == (2, 3)


def test_final_network_loads_without_plantops_and_scores_the_searchs_test_accuracy(
        reference_run, tmp_path):
    """final.pt takes float images in [0, 1]: loaded where plantops cannot be imported, it
    gets the test accuracy (and loss) that the search reported for it."""
    import numpy as np
    from plantops import data as datasets
    out, result = reference_run
    cfg = search.Config(**json.loads((out / "config.json").read_text())["config"])
    test = datasets.load(cfg.dataset, cfg.data, cfg.cache_dir, download=False)
    np.savez(tmp_path / "test.npz", images=test.test_images, labels=test.test_labels)
    code = f"""
import sys
sys.modules["plantops"] = None  # importing plantops now fails
import numpy as np, torch
net = torch.load({str(out / "final.pt")!r}, weights_only=False).eval()
z = np.load({str(tmp_path / "test.npz")!r})
x = torch.from_numpy(z["images"]).permute(0, 3, 1, 2).float() / 255
y = torch.from_numpy(z["labels"])
with torch.no_grad():
    logits = net(x)
print((logits.argmax(1) == y).float().mean().item(),
      torch.nn.functional.cross_entropy(logits, y).item())
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    acc, loss = map(float, run.stdout.split())
    assert acc == pytest.approx(result["final"]["test_acc"], abs=1e-6)
    assert loss == pytest.approx(result["final"]["test_loss"], rel=1e-4)


def test_same_seed_same_choices(reference_run, image_folder, tmp_path):
    _, first = reference_run
    second = search.run_search(tiny_config(image_folder, tmp_path / "again"))
    assert [r["layer"] for r in second["rounds"]] == [r["layer"] for r in first["rounds"]]
    assert second["final"]["widths"] == first["final"]["widths"]
    assert second["final"]["test_loss"] == pytest.approx(first["final"]["test_loss"], rel=1e-5)


def test_resume_after_a_kill_mid_round(reference_run, image_folder, tmp_path, monkeypatch):
    _, reference = reference_run
    out = tmp_path / "killed"
    from plantops.search.rounds import Rounds
    real = Rounds.save_candidate
    calls = []

    def dies_on_the_third(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed after two of a round's candidates were saved
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Rounds, "save_candidate", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        search.run_search(tiny_config(image_folder, out))
    with open(out / "log.jsonl", "a") as f:
        f.write('{"kind": "candid')  # and killed mid-write of a log line
    monkeypatch.setattr(Rounds, "save_candidate", real)
    resumed = search.run_search(search.parse_args(["--resume", str(out)]))
    assert [r["layer"] for r in resumed["rounds"]] == [r["layer"] for r in reference["rounds"]]
    assert resumed["final"]["widths"] == reference["final"]["widths"]
    records = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    keys = [(r["kind"], r["round"], r["layer"]) for r in records]
    assert len(keys) == len(set(keys)), "a candidate was logged twice"


def test_max_params_budget_skips_candidates(image_folder, tmp_path):
    result = search.run_search(tiny_config(image_folder, tmp_path / "budget", max_params=1))
    assert result["rounds"] == [] and "--max-params" in result["stop_reason"]


def test_teacher_cache_changes_nothing(reference_run, image_folder, tmp_path):
    _, cached = reference_run
    uncached = search.run_search(tiny_config(image_folder, tmp_path / "nocache",
                                             cache_teacher=False))
    assert [r["layer"] for r in uncached["rounds"]] == [r["layer"] for r in cached["rounds"]]
    assert uncached["final"]["test_loss"] == pytest.approx(cached["final"]["test_loss"], rel=1e-6)


def test_compact_teacher_cache_makes_the_same_choices(reference_run, image_folder, tmp_path):
    """--cache-dtype float16 rounds the cached logits (2^-11 relative): the choices stay."""
    _, exact = reference_run
    compact = search.run_search(tiny_config(image_folder, tmp_path / "fp16",
                                            cache_dtype="float16"))
    assert [r["layer"] for r in compact["rounds"]] == [r["layer"] for r in exact["rounds"]]
    assert compact["final"]["test_loss"] == pytest.approx(exact["final"]["test_loss"], rel=1e-2)


def test_channels_last_changes_no_choice(reference_run, image_folder, tmp_path):
    _, plain = reference_run  # the fixture's narrow networks run NCHW by default
    channels_last = search.run_search(tiny_config(image_folder, tmp_path / "cl",
                                                  channels_last=True))
    assert [r["layer"] for r in plain["rounds"]] == [r["layer"] for r in channels_last["rounds"]]
    assert plain["final"]["test_loss"] == pytest.approx(channels_last["final"]["test_loss"],
                                                        rel=1e-4)


@pytest.mark.parametrize("plant_epochs", [3, 6], ids=["fewer", "more"])
@pytest.mark.parametrize("cache", [True, False], ids=["in-memory", "from-disk"])
def test_the_teacher_runs_once_per_view(image_folder, tmp_path, monkeypatch, capsys, cache,
                                        plant_epochs):
    """Every candidate of every round sees the same views, so the teacher's logits of them
    are computed once for the whole search, kept in memory (--cache-teacher) or reloaded from
    the output folder for each round, and once for the validation set. The rounds' views
    are the first --plant-epochs of the initial network's (4 epochs): with fewer, they cost
    no teacher pass of their own; with more, only the missing epochs are computed."""
    from plantops import engine
    passes, images = [], []
    real = engine.teacher_logits

    def spy(teacher, views, *args, **kwargs):
        passes.append((views.epochs, views.augment, kwargs.get("from_epoch", 0)))
        tables = real(teacher, views, *args, **kwargs)
        images.append(sum(t.shape[0] * t.shape[1] for t in tables.values()) if views.augment
                      else 0)
        return tables

    monkeypatch.setattr(engine, "teacher_logits", spy)
    cfg = tiny_config(image_folder, tmp_path / "views", max_rounds=2, plant_epochs=plant_epochs,
                      cache_teacher=cache, max_params=10 ** 9, retrain=False)
    assert cfg.init_epochs == 4
    search.run_search(cfg)
    val, initial, planting = (1, False, 0), (4, True, 0), (plant_epochs, True, 4)
    assert sorted(passes) == sorted([val, initial] + ([planting] if plant_epochs > 4 else []))
    # Each training view went through the teacher once: 24 training images a view-epoch.
    assert sum(images) == 24 * max(4, plant_epochs)
    out = capsys.readouterr().out
    # Lines for the rounds' tables: each is said when computed or read from the folder,
    # not when it is (a prefix of) one in memory.
    said = out.count(f"teacher logits: {plant_epochs} epochs of views, ")
    assert said == {(True, 3): 0, (False, 3): 2, (True, 6): 1, (False, 6): 2}[cache, plant_epochs]
    if plant_epochs > 4:
        assert "teacher logits: 6 epochs of views, " in out and \
            "epochs 5-6 computed, 1-4 from " in out
    assert [p.name for p in (tmp_path / "views" / "teacher_logits").iterdir()] == \
        [f"epochs_{max(4, plant_epochs)}.pt"]  # a longer table replaces a shorter one


def test_training_candidates_together_changes_no_choice(reference_run, image_folder, tmp_path):
    _, together = reference_run
    alone = search.run_search(tiny_config(image_folder, tmp_path / "alone", train_together=False))
    assert [r["layer"] for r in alone["rounds"]] == [r["layer"] for r in together["rounds"]]
    assert alone["final"]["test_loss"] == pytest.approx(together["final"]["test_loss"], rel=1e-4)
    candidates = lambda out: {p.name: json.loads(p.read_text())["val"]["loss"]
                              for p in sorted((out / "candidates").glob("*.json"))}
    ref = candidates(tmp_path / "alone")
    assert ref and candidates(reference_run[0]) == pytest.approx(ref, rel=1e-4)


def test_initial_network_is_the_same_when_the_teacher_is_reloaded(reference_run, image_folder,
                                                                   tmp_path):
    """Resuming after the teacher (or reusing one with --teacher) must not change the initial
    network: its weights are seeded on their own, not by what ran before them."""
    out, _ = reference_run
    reused = tmp_path / "reused"
    search.run_search(tiny_config(image_folder, reused, teacher=str(out / "teacher.pt"),
                                  max_rounds=0))
    ref, _ = search.load_network(out / "initial.pt", "cpu")
    got, _ = search.load_network(reused / "initial.pt", "cpu")
    for a, b in zip(ref.state_dict().values(), got.state_dict().values()):
        assert torch.equal(a, b)


def test_split_seed_keeps_the_validation_set_across_seeds(image_folder, tmp_path):
    def val_images(**overrides):
        cfg = tiny_config(image_folder, tmp_path / "split", **overrides).validate()
        return search.prepare_data(cfg, torch.device("cpu")).val.images

    same = val_images(seed=0)
    assert torch.equal(val_images(seed=1, split_seed=0), same)
    assert not torch.equal(val_images(seed=1), same)
    with pytest.raises(ValueError, match="--split-seed must be >= 0, got -1"):
        tiny_config(image_folder, tmp_path / "bad", split_seed=-1).validate()


def test_a_train_subset_that_with_the_validation_set_is_all_the_images_takes_them_all(
        image_folder, tmp_path):
    total = len(search.prepare_data(tiny_config(image_folder, tmp_path / "all"),
                                    torch.device("cpu")).train)
    data = search.prepare_data(tiny_config(image_folder, tmp_path / "all", train_subset=total),
                               torch.device("cpu"))
    assert len(data.train) == total and len(data.val) == 6
    with pytest.raises(ValueError, match=f"--train-subset {total + 1} \\+ --val-size 6 exceeds"):
        search.prepare_data(tiny_config(image_folder, tmp_path / "all", train_subset=total + 1),
                            torch.device("cpu"))


@pytest.mark.parametrize("together", [True, False], ids=["together", "alone"])
def test_bfloat16_training_runs_through_every_path(reference_run, image_folder, tmp_path,
                                                   monkeypatch, together):
    """--precision bfloat16: every training step's forward, of the plain networks and of the
    round op, runs under bfloat16 autocast (a dtype mismatch anywhere would raise); the result
    stays near float32's."""
    from plantops import engine
    from plantops.planted_round import PlantedRound
    seen = set()  # (what trained, the dtype of its logits in a training step)
    real_init = engine.Training.__init__

    def spied_init(self, forward, *args, **kwargs):
        def spied_forward(x):
            logits = forward(x)
            seen.add((type(forward).__name__, logits.dtype))
            return logits
        real_init(self, spied_forward, *args, **kwargs)

    monkeypatch.setattr(engine.Training, "__init__", spied_init)
    _, exact = reference_run
    mixed = search.run_search(tiny_config(image_folder, tmp_path / "bf16",
                                          precision="bfloat16", train_together=together))
    assert mixed["final"]["test_loss"] == pytest.approx(exact["final"]["test_loss"], rel=0.05)
    assert {dtype for _, dtype in seen} == {torch.bfloat16}, seen
    assert {what for what, _ in seen} == {"PlantNet", PlantedRound.__name__}, seen


def test_a_plain_chain_trains_through_the_planted_kernels_on_a_cpu(monkeypatch):
    """A plain chain's 3x3 convs run as planted_conv2d with the whole weight planted where the
    auto rule takes the C++ kernels (a batch of 8 or more), and give nn.Conv2d's output and
    gradients; where the rule takes oneDNN (a batch of 2 at 64 channels) it runs F.conv2d."""
    import plantops.planted_conv as pc
    from plantops import backends, models
    if "cpu" not in backends("cpu"):
        pytest.skip("plantops._C is not built")
    calls = []
    real = pc.planted_conv2d
    monkeypatch.setattr(pc, "planted_conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    net = models.student(64).double().train()
    seq = net.to_sequential().double().train()
    for batch, planted in ((9, True), (2, False)):
        calls.clear()
        x = torch.randn(batch, 3, 32, 32, dtype=torch.float64)
        mine, theirs = net(x), seq(x)
        torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-10)
        assert (len(calls) == 5) == planted and (not calls) == (not planted)
        g_mine = torch.autograd.grad(mine.square().sum(), list(net.parameters()))
        g_theirs = torch.autograd.grad(theirs.square().sum(), list(seq.parameters()))
        for a, b in zip(g_mine, g_theirs):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


def test_the_engine_makes_the_previous_loops_choices_and_losses(reference_run, image_folder):
    """The search's rounds replayed with the previous round trainer
    (benchmarks/baselines/round_training.py: F.conv2d, a Python batch loop, torch.optim.SGD)
    from the same parents: every candidate's validation loss within 1e-4 of the engine's,
    and the same layer chosen in every round."""
    from baselines.round_training import Round, evaluate_round, train_round
    from baselines.training import TeacherCache
    from plantops import models, planting
    from plantops.search.rules import choose

    out, result = reference_run
    cfg = search.Config(**json.loads((out / "config.json").read_text())["config"])
    data = search.prepare_data(cfg, torch.device("cpu"))
    teacher, _ = search.load_network(out / "teacher.pt", "cpu")
    cache = TeacherCache(teacher)
    parent, meta = search.load_network(out / "initial.pt", "cpu")
    assert result["rounds"], "the fixture's search accepted no round"
    for accepted in result["rounds"]:
        rnd = accepted["round"]
        layers = parent.plantable_points(cfg.plant_fc1)
        candidates = {layer: planting.plant(parent, layer, cfg.plant_channels, cfg.plant_init,
                                            torch.Generator().manual_seed(
                                                search.candidate_seed(cfg, rnd, layer)))
                      for layer in layers}
        old = Round(parent, candidates, search.layout(cfg, "cpu", parent))
        train_round(old, data.train, search.training_schedule(cfg, cfg.plant_epochs, "planted"),
                    teacher, cfg.temperature, cfg.label_weight, cfg.seed, cache)
        old_vals = evaluate_round(old, data.val, teacher, cfg.temperature, cache)
        engine_vals = [json.loads(search.candidate_stem(out, rnd, layer).with_suffix(".json")
                                  .read_text())["val"] for layer in layers]
        for mine, theirs in zip(engine_vals, old_vals):
            assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-4)
            assert mine["kd_loss"] == pytest.approx(theirs["kd_loss"], rel=1e-4, abs=1e-6)
        # The search's rule (--select-rule) on the old trainer's numbers.
        chosen = choose([dict(layer=layer, params=planting.count_params(candidates[layer]),
                              val=old_vals[layer]) for layer in layers], meta["val"],
                        dict(params=planting.count_params(parent)), cfg)["layer"]
        assert models.LAYER_NAMES[chosen] == accepted["layer"]
        parent, meta = search.load_network(out / f"round_{rnd}.pt", "cpu")


def test_a_run_refused_before_training_leaves_no_folder(reference_run, tmp_path):
    out, _ = reference_run
    missing = tmp_path / "no-data"
    assert search.main(["--dataset", "folder", "--data", str(tmp_path / "nowhere"),
                        "--out", str(missing)]) == 2
    assert not missing.exists()
    other = write_image_folder(tmp_path / "five", per_class=(4, 1))
    for extra in ("bird", "ship"):  # a 3-class teacher against 5 classes: refused at its load
        shutil.copytree(other / "train" / "cat", other / "train" / extra)
        shutil.copytree(other / "test" / "cat", other / "test" / extra)
    refused = tmp_path / "refused"
    with pytest.raises(ValueError, match="3 classes, but the data is cifar with 5 classes: pass "
                                         "a teacher trained on this dataset"):
        search.run_search(tiny_config(other, refused, teacher=str(out / "teacher.pt"),
                                      val_size=5))
    assert not refused.exists()


def test_progress_and_times_are_shown(image_folder, tmp_path, capsys):
    """Outside a terminal every phase says each finished epoch; each candidate says the
    time its round took; the run ends with the wall time of every phase and which network to
    take."""
    search.run_search(tiny_config(image_folder, tmp_path / "progress", max_rounds=1))
    out = capsys.readouterr().out
    for phase in ("teacher", "initial", "round 1 (conv1+conv2+conv3+conv4+conv5)", "retrained"):
        assert f"  {phase}: epoch 1/" in out and "done, training loss" in out
    assert "(trained with 4 others in " in out
    times, advice = out.strip().splitlines()[-2:]
    assert times.startswith("time: teacher ") and "round 1 " in times and "report " in times
    assert "retrain " in times and advice.startswith("Take final")


def test_the_teacher_passes_show_progress(image_folder, tmp_path, capsys, monkeypatch):
    """The teacher's passes over the views are a phase of their own: outside a terminal they
    say how far they are (here every step, PROGRESS_SECONDS made 0)."""
    from plantops import progress
    monkeypatch.setattr(progress, "PROGRESS_SECONDS", 0.0)
    search.run_search(tiny_config(image_folder, tmp_path / "passes", max_rounds=1))
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("  teacher logits: epoch ")]
    assert lines and lines[-1].startswith("  teacher logits: epoch 4/4, step 3/3, "), lines[-3:]


def test_the_command_keeps_freed_memory_for_reuse_unless_told_not_to(monkeypatch):
    """python -m plantops.search sets glibc's thresholds (plantops/search/memory.py) where
    the C library has them, and leaves them under PLANTOPS_KEEP_MEMORY=0."""
    import platform
    from plantops.search import memory
    monkeypatch.setenv(memory.ENV, "0")
    assert memory.keep_freed_memory() is False
    monkeypatch.delenv(memory.ENV)
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert memory.keep_freed_memory() is glibc
    main_source = (Path(memory.__file__).parent / "__main__.py").read_text()
    assert "keep_freed_memory()" in main_source.split("sys.exit(main())")[0]
