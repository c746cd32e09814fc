"""The plain networks' own work on a CPU, where the issue of the teacher's cost lives: the
teacher's inference (its logits of every view, every evaluation) and a plain training step
(the teacher, the initial network and the --table students), plantops against oneDNN (torch's
own layers, NCHW and channels-last), side by side in one run.

    pytest benchmarks/test_bench_teacher.py --benchmark-only

- inference: Teacher[64] and Teacher[128] (every conv 64 or 128 wide), batch 128 and 1024,
  without gradients. plantops: ``PlantNet.frozen_forward``, the search's path (the planted
  kernels where their auto rule takes them, a ReLU + 2x2 max pool fused into the conv before
  it); oneDNN: the same network exported to nn.Sequential.
- training: one SGD step (cross-entropy, forward and backward, momentum) of Student[k],
  k = 8, 64, 128 (the initial network, the quick preset's teacher, the paper's), at batch
  128. plantops: the network as the search trains it (``PlantNet``, a chain: every conv
  through ``trainable_conv2d``, the planted kernels with the whole weight planted where their
  rule takes them, each ReLU + 2x2 max pool through ``relu_max_pool2d``); oneDNN: the same
  network exported to nn.Sequential.

- a training epoch of the same networks: the engine (the search's path) against what a user
  writes (``DeviceData.batches`` with its crops and flips, torch's layers,
  ``torch.optim.SGD``), in either layout: the step's speed must reach the epoch.
- a teacher of the user's: examples/resnet.py at 64x64 through ``plantops.inference`` against
  the module as it is; and the search's whole teacher-logits phase with it (the views'
  making on plantops' clock only).

plantops' rows name the backends its convolutions took (``backend="auto"``: measured on this
machine unless PLANTOPS_AUTOTUNE=0). Both sides compute the same function (checked here, to
float rounding), on as many threads. Under --benchmark-disable (CI's smoke run) the shapes
shrink to width 8 and batch 8.
"""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from backend_choices import chosen_backends
from plantops import models
from plantops.inference import for_inference

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.resnet import resnet  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
LAYOUTS = {"oneDNN NCHW": torch.contiguous_format, "oneDNN channels_last": torch.channels_last}


def smoke(request) -> bool:
    return bool(request.config.getoption("benchmark_disable"))


def sgd_step(model, x, y, opt):
    """One training step as a user writes it."""
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def network(width: int):
    torch.manual_seed(0)
    return models.student(width).to(DEVICE)


@pytest.mark.parametrize("impl", ["plantops", *LAYOUTS])
@pytest.mark.parametrize("batch", [128, 1024])
@pytest.mark.parametrize("width", [64, 128])
def test_teacher_inference(benchmark, record, request, width, batch, impl):
    if smoke(request):
        width, batch = 8, 8
    net = network(width).eval()
    x = torch.randn(batch, 3, 32, 32, device=DEVICE)
    if impl == "plantops":
        run = lambda: net.frozen_forward(x)
    else:
        seq = net.to_sequential().to(memory_format=LAYOUTS[impl]).eval()
        xin = x.contiguous(memory_format=LAYOUTS[impl])

        @torch.no_grad()
        def run():
            return seq(xin)
    with torch.no_grad():
        torch.testing.assert_close(run(), net.to_sequential()(x), rtol=1e-4, atol=1e-4)
    if impl == "plantops":
        impl = f"plantops ({chosen_backends(run)})"
    benchmark.group = f"Teacher[{width}] inference, batch {batch}"
    benchmark.pedantic(run, warmup_rounds=1, rounds=5 if batch >= 1024 else 15)
    record("teacher inference", f"T[{width}] N{batch}", impl, 0, per=batch)


