"""The engine (plantops/engine.py) against the search's previous training loop
(benchmarks/baselines/training.py): the same views, the same SGD, the same losses and
metrics, so the same trained networks (rel 1e-4)."""

import copy

import numpy as np
import pytest
import torch

from baselines.training import TeacherCache, evaluate as baseline_evaluate, train as baseline_train
from plantops import engine, models, planting
from plantops.data import DeviceData, ViewSchedule

from helpers import tiny_data


def test_views_are_the_batches_of_device_data():
    """Same order, crops and flips as DeviceData.batches with the same seed; full batches
    and one shorter last batch per epoch."""
    data = tiny_data(37)
    views = ViewSchedule(data, 8, 3, seed=5)
    assert views.steps_per_epoch == 5 and len(views.shapes["full"]) == 12
    generator = torch.Generator().manual_seed(5)
    for epoch in range(3):
        expected = list(data.batches(8, generator, augment=True))
        steps = list(views.epoch_steps(epoch))
        assert len(steps) == len(expected)
        for (shape, pos), (x, y) in zip(steps, expected):
            got_x, got_y = views.batch(shape, torch.tensor([pos]))
            assert torch.equal(got_x, x) and torch.equal(got_y, y)


def test_the_views_of_fewer_epochs_are_the_first_epochs_of_more():
    data = tiny_data(37)
    short, long = ViewSchedule(data, 8, 2, seed=3), ViewSchedule(data, 8, 5, seed=3)
    for shape, steps in short.shapes.items():
        for name in ("index", "dy", "dx", "flip"):
            assert torch.equal(getattr(steps, name),
                               getattr(long.shapes[shape], name)[:len(steps)])


def test_evaluation_views_are_the_data_in_order():
    data = tiny_data(n=11)
    views = ViewSchedule(data, 4)
    xs, ys = zip(*(views.batch(shape, torch.tensor([pos])) for shape, pos in views.epoch_steps(0)))
    assert torch.equal(torch.cat(ys), data.labels)
    assert torch.equal(torch.cat(xs), data.normalize(data.images))


def test_sgd_is_torch_sgd():
    torch.manual_seed(0)
    params = [torch.randn(5, 3, requires_grad=True), torch.randn(4, requires_grad=True)]
    theirs = [p.detach().clone().requires_grad_() for p in params]
    ours = engine.SGD(params, momentum=0.9, weight_decay=5e-4)
    reference = torch.optim.SGD(theirs, lr=0.05, momentum=0.9, weight_decay=5e-4)
    for step in range(4):
        ours.lr.fill_(0.05)
        grads = [torch.randn_like(p) for p in params]
        ours.step(grads)
        for p, g in zip(theirs, grads):
            p.grad = g.clone()
        reference.step()
    for mine, ref in zip(params, theirs):
        torch.testing.assert_close(mine, ref, rtol=1e-6, atol=1e-7)


def test_lr_schedule_is_multistep_lr():
    schedule = engine.Schedule(7, 0.1)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    steps_per_epoch = 3
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, engine.lr_milestones(schedule, steps_per_epoch), schedule.decay)
    for epoch in range(7):
        for _ in range(steps_per_epoch):
            assert opt.param_groups[0]["lr"] == pytest.approx(schedule.lr_at(epoch), rel=1e-12)
            opt.step()
            sched.step()


def test_losses_of_stacked_networks_are_each_networks_own():
    torch.manual_seed(0)
    logits, labels, teacher = torch.randn(3 * 5, 10), torch.randint(0, 10, (5,)), torch.randn(5, 10)
    for loss, alpha in (("ce", 0.0), ("kd", 0.0), ("kd", 0.3)):
        got = engine.losses(logits, labels, teacher, loss, 3, temperature=2.0, alpha=alpha)
        for i in range(3):
            own = logits[5 * i:5 * (i + 1)]
            ce = torch.nn.functional.cross_entropy(own, labels)
            kd = engine.kd_loss(own, teacher, 2.0)
            want = ce if loss == "ce" else (1 - alpha) * kd + alpha * ce
            assert got[i].item() == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize("loss", ["ce", "kd"])
