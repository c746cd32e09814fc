"""One epoch of a round's candidates, both ways the round benchmarks time it
(test_bench_chain_round.py, test_bench_graph_round.py): the straightforward round (each
candidate a full-size network with gradient-masking hooks, trained alone, one after
another) and plantops' round op on the engine. Both distil from the same cached teacher
logits, with SGD and momentum. What each side computes in a step is counted too, in FLOPs as
torch.utils.flop_counter counts them, so that a speedup reads against the work ratio."""

import copy

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from plantops import engine
from plantops.data import DeviceData
from plantops.planted_round import PlantedRound


def random_images(n: int, device) -> DeviceData:
    """``n`` random 32x32 images of 10 classes, as [0, 1] floats (mean 0, std 1)."""
    rng = np.random.default_rng(0)
    return DeviceData(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                      rng.integers(0, 10, n), device, (0.0,) * 3, (1.0,) * 3)


def straightforward_epoch(nets, views, table, steps: int, lr: float, device,
                          memory_format=torch.contiguous_format):
    """``nets``: (network, its trainable parameters) of each candidate."""
    opts = [torch.optim.SGD(params, lr=lr, momentum=0.9) for _, params in nets]

    def epoch():
        for (net, _), opt in zip(nets, opts):
            for step in range(steps):
                x, _ = views.batch("full", torch.tensor([step], device=device))
                x = x.contiguous(memory_format=memory_format)
                loss = engine.kd_loss(net(x), table["full"][step], 1.0)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return epoch


def round_op_epoch(round_op, views, table, lr: float, batch: int):
    """The round op trained through the engine's static step (one warm-up epoch run)."""
    schedule = engine.Schedule(1, lr, batch_size=batch)
    training = engine.Training(round_op, round_op.parameters(), views, schedule, "kd",
                               count=len(round_op), teacher=table, buffers=round_op.buffers())
    training.epoch(0)
    return lambda: training.epoch(0)


def _step_flops(network, x) -> int:
    """The FLOPs of a forward and backward of ``network`` on ``x`` (a loss of its logits)."""
    with FlopCounterMode(display=False) as counter:
        network(x).square().mean().backward()
    return counter.get_total_flops()


def round_op_flops(parent, candidates: dict, x) -> int:
    """The work of one step of the round op on ``x``: its PyTorch composite (the same
    convolutions its kernels compute, as aten ops the counter sees), on copies of the
    candidates (the count's gradients land on them)."""
    round_op = PlantedRound(parent, copy.deepcopy(candidates), backend="torch").train()
    return _step_flops(round_op, x)


def straightforward_flops(nets, x) -> int:
    """The work of one step of every candidate of the straightforward round on ``x``."""
    return sum(_step_flops(copy.deepcopy(net), x) for net, _ in nets)