@pytest.mark.parametrize("impl", ["plantops", *LAYOUTS])
def test_user_teacher_inference(benchmark, record, request, impl):
    """A teacher of the user's: examples/resnet.py (width 32: residual blocks, batch norm,
    stride-2 and 1x1 shortcut convolutions) at 64x64, as the README's example trains it, on
    1,024 images. plantops: ``for_inference`` (batch norms folded, every conv through the
    planted kernels' choice, residual adds and ReLUs folded into the convs, run in chunks
    that stay in cache) given the 1,024 at once, as the search's teacher-logits phase passes
    them; oneDNN: the module as it is, in either layout, in batches of 128, as a user
    evaluates it (at 1,024 at once it is slower)."""
    size, batch = (32, 8) if smoke(request) else (64, 1024)
    torch.manual_seed(0)
    net = resnet(8 if smoke(request) else 32, 10, size).train()
    with torch.no_grad():  # batch norms with statistics of their own
        net(torch.rand(64, 3, size, size))
    net = net.eval().to(DEVICE)
    x = torch.rand(batch, 3, size, size, device=DEVICE)
    if impl == "plantops":
        fast = for_inference(net)
        run = lambda: fast(x)
    else:
        module = resnet(8 if smoke(request) else 32, 10, size).to(DEVICE)
        module.load_state_dict(net.state_dict())
        module = module.eval().to(memory_format=LAYOUTS[impl])
        xin = x.contiguous(memory_format=LAYOUTS[impl])

        @torch.no_grad()
        def run():
            return torch.cat([module(part) for part in xin.split(128)])
    with torch.no_grad():
        torch.testing.assert_close(run(), net(x), rtol=1e-4, atol=1e-4)
    if impl == "plantops":
        impl = f"plantops ({chosen_backends(run)})"
    benchmark.group = f"user's teacher (ResNet) inference, {size}x{size}, batch {batch}"
    benchmark.pedantic(run, warmup_rounds=1, rounds=5)
    record("user's teacher inference", f"ResNet {size}px, {batch} img", impl, 0, per=batch)


@pytest.mark.parametrize("impl", ["plantops", *LAYOUTS])
def test_user_teacher_logits_phase(benchmark, record, request, impl):
    """The search's teacher-logits phase with a teacher of the user's: examples/resnet.py
    (width 32) at 64x64, the logits of 4,096 training views (2 epochs of 2,048 images,
    random crops and flips). plantops: ``engine.teacher_logits`` on the teacher as the search
    readies it (``networks.ready_teacher``: through ``plantops.inference``, fed the search's
    normalised images), its clock covering the views' making; oneDNN: the module as it is,
    in either layout, in batches of 128, on the same views made before its clock starts, as
    [0, 1] images (what it takes): the module's time alone."""
    import types

    import numpy as np
    from plantops import engine
    from plantops.data import DeviceData, ViewSchedule
    from plantops.search.networks import InputConvention, ready_teacher
    size, images, width = (32, 64, 8) if smoke(request) else (64, 2048, 32)
    rng = np.random.default_rng(0)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)  # the search normalises by the data's
    data = DeviceData(rng.integers(0, 256, (images, size, size, 3), dtype=np.uint8),
                      rng.integers(0, 10, images), DEVICE, mean, std)
    views = ViewSchedule(data, 128 if images >= 128 else 8, 2, seed=0)
    torch.manual_seed(0)
    net = resnet(width, 10, size).train()
    with torch.no_grad():  # batch norms with statistics of their own
        net(torch.rand(64, 3, size, size))
    net = net.eval().to(DEVICE)
    searched = types.SimpleNamespace(inputs=InputConvention(mean, std), val=data, classes=10)
    teacher = ready_teacher(net, "resnet", searched, lambda m: m.to(DEVICE))
    steps = views.shapes["full"]
    if impl == "plantops":
        run = lambda: engine.teacher_logits(teacher, views)["full"]
    else:
        module = resnet(width, 10, size).to(DEVICE)
        module.load_state_dict(net.state_dict())
        module = module.eval().to(memory_format=LAYOUTS[impl])
        unit = torch.cat([views.batch("full", torch.tensor([i]))[0] for i in range(len(steps))])
        unit = (unit * data.std + data.mean).contiguous(memory_format=LAYOUTS[impl])

        @torch.no_grad()
        def run():
            return torch.cat([module(part) for part in unit.split(steps.index.shape[1])])
    with torch.no_grad():
        first = views.batch("full", torch.tensor([0]))[0]
        torch.testing.assert_close(run().flatten(0, -2)[:len(first)],
                                   net(first * data.std + data.mean), rtol=1e-4, atol=1e-4)
    if impl == "plantops":
        impl = f"plantops ({chosen_backends(run)})"
    count = steps.index.numel()
    benchmark.group = f"user's teacher (ResNet) logits phase, {size}x{size}, {count} views"
    benchmark.pedantic(run, warmup_rounds=1, rounds=3)
    record("user's teacher logits phase", f"ResNet {size}px, {count} views", impl, 0, per=count)


