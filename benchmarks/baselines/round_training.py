"""A planting round's candidates trained together the way the search did it before the round
op (plantops/planted_round.py): kept as its baseline. Plain F.conv2d/F.linear on a merged
parent, each candidate's layers after its planted point run on their own.

A candidate is its parent plus ``p`` planted channels in one layer ``l`` and their weights in
layer ``l + 1``'s input. Its frozen channels compute exactly the parent's values, so for each
batch:

- the parent runs once, without gradients, keeping every layer's input and output;
- a candidate computes only what differs from it: its planted channels of layer ``l`` (from
  the parent's input to ``l``), their term in layer ``l + 1`` (added to the parent's output
  of ``l + 1``), and the layers after ``l + 1``;
- the candidates' losses are summed and one backward runs. Their parameters are disjoint, so
  each gets exactly its own candidate's gradient. Backward stops at layer ``l`` (nothing
  before it needs a gradient), and layer ``l + 1`` passes a gradient to the planted input
  channels only: the frozen ones come from the parent and need none.

One SGD over all the planted parameters is one SGD per candidate (SGD, momentum and weight
decay act on each parameter alone), so the result equals training each candidate on its
own, up to floating-point reordering (tests/test_baseline_round_training.py checks this).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


from plantops import planting
from plantops.chain import Chain
from plantops.planted_conv import PlantedConv2d
from baselines.training import Schedule, TeacherCache, evaluate_outputs, train_outputs


def _planted_term(layer, x, weight, bias=None):
    """``layer``'s operation (conv or linear, its stride and padding) with another weight."""
    if isinstance(layer, PlantedConv2d):
        return F.conv2d(x, weight, bias, layer.stride, layer.padding)
    return F.linear(x, weight, bias)


class Round:
    """A parent and its candidates (``{layer: candidate network}``), computed together."""

    def __init__(self, parent: Chain, candidates: dict[int, Chain],
                 memory_format: torch.memory_format = torch.channels_last):
        # Channels-last: the parent's activations, and the candidates' terms computed from
        # them, run in oneDNN's preferred layout: 1.4-1.6x faster steps for Student[8]-[16]
        # rounds on a 2-core CPU (benchmarks/test_bench_layout.py).
        self.parent = planting.merge(parent).to(memory_format=memory_format)
        for p in self.parent.parameters():
            p.requires_grad_(False)
        self.candidates = dict(candidates)
        planted = lambda module, side: getattr(module, f"planted_{side}", 0)  # 0: a plain layer
        for layer, net in self.candidates.items():
            grown, reader = net.layer(layer), net.layer(layer + 1)
            if (not planted(grown, "out") or planted(grown, "in") or planted(reader, "out")
                    or not planted(reader, "in")):
                raise ValueError(f"candidate for layer {layer} is not its parent plus channels "
                                 "planted into that one layer (build it with plantops.plant)")

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for net in self.candidates.values() for p in planting.planted_parameters(net)]

    def logits(self, x) -> list[torch.Tensor]:
        """Each candidate's logits for ``x``, in the order of ``self.candidates``."""
        with torch.no_grad():
            inputs, outputs = self.parent.activations(x)
        result = []
        for layer, net in self.candidates.items():
            grown, reader = net.layer(layer), net.layer(layer + 1)
            planted = _planted_term(grown, inputs[layer], grown.out_weight, grown.out_bias)
            term = _planted_term(reader, self.parent.activate(layer, planted), reader.in_weight)
            result.append(self.parent.forward_from(layer + 1, outputs[layer + 1] + term))
        return result


def train_round(round_: Round, data, schedule: Schedule, teacher, temperature: float,
                alpha: float, data_seed: int, teacher_cache: TeacherCache | None = None,
                progress: str = "") -> float:
    """Trains every candidate of ``round_`` by distillation; returns seconds taken."""
    return train_outputs(round_.logits, round_.parameters(), data, schedule, "kd", data_seed,
                         teacher, temperature, alpha, progress, data_seed, teacher_cache)


@torch.no_grad()
def evaluate_round(round_: Round, data, teacher, temperature: float,
                   teacher_cache: TeacherCache | None = None) -> list[dict]:
    """``train.evaluate``'s metrics for each candidate, in the order of ``round_.candidates``."""
    return evaluate_outputs(round_.logits, len(round_.candidates), data, teacher=teacher,
                            temperature=temperature, teacher_cache=teacher_cache)
