"""The baseline round trainer (benchmarks/baselines/round_training.py, the search's before the
round op): training a round's candidates together gives what training each alone gives."""

import copy

import pytest
import torch

from baselines.round_training import Round, evaluate_round, train_round
from baselines.training import Schedule, TeacherCache, evaluate, train
from plantops import models, planting

from helpers import tiny_data

LAYERS = list(range(6))  # conv1-conv5 and fc1


def parent_and_candidates(dtype=torch.float64, init="random"):
    parent = models.PlantNet([3, 5, 4, 6, 2]).to(dtype)
    candidates = {layer: planting.plant(parent, layer, 2, init, torch.Generator().manual_seed(layer))
                  for layer in LAYERS}
    return parent, candidates


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format], ids=str)
def test_round_logits_equal_each_candidates_own_forward(layout):
    parent, candidates = parent_and_candidates()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    round_ = Round(parent, candidates, layout)
    assert round_.parent.convs[1].weight.is_contiguous(memory_format=layout)
    for logits, candidate in zip(round_.logits(x), candidates.values()):
        torch.testing.assert_close(logits, candidate(x), rtol=1e-10, atol=1e-10)


def test_gradients_reach_only_planted_parameters():
    parent, candidates = parent_and_candidates()
    round_ = Round(parent, candidates)
    sum(l.square().sum() for l in round_.logits(torch.randn(2, 3, 32, 32, dtype=torch.float64))).backward()
    assert all(p.grad is not None for p in round_.parameters())
    assert all(p.grad is None for p in round_.parent.parameters())


def test_training_together_equals_training_alone():
    parent, candidates = parent_and_candidates(torch.float32, init="preserve")
    teacher = models.student(6)
    data, val = tiny_data(40), tiny_data(20, seed=1)
    schedule = Schedule(2, 0.05, batch_size=16)
    alone = copy.deepcopy(candidates)
    expected = []
    for layer, net in alone.items():
        train(net, planting.planted_parameters(net), data, schedule, "kd", layer, teacher,
              data_seed=7)
        expected.append(evaluate(net, val, teacher=teacher))
    round_ = Round(parent, candidates)
    train_round(round_, data, schedule, teacher, 1.0, 0.0, 7, TeacherCache(teacher))
    got = evaluate_round(round_, val, teacher, 1.0, TeacherCache(teacher))
    for layer in LAYERS:
        for mine, theirs in zip(planting.planted_parameters(candidates[layer]),
                                planting.planted_parameters(alone[layer])):
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    for mine, theirs in zip(got, expected):
        assert mine == pytest.approx(theirs, rel=1e-4, abs=1e-6)


def test_round_rejects_a_network_that_is_not_a_candidate():
    parent, candidates = parent_and_candidates()
    with pytest.raises(ValueError, match="candidate for layer 1"):
        Round(parent, {1: candidates[2]})


def test_teacher_cache_in_a_compact_dtype():
    torch.manual_seed(0)
    teacher = models.student(4).eval()
    x = torch.randn(5, 3, 32, 32)
    exact, compact = TeacherCache(teacher), TeacherCache(teacher, torch.float16)
    want, got = exact.get(0, x), compact.get(0, x)
    assert compact.logits[0].dtype == torch.float16 and got.dtype == torch.float32
    assert compact.nbytes * 2 == exact.nbytes == 5 * 10 * 4
    torch.testing.assert_close(got, want, rtol=2 ** -10, atol=1e-4)
    assert torch.equal(compact.get(0, x), got) and compact.hits == 1
    with pytest.raises(ValueError, match="float32, float16 or bfloat16, got torch.float64"):
        TeacherCache(teacher, torch.float64)
