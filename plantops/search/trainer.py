"""How the search trains and evaluates its networks.

Every network trains through the engine (plantops/engine.py: one static step per batch, the
data, views and teacher logits on the device, CUDA graphs on a GPU), with a checkpoint at
the end of every epoch in the run folder. The training views of a run of E epochs depend on
--seed only, so every run of E epochs sees the same ones, and the teacher's logits of each
view are computed once per search (plantops/search/teacher_tables.py). Each network is evaluated once,
when it is trained (validation and test); the test numbers are only reported.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import torch

from plantops import engine
from plantops.data import ViewSchedule
from plantops.planting import count_params, forward_flops
from plantops.progress import PhaseTimes, Progress
from plantops.search import rules
from plantops.search.config import Config
from plantops.search.distributed import Ranks
from plantops.search.run_folder import RunFolder
from plantops.search.splits import SearchData
from plantops.search.teacher_tables import TeacherTables

EVAL_BATCH = 500  # images per evaluation step


def layout(cfg: Config, device, net=None) -> torch.memory_format:
    """The memory layout ``net`` runs in on ``device`` (--channels-last; unset: NCHW for a
    network whose convs run through the planted kernels, which read NCHW: a chain, a teacher
    of the user's that plantops.inference converted; channels-last on a CPU for any other
    module, where oneDNN's channels-last kernels measured faster: 1.6x for
    examples/resnet.py at 64x64 on a 2-core AMD EPYC; NCHW on a GPU, 0.84-0.94x in
    channels-last on an H100)."""
    on = cfg.channels_last
    if on is None:
        on = torch.device(device).type == "cpu" and not getattr(net, "reads_nchw", False)
    return torch.channels_last if on else torch.contiguous_format


def line(label, name, params, metrics, seconds, extra=""):
    """The line a trained network or candidate is reported with."""
    return (f"{label:<9} {name:<24} params {params:>9,}  val loss {metrics['loss']:.4f}  "
            f"val acc {metrics['acc'] * 100:6.2f}%  {seconds:7.1f}s {extra}")


def _digest(tensors) -> str:
    """A hash of the tensors' values: ranks that must hold the same network compare it."""
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Trainer:
    """Trains and evaluates the networks of one search on ``data``, on ``device``, with its
    epoch checkpoints in ``folder``; ``times`` gets the teacher's passes ("teacher logits")."""

    def __init__(self, cfg: Config, data: SearchData, device: torch.device, ranks: Ranks,
                 folder: RunFolder, times: PhaseTimes):
        self.cfg, self.data, self.device, self.ranks = cfg, data, device, ranks
        self.folder, self.times = folder, times
        self.graphs = engine.use_graphs(cfg.cuda_graphs, device)
        self.eval_views = {split: ViewSchedule(getattr(data, split), EVAL_BATCH)
                           for split in ("val", "test")}
        self._views: dict[int, ViewSchedule] = {}
        self.tables: TeacherTables | None = None  # the teacher's, once it is known
        self.val_teacher = None                   # the teacher's logits of the validation set

    # ------------------------------------------------------------------------- networks

    def place(self, net):
        """``net`` on the device, in the layout it runs in there."""
        return net.to(self.device, memory_format=layout(self.cfg, self.device, net))

    def size(self, net) -> dict:
        """``net``'s parameters (as the paper counts them) and forward FLOPs per image."""
        return dict(params=count_params(net), flops=forward_flops(
            net, self.data.train.images.shape[1], self.data.image_size))

    def cost(self, net, epochs: int, seconds: float) -> dict:
        """What training ``net`` for ``epochs`` epochs of the training images cost
        (rules.training_cost)."""
        return rules.training_cost(self.size(net)["flops"], len(self.data.train), epochs,
                                   seconds)

    def load(self, path: Path):
        """(network, meta) of a checkpoint of the run folder, placed."""
        net, meta = self.folder.load(path, self.device)
        return net.to(memory_format=layout(self.cfg, self.device, net)), meta

    # ------------------------------------------------------------------------- the teacher

    def use_teacher(self, teacher: torch.nn.Module):
        """Distil from ``teacher`` (frozen, in eval mode): its table of logits of the training
        views, and its logits of the validation set."""
        self.tables = TeacherTables(self.folder.teacher_logits, self.ranks, teacher,
                                    self.data.classes, self.cfg.cache_dtype,
                                    self.cfg.precision, self.cfg.cache_teacher)
        self.val_teacher = engine.teacher_logits(teacher, self.eval_views["val"],
                                                 classes=self.data.classes)

    def views(self, epochs: int) -> ViewSchedule:
        """The training views of a run of ``epochs`` epochs. They depend on the data seed only
        (--seed), so every run of that length sees the same ones."""
        if epochs not in self._views:
            self._views[epochs] = ViewSchedule(self.data.train, self.cfg.batch_size, epochs,
                                               seed=self.cfg.seed)
        return self._views[epochs]

    def teacher_table(self, epochs: int) -> dict:
        """The teacher's logits of every view of a run of ``epochs`` epochs, each view's
        computed once per search (search.teacher_tables)."""
        start = time.perf_counter()
        table = self.tables.get(self.views(epochs))
        self.times.add("teacher logits", start)
        return table

    def probe(self, epochs: int, steps: int = 4) -> list:
        """The first ``steps`` batches of the training views of a run of ``epochs`` epochs,
        as (images, the loss of a network's logits on them) pairs: what that run's first
        steps distil (plantops.planting.plant_steepest scores new filters on them)."""
        cfg, views, table = self.cfg, self.views(epochs), self.teacher_table(epochs)
        batches = []
        for shape, _ in views.epoch_steps(0):
            if len(batches) == steps:
                break
            pos = torch.tensor([len(batches)], device=self.device)
            if shape != "full":  # the epoch's last, shorter batch
                pos = torch.tensor([0], device=self.device)
            x, labels = views.batch(shape, pos)
            target = table[shape].index_select(0, pos)[0]
            batches.append((x, lambda logits, labels=labels, target=target: engine.losses(
                logits, labels, target, "kd", 1, cfg.temperature, cfg.label_weight).sum()))
        return batches

    # ------------------------------------------------------------------------- training

    def fit(self, name: str, label: str, forward, params, epochs: int, loss: str,
            count: int = 1, shared: bool = True, regime: str = "plain", buffers=()):
        """Trains ``params`` for ``epochs`` epochs through the engine, with a checkpoint at the
        end of every epoch (partial/NAME.pt: the parameters, SGD's momentum, the epoch; the
        views are the epoch's own): a run killed and resumed redoes at most the epoch it was
        in. ``loss`` "kd" distils from the teacher. ``shared``: every rank trains these same
        parameters on its share of each batch (a plain network); otherwise each rank trains
        its own, or none (``params`` empty: it keeps step with the others' epochs), and every
        rank's state is kept. ``regime``: which schedule (rules.training_schedule);
        ``buffers``: what training changes besides ``params`` (batch norms' running
        statistics), kept in the checkpoints. The caller calls ``folder.finished(name)`` once
        what it trained is saved."""
        cfg = self.cfg
        views = self.views(epochs)
        teacher = self.teacher_table(epochs) if loss == "kd" else None
        training = None
        if params:
            training = engine.Training(
                forward, params, views, rules.training_schedule(cfg, epochs, regime), loss,
                count=count, teacher=teacher, temperature=cfg.temperature,
                alpha=cfg.label_weight, graphs=self.graphs,
                ranks=self.ranks if shared else None, buffers=buffers)
        start = 0
        for where, saved in self.folder.epoch_checkpoints(name):  # newest first
            try:
                if training is not None:
                    training.load_state(saved["states"][0 if shared else self.ranks.rank])
            except (ValueError, KeyError, TypeError, RuntimeError) as err:
                if self.ranks.main:
                    print(f"warning: the epoch checkpoint {where} is not of this training run "
                          f"({str(err).splitlines()[0][:100]}); passed over", file=sys.stderr)
                continue
            start = saved["epochs_done"]
            break
        progress = Progress(label, epochs, views.steps_per_epoch, start)
        try:
            for epoch in range(start, epochs):
                report = training.epoch(epoch, progress.step) if training else None
                state = None if training is None else training.state()
                states = {0: state} if shared else dict(enumerate(self.ranks.gather(state)))
                self.folder.save_epoch(name, epoch + 1, states)
                progress.epoch_done(epoch, report.losses if report else [])
        finally:
            progress.close()
        if shared and training is not None and self.ranks.size > 1:
            self.ranks.same(f"weights of the {label} network after training",
                            _digest([*params, *buffers]),
                            "the ranks trained it apart, which is a bug of plantops' (please "
                            "report it with the command)")

    def evaluate(self, network, split: str, count: int = 1) -> list[dict]:
        """``engine.evaluate`` on ``split``; a plain network runs through its frozen layers."""
        teacher = self.val_teacher if split == "val" else None
        forward = getattr(network, "frozen_forward", network)
        return engine.evaluate(forward, self.eval_views[split], count, teacher,
                               self.cfg.temperature, self.graphs)

    def plain(self, path: Path, label: str, build, loss: str, epochs: int, inputs=None):
        """The network ``build()`` makes, trained whole with ``loss`` for ``epochs`` (0: as it
        is), evaluated and saved at ``path``; or, if ``path`` exists, loaded from it.
        ``inputs``: the images it takes (a search.networks.InputConvention), where they are
        not the search's (it is then fed through an adapter, and its meta records them).
        Returns (network, meta)."""
        if self.folder.exists(path):
            net, meta = self.load(path)
            print(line(label, net.describe(), count_params(net), meta["val"],
                       meta["seconds"], "(from checkpoint)"))
            if "cost" not in meta:  # kept by an earlier version, which trained it ``epochs``
                meta.update(epochs=epochs, cost=self.cost(net, epochs, meta["seconds"]))
                self.folder.save(path, net, meta)
            return net, meta
        start = time.perf_counter()
        # Seeded here, so a network's initial weights do not depend on whether the ones
        # before it were trained in this process or loaded by --resume.
        torch.manual_seed(self.cfg.seed)
        net = self.place(build())
        inputs = inputs or self.data.inputs
        fed = self.data.inputs.feed(net, inputs)  # net itself where it takes the search's images
        if epochs:
            fed.train()
            self.fit(path.stem, label, fed, list(net.parameters()), epochs, loss,
                     buffers=list(net.buffers()))
        fed.eval()
        val, = self.evaluate(fed, "val")
        test, = self.evaluate(fed, "test")
        seconds = time.perf_counter() - start
        meta = dict(kind=label, loss_fn=loss if epochs else "as given", val=val, test=test,
                    seconds=seconds, inputs=inputs.meta(), epochs=epochs,
                    cost=self.cost(net, epochs, seconds))
        self.folder.save(path, net, meta)
        if epochs:
            self.folder.finished(path.stem)
        params = count_params(net)
        self.folder.add_log(dict(kind=label, round=0, layer=None, widths=net.widths,
                                 fc_width=net.fc_width, params=params, val_loss=val["loss"],
                                 val_acc=val["acc"], seconds=seconds))
        print(line(label, net.describe(), params, val, seconds))
        warning = rules.at_chance(self.cfg, label, val, self.data.classes)
        if warning:
            self.folder.warn(warning)
        return net, meta
