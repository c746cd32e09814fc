"""The planting search written the straightforward way, with plain PyTorch (issue 5's baseline).

Candidates are full-size ``nn.Conv2d``/``nn.Linear`` networks whose frozen entries are held
by gradient-masking hooks; the teacher runs on every batch of every candidate; candidates
train one after another through a plain batching loop. Everything else is plantops's: the
same hyperparameters, data order and augmentation (``DeviceData.batches`` with the same
seed), the same new-weight initialization (``candidate_seed``) and the same selection rule,
so both choose the same layers.
"""

from __future__ import annotations

import math

import torch

from plantops import models
from plantops.search import candidate_seed
from baselines.training import Schedule, evaluate, loss_fn, lr_milestones


def frozen_masks(parent: models.PlantNet, candidate: models.PlantNet) -> dict:
    """1 where the candidate's entry is new (planted), 0 where it is the parent's."""
    old = models.merge(parent).state_dict()
    masks = {}
    for name, p in candidate.named_parameters():
        mask = torch.ones_like(p)
        mask[tuple(slice(0, s) for s in old[name].shape)] = 0
        masks[name] = mask
    return masks


def train_masked(candidate, masks, teacher, data, cfg, seed):
    torch.manual_seed(seed)
    params = []
    for name, p in candidate.named_parameters():
        if masks[name].any():
            mask = masks[name]
            # weight decay inside the hook: SGD's own would move the frozen entries too
            p.register_hook(lambda g, p=p, mask=mask: (g + cfg.weight_decay * p.detach()) * mask)
            params.append(p)
        else:
            p.requires_grad_(False)
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=0.0)
    schedule = Schedule(cfg.plant_epochs, cfg.lr, decay=cfg.lr_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, lr_milestones(schedule, math.ceil(len(data) / cfg.batch_size)), cfg.lr_decay)
    objective = loss_fn("kd", cfg.temperature, cfg.label_weight)
    generator = torch.Generator().manual_seed(cfg.seed)
    candidate.train()
    teacher.eval()
    for _ in range(cfg.plant_epochs):
        for x, y in data.batches(cfg.batch_size, generator, augment=True):
            with torch.no_grad():
                teacher_logits = teacher(x)
            loss = objective(candidate(x), y, teacher_logits)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


def naive_search(cfg, initial, initial_val, teacher, train_data, val_data, device):
    """The rounds of the search; returns the chosen layer names, in order."""
    current, current_val, chosen = initial, initial_val, []
    for rnd in range(1, cfg.max_rounds + 1):
        results = []
        for layer in models.plantable_layers(cfg.plant_fc1):
            generator = torch.Generator().manual_seed(candidate_seed(cfg, rnd, layer))
            planted = models.plant(current.cpu(), layer, cfg.plant_channels, cfg.plant_init,
                                   generator)
            candidate = models.merge(planted).to(device)  # full-size plain layers
            current.to(device)
            train_masked(candidate, frozen_masks(current, candidate), teacher, train_data, cfg,
                         candidate_seed(cfg, rnd, layer))
            val = evaluate(candidate, val_data, teacher=teacher, temperature=cfg.temperature)
            results.append((val[cfg.select_on], layer, candidate, val))
        score, layer, best, val = min(results, key=lambda r: (r[0], r[1]))
        if score >= current_val[cfg.select_on]:
            break
        current, current_val = best, val
        chosen.append(models.LAYER_NAMES[layer])
    return chosen
