"""Width groups of any CNN torch.fx traces (plantops/width_groups.py): the channels that must
grow together in residual, depthwise, squeeze-and-excitation and concatenating networks, a
chain as the simplest case, and what cannot grow saying why."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from plantops.chain import Chain
from plantops.width_groups import WidthGroupError, width_groups

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.mobilenet import student as mobilenet  # noqa: E402
from examples.resnet import resnet  # noqa: E402
from examples.vgg_bn import vgg_bn  # noqa: E402

IMAGES = torch.rand(2, 3, 32, 32)


def by_name(module, x=IMAGES):
    return {g.name: g for g in width_groups(module, x)}


@pytest.mark.parametrize("make", [lambda: vgg_bn(8), lambda: nn.Sequential(
    nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Conv2d(5, 7, 3, stride=2), nn.Flatten(),
    nn.Linear(7 * 14 * 14, 9), nn.Tanh(), nn.Linear(9, 4))])
def test_a_chain_has_one_group_per_layer_but_the_classifier_in_its_order(make):
    net = make()
    chain = Chain.of(net)
    groups = width_groups(net, IMAGES)
    layers = [chain.paths[chain.layer_positions[j]] for j in range(chain.num_layers)]
    assert [g.producers for g in groups] == [[path] for path in layers]
    assert [g.width for g in groups[:-1]] == chain.point_widths
    assert [g.readers for g in groups[:-1]] == [[path] for path in layers[1:]]
    assert all(g.plantable for g in groups[:-1])
    assert groups[-1].why_not == "it holds the network's outputs"


def test_a_resnets_groups_are_its_inner_widths_and_its_residual_widths():
    groups = width_groups(resnet(8, 10, 32), IMAGES)
    assert [(g.name, g.width, g.plantable) for g in groups] == [
        ("stem + stages.0 (residual)", 8, True), ("stages.0.conv1", 8, True),
        ("stages.1.conv1", 16, True), ("stages.1 (residual)", 16, True),
        ("stages.2.conv1", 32, True), ("stages.2 (residual)", 32, True),
        ("head.2", 10, False)]
    stage1, inner, _, stage2 = groups[:4]
    # The stem and the block's last conv make the same channels; the identity shortcut
    # carries them to the next block, whose conv and projection shortcut read them.
    assert stage1.producers == ["stem.0", "stages.0.conv2"]
    assert stage1.channelwise == ["stem.1", "stages.0.bn2"]
    assert stage1.readers == ["stages.0.conv1", "stages.1.conv1", "stages.1.shortcut.0"]
    assert (inner.producers, inner.channelwise, inner.readers) == (
        ["stages.0.conv1"], ["stages.0.bn1"], ["stages.0.conv2"])
    assert stage2.producers == ["stages.1.conv2", "stages.1.shortcut.0"]
    assert stage2.channelwise == ["stages.1.bn2", "stages.1.shortcut.1"]
    assert groups[5].readers == ["head.2"]  # through the global pool and flatten


@pytest.mark.parametrize("se", [False, True])
def test_a_mobilenets_depthwise_convs_grow_with_their_expansion(se):
    groups = by_name(mobilenet(8, 10, se=se))
    expansion = groups["blocks.1.expand.0"]
    assert expansion.width == 32
    assert expansion.channelwise == ["blocks.1.expand.1", "blocks.1.depthwise.0",
                                     "blocks.1.depthwise.1"]
    assert expansion.readers == (["blocks.1.se.fc1", "blocks.1.project.0"] if se
                                 else ["blocks.1.project.0"])
    # A squeeze-and-excitation gate multiplies the expansion's channels: its last conv
    # makes them too.
    assert expansion.producers == (["blocks.1.expand.0", "blocks.1.se.fc2"] if se
                                   else ["blocks.1.expand.0"])
    assert ("blocks.1.se.fc1" in groups) == se
    residual = groups["stem + blocks.0 + blocks.1 (residual)"]
    assert residual.producers == ["stem.0", "blocks.0.project.0", "blocks.1.project.0"]
    assert groups["blocks.2 + blocks.3 (residual)"].readers == ["blocks.3.expand.0", "head.0"]
    assert all(g.plantable for name, g in groups.items() if name != "head.5")


class Branches(nn.Module):
    """Two branches concatenated along the channels, and a conv reading both."""

    def __init__(self):
        super().__init__()
        self.left = nn.Conv2d(3, 4, 3, padding=1)
        self.right = nn.Sequential(nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6), nn.ReLU())
        self.mix = nn.Conv2d(10, 5, 3)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        h = torch.cat([torch.relu(self.left(x)), self.right(x)], dim=1)
        return self.fc(self.mix(h).mean((2, 3)))


def test_each_branch_of_a_concatenation_is_a_group_of_its_own():
    groups = by_name(Branches())
    assert (groups["left"].width, groups["left"].readers) == (4, ["mix"])
    assert (groups["right.0"].width, groups["right.0"].channelwise) == (6, ["right.1"])
    assert groups["right.0"].readers == ["mix"] and groups["mix"].readers == ["fc"]
    assert all(groups[name].plantable for name in ("left", "right.0", "mix"))


class Unplantable(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.next = nn.Conv2d(8, 8, 3, padding=2 if kind == "dilated" else 1,
                              groups=2 if kind == "grouped" else 1,
                              dilation=2 if kind == "dilated" else 1,
                              padding_mode="reflect" if kind == "reflect" else "zeros")
        self.scale = nn.Parameter(torch.ones(1, 8, 1, 1))
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        h = self.conv(x)
        if self.kind == "view":
            h = h.view(x.size(0), 8, -1).view(x.size(0), 8, 32, 32)
        elif self.kind == "unknown":
            h = torch.flip(h, [1])
        elif self.kind == "buffer":
            h = h * self.scale
        h = self.next(h)
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("kind, why", [
    ("grouped", "next is a grouped conv (2 groups)"),
    ("dilated", "next is a dilated conv"),
    ("reflect", "next pads with 'reflect'"),
    ("view", "view (view) writes the size 8 as a number"),
    ("unknown", "flip (flip) is an operation the analysis does not know"),
    ("buffer", "mul (mul) combines it with scale, a per-channel tensor the network holds")])
def test_what_cannot_grow_says_why(kind, why):
    groups = by_name(Unplantable(kind))
    assert groups["conv"].why_not == why
    assert groups["next"].plantable == (kind not in ("grouped", "dilated", "reflect"))


def test_a_residual_add_of_the_input_ties_the_group_to_the_images():
    class AddsInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc((x + self.conv(x)).mean((2, 3)))

    assert by_name(AddsInput())["conv"].why_not == "it holds the input's channels"


def test_a_module_fx_cannot_trace_is_refused_in_one_line():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else -self.conv(x)

    with pytest.raises(WidthGroupError, match=r"^torch.fx cannot trace DataDependent \(") as err:
        width_groups(DataDependent(), IMAGES)
    assert "\n" not in str(err.value)


def test_the_analysis_leaves_the_network_as_it_was():
    net = resnet(8, 10, 32).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    width_groups(net, IMAGES)
    assert all(m.training for m in net.modules())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_an_example_the_network_cannot_take_is_refused_in_one_line(capfd):
    with pytest.raises(WidthGroupError, match=r"^Sequential fails on an input of shape "
                                              r"\[2, 3, 32, 32\] \(RuntimeError: mat1"):
        width_groups(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(5, 2)), IMAGES)
    assert "Traceback" not in capfd.readouterr().err
