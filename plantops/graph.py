"""A plantable network of any shape: a user's CNN that ``torch.fx`` traces, planted by width
groups.

A ``Chain`` grows one layer at a time; a ``GraphNet`` grows one *width group* at a time
(plantops/width_groups.py: the channels that must grow together, a ResNet stage's residual
width, a MobileNet block's expansion, a branch of a concatenation). It holds the user's own
module, as it is (``net``), or, planted, the ``GrownNetwork`` of ``group_planting.plant_group``
with the width group it grew and by how much. Its planting points are the indices of its
groups that can grow; each is named by the group (``layer2.0.conv1``, ``stem + stages.0
(residual)``). Merged, it is the user's module again, of the grown widths: the same class
and submodule names (``export``), loadable without plantops.

The search treats it as it treats a chain (plantops/planting.py dispatches ``plant``,
``merge``, ``export`` and ``from_scratch`` on it; the round op of its candidates is
plantops/planted_round.py, the same round op as a chain's).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from plantops.group_planting import GrownNetwork, grown_module, plant_group
from plantops.inference import for_inference
from plantops.planted_conv import PlantedConv2d
from plantops.width_groups import WidthGroup, width_groups


class GraphNet(nn.Module):
    """The user's ``module`` (see the module's docstring) for ``[N, *input_shape]`` images;
    ``name`` is what reports call it. ``GraphNet.of`` copies the module and finds its width
    groups (WidthGroupError, in one line, where torch.fx cannot trace it)."""

    reads_nchw = False  # its plain convs run on oneDNN, fastest channels-last on a CPU

    def __init__(self, net: nn.Module, name: str, input_shape: tuple[int, ...],
                 groups: list[WidthGroup] | None = None, planted: tuple[int, int] | None = None):
        super().__init__()
        self.net = net
        self.name = name
        self.input_shape = tuple(input_shape)
        # (group index, channels) planted into the parent, whose groups ``groups`` are.
        self.planted = planted
        # The width groups, and the plain network as plantops.inference runs it once asked
        # (kept in a dict: a module held as an attribute would count as a submodule).
        self._cache = {"groups": groups}

    @classmethod
    def of(cls, module: nn.Module, name: str, input_shape) -> "GraphNet":
        net = cls(copy.deepcopy(module), name, input_shape)
        net.groups  # traced now: a network that cannot be planted is refused here
        return net

    def __getstate__(self):
        # Checkpoints keep the module alone; the groups and the inference copy are rebuilt.
        state = dict(self.__dict__)
        state["_cache"] = {"groups": None}
        return state

    # ------------------------------------------------------------------ structure

    @property
    def groups(self) -> list[WidthGroup]:
        """The width groups of the plain network (of the parent, once planted)."""
        if self._cache.get("groups") is None:
            if isinstance(self.net, GrownNetwork):
                raise AssertionError("a planted GraphNet keeps its parent's groups")
            weight = next(iter(self.net.parameters()), torch.zeros(()))
            example = torch.zeros(2, *self.input_shape, device=weight.device, dtype=weight.dtype)
            self._cache["groups"] = width_groups(self.net, example)
        return self._cache["groups"]

    @property
    def points(self) -> list[int]:
        """The planting points: the groups that can grow."""
        return [i for i, g in enumerate(self.groups) if g.plantable]

    def plantable_points(self, include_linear: bool = False) -> list[int]:
        """The groups a search plants: those made by convolutions, and with
        ``include_linear`` those made by linear layers too."""
        module = self.net.module if self.planted is not None else self.net
        conv = lambda path: isinstance(getattr(m := module.get_submodule(path), "module", m),
                                       (nn.Conv2d, PlantedConv2d))  # (a Reordered's inside)
        return [i for i in self.points
                if include_linear or all(conv(path) for path in self.groups[i].producers)]

    def layer_names(self) -> list[str]:
        return [g.name for g in self.groups]

    @property
    def widths(self) -> list[int]:
        """The widths of the planting points (the planted group's grown)."""
        grown = {} if self.planted is None else {self.planted[0]: self.planted[1]}
        return [self.groups[i].width + grown.get(i, 0) for i in self.points]

    @property
    def fc_width(self):
        return None

    def describe(self) -> str:
        return f"[{','.join(map(str, self.widths))}]"

    def is_planted(self) -> bool:
        return self.planted is not None

    # ------------------------------------------------------------------ planting

    def plant(self, point: int, count: int, init: str = "preserve",
              generator: torch.Generator | None = None) -> "GraphNet":
        """A copy with ``count`` channels planted into group ``point`` (plant_group)."""
        if point not in self.points:
            raise ValueError(f"{self.name}: point must be one of the groups that can grow "
                             f"{self.points}, got {point}")
        parent = self.merged()
        grown = plant_group(parent.net, parent.groups[point], count, init, generator)
        return GraphNet(grown, self.name, self.input_shape, parent.groups, (point, count))

    def merged(self) -> "GraphNet":
        """A plain copy: the planted blocks merged, every parameter trainable."""
        if self.planted is None:  # the same graph: its groups are this network's
            plain = GraphNet(copy.deepcopy(self.net), self.name, self.input_shape,
                             self._cache.get("groups"))
        else:
            plain = GraphNet(grown_module(self.net), self.name, self.input_shape)
        plain.training = self.training  # (its modules' own modes come with them)
        return plain

    # ------------------------------------------------------------------ running

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def train(self, mode: bool = True):
        super().train(mode)  # a GrownNetwork keeps its frozen modules as evaluated
        if mode:
            self._cache.pop("frozen", None)  # its weights are about to change
        return self

    @torch.no_grad()
    def frozen_forward(self, x: Tensor) -> Tensor:
        """The logits of the plain network as it is evaluated, through plantops.inference
        (batch norms folded, convs through the planted kernels' choice); built on first use
        after training."""
        if self.planted is not None:
            return self.net(x)
        if "frozen" not in self._cache:
            self._cache["frozen"] = for_inference(self.net)
        return self._cache["frozen"](x)


__all__ = ["GraphNet"]
