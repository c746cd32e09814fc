"""The search, phase by phase, in the poster's order (docs/method.md):

1. the teacher: Teacher[--teacher-width] trained with cross-entropy, or one given;
2. the initial network: Student[--init-width] (or the user's) trained by distillation;
3. the rounds: each plants --plant-channels channels into every plantable point of the
   current network (one candidate per point), trains only the planted parameters by
   distillation, keeps the candidate --select-rule chooses if it lowers the validation
   loss, and fine-tunes it (--finetune-epochs); the search stops when no candidate lowers
   the loss, at --max-rounds, or when every candidate is above --max-params;
4. the comparison (--table): networks trained the standard way, as long as the planted
   network's oldest weights, and (--retrain) the final widths trained from scratch as long;
5. the report.

Each phase keeps what it made in the output folder and a resumed search takes it from there.
The rest of plantops/search holds the work behind each step: ``trainer`` (how a network
trains and is evaluated), ``rounds`` (a round's candidates, the accepted network's
fine-tuning), ``rules`` (the schedules, the choice, the warnings), ``run_folder`` (the output
folder), ``result`` and ``report`` (result.json, results.md, the plot, final.pt).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
from pathlib import Path

import torch

import plantops
from plantops import data as datasets
from plantops import models
from plantops.planting import count_params, from_scratch
from plantops.progress import PhaseTimes
from plantops.search import networks, report, result, rules
from plantops.search.config import Config
from plantops.search.distributed import Ranks, resolve_device
from plantops.search.rounds import Rounds
from plantops.search.run_folder import RunFolder
from plantops.search.splits import SearchData, prepare_data
from plantops.search.trainer import Trainer, line


class Search:
    """One search: its options, output folder, data, and the phases that run it.

    ``Search(cfg).run()`` is ``run_search(cfg)``. ``data`` replaces the dataset of
    ``cfg.dataset``/``cfg.data`` (benchmarks bring synthetic data); ``student`` and
    ``teacher``, the modules of --student and --teacher. Checkpoints found in the output
    folder are reused, phase by phase.

    Under ``torchrun`` the search runs on every rank (search.distributed): the plain networks
    train data-parallel (each rank a share of every batch), the teacher's logits are computed
    in shares and gathered, and each round's candidates are spread over the ranks. Rank 0
    alone reads and writes the output folder and tells the others what it holds.
    """

    def __init__(self, cfg: Config, data: SearchData | None = None, ranks: Ranks | None = None,
                 student: torch.nn.Module | None = None, teacher: torch.nn.Module | None = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.ranks = ranks or Ranks.start(self.device.type)
        if self.ranks.size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.ranks.local_rank)
        self.folder = RunFolder(Path(cfg.out), self.ranks)
        self.times = PhaseTimes()  # wall time of each phase run in this process
        self.given = dict(data=data, student=student, teacher=teacher)

    def run(self) -> dict:
        with self.ranks.one_voice():
            self.prepare(**self.given)
            try:
                return self.phases()
            except (ValueError, FileNotFoundError, datasets.DataError):
                # Refused before anything was trained (a teacher of another dataset, say).
                self.folder.remove_if_nothing_trained()
                raise

    def prepare(self, data, student, teacher):
        """The networks and the data, checked before anything trains; then the folder (a run
        that cannot start leaves no output folder)."""
        cfg = self.cfg
        if self.ranks.size > 1:
            self.ranks.same("options", dataclasses.asdict(cfg))
        self.student_net, self.student_name = networks.user_student(cfg, student)
        given_teacher = networks.user_teacher(cfg, teacher)
        self.data = data or prepare_data(cfg, self.device, paper=self.student_net is None)
        self.trainer = Trainer(cfg, self.data, self.device, self.ranks, self.folder, self.times)
        self.rounds = Rounds(self.trainer)
        if self.student_net is not None:
            self.student_net = networks.plantable(
                self.student_net, self.student_name, self.data.train.images.shape[1],
                self.data.image_size, self.data.classes, cfg)
        elif self.data.arch is None:
            raise ValueError(f"images are {self.data.size_text}: the paper's networks take "
                             "32x32 or 96x96 images; plant a network built for them with "
                             "--student FILE")
        if given_teacher is None and not cfg.teacher and self.data.arch is None:
            raise ValueError(f"the paper's Teacher[k] takes 32x32 or 96x96 images, these are "
                             f"{self.data.size_text}: pass a trained teacher with --teacher "
                             "FILE")
        self.given_teacher = None if given_teacher is None else (networks.ready_teacher(
            *given_teacher, self.data, self.trainer.place), given_teacher[1])
        self.folder.open(cfg, self.device)

    def phases(self) -> dict:
        cfg = self.cfg
        where = f", {self.ranks.size} ranks" if self.ranks.size > 1 else ""
        family = self.data.arch if self.student_net is None else self.student_name
        print(f"plantops {plantops.__version__}: {self.data.name or cfg.dataset} ({family}), "
              f"{len(self.data.train)} train / {len(self.data.val)} val / {len(self.data.test)} "
              f"test images, device {self.device}{where}, out {self.folder.out}")
        teacher_meta = self.teacher()
        current, meta = self.initial()
        warning = rules.weak_teacher(cfg, teacher_meta["val"], meta["val"])
        if warning:
            self.folder.warn(warning)
        current, accepted, stop_reason = self.plant_rounds(current, meta["val"])
        epochs = cfg.table_epochs or rules.oldest_epochs(cfg, len(accepted))
        students = self.students(epochs) if cfg.table else []
        unknown = rules.retrain_unknown(cfg)
        if unknown:
            self.folder.warn(unknown)
        retrained = self.retrain(current, epochs) if cfg.retrain and not unknown else None
        return self.finish(accepted, stop_reason, students, retrained)

    # ------------------------------------------------------------------------- 1. teacher

    def teacher(self) -> dict:
        """The teacher: the user's module (evaluated once), a teacher.pt of an earlier search,
        or Teacher[--teacher-width] trained here; frozen. Returns its meta."""
        cfg, data = self.cfg, self.data
        start = time.perf_counter()
        if self.given_teacher is not None:
            net, name = self.given_teacher
            val, = self.trainer.evaluate(net, "val")
            test, = self.trainer.evaluate(net, "test")
            params = count_params(net)  # the user's module's, its batch norms included
            print(line("teacher", name[:24], params, val, 0.0, "(given)"))
            self.folder.add_log(dict(kind="teacher", round=0, layer=None, name=name,
                                     params=params, val_loss=val["loss"], val_acc=val["acc"],
                                     seconds=0.0))
            meta = dict(kind="teacher", loss_fn="given", val=val, test=test, seconds=0.0,
                        name=name, params=params)
        else:
            path = self.folder.teacher(cfg)
            # Trained on the images the paper's networks take, normalised by the dataset's
            # statistics, whatever the student takes: without batch norm, Teacher[64] fed
            # [0, 1] images reached 29.8% validation accuracy in the quick preset's 15 epochs
            # on CIFAR-10, against 50.1% normalised.
            net, meta = self.trainer.plain(
                path, "teacher", lambda: models.student(cfg.teacher_width, data.arch,
                                                        data.classes), "ce", cfg.teacher_epochs,
                networks.trained_teacher_inputs({}, cfg.dataset, data))
            networks.check_trained_teacher(net, path, data)
            meta = dict(meta, name=f"Teacher[{max(net.widths)}]")
            net = data.inputs.feed(net, networks.trained_teacher_inputs(meta, cfg.dataset, data))
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.trainer.use_teacher(net)
        self.teacher_meta = meta
        self.times.add("teacher", start)
        return meta

    # ------------------------------------------------------------------------- 2. initial

    def initial(self):
        """The initial network, trained (or the user's as it is, with --init-epochs 0)."""
        cfg, data = self.cfg, self.data
        start = time.perf_counter()
        build = (lambda: models.student(cfg.init_width, data.arch, data.classes)) \
            if self.student_net is None else (lambda: copy.deepcopy(self.student_net))
        net, meta = self.trainer.plain(self.folder.initial, "initial", build, cfg.init_loss,
                                       cfg.init_epochs)
        self.times.add("initial", start)
        return net, meta

    # ------------------------------------------------------------------------- 3. rounds

    def plant_rounds(self, current, current_val: dict):
        """The planting rounds from ``current``; returns (the final network, the accepted
        rounds, why the search stopped). Each round's candidates and every accepted network
        are checkpointed."""
        cfg = self.cfg
        accepted = []
        stop_reason = f"reached --max-rounds {cfg.max_rounds}"
        for rnd in range(1, cfg.max_rounds + 1):
            saved = self.rounds.saved(rnd, current)
            if saved is not None:
                current, meta, record = saved
                current_val = meta["val"]
                accepted.append(record)
                continue
            start, comm = time.perf_counter(), self.ranks.seconds
            results = [r for r in self.rounds.candidates(rnd, current) if r is not None]
            if not results:
                stop_reason = f"every candidate is above --max-params {cfg.max_params}"
                break
            # The same results on every rank, so every rank makes this choice.
            best = rules.choose(results, current_val, self.trainer.size(current), cfg)
            improved = rules.improves(best, current_val, cfg)
            name = current.layer_names()[best["layer"]]
            seconds = self.times.add(f"round {rnd}", start)
            if self.ranks.size > 1:
                self.times[f"round {rnd} communication"] = self.ranks.seconds - comm
            metric = cfg.select_on
            verdict = "accepted" if improved else "rejected: no lower validation loss, stop"
            print(f"round {rnd:<3} best {name:<6} val {metric} {best['val'][metric]:.4f} vs "
                  f"{current_val[metric]:.4f}  {verdict}  ({seconds:.1f}s)")
            if not improved:
                stop_reason = (f"round {rnd}: no candidate lowered the validation {metric} "
                               f"below {current_val[metric]:.4f}")
                break
            current, current_val = self.rounds.chosen(rnd, best), best["val"]
            if cfg.finetune_epochs:
                tuned = time.perf_counter()
                current, current_val = self.rounds.finetune(rnd, current)
                seconds += self.times.add(f"round {rnd}", tuned)
            accepted.append(self.rounds.accept(rnd, name, current, current_val, seconds))
        return current, accepted, stop_reason

    # ------------------------------------------------------------------------- 4. comparison

    def students(self, epochs: int) -> list:
        """--table: networks trained the standard way for ``epochs`` epochs (by default as long
        as the planted network's oldest weights): Student[k] of --table-widths and the initial
        width, with cross-entropy and distillation; for a network of the user's, that network
        at its initial widths, with --init-loss. Returns (path, label, loss) of each."""
        cfg, data = self.cfg, self.data
        start = time.perf_counter()
        if self.student_net is not None:
            plans = [("initial", f"{self.student_name} (initial widths)", cfg.init_loss,
                      lambda: copy.deepcopy(self.student_net))]
        else:
            widths = dict.fromkeys([int(w) for w in cfg.table_widths.split(",") if w.strip()]
                                   + [cfg.init_width])
            plans = [(width, f"Student[{width}]", loss,
                      functools.partial(models.student, width, data.arch, data.classes))
                     for width in widths for loss in ("ce", "kd")
                     # trained as many epochs, the initial network is that row already
                     if (width, loss, epochs) != (cfg.init_width, cfg.init_loss, cfg.init_epochs)]
        students = []
        for name, label, loss, build in plans:
            path = self.folder.student(name, loss, epochs)
            self.trainer.plain(path, f"{label} {loss.upper()}", build, loss, epochs)
            students.append((path, label, loss.upper()))
        self.times.add("students", start)
        return students

    def retrain(self, final, epochs: int) -> Path:
        """--retrain: the final network's widths trained from scratch by distillation for
        ``epochs`` epochs, as the --table networks (did planting find widths worth having, or
        only train longer?). Returns where it is saved."""
        start = time.perf_counter()
        path = self.folder.retrained(epochs)
        self.trainer.plain(path, "retrained", lambda: from_scratch(final), "kd", epochs)
        self.times.add("retrain", start)
        return path

    # ------------------------------------------------------------------------- 5. report

    def finish(self, accepted, stop_reason, students=(), retrained=None) -> dict:
        """result.json, results.md, the plot, final.pt (and final_retrained.pt)."""
        cfg = self.cfg
        start = time.perf_counter()
        if self.given_teacher is not None:
            teacher = result.given_row(self.teacher_meta)
        else:
            teacher, _ = result.row(self.trainer, self.folder.teacher(cfg),
                                    self.teacher_meta["name"], "CE")
        initial_loss = cfg.init_loss.upper() if cfg.init_epochs or self.student_net is None \
            else "given"
        outcome, final_net, retrained_net = result.build(
            self.trainer, teacher, f"Initial = {self.student_name}", initial_loss, accepted,
            self.rounds.round_costs, stop_reason, students, retrained, self.student_name,
            self.ranks.size, self.folder.warnings)
        result.write(self.trainer, outcome, final_net, retrained_net)
        seconds = self.times.add("report", start)
        print(f"report: results.md, accuracy_vs_params.png, final.pt, "
              f"{'final_retrained.pt, ' if retrained else ''}result.json, backends.json "
              f"({seconds:.1f}s)")
        tuned = outcome["autotune"]
        if tuned["measured"]:
            print(f"kernels: {tuned['measured']} convolution shapes measured on first use, "
                  f"{tuned['seconds']:.1f}s within the phases (kept for later runs)")
        if self.ranks.size > 1:  # of the phases' times, spent in collectives (rank 0's)
            self.times["communication"] = self.ranks.seconds
        outcome["seconds"] = dict(self.times)
        self.folder.write_json("result.json", outcome)
        final = outcome["final"]
        print(f"done: {final['network']} {final_net.describe()} "
              f"{final['params']:,} params, test loss {final['test_loss']:.4f}, test acc "
              f"{final['test_acc'] * 100:.2f}% ({stop_reason}). Results in "
              f"{self.folder.out}/results.md")
        print("time: " + ", ".join(f"{phase} {s:.1f}s" for phase, s in self.times.items()))
        for comparison in report.verdict(outcome):  # what a user needs to know, last
            print(comparison)
        return outcome


def run_search(cfg: Config, student: torch.nn.Module | None = None,
               teacher: torch.nn.Module | None = None) -> dict:
    """Runs the whole search of ``cfg`` (see ``python -m plantops.search --help``).
    ``student``: a network of your own to plant (instead of Student[--init-width]): an
    nn.Sequential chain, or any CNN torch.fx traces, planted by its width groups;
    ``teacher``: a trained module of your own, used as it is (instead of training
    Teacher[--teacher-width]). Both take float [0, 1] images (search.networks)."""
    return Search(cfg, student=student, teacher=teacher).run()
