"""A planting round's work: its candidates, trained together and saved, the accepted network
fine-tuned, and the round's record.

Each candidate is its parent with --plant-channels channels planted into one planting point
(plantops.planting.plant), its new weights seeded by round and layer alone
(rules.candidate_seed). The candidates train together through the round op
(plantops/planted_round.py), and under torchrun they are spread over the ranks: rank r takes
every size-th from the r-th and trains its share together (or one after another without
--train-together), in slots that every rank steps through at once. Every candidate's
validation numbers and trained weights are then gathered on every rank, so every rank makes
the same choice, and rank 0 saves them. A candidate saved before an interruption is not
trained again.
"""

from __future__ import annotations

import copy
import time

import torch

from plantops.planted_round import PlantedRound
from plantops.planting import (count_params, load_planted_state, plant, plant_steepest,
                               planted_state)
from plantops.search import rules
from plantops.search.trainer import Trainer, line


class Rounds:
    """The rounds of one search: ``trainer`` trains and evaluates, its folder keeps the
    files."""

    def __init__(self, trainer: Trainer):
        self.trainer, self.cfg = trainer, trainer.cfg
        self.folder, self.ranks, self.device = trainer.folder, trainer.ranks, trainer.device
        # What each round cost (rules.training_cost): every candidate, and the fine-tuning of
        # the one it accepted; the rounds that accepted none too.
        self.round_costs: dict[int, dict] = {}

    def saved(self, rnd: int, parent):
        """(network, meta, the round's record) of round ``rnd`` (planted into ``parent``)
        accepted before an interruption, or None."""
        path = self.folder.round(rnd)
        if not self.folder.exists(path):
            return None
        net, meta = self.trainer.load(path)
        print(line(f"round {rnd}", net.describe(), count_params(net), meta["val"],
                   meta["seconds"], "(from checkpoint)"))
        if "cost" not in meta:  # kept by an earlier version
            meta["cost"] = self._cost_of_earlier(rnd, parent, net, meta["seconds"])
            self.folder.save(path, net, meta)
        self.round_costs[rnd] = meta["cost"]
        return net, meta, dict(round=rnd, **meta["round"])

    def _cost_of_earlier(self, rnd: int, parent, net, seconds: float) -> dict:
        """The cost of a round that an earlier version kept without it: the FLOPs of every
        candidate its records name and of the fine-tuning, and its wall time."""
        cfg, parent = self.cfg, copy.deepcopy(parent).cpu()
        flops = [self.trainer.cost(net, cfg.finetune_epochs, 0.0)]
        for layer in parent.plantable_points(cfg.plant_fc1):
            if self.folder.candidate_record(rnd, layer) is not None:
                flops.append(self.trainer.cost(
                    plant(parent, layer, cfg.plant_channels, "preserve", torch.Generator()),
                    cfg.plant_epochs, 0.0))
        return dict(rules.total_cost(flops), seconds=seconds)

    def candidates(self, rnd: int, current) -> list:
        """Trains (or reloads) round ``rnd``'s candidate for each plantable point of
        ``current``; returns each one's record, None for a candidate above --max-params."""
        cfg = self.cfg
        layers = current.plantable_points(cfg.plant_fc1)
        names = current.layer_names()
        results, eligible = {}, {}
        parent = copy.deepcopy(current).cpu()  # planted on the CPU: its generator's device
        for layer in layers:
            saved = self.folder.candidate_record(rnd, layer)
            if saved is not None:
                results[layer] = saved
                print(line("candidate", f"r{rnd} +{cfg.plant_channels} {names[layer]}",
                           saved["params"], saved["val"], saved["seconds"],
                           "(from checkpoint)"))
            generator = torch.Generator().manual_seed(rules.candidate_seed(cfg, rnd, layer))
            if cfg.plant_init == "steepest":
                candidate = plant_steepest(parent, layer, cfg.plant_channels, generator,
                                           self.trainer.probe(cfg.plant_epochs))
            else:
                candidate = plant(parent, layer, cfg.plant_channels, cfg.plant_init, generator)
            candidate = candidate.to(self.device)
            if saved is not None:  # (a record of an earlier version has no FLOPs)
                saved.setdefault("flops", self.trainer.size(candidate)["flops"])
            params = count_params(candidate)
            if cfg.max_params and params > cfg.max_params:
                print(f"candidate r{rnd} +{cfg.plant_channels} {names[layer]}: {params:,} "
                      f"params is above --max-params {cfg.max_params:,}, skipped")
                results[layer] = None
                continue
            eligible[layer] = candidate
        mine = self.ranks.share(sorted(eligible))
        groups = [mine] if cfg.train_together else [[layer] for layer in mine]
        slots = 1 if cfg.train_together else -(-len(eligible) // self.ranks.size)
        for slot in range(slots):
            group = groups[slot] if slot < len(groups) else []
            # A slot is always all its candidates (those saved before an interruption too):
            # the same groups train the same way, and its epoch checkpoint is kept until every
            # member is saved.
            members = [layer for layers_r in self.ranks.gather(group) for layer in layers_r]
            if all(results.get(layer) is not None for layer in members):
                continue  # trained and saved before an interruption
            self._train_slot(rnd, current, group, members, eligible, results)
        self.round_costs[rnd] = rules.total_cost(
            self.trainer.cost(eligible[layer], cfg.plant_epochs, results[layer]["seconds"])
            for layer in sorted(eligible))
        return [results[layer] for layer in layers]

    def _train_slot(self, rnd, current, group, members, eligible, results):
        """Trains this rank's ``group`` of candidates together (the other ranks train theirs
        of ``members``), then gathers and saves every member."""
        start = time.perf_counter()
        round_op = PlantedRound(current, {layer: eligible[layer] for layer in group}) \
            if group else None
        names = "+".join(current.layer_names()[layer] for layer in group)
        if len(names) > 40:  # a network's width groups have long names
            names = f"{len(group)} candidates"
        where = f", rank {self.ranks.rank} of {self.ranks.size}" if self.ranks.size > 1 else ""
        if round_op:
            round_op.train()
        name = f"r{rnd}_" + "_".join(map(str, sorted(members)))
        self.trainer.fit(name, f"round {rnd} ({names}{where})", round_op,
                         round_op.parameters() if round_op else [], self.cfg.plant_epochs,
                         "kd", count=len(group), shared=False, regime="planted",
                         buffers=round_op.buffers() if round_op else [])
        vals = self.trainer.evaluate(round_op.eval(), "val", len(group)) if group else []
        seconds = time.perf_counter() - start
        states = [planted_state(eligible[layer]) for layer in group]
        for rank, (layers_r, vals_r, states_r, seconds_r) in enumerate(
                self.ranks.gather((group, vals, states, seconds))):
            for layer, val, state in zip(layers_r, vals_r, states_r):
                load_planted_state(eligible[layer], state)
                if results.get(layer) is None:
                    note = (f"(trained with {len(layers_r) - 1} others in {seconds_r:.1f}s"
                            f"{f' on rank {rank}' if self.ranks.size > 1 else ''})"
                            if len(layers_r) > 1 else
                            (f"(rank {rank})" if self.ranks.size > 1 else ""))
                    # One pass trained them all: each is charged an equal share of its time.
                    results[layer] = self.save_candidate(rnd, layer, eligible[layer], val,
                                                         seconds_r / len(layers_r), note, rank)
        self.folder.finished(name)

    def save_candidate(self, rnd, layer, candidate, val, seconds, note="", rank=0) -> dict:
        """Saves a trained candidate and its record, logs and reports it; returns the record."""
        name = candidate.layer_names()[layer]
        size = self.trainer.size(candidate)
        params = size["params"]
        record = dict(round=rnd, layer=layer, layer_name=name, widths=candidate.widths,
                      fc_width=candidate.fc_width, val=val, seconds=seconds, rank=rank, **size)
        self.folder.save_candidate(rnd, layer, candidate, dict(val=val, seconds=seconds),
                                   record)
        self.folder.add_log(dict(kind="candidate", round=rnd, layer=name,
                                 widths=candidate.widths, fc_width=candidate.fc_width,
                                 params=params, val_loss=val["loss"], val_acc=val["acc"],
                                 val_kd_loss=val["kd_loss"], seconds=seconds, rank=rank))
        print(line("candidate", f"r{rnd} +{self.cfg.plant_channels} {name}", params, val,
                   seconds, note))
        return record

    def chosen(self, rnd: int, record: dict):
        """The candidate ``record`` names, loaded: the round's accepted network."""
        return self.trainer.load(self.folder.candidate(rnd, record["layer"]))[0]

    def finetune(self, rnd: int, net):
        """--finetune-epochs: the accepted network of round ``rnd``, every parameter trained by
        distillation (a departure from the poster, docs/method.md); returns it and its
        validation numbers. Its views are the first epochs of the initial network's, so the
        teacher's logits are already in the table."""
        cfg = self.cfg
        start = time.perf_counter()
        for p in net.parameters():
            p.requires_grad_(True)
        net.train()
        name = f"finetune_r{rnd}"
        self.trainer.fit(name, f"round {rnd} fine-tuning", net, list(net.parameters()),
                         cfg.finetune_epochs, "kd", regime="finetune",
                         buffers=list(net.buffers()))
        net.eval()
        val, = self.trainer.evaluate(net, "val")
        self.folder.finished(name)
        seconds = time.perf_counter() - start
        self.round_costs[rnd] = rules.total_cost(
            [self.round_costs.get(rnd), self.trainer.cost(net, cfg.finetune_epochs, seconds)])
        print(line("finetune", net.describe(), count_params(net), val, seconds,
                   f"(round {rnd}, {cfg.finetune_epochs} epochs)"))
        return net, val

    def accept(self, rnd: int, layer_name: str, net, val: dict, seconds: float) -> dict:
        """Saves round ``rnd``'s accepted network (evaluated on the test set for the report)
        and logs it; returns the round's record. The round's cost, every candidate and the
        fine-tuning, is kept with it; its wall time is ``seconds``."""
        test, = self.trainer.evaluate(net, "test")
        info = dict(layer=layer_name, widths=net.widths, fc_width=net.fc_width,
                    params=count_params(net), val=val)
        cost = dict(self.round_costs[rnd], seconds=seconds)
        self.folder.save(self.folder.round(rnd), net, dict(val=val, test=test, round=info,
                                                            seconds=seconds, cost=cost))
        self.folder.add_log(dict(kind="round", round=rnd, layer=layer_name, widths=net.widths,
                                 fc_width=net.fc_width, params=info["params"],
                                 val_loss=val["loss"], val_acc=val["acc"], seconds=seconds))
        return dict(round=rnd, **info)
