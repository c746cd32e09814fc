"""The planting choices that the poster leaves open (docs/method.md): how new channels start,
the planted parameters' schedule, which candidate a round keeps, fine-tuning after a round,
and the warnings when distillation cannot help."""

import json

import pytest
import torch

from plantops import models, search
from plantops.planting import plant
from plantops.search import report
from plantops.search.rules import choose

from helpers import tiny_config


def result_of(layer, loss, params, flops=0):
    return dict(layer=layer, params=params, flops=flops, val=dict(loss=loss, kd_loss=loss))


def test_lowest_rule_keeps_the_lowest_loss_and_per_param_the_best_fall_per_parameter():
    current = dict(loss=1.0, kd_loss=1.0)
    size = dict(params=1_000, flops=1_000_000)
    cheap = result_of(0, 0.99, 1_100, 1_400_000)   # falls 0.01 for 100 parameters, 400K FLOPs
    dear = result_of(4, 0.95, 3_000, 1_100_000)    # falls 0.05 for 2,000 parameters, 100K FLOPs
    lowest = search.config_from_dict(dict(select_rule="lowest"))
    per_param = search.config_from_dict(dict(select_rule="per_param"))
    assert choose([cheap, dear], current, size, lowest) is dear
    assert choose([cheap, dear], current, size, per_param) is cheap
    per_flop = search.config_from_dict(dict(select_rule="per_flop"))
    assert choose([cheap, dear], current, size, per_flop) is dear
    # A candidate that does not lower the loss is never kept for its tiny cost.
    worse_but_cheap = result_of(1, 1.001, 1_001)
    assert choose([worse_but_cheap, dear], current, size, per_param) is dear
    # None lowers it: the lowest, which the round then rejects.
    assert choose([result_of(2, 1.2, 2_000), worse_but_cheap], current, size,
                  per_param) is worse_but_cheap
    # Ties go to the lower layer, under both rules.
    twin = result_of(3, 0.95, 3_000)
    assert choose([twin, dear], current, size, lowest)["layer"] == 3
    assert choose([dear, twin], current, size, per_param)["layer"] == 3


def test_the_planted_schedule_takes_its_own_options_and_the_plain_one_ignores_them():
    cfg = search.config_from_dict(dict(lr=0.05, plant_lr=0.2, plant_lr_decay=1.0,
                                       plant_weight_decay=0.0, finetune_lr=0.01))
    plain = search.training_schedule(cfg, 9)
    planted = search.training_schedule(cfg, 9, "planted")
    tuned = search.training_schedule(cfg, 9, "finetune")
    assert (plain.lr, plain.decay, plain.weight_decay) == (0.05, 0.2, 5e-4)
    assert (planted.lr, planted.decay, planted.weight_decay) == (0.2, 1.0, 0.0)
    assert [planted.lr_at(e) for e in (0, 4, 8)] == [0.2, 0.2, 0.2]  # constant
    assert (tuned.lr, tuned.decay, tuned.weight_decay) == (0.01, 0.2, 5e-4)
    unset = search.training_schedule(search.Config(), 9, "planted")
    assert (unset.lr, unset.decay, unset.weight_decay) == (0.05, 0.2, 5e-4)
    with pytest.raises(ValueError, match="regime must be one of plain, planted, finetune"):
        search.training_schedule(cfg, 9, "teacher")


@pytest.mark.parametrize("layer", [0, 2, 4, 5])
def test_small_init_starts_near_the_parent_and_preserve_at_it(layer):
    torch.manual_seed(0)
    parent = models.student(3)
    x = torch.randn(4, 3, 32, 32)
    before = parent(x)
    gen = lambda: torch.Generator().manual_seed(7)
    kept = plant(parent, layer, 2, "preserve", gen())(x)
    near = plant(parent, layer, 2, "small", gen())
    far = plant(parent, layer, 2, "random", gen())
    torch.testing.assert_close(kept, before, rtol=1e-5, atol=1e-6)  # other summation orders
    reader_near, reader_far = near.layer(layer + 1), far.layer(layer + 1)
    # The same draws, a tenth of the scale.
    torch.testing.assert_close(reader_near.in_weight * 10, reader_far.in_weight)
    assert reader_near.in_weight.abs().min() > 0
    change = (near(x) - before).abs().max()
    assert 1e-5 < change < (far(x) - before).abs().max()


def test_finetuning_trains_every_parameter_of_the_accepted_network(image_folder, tmp_path):
    out = tmp_path / "tuned"
    result = search.run_search(tiny_config(image_folder, out, finetune_epochs=2, max_rounds=1,
                                           finetune_lr=0.05))
    assert len(result["rounds"]) == 1, result["stop_reason"]
    rnd = result["rounds"][0]
    layer = models.LAYER_NAMES.index(rnd["layer"])
    candidate = torch.load(out / "candidates" / f"r1_l{layer}.pt", weights_only=False)
    tuned = torch.load(out / "round_1.pt", weights_only=False)
    initial = torch.load(out / "initial.pt", weights_only=False)
    # The candidate kept every old parameter; fine-tuning moved them (and the planted ones).
    fc2 = f"body.{models.student(1).layer_positions[6]}.weight"
    old = initial["state_dict"][fc2]
    assert torch.equal(candidate["state_dict"][fc2], old)
    assert not torch.equal(tuned["state_dict"][fc2], old)
    assert tuned["widths"] == candidate["widths"]
    assert tuned["meta"]["val"] != candidate["meta"]["val"]
    assert rnd["val_loss"] == pytest.approx(tuned["meta"]["val"]["loss"])
    assert not (out / "partial" / "finetune_r1.pt").exists()
    records = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [r["val_loss"] for r in records if r["kind"] == "round"] == [rnd["val_loss"]]


