"""The round op (plantops/planted_round.py) against a float64 reference: each candidate as a
plain network (its merged weights, plain torch autograd), output and the gradient of every
planted block; candidates planted into every layer, fc1 included, on odd widths and batches.
Training a round through the engine equals training each candidate alone, and equals the
search's previous round trainer (benchmarks/baselines/round_training.py)."""

import copy

import pytest
import torch

from baselines.round_training import Round, evaluate_round, train_round
from baselines.training import TeacherCache
from helpers import assert_close_to_reference, tiny_data
from plantops import engine, models, planting
from plantops.data import ViewSchedule
from plantops.planted_round import PlantedRound

WIDTHS = [3, 5, 4, 6, 2]


def candidates_of(parent, layers, count=2, init="random"):
    return {layer: planting.plant(parent, layer, count, init, torch.Generator().manual_seed(layer))
            for layer in layers}


def reference(candidate, layer, x):
    """The candidate's logits and the gradients of sum(logits^2) with respect to its planted
    blocks, from its merged weights with plain autograd."""
    net = planting.merge(candidate)
    logits = net(x)
    grown, reader = net.layer(layer), net.layer(layer + 1)
    gw, gb, gr = torch.autograd.grad(logits.square().sum(), [grown.weight, grown.bias,
                                                             reader.weight])
    old_out = candidate.layer(layer).frozen_out
    old_in = candidate.layer(layer + 1).frozen_in
    # the planted blocks: the new rows of the grown layer, the new columns of the reader
    return logits, [gw[old_out:], gb[old_out:], gr[:, old_in:]]


