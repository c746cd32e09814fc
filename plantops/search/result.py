"""The result of a search: every network's row, built from the numbers kept in the
checkpoints (each network was evaluated once, when it was trained), the final network
exported, and the files a person reads (plantops/search/report.py writes results.md and the plot).

result.json holds ``final``, ``initial``, ``teacher``, ``rounds`` and ``students`` (one row
each: widths, parameters, test and validation numbers, the loss it was trained with), why the
search stopped, where the final network lies against the students' curves, the warnings, the
options, and each phase's wall time.
"""

from __future__ import annotations

import dataclasses

import torch

from plantops.planting import count_params
from plantops.search import report
from plantops.search.trainer import Trainer


def row(trainer: Trainer, path, label: str, loss_fn: str):
    """(the row of the network saved at ``path``, the network)."""
    net, meta = trainer.load(path)
    test = meta.get("test")
    if test is None:  # a checkpoint from a search that did not keep test numbers
        test, = trainer.evaluate(net, "test")
    return dict(network=label, widths=net.widths, fc_width=net.fc_width,
                params=count_params(net), test_loss=test["loss"], test_acc=test["acc"],
                val_loss=meta["val"]["loss"], val_acc=meta["val"]["acc"], loss_fn=loss_fn), net


def given_row(meta: dict) -> dict:
    """The row of a teacher of the user's (evaluated, never trained: it has no checkpoint)."""
    return dict(network=meta["name"], widths=None, fc_width=None, params=meta["params"],
                test_loss=meta["test"]["loss"], test_acc=meta["test"]["acc"],
                val_loss=meta["val"]["loss"], val_acc=meta["val"]["acc"], loss_fn="given")


def build(trainer: Trainer, teacher: dict, initial_label: str, initial_loss: str,
          accepted: list[dict], stop_reason: str, students, student_name: str,
          world_size: int, warnings: list[str]):
    """(result, the final network): the rows of the teacher (``teacher``, built by the
    caller), the initial network, each accepted round, the final network and the --table
    ``students`` ((path, label, loss) each), with the comparisons."""
    cfg, folder = trainer.cfg, trainer.folder
    initial, final_net = row(trainer, folder.initial, initial_label, initial_loss)
    rounds = []
    for a in accepted:
        entry, final_net = row(trainer, folder.round(a["round"]),
                               f"Planted round {a['round']} (+{a['layer']})", "KD")
        rounds.append(dict(entry, round=a["round"], layer=a["layer"]))
    final = dict(rounds[-1] if rounds else initial, network="Planted (final)")
    student_rows = [row(trainer, path, label, loss)[0] for path, label, loss in students]
    compare = cfg.compare_with
    if compare == "auto":
        compare = cfg.dataset if cfg.dataset in report.PAPER else "none"
    result = dict(final=final, initial=initial, teacher=teacher, rounds=rounds,
                  students=student_rows, compare_with=compare, stop_reason=stop_reason,
                  config=dataclasses.asdict(cfg), world_size=world_size,
                  warnings=list(warnings), dataset_name=trainer.data.name or cfg.dataset,
                  student_name=student_name)
    result["against_curves"] = report.against_curves(result)
    if any(c["margin"] < 0 for c in result["against_curves"].values()):
        folder.warn(report.curve_sentence(result) + ": planting did not beat the networks "
                    "of its size trained the standard way", into=result["warnings"])
    return result, final_net


def write(trainer: Trainer, result: dict, final_net):
    """final.pt (the final network as plain torch layers taking float [0, 1] images),
    results.md and the plot."""
    folder = trainer.folder
    if folder.ranks.main:
        exported = trainer.data.inputs.export(final_net)
        folder.write("final.pt", lambda p: torch.save(exported, p))
        report.write_results(folder.out, result)