@pytest.mark.parametrize("impl", ["plantops", *LAYOUTS])
@pytest.mark.parametrize("width", [8, 64, 128])
def test_plain_training_step(benchmark, record, request, width, impl):
    width, batch = (8, 8) if smoke(request) else (width, 128)
    net = network(width).train()
    layout = LAYOUTS.get(impl, torch.contiguous_format)
    seq = net.to_sequential().to(memory_format=layout).train()
    x = torch.randn(batch, 3, 32, 32, device=DEVICE).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (batch,), device=DEVICE)
    model = net if impl == "plantops" else seq
    forward = lambda: model(x)
    with torch.no_grad():
        torch.testing.assert_close(forward(), seq(x), rtol=1e-4, atol=1e-4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if impl == "plantops":
        impl = f"plantops ({chosen_backends(lambda: F.cross_entropy(forward(), y).backward())})"

    def step():
        sgd_step(model, x, y, opt)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
    benchmark.group = f"Student[{width}] training step, batch {batch}"
    benchmark.pedantic(step, warmup_rounds=2, rounds=10)
    record("plain training step", f"S[{width}] N{batch}", impl, 0)


@pytest.mark.parametrize("impl", ["plantops", *LAYOUTS])
@pytest.mark.parametrize("width", [8, 64, 128])
def test_plain_training_epoch(benchmark, record, request, width, impl):
    """An epoch of a plain network's training, as a user would write it against the search's:
    2,560 images (20 steps of 128; a fifth of the quick preset's epoch), random crops and
    flips, cross-entropy, SGD with momentum and weight decay. plantops: the engine
    (engine.Training: the views drawn in advance on the device, its own SGD) on the network
    as the search trains it; oneDNN: torch's own layers, ``DeviceData.batches`` and
    ``torch.optim.SGD``, in either layout. A speedup of the step that does not reach the
    epoch is not one."""
    import numpy as np
    from plantops import engine
    from plantops.data import DeviceData, ViewSchedule
    images, batch = (64, 8) if smoke(request) else (2560, 128)
    width = 8 if smoke(request) else width
    rng = np.random.default_rng(0)
    data = DeviceData(rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8),
                      rng.integers(0, 10, images), DEVICE, (0.5,) * 3, (0.25,) * 3)
    net = network(width).train()
    schedule = engine.Schedule(1, 0.05, batch_size=batch)
    if impl == "plantops":
        views = ViewSchedule(data, batch, 1, seed=0)
        training = engine.Training(net, list(net.parameters()), views, schedule, "ce")
        run = lambda: training.epoch(0)
    else:
        layout = LAYOUTS[impl]
        seq = net.to_sequential().to(memory_format=layout).train()
        opt = torch.optim.SGD(seq.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        generator = torch.Generator().manual_seed(0)

        def run():
            for x, y in data.batches(batch, generator, augment=True):
                sgd_step(seq, x.contiguous(memory_format=layout), y, opt)
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()
    benchmark.group = f"Student[{width}] training epoch, {images} images"
    benchmark.pedantic(run, warmup_rounds=1, rounds=3)
    record("plain training epoch", f"S[{width}] {images} img", impl, 0)
