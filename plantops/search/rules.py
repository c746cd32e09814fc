"""The search's rules: pure functions of the options and the numbers measured, with no state.

How each kind of training is scheduled, which candidate a round keeps, where a candidate's
new weights come from, and when the user is warned that distillation cannot help.
"""

from __future__ import annotations

from plantops.engine import Schedule
from plantops.search.config import Config

# What a training run trains, which decides its schedule (training_schedule).
REGIMES = ("plain", "planted", "finetune")


def training_schedule(cfg: Config, epochs: int, regime: str = "plain") -> Schedule:
    """How the search trains for ``epochs`` epochs: a plain network (``"plain"``: the teacher,
    the initial network, the --table students), a round's planted parameters
    (``"planted"``: --plant-lr, --plant-lr-decay, --plant-weight-decay where set), or a whole
    network after an accepted round (``"finetune"``: --finetune-lr where set)."""
    pick = lambda value, default: default if value is None else value
    lr, decay, weight_decay = cfg.lr, cfg.lr_decay, cfg.weight_decay
    if regime == "planted":
        lr = pick(cfg.plant_lr, lr)
        decay = pick(cfg.plant_lr_decay, decay)
        weight_decay = pick(cfg.plant_weight_decay, weight_decay)
    elif regime == "finetune":
        lr = pick(cfg.finetune_lr, lr)
    elif regime != "plain":
        raise ValueError(f"regime must be one of {', '.join(REGIMES)}, got {regime!r}")
    return Schedule(epochs, lr, cfg.momentum, weight_decay, cfg.batch_size, decay,
                    precision=cfg.precision)


# What a candidate's growth costs, by --select-rule: its added parameters or its added forward
# FLOPs per image (a channel at full resolution is cheap in parameters and dear in FLOPs).
GROWTH_COSTS = {"per_param": "params", "per_flop": "flops"}


def choose(results: list[dict], current_val: dict, current: dict, cfg: Config) -> dict:
    """The candidate a round keeps (--select-rule): the lowest validation --select-on
    ("lowest", the poster's rule), or the largest fall of it below ``current_val`` per added
    parameter ("per_param": a cheap layer's tiny gain no longer beats a dear layer's large
    one) or per added forward FLOP ("per_flop"), ``current`` holding the current network's
    ``params`` and ``flops``. Where none falls, the lowest, which the round then rejects.
    Ties go to the lower layer."""
    metric = cfg.select_on
    lowest = min(results, key=lambda r: (r["val"][metric], r["layer"]))
    gains = [r for r in results if r["val"][metric] < current_val[metric]]
    if cfg.select_rule == "lowest" or not gains:
        return lowest
    unit = GROWTH_COSTS[cfg.select_rule]
    return max(gains, key=lambda r: ((current_val[metric] - r["val"][metric])
                                     / max(1, r[unit] - current[unit]), -r["layer"]))


def improves(best: dict, current_val: dict, cfg: Config) -> bool:
    """Whether a round's chosen candidate is accepted: a validation --select-on lower than
    the current network's (the poster's step 7)."""
    return best["val"][cfg.select_on] < current_val[cfg.select_on]


def candidate_seed(cfg: Config, rnd: int, layer: int) -> int:
    """The seed of a candidate's new weights: round and layer only, so resuming or reordering
    changes nothing. (The data order and augmentation depend on cfg.seed only: every
    candidate sees the same views, which compares candidates fairly and lets the teacher's
    logits be computed once per view.)"""
    return cfg.seed * 1000003 + rnd * 101 + layer


def weak_teacher(cfg: Config, teacher_val: dict, initial_val: dict) -> str | None:
    """Distillation cannot lift a student above its teacher: a warning when the teacher is
    no better than the initial network on the validation set (a validation loss no lower,
    or a lower accuracy); None when it is."""
    if teacher_val["loss"] < initial_val["loss"] and teacher_val["acc"] >= initial_val["acc"]:
        return None
    how = (f"train it longer (--teacher-epochs, now {cfg.teacher_epochs})"
           if not cfg.teacher else "pass a stronger one (--teacher FILE)")
    return (f"the teacher (val loss {teacher_val['loss']:.4f}, val acc "
            f"{teacher_val['acc'] * 100:.2f}%) is no better than the initial network "
            f"(val loss {initial_val['loss']:.4f}, val acc {initial_val['acc'] * 100:.2f}%)"
            f": distilling from it cannot make planting beat the initial network; {how}, "
            f"or a wider one (--teacher-width, now {cfg.teacher_width})")


def at_chance(cfg: Config, label: str, val: dict, classes: int) -> str | None:
    """A warning when a trained network is at chance level on the validation set (at most
    1.5 times a uniform guess); None when it is not."""
    if val["acc"] > 1.5 / classes:
        return None
    return (f"{label} is at chance level ({val['acc'] * 100:.1f}% validation accuracy): "
            f"training diverged or its ReLUs died; try a lower --lr (now {cfg.lr}) or "
            f"--temperature (now {cfg.temperature})")


# Training a network costs about three forward passes per image and epoch: the forward, and a
# backward that computes input and weight gradients, each about a forward's work. (A
# candidate's frozen weights get no gradient, so this bounds its cost from above.)
PASSES_PER_TRAINING_STEP = 3


def training_cost(forward_flops: int, images: int, epochs: int, seconds: float) -> dict:
    """What training a network of ``forward_flops`` per image for ``epochs`` epochs of
    ``images`` cost: ``flops`` (image-epochs x forward+backward FLOPs per image) and the wall
    time it took on this device, ``seconds``. The teacher's passes for distillation are not
    counted: every distilled network of a search shares them."""
    return dict(flops=float(PASSES_PER_TRAINING_STEP * forward_flops * images * epochs),
                seconds=float(seconds))


def total_cost(costs) -> dict:
    """The sum of training costs (``training_cost`` dicts; None counts as nothing)."""
    costs = [c for c in costs if c]
    return dict(flops=sum(c["flops"] for c in costs), seconds=sum(c["seconds"] for c in costs))


def oldest_epochs(cfg: Config, rounds: int) -> int:
    """How many epochs the oldest weights of the network after ``rounds`` accepted rounds
    trained: the initial network's, and each round's fine-tuning."""
    return cfg.init_epochs + rounds * cfg.finetune_epochs


def retrain_unknown(cfg: Config) -> str | None:
    """Why --retrain cannot know how long to train (None: it can): a network taken as it is
    (--init-epochs 0) trained for an unknown time, unless --table-epochs says."""
    if cfg.retrain and not cfg.init_epochs and cfg.table_epochs is None:
        return ("--retrain is skipped: --init-epochs 0 takes your network as it is, so how "
                "long to train its widths from scratch is not known; say it with "
                "--table-epochs N")
    return None
