"""Planting a width group of a residual, depthwise or squeeze-and-excitation network
(plantops/group_planting.py), in float64 at every group: a candidate with the default start
computes its parent's function, only the planted parts train and everything old stays
bit-identical, and the merged module is the user's own class, grown, computing what the
trained candidate computes."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from plantops import width_groups
from plantops.group_planting import grown_module, plant_group

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.mobilenet import student as mobilenet  # noqa: E402
from examples.resnet import resnet  # noqa: E402
from tests.test_width_groups import Branches  # noqa: E402

COUNT = 3


def trained(net):
    """``net`` in float64 with batch norms that hold statistics of their own, in eval mode."""
    torch.manual_seed(0)
    net = net.double().train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(8, 3, 16, 16, dtype=torch.float64))
    return net.eval()


class Residual(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input (or a strided 1x1 projection), ReLU."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                               nn.BatchNorm2d(cout), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout))
        self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1,
                                                                                 stride)

    def forward(self, x):
        return torch.relu(self.b(self.a(x)) + self.skip(x))


class Depthwise(nn.Module):
    """1x1 expansion, depthwise 3x3 (with a bias), 1x1 projection, the input added."""

    def __init__(self, c, hidden):
        super().__init__()
        self.up = nn.Conv2d(c, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.bn = nn.BatchNorm2d(hidden)
        self.down = nn.Conv2d(hidden, c, 1)

    def forward(self, x):
        return x + self.down(torch.nn.functional.silu(self.bn(self.dw(self.up(x)))))


class Gate(nn.Module):
    """A squeeze-and-excitation gate with linear layers."""

    def __init__(self, c, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c, hidden), nn.Linear(hidden, c)

    def forward(self, x):
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
        return x * s.view(x.size(0), x.size(1), 1, 1)


class RandomNet(nn.Module):
    """A stem, then blocks drawn at random, then a pool and a classifier (or a flatten of a
    2x2 map and one)."""

    def __init__(self, seed):
        super().__init__()
        draw = torch.Generator().manual_seed(seed)
        pick = lambda n: int(torch.randint(n, (), generator=draw))
        c = 3 + pick(4)
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        blocks = []
        for _ in range(3 + pick(2)):
            kind = pick(3)
            if kind == 0:
                stride = 1 + pick(2)
                cout = c if stride == 1 and pick(2) else c + 1 + pick(3)
                blocks.append(Residual(c, cout, stride))
                c = cout
            elif kind == 1:
                blocks.append(Depthwise(c, c + 2 + pick(4)))
            else:
                blocks.append(Gate(c, 2 + pick(3)))
        self.blocks = nn.Sequential(*blocks)
        self.flatten = bool(pick(2))
        self.pool = nn.AdaptiveAvgPool2d(2 if self.flatten else 1)
        self.fc = nn.Linear(c * (4 if self.flatten else 1), 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(torch.relu(self.stem(x)))), 1))


class Inception(nn.Module):
    """Branches concatenated along the channels (one of them flattened after the join), a
    batch norm over the concatenation, and a classifier after a 2x2 pool."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.a = nn.Conv2d(4, 3, 1)
        self.b = nn.Sequential(nn.Conv2d(4, 5, 3, padding=1), nn.BatchNorm2d(5))
        self.c = nn.Conv2d(4, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(10)
        self.mix = nn.Conv2d(10, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(6 * 4 + 2 * 4, 5)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        c = self.c(h)
        joined = torch.relu(self.bn(torch.cat([self.a(h), self.b(h), c], 1)))
        side = torch.flatten(self.pool(c), 1)
        return self.fc(torch.cat([torch.flatten(self.pool(self.mix(joined)), 1), side], 1))


class DepthwiseAfterJoin(nn.Module):
    """Two branches concatenated, then a depthwise conv and a batch norm over the join."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.dw = nn.Conv2d(7, 7, 3, padding=1, groups=7)
        self.bn = nn.BatchNorm2d(7)
        self.fc = nn.Linear(7, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.dw(torch.cat([self.a(x), self.b(x)], 1))))
        return self.fc(h.mean((2, 3)))


NETWORKS = {"resnet": lambda: resnet(4, 10, 16), "mobilenet": lambda: mobilenet(4, 10),
            "inception": Inception, "depthwise-after-join": DepthwiseAfterJoin,
            "mobilenet-se": lambda: mobilenet(4, 10, se=True),
            **{f"random-{seed}": (lambda seed=seed: RandomNet(seed)) for seed in range(4)}}
CASES = [(name, g.name) for name, make in NETWORKS.items()
         for g in width_groups(make(), torch.rand(2, 3, 16, 16)) if g.plantable]


@pytest.mark.parametrize("network, group", CASES)
def test_a_planted_group_trains_only_its_new_channels_and_merges_into_the_users_class(
        network, group):
    net = trained(NETWORKS[network]())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(6, 3, 16, 16, dtype=torch.float64)
    groups = {g.name: g for g in width_groups(net, x)}
    with torch.no_grad():
        parent = net(x)
    candidate = plant_group(net, groups[group], COUNT)
    with torch.no_grad():  # the default start: the parent's function
        torch.testing.assert_close(candidate.eval()(x), parent, rtol=1e-12, atol=1e-12)
    trainable = [n for n, p in candidate.named_parameters() if p.requires_grad]
    assert trainable and all(n.rsplit(".", 1)[-1] in ("in_weight", "out_weight", "out_bias")
                             or ".planted." in n or n.rsplit(".", 1)[-1] in ("weight", "bias")
                             and "Depthwise" in type(candidate.get_submodule(
                                 n.rsplit(".", 1)[0])).__name__ for n in trainable)
    planted = [p for p in candidate.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in planted]
    optimizer = torch.optim.SGD(planted, lr=0.5)
    candidate.train()
    for _ in range(2):
        optimizer.zero_grad()
        candidate(x).logsumexp(1).mean().backward()
        optimizer.step()
    candidate.eval()
    grown = grown_module(candidate)
    assert type(grown) is type(net) and all(torch.equal(v, net.state_dict()[k])
                                            for k, v in before.items())  # the user's: as it was
    assert not any(type(m).__module__.startswith("plantops") for m in grown.modules())
    state = grown.state_dict()
    assert state.keys() == before.keys()
    widened = 0
    for key, old in before.items():
        new = state[key]
        if new.shape != old.shape:
            widened += 1
        # Everything old, bit for bit: weights, biases, running statistics (after a
        # concatenation the new channels lie mid-way: the old ones where the input has them).
        path, _, name = key.rpartition(".")
        order = groups[group].input_order(path, COUNT)
        where = [torch.arange(d) for d in old.shape]
        dim = 0 if path in groups[group].channelwise else 1
        if order is not None and old.dim() > dim:
            where[dim] = torch.tensor(order[:old.shape[dim]])
        assert torch.equal(new[torch.meshgrid(*where, indexing="ij")] if where else new, old), key
    assert widened
    with torch.no_grad():
        out = grown.eval()(x)
        torch.testing.assert_close(out, candidate(x), rtol=1e-12, atol=1e-12)
    assert any(not torch.equal(p, p0) for p, p0 in zip(planted, start))  # it trained
    group_members = groups[group]
    for path in group_members.producers:
        module = grown.get_submodule(path)
        old = net.get_submodule(path)
        width = getattr(module, "out_channels", getattr(module, "out_features", None))
        assert width == getattr(old, "out_channels", getattr(old, "out_features", 0)) + COUNT


def test_a_group_that_cannot_grow_is_refused():
    net = Branches().double().eval()
    groups = {g.name: g for g in width_groups(net, torch.rand(2, 3, 16, 16, dtype=torch.float64))}
    with pytest.raises(ValueError, match=r"^fc cannot grow: it holds the network's outputs$"):
        plant_group(net, groups["fc"], 2)


def test_after_a_concatenation_the_new_channels_are_read_where_the_branch_lies():
    net = trained(Inception())
    groups = {g.name: g for g in width_groups(net, torch.rand(2, 3, 16, 16, dtype=torch.float64))}
    assert groups["b.0"].runs["mix"] == [(False, 3, 1), (True, 5, 1), (False, 2, 1)]
    assert groups["b.0"].channelwise == ["b.1", "bn"]
    assert groups["c"].runs["fc"] == [(False, 6, 4), (True, 2, 4)]  # flattened: last already
    assert groups["c"].input_order("fc", 1) is None
    assert groups["b.0"].input_order("mix", 1) == [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 8]


def test_a_grown_module_saved_loads_without_plantops(tmp_path):
    import subprocess
    net = trained(resnet(4, 10, 16))
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    group = width_groups(net, x)[0]  # the stem's and the first stage's residual width
    grown = grown_module(plant_group(net, group, COUNT)).eval()
    torch.save(grown, tmp_path / "final.pt")
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        want = grown(x)
    torch.save(want, tmp_path / "want.pt")
    code = ("import sys, torch; sys.modules['plantops'] = None  # importing it would fail\n"
            f"net = torch.load('{tmp_path}/final.pt', weights_only=False)\n"
            f"x, want = torch.load('{tmp_path}/x.pt'), torch.load('{tmp_path}/want.pt')\n"
            "assert torch.equal(net(x), want) and net.stem[0].out_channels == 7\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
