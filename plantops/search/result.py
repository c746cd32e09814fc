"""The result of a search: every network's row, built from the numbers kept in the
checkpoints (each network was evaluated once, when it was trained), the final network
exported, and the files a person reads (plantops/search/report.py writes results.md and the
plot).

result.json holds ``final``, ``initial``, ``teacher``, ``rounds``, ``students`` and
``retrained`` (one row each: widths, parameters, forward FLOPs per image, test and validation
numbers, the loss it was trained with, the epochs its oldest weights trained, and what
training it cost), why the search stopped, where the final network lies against the networks
trained the standard way at its parameters and at its FLOPs (``against_curves``,
``against_flop_curves``; the retrained one's in its row), the warnings, the options, the
backends the convolutions ran on (``backends``, also in backends.json: pass it as
PLANTOPS_AUTOTUNE_FILE to rerun on them) and each phase's wall time.
"""

from __future__ import annotations

import dataclasses

import torch

from plantops.kernels import autotune
from plantops.search import report, rules
from plantops.search.trainer import Trainer


def row(trainer: Trainer, path, label: str, loss_fn: str):
    """(the row of the network saved at ``path``, the network)."""
    net, meta = trainer.load(path)
    test = meta.get("test")
    if test is None:  # a checkpoint from a search that did not keep test numbers
        test, = trainer.evaluate(net, "test")
    return dict(network=label, widths=net.widths, fc_width=net.fc_width,
                **trainer.size(net), test_loss=test["loss"], test_acc=test["acc"],
                val_loss=meta["val"]["loss"], val_acc=meta["val"]["acc"], loss_fn=loss_fn,
                epochs=meta.get("epochs"), cost=meta.get("cost")), net


def given_row(meta: dict) -> dict:
    """The row of a teacher of the user's (evaluated, never trained: it has no checkpoint)."""
    return dict(network=meta["name"], widths=None, fc_width=None, params=meta["params"],
                flops=None, test_loss=meta["test"]["loss"], test_acc=meta["test"]["acc"],
                val_loss=meta["val"]["loss"], val_acc=meta["val"]["acc"], loss_fn="given",
                epochs=None, cost=None)


def build(trainer: Trainer, teacher: dict, initial_label: str, initial_loss: str,
          accepted: list[dict], round_costs: dict, stop_reason: str, students, retrained,
          student_name: str, world_size: int, warnings: list[str]):
    """(result, the final network, the retrained network or None): the rows of the teacher
    (``teacher``, built by the caller), the initial network, each accepted round, the final
    network, the --table ``students`` ((path, label, loss) each) and the ``retrained``
    network (its path, or None), with the comparisons. ``round_costs``: what each round
    cost, the rounds that accepted nothing too (Rounds.round_costs): planting's cost is the
    initial network's and every round's."""
    cfg, folder = trainer.cfg, trainer.folder
    initial, final_net = row(trainer, folder.initial, initial_label, initial_loss)
    rounds = []
    for a in accepted:
        entry, final_net = row(trainer, folder.round(a["round"]),
                               f"Planted round {a['round']} (+{a['layer']})", "KD")
        spent = [initial["cost"]] + [round_costs.get(r) for r in range(1, a["round"] + 1)]
        rounds.append(dict(entry, round=a["round"], layer=a["layer"],
                           epochs=rules.oldest_epochs(cfg, a["round"]),
                           cost=rules.total_cost(spent)))
    final = dict(rounds[-1] if rounds else initial, network="Planted (final)",
                 cost=rules.total_cost([initial["cost"], *round_costs.values()]))
    student_rows = [row(trainer, path, label, loss)[0] for path, label, loss in students]
    compare = cfg.compare_with
    if compare == "auto":
        compare = cfg.dataset if cfg.dataset in report.PAPER else "none"
    result = dict(final=final, initial=initial, teacher=teacher, rounds=rounds,
                  students=student_rows, retrained=None, compare_with=compare,
                  stop_reason=stop_reason, config=dataclasses.asdict(cfg),
                  world_size=world_size, warnings=list(warnings),
                  dataset_name=trainer.data.name or cfg.dataset, student_name=student_name,
                  backends=autotune.choices(),
                  autotune=dict(measured=autotune.TUNER.measured,
                                seconds=autotune.TUNER.seconds))
    retrained_net = None
    if retrained is not None:
        result["retrained"], retrained_net = row(trainer, retrained, "Retrained (found widths)",
                                                 "KD")
    for key, where in (("final", result), ("retrained", result["retrained"])):
        if where is not None:
            where["against_curves"] = report.against_curves(result, key)
            where["against_flop_curves"] = report.against_curves(result, key, "flops")
    if any(c["margin"] < 0 for c in result["against_curves"].values()):
        folder.warn(report.placement(result) + ": planting did not beat the networks of its "
                    "size trained the standard way as long", into=result["warnings"])
    return result, final_net, retrained_net


def write(trainer: Trainer, result: dict, final_net, retrained_net):
    """final.pt (the final network as plain torch layers taking float [0, 1] images), with
    --retrain final_retrained.pt, results.md and the plot (rank 0 alone)."""
    folder = trainer.folder
    if folder.ranks.main:
        exports = {"final.pt": final_net}
        if retrained_net is not None:
            exports["final_retrained.pt"] = retrained_net
        for name, net in exports.items():
            exported = trainer.data.inputs.export(net)
            folder.write(name, lambda p: torch.save(exported, p))
        folder.write_json("backends.json", result["backends"])
        report.write_results(folder.out, result)