def test_fit_trains_a_network_as_the_previous_loop_did(loss):
    torch.manual_seed(0)
    teacher = models.student(4).eval()
    net = models.student(3)
    theirs = copy.deepcopy(net)
    data = tiny_data(37)
    schedule = engine.Schedule(3, 0.05, batch_size=8)
    views = ViewSchedule(data, 8, 3, seed=7)
    table = engine.teacher_logits(teacher, views) if loss == "kd" else None
    reports = engine.fit(net, list(net.parameters()), views, schedule, loss, teacher=table,
                         temperature=2.0)
    baseline_train(theirs, theirs.parameters(), data, schedule, loss, 7, teacher,
                   temperature=2.0)
    assert [r.epoch for r in reports] == [0, 1, 2] and reports[2].lr == pytest.approx(0.05 * 0.2 ** 2)
    for mine, ref in zip(net.parameters(), theirs.parameters()):
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-5)
    val = tiny_data(n=13, seed=1)
    val_views = ViewSchedule(val, 5)
    got, = engine.evaluate(net, val_views, teacher=engine.teacher_logits(teacher, val_views))
    want = baseline_evaluate(theirs, val, batch_size=5, teacher=teacher)
    assert got == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_teacher_logits_are_the_teachers_outputs_on_each_view():
    torch.manual_seed(0)
    teacher = models.student(4).eval()
    data = tiny_data(37)
    views = ViewSchedule(data, 8, 2, seed=3)
    tables = engine.teacher_logits(teacher, views, images_per_pass=16)
    compact = engine.teacher_logits(teacher, views, torch.float16)
    cache = TeacherCache(teacher)
    for epoch in range(2):
        for shape, pos in views.epoch_steps(epoch):
            x, _ = views.batch(shape, torch.tensor([pos]))
            want = cache.get((shape, pos), x)
            torch.testing.assert_close(tables[shape][pos], want, rtol=1e-5, atol=1e-5)
            assert compact[shape].dtype == torch.float16
            torch.testing.assert_close(compact[shape][pos].float(), want, rtol=2 ** -10, atol=1e-3)
    assert engine.table_nbytes(compact) * 2 == engine.table_nbytes(tables) == 37 * 2 * 10 * 4


def test_fit_refuses_what_it_cannot_train():
    data = tiny_data(37)
    views = ViewSchedule(data, 8, 2, seed=0)
    net = models.student(2)
    with pytest.raises(ValueError, match="nothing to train"):
        engine.fit(net, [], views, engine.Schedule(2, 0.1, batch_size=8), "ce")
    with pytest.raises(ValueError, match="distillation needs the teacher's logits"):
        engine.fit(net, list(net.parameters()), views, engine.Schedule(2, 0.1, batch_size=8), "kd")
    with pytest.raises(ValueError, match="the views are 2 epochs of batch 8, the schedule 3"):
        engine.fit(net, list(net.parameters()), views, engine.Schedule(3, 0.1, batch_size=8), "ce")


def test_cuda_graphs_setting():
    assert engine.use_graphs("auto", torch.device("cpu")) is False
    assert engine.use_graphs("off", torch.device("cuda")) is False
    with pytest.raises(ValueError, match="--cuda-graphs on needs a CUDA device"):
        engine.use_graphs("on", torch.device("cpu"))
    with pytest.raises(ValueError, match="auto, on or off"):
        engine.use_graphs("yes", torch.device("cpu"))


@pytest.mark.gpu
def test_graphed_steps_equal_eager_steps_on_cuda():
    """Every training and evaluation step captured once as a CUDA graph and replayed gives
    what the same steps give eagerly (one round of five candidates, two epochs, a shorter
    last batch)."""
    from plantops.planted_round import PlantedRound
    device = torch.device("cuda")
    rng = np.random.default_rng(0)
    data = DeviceData(rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8),
                      rng.integers(0, 10, 200), device, (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    teacher = models.student(8).to(device).eval()
    parent = models.student(4)
    results = []
    for graphs in (False, True):
        candidates = {layer: planting.plant(parent, layer, 2, "random",
                                          torch.Generator().manual_seed(layer)).to(device)
                      for layer in range(5)}
        round_op = PlantedRound(parent.to(device), candidates)
        views = ViewSchedule(data, 32, 3, seed=1)
        table = engine.teacher_logits(teacher, views)
        reports = engine.fit(round_op, round_op.parameters(), views,
                             engine.Schedule(3, 0.05, batch_size=32), "kd", count=5,
                             teacher=table, graphs=graphs)
        val_views = ViewSchedule(data, 64)
        metrics = engine.evaluate(round_op, val_views, 5, engine.teacher_logits(teacher, val_views),
                                  graphs=graphs)
        results.append(([p.detach().cpu() for p in round_op.parameters()],
                        [r.losses for r in reports], metrics))
    (eager_params, eager_losses, eager_metrics), (graph_params, graph_losses, graph_metrics) = results
    for a, b in zip(eager_params, graph_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert np.allclose(eager_losses, graph_losses, rtol=1e-5)
    for a, b in zip(eager_metrics, graph_metrics):
        assert a == pytest.approx(b, rel=1e-5)