@pytest.mark.parametrize("arch", ["cifar", "stl"])
@pytest.mark.parametrize("layers", [range(6), [0, 2, 5], [4], [1, 3]], ids=str)
def test_round_matches_each_candidate_in_float64(arch, layers):
    torch.manual_seed(0)
    parent = models.PlantNet(WIDTHS, arch).double()
    candidates = candidates_of(parent, layers)
    round_op = PlantedRound(parent, candidates)
    size = 32 if arch == "cifar" else 96
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    logits = round_op(x)
    grads = torch.autograd.grad(logits.square().sum(), round_op.parameters())
    assert logits.shape == (3 * len(candidates), 10)
    for i, (layer, candidate) in enumerate(candidates.items()):
        ref_logits, ref_grads = reference(candidate, layer, x)
        torch.testing.assert_close(logits[3 * i:3 * (i + 1)], ref_logits, rtol=1e-10, atol=1e-12)
        for got, want in zip(grads[3 * i:3 * (i + 1)], ref_grads):
            torch.testing.assert_close(got, want.view_as(got), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("backend", ["auto", "torch", "cpu"])
def test_round_in_float32_is_as_close_as_torch_itself(backend):
    """float32 against the float64 reference, within twice the error that the same candidates
    computed by plain torch in float32 make."""
    torch.manual_seed(1)
    parent64 = models.PlantNet([7, 4, 9, 5, 3]).double()
    candidates64 = candidates_of(parent64, range(6), count=3)
    x64 = torch.randn(9, 3, 32, 32, dtype=torch.float64)
    parent = copy.deepcopy(parent64).float()
    candidates = {layer: copy.deepcopy(net).float() for layer, net in candidates64.items()}
    round_op = PlantedRound(parent, candidates, backend=backend)
    logits = round_op(x64.float())
    grads = torch.autograd.grad(logits.square().sum(), round_op.parameters())
    for i, layer in enumerate(candidates):
        ref_logits, ref_grads = reference(candidates64[layer], layer, x64)
        base_logits, base_grads = reference(candidates[layer], layer, x64.float())
        assert_close_to_reference(logits[9 * i:9 * (i + 1)], ref_logits, base_logits,
                                  name=f"layer {layer} logits")
        for got, want, base in zip(grads[3 * i:3 * (i + 1)], ref_grads, base_grads):
            assert_close_to_reference(got, want.view_as(got), base.view_as(got),
                                      name=f"layer {layer} gradient")


def test_gradients_reach_only_planted_parameters():
    parent = models.PlantNet(WIDTHS).double()
    round_op = PlantedRound(parent, candidates_of(parent, range(6)))
    round_op(torch.randn(2, 3, 32, 32, dtype=torch.float64)).square().sum().backward()
    assert all(p.grad is not None for p in round_op.parameters())
    assert all(p.grad is None and not p.requires_grad for p in round_op.parent.parameters())


def test_each_frozen_layer_runs_once_for_all_the_candidates_before_it(monkeypatch):
    """The candidates run stacked: a candidate joins the stack at its reader, and every frozen
    conv after that runs once over all the candidates that joined before it."""
    import plantops.planted_round as planted_round
    calls = []  # (the frozen conv's [out, in] channels, batch) where candidates' values run

    def counting(x, weight, *args, **kwargs):
        if x.requires_grad and kwargs.get("out_weight") is None \
                and kwargs.get("x_planted") is None:
            calls.append((tuple(weight.shape[:2]), x.shape[0]))
        return conv2d(x, weight, *args, **kwargs)

    conv2d = planted_round.planted_conv2d
    monkeypatch.setattr(planted_round, "planted_conv2d", counting)
    parent = models.PlantNet(WIDTHS)
    batch = 3
    PlantedRound(parent, candidates_of(parent, range(5)))(torch.randn(batch, 3, 32, 32))
    channels = [(w, c) for w, c in zip(WIDTHS, [3] + WIDTHS)]
    assert sorted(calls) == sorted((channels[j], (j - 1) * batch) for j in range(2, 5))


def test_round_rejects_a_network_that_is_not_a_candidate():
    parent = models.PlantNet(WIDTHS)
    candidates = candidates_of(parent, [2])
    with pytest.raises(ValueError, match="candidate for layer 1"):
        PlantedRound(parent, {1: candidates[2]})
    other = models.PlantNet([4] * 5)
    with pytest.raises(ValueError, match="candidate for layer 2"):
        PlantedRound(other, candidates)


def test_training_together_equals_alone_and_the_previous_round_trainer():
    torch.manual_seed(0)
    parent = models.PlantNet(WIDTHS)
    teacher = models.student(6).eval()
    data, val = tiny_data(40), tiny_data(20, seed=1)
    schedule = engine.Schedule(2, 0.05, batch_size=16)
    views, val_views = ViewSchedule(data, 16, 2, seed=7), ViewSchedule(val, 8)
    table, val_table = engine.teacher_logits(teacher, views), engine.teacher_logits(teacher, val_views)
    candidates = candidates_of(parent, range(6), init="preserve")
    alone, previous = copy.deepcopy(candidates), copy.deepcopy(candidates)

    def fit(group):
        round_op = PlantedRound(parent, group)
        engine.fit(round_op, round_op.parameters(), views, schedule, "kd", count=len(group),
                   teacher=table, temperature=2.0)
        return engine.evaluate(round_op, val_views, len(group), val_table, temperature=2.0)

    together = fit(candidates)
    one_by_one = [fit({layer: net})[0] for layer, net in alone.items()]
    old = Round(parent, previous)
    train_round(old, data, schedule, teacher, 2.0, 0.0, 7, TeacherCache(teacher))
    old_metrics = evaluate_round(old, val, teacher, 2.0, TeacherCache(teacher))
    for layer in candidates:
        for mine, single, theirs in zip(planting.planted_parameters(candidates[layer]),
                                        planting.planted_parameters(alone[layer]),
                                        planting.planted_parameters(previous[layer])):
            torch.testing.assert_close(mine, single, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    for mine, single, theirs in zip(together, one_by_one, old_metrics):
        assert mine == pytest.approx(single, rel=1e-4, abs=1e-6)
        assert mine == pytest.approx(theirs, rel=1e-4, abs=1e-6)
