"""The planting search written the straightforward way, with plain PyTorch.

Every network runs as torch's own layers (``to_sequential``: nn.Conv2d, nn.Linear; oneDNN on
a CPU). Candidates are full-size networks whose frozen entries are held by gradient-masking
hooks; the teacher runs on every batch of every network it teaches; networks train one after
another through a plain batching loop. Everything else is plantops's: the same
hyperparameters, augmentation (``DeviceData.batches``), initial weights (seeded as the search
seeds them), new-weight initialization (``candidate_seed``) and selection rule.
``naive_search`` runs the rounds from a given initial network; ``naive_pipeline`` the whole
process: teacher, initial network, rounds, evaluations and a report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from plantops import models, planting

from plantops.search import candidate_seed
from baselines.training import Schedule, evaluate, loss_fn, lr_milestones, train


def frozen_masks(parent: models.PlantNet, candidate: models.PlantNet) -> dict:
    """1 where the candidate's entry is new (planted), 0 where it is the parent's."""
    old = planting.merge(parent).state_dict()
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
    """The rounds of the search from ``initial`` (a PlantNet) and its validation metrics;
    ``teacher`` a plain module. Returns the chosen layer names, in order, and the final
    network (a PlantNet) with its validation metrics."""
    current, current_val, chosen = initial, initial_val, []
    for rnd in range(1, cfg.max_rounds + 1):
        results = []
        for layer in current.plantable_points(cfg.plant_fc1):
            generator = torch.Generator().manual_seed(candidate_seed(cfg, rnd, layer))
            planted = planting.plant(current.cpu(), layer, cfg.plant_channels,
                                     cfg.plant_init, generator)
            candidate = planting.merge(planted)  # full-size layers
            masks = frozen_masks(current, candidate)
            # torch's own layers, in the same parameter order as the PlantNet
            plain = candidate.to_sequential().to(device)
            plain_masks = {name: masks[mine] for (name, _), (mine, _) in
                           zip(plain.named_parameters(), candidate.named_parameters())}
            train_masked(plain, plain_masks, teacher, train_data, cfg,
                         candidate_seed(cfg, rnd, layer))
            val = evaluate(plain, val_data, teacher=teacher, temperature=cfg.temperature)
            with torch.no_grad():
                vector_to_parameters(parameters_to_vector(plain.parameters()).cpu(),
                                     candidate.parameters())
            results.append((val[cfg.select_on], layer, candidate, val))
        score, layer, best, val = min(results, key=lambda r: (r[0], r[1]))
        if score >= current_val[cfg.select_on]:
            break
        current, current_val = best, val
        chosen.append(models.LAYER_NAMES[layer])
    return chosen, current, current_val


def naive_pipeline(cfg, data, device, out: Path, teacher_done=None) -> dict:
    """The whole search the straightforward way: Teacher[--teacher-width] trained with
    cross-entropy and evaluated; Student[--init-width] trained by distillation (the teacher
    run on every batch) and evaluated; the rounds; the final network evaluated on the test
    set; a report in ``out`` (results.md, a plot, final.pt). ``teacher_done()`` is called
    when the teacher's training ends. Returns the chosen layers and the final network's
    metrics."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def schedule(epochs):
        return Schedule(epochs, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size,
                        cfg.lr_decay)

    rows = []
    torch.manual_seed(cfg.seed)  # as the search seeds each network it builds
    teacher_net = models.student(cfg.teacher_width, "cifar", data.classes)
    teacher = teacher_net.to_sequential().to(device)
    train(teacher, teacher.parameters(), data.train, schedule(cfg.teacher_epochs), "ce",
          cfg.seed)
    if teacher_done is not None:
        teacher_done()
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    rows.append(("teacher", planting.count_params(teacher_net),
                 evaluate(teacher, data.val), evaluate(teacher, data.test)))
    torch.manual_seed(cfg.seed)
    initial = models.student(cfg.init_width, "cifar", data.classes)
    plain = initial.to_sequential().to(device)
    train(plain, plain.parameters(), data.train, schedule(cfg.init_epochs), cfg.init_loss,
          cfg.seed, teacher=teacher, temperature=cfg.temperature, alpha=cfg.label_weight)
    with torch.no_grad():
        vector_to_parameters(parameters_to_vector(plain.parameters()).cpu(),
                             initial.parameters())
    initial_val = evaluate(plain, data.val, teacher=teacher, temperature=cfg.temperature)
    rows.append(("initial", planting.count_params(initial), initial_val,
                 evaluate(plain, data.test)))
    chosen, final, final_val = naive_search(cfg, initial, initial_val, teacher, data.train,
                                            data.val, device)
    final_plain = final.to_sequential().to(device)
    rows.append(("final", planting.count_params(final), final_val,
                 evaluate(final_plain, data.test)))
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| network | params | val loss | val acc | test acc |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {params:,} | {val['loss']:.4f} | {val['acc'] * 100:.2f}% | "
              f"{test['acc'] * 100:.2f}% |" for name, params, val, test in rows]
    (out / "results.md").write_text("\n".join(lines + ["", f"chosen: {chosen}"]) + "\n")
    (out / "result.json").write_text(json.dumps(dict(chosen=chosen, rows=rows), default=str))
    fig, ax = plt.subplots()
    ax.plot([r[1] for r in rows[1:]], [r[3]["acc"] for r in rows[1:]], "o-")
    ax.set_xlabel("parameters")
    ax.set_ylabel("test accuracy")
    fig.savefig(out / "accuracy.png")
    plt.close(fig)
    torch.save(final_plain.cpu(), out / "final.pt")
    return dict(chosen=chosen, final_test=rows[-1][3])