def test_a_teacher_no_better_than_the_initial_network_is_warned_of(reference_run, image_folder,
                                                                    tmp_path, capsys):
    ref, _ = reference_run
    weak = tmp_path / "weak_teacher.pt"
    saved = torch.load(ref / "teacher.pt", weights_only=False)
    saved["meta"]["val"] = dict(loss=9.0, acc=0.0)  # as a teacher that learnt nothing
    torch.save(saved, weak)
    out = tmp_path / "weak"
    result = search.run_search(tiny_config(image_folder, out, teacher=str(weak), max_rounds=1))
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if line.startswith("warning: the teacher")]
    assert len(warned) == 1, err
    assert "val acc 0.00%" in warned[0] and "is no better than the initial network" in warned[0]
    assert "pass a stronger one (--teacher FILE)" in warned[0]
    # Every warning printed (a network at chance level too) is kept for result.json.
    assert result["warnings"] == [line[len("warning: "):] for line in err.splitlines()
                                  if line.startswith("warning: ")]
    assert json.loads((out / "result.json").read_text())["warnings"] == result["warnings"]
    assert "Warning: the teacher" in (out / "results.md").read_text()


def test_no_warning_when_the_teacher_is_better(reference_run):
    _, result = reference_run
    assert not [w for w in result["warnings"] if w.startswith("the teacher")]


def test_curve_interpolates_in_log_parameters_and_does_not_extrapolate():
    points = [(10_000, 0.50), (40_000, 0.60)]
    assert report.curve_at(points, 20_000) == pytest.approx(0.55)  # halfway in log params
    assert report.curve_at(points, 10_000) == pytest.approx(0.50)
    assert report.curve_at(points, 9_999) is None and report.curve_at(points, 40_001) is None


def test_the_report_says_where_planting_lies_against_the_students_curves():
    row = lambda loss, params, acc, flops, epochs=45: dict(
        network="x", loss_fn=loss, params=params, flops=flops, test_acc=acc, epochs=epochs)
    result = dict(initial=row("KD", 20_000, 0.55, 1e6),
                  final=dict(row("KD", 36_000, 0.57, 4e6), network="Planted (final)"),
                  students=[row("KD", 40_000, 0.62, 3e6), row("CE", 20_000, 0.50, 1e6),
                            row("CE", 40_000, 0.54, 3e6)])
    where = report.against_curves(result)
    # log(36K / 20K) / log(40K / 20K) = 0.848 of the way from 55% to 62%
    assert where["KD"]["curve_acc"] == pytest.approx(0.55 + 0.07 * 0.84799, abs=1e-4)
    assert where["KD"]["margin"] < 0 < where["CE"]["margin"]
    line, = report.verdict(result)
    assert line.startswith("Planted (final), 57.00% at 36.0K parameters and 4.00M FLOPs per "
                           "image: by parameters, 3.94 points below the KD students "
                           "trained 45 epochs (60.94% at its parameters, interpolated in log "
                           "parameters) and 3.61 points above the CE")
    # By FLOPs it is past the widest student: the nearest one is the comparison.
    assert line.endswith("; by FLOPs, 5.00 points below x KD trained 45 epochs (62.00% at "
                         "3.00M FLOPs, the nearest; +33% FLOPs)")
    # An initial network trained fewer epochs than the students is not on their curve.
    result["initial"]["epochs"] = 15
    assert "KD" not in report.student_curves(result)


@pytest.mark.parametrize("layer", [0, 4, 5])
def test_steepest_keeps_the_filters_whose_outgoing_weights_get_the_largest_gradient(layer):
    """--plant-init steepest: of 4x the draws, the filters whose zero outgoing weights get the
    largest gradient; the candidate starts as its parent, and its first gradient on those
    weights is the largest of any choice of as many draws."""
    from plantops.planting import plant_steepest
    torch.manual_seed(0)
    parent = models.student(3).eval()
    x, target = torch.randn(6, 3, 32, 32), torch.randn(6, 10)
    loss = lambda logits: (logits - target).square().mean()
    candidate = plant_steepest(parent, layer, 2, torch.Generator().manual_seed(5), [(x, loss)],
                               pool=4)
    wide = plant(parent, layer, 8, "preserve", torch.Generator().manual_seed(5)).train()
    g, = torch.autograd.grad(loss(wide(x)), [wide.layer(layer + 1).in_weight])
    score = g.reshape(g.shape[0], 8, -1).square().sum((0, 2))
    top = score.topk(2).indices.sort().values
    ranked = score.sort(descending=True).values
    assert ranked[1] > ranked[2]  # the choice is not a tie (dead draws all score 0)
    torch.testing.assert_close(candidate.layer(layer).out_weight, wide.layer(layer).out_weight[top])
    torch.testing.assert_close(candidate.eval()(x), parent(x), rtol=1e-5, atol=1e-6)
    candidate.train()
    got, = torch.autograd.grad(loss(candidate(x)), [candidate.layer(layer + 1).in_weight])
    assert got.square().sum() == pytest.approx(score[top].sum().item(), rel=1e-4)
    assert got.square().sum() >= score[:2].sum() and got.square().sum() >= score[-2:].sum()


def test_a_search_plants_the_steepest_filters_end_to_end(image_folder, tmp_path):
    result = search.run_search(tiny_config(image_folder, tmp_path / "steep", max_rounds=1,
                                           plant_init="steepest", select_rule="per_flop"))
    assert result["config"]["plant_init"] == "steepest"
    records = [json.loads(p.read_text()) for p in (tmp_path / "steep" / "candidates").glob("*.json")]
    assert len(records) == 5 and all(r["flops"] > 0 for r in records)
