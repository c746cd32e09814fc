"""The paper's networks: parameter counts (docs/method.md, "The networks") and planting on
them."""

import pytest
import torch

from plantops.models import PlantNet, student
from plantops.planting import count_params, merge, plant, planted_parameters

COUNTS = [  # (arch, classes, width, params) from docs/method.md
    ("cifar", 10, 8, 20_362), ("cifar", 10, 16, 43_914), ("cifar", 10, 32, 104_842),
    ("cifar", 10, 64, 281_994), ("cifar", 10, 128, 857_482),
    ("cifar", 100, 16, 55_524), ("cifar", 100, 128, 869_092),
    ("stl", 10, 8, 40_842), ("stl", 10, 64, 445_834), ("stl", 10, 128, 1_185_162),
]


@pytest.mark.parametrize("arch, classes, width, params", COUNTS)
def test_parameter_counts_match_the_paper(arch, classes, width, params):
    assert count_params(student(width, arch, classes)) == params


@pytest.mark.parametrize("layer, cost", [(0, 100), (1, 145), (2, 145), (3, 145), (4, 2121)])
def test_cost_of_one_planted_channel_from_student8(layer, cost):
    net = student(8)
    assert count_params(plant(net, layer, 1)) - count_params(net) == cost


@pytest.mark.parametrize("layer", range(6))
def test_preserving_plant_keeps_the_function_and_trains_only_new_blocks(layer):
    net = student(8).eval()
    x = torch.randn(2, 3, 32, 32)
    grown = plant(net, layer, 3).eval()
    torch.testing.assert_close(grown(x), net(x))
    trainable = planted_parameters(grown)
    assert trainable and all(p.requires_grad for p in trainable)
    before = {k: v.clone() for k, v in merge(grown).state_dict().items()}
    opt = torch.optim.SGD(trainable, lr=0.5)
    grown(x).logsumexp(1).sum().backward()
    opt.step()
    after = merge(grown).state_dict()
    widths = grown.widths
    assert widths[layer] == 11 if layer < 5 else grown.fc_width == 131
    # every parameter of the parent is bit-identical; only planted entries moved
    parent = net.state_dict()
    for name, value in parent.items():
        region = after[name][tuple(slice(0, s) for s in value.shape)]
        assert torch.equal(region, value), name
    assert any(not torch.equal(after[k], before[k]) for k in after)


def test_stl_network_runs_on_96x96():
    net = student(8, "stl")
    assert net(torch.randn(1, 3, 96, 96)).shape == (1, 10)


def test_bad_widths():
    with pytest.raises(ValueError, match="five positive conv widths"):
        PlantNet([8, 8, 8])
    with pytest.raises(ValueError, match="unknown architecture"):
        PlantNet([8] * 5, arch="imagenet")


def test_export_to_plain_sequential():
    net = plant(student(8), 2, 2)
    seq = net.to_sequential()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(seq(x), net(x))
    assert all(type(m).__module__.startswith("torch.nn") for m in seq.modules())
