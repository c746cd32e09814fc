"""The comparison on fair terms: --table trains its networks as long as the planted network's
oldest weights (or --table-epochs), every row says how long it trained and what training it
cost, --retrain trains the found widths from scratch, and the report says where the planted
network lies against networks trained as long."""

import json

import pytest
import torch

from plantops import models, search
from plantops.planting import forward_flops

from helpers import tiny_config

ROUNDS, FINETUNE = 1, 2  # the oldest weights train TINY_SEARCH's 4 epochs + 1 x 2


@pytest.fixture(scope="module")
def table_run(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("table") / "run"
    cfg = tiny_config(image_folder, out, table=True, table_widths="2,4", max_rounds=ROUNDS,
                      finetune_epochs=FINETUNE, retrain=True, compare_with="cifar10")
    return out, search.run_search(cfg)


def test_the_table_trains_its_networks_as_long_as_the_planted_networks_oldest_weights(
        table_run):
    out, result = table_run
    as_long = 4 + len(result["rounds"]) * FINETUNE
    assert len(result["rounds"]) == ROUNDS, result["stop_reason"]
    rows = {(r["network"], r["loss_fn"], r["epochs"]) for r in result["students"]}
    # The initial width too: the initial network trained 4 epochs, not as long.
    assert rows == {(f"Student[{w}]", loss, as_long) for w in (2, 3, 4) for loss in ("CE", "KD")}
    assert result["initial"]["epochs"] == 4 and result["final"]["epochs"] == as_long
    assert result["rounds"][0]["epochs"] == as_long
    assert result["retrained"]["epochs"] == as_long
    for name in ("student_2_ce_6ep.pt", "student_3_kd_6ep.pt", "retrained_6ep.pt"):
        assert (out / name).is_file(), name


def test_every_row_says_what_training_it_cost_and_planting_pays_for_every_candidate(table_run,
                                                                                   image_folder):
    out, result = table_run
    images = len(search.prepare_data(tiny_config(image_folder, out), torch.device("cpu")).train)
    initial = models.student(3, "cifar", num_classes=3)
    flops = 3 * forward_flops(initial, 3, 32) * images * 4
    assert result["initial"]["cost"]["flops"] == pytest.approx(flops)
    assert result["initial"]["cost"]["seconds"] > 0
    # Planting: the initial network, the five candidates of each round and the fine-tuning.
    candidates = [json.loads(p.read_text()) for p in (out / "candidates").glob("*.json")]
    assert len(candidates) >= 5 * ROUNDS
    final = result["final"]["cost"]
    cheapest_candidate = 3 * forward_flops(initial, 3, 32) * images * 2  # 2 epochs each
    assert final["flops"] > flops + len(candidates) * cheapest_candidate
    assert result["rounds"][-1]["cost"]["flops"] <= final["flops"]
    for row in [result["teacher"], *result["students"], result["retrained"]]:
        assert row["cost"]["flops"] > 0 and row["cost"]["seconds"] > 0, row["network"]
    table = (out / "results.md").read_text()
    assert "| network | widths | params | FLOPs | epochs | train cost |" in table
    assert " TFLOP, " in table


def test_retrain_trains_the_found_widths_from_scratch(table_run):
    out, result = table_run
    retrained = result["retrained"]
    assert retrained["widths"] == result["final"]["widths"]
    assert retrained["params"] == result["final"]["params"]
    assert retrained["network"] == "Retrained (found widths)" and retrained["loss_fn"] == "KD"
    final = torch.load(out / "final.pt", weights_only=False)
    again = torch.load(out / "final_retrained.pt", weights_only=False)
    assert all(type(m).__module__.startswith("torch.nn") for m in again.modules())
    assert [p.shape for p in final.parameters()] == [p.shape for p in again.parameters()]
    # The same normalising first layer, new weights after it.
    weights = [(a, b) for a, b in zip(final.parameters(), again.parameters())]
    assert torch.equal(*weights[0]) and not any(torch.equal(a, b) for a, b in weights[2:])
    assert "| Retrained (found widths) |" in (out / "results.md").read_text()


def test_the_report_places_the_planted_network_against_the_students_trained_as_long(
        table_run, capsys):
    out, result = table_run
    curves = search.report.student_curves(result)
    # The curve holds the students trained as long, not the initial network.
    assert sorted(curves["KD"]) == sorted((r["params"], r["test_acc"])
                                          for r in result["students"] if r["loss_fn"] == "KD")
    lines = search.report.verdict(result)
    assert len(lines) == 3 and lines[0].startswith("Take final")  # by validation accuracy
    best = max([result["final"], result["retrained"]], key=lambda r: r["val_acc"])
    assert ("final_retrained.pt" in lines[0].split(":")[0]) == (best is result["retrained"])
    lines = lines[1:]
    assert lines[0].startswith("Planted (final), ")
    assert lines[1].startswith("Retrained (found widths), ")
    assert "by parameters, " in lines[0] and "the KD students trained 6 epochs" in lines[0]
    assert "; by FLOPs, " in lines[0]
    text = (out / "results.md").read_text()
    for line in lines:
        assert line + "." in text
    assert "Beside the paper's cifar10 table" in text and "84.35%" in text
    assert set(result["retrained"]["against_curves"]) <= {"KD", "CE"}
    assert set(result["against_flop_curves"]) <= {"KD", "CE"}
    assert all(r["flops"] > 0 for r in [result["final"], *result["students"]])


def test_the_run_ends_with_the_comparison(image_folder, tmp_path, capsys):
    """Beyond the widest student there is no curve: the nearest network is the comparison."""
    search.run_search(tiny_config(image_folder, tmp_path / "run", table=True, table_widths="2",
                                  max_rounds=1, finetune_epochs=0, table_epochs=3,
                                  retrain=False))
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("Planted (final), ")
    assert "Student[3] KD trained 3 epochs" in out[-1] and "the nearest; +" in out[-1]
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert {r["epochs"] for r in saved["students"]} == {3}


def test_the_table_needs_to_know_how_long_with_a_network_taken_as_it_is():
    with pytest.raises(ValueError, match="--init-epochs 0 takes your network as it is: say how "
                                         "long with --table-epochs N"):
        search.config_from_dict(dict(student="x.py:net", init_epochs=0, table=True)).validate()
    search.config_from_dict(dict(student="x.py:net", init_epochs=0, table=True,
                                 table_epochs=5)).validate()


def test_checkpoints_of_an_earlier_version_get_their_costs_on_resume(reference_run, tmp_path):
    """A folder written before rows kept their epochs and costs (its checkpoints' meta and
    candidate records without them): resumed, the report has the same FLOPs."""
    import shutil
    ref, reference = reference_run
    out = tmp_path / "old"
    shutil.copytree(ref, out)
    for path in [out / "initial.pt", *out.glob("round_*.pt")]:
        saved = torch.load(path, weights_only=False)
        for key in ("cost", "epochs"):
            saved["meta"].pop(key, None)
        torch.save(saved, path)
    for path in (out / "candidates").glob("*.json"):
        record = json.loads(path.read_text())
        for key in ("flops", "cost"):
            record.pop(key, None)
        path.write_text(json.dumps(record))
    resumed = search.run_search(search.parse_args(["--resume", str(out)]))
    for key in ("initial", "final"):
        assert resumed[key]["cost"]["flops"] == pytest.approx(reference[key]["cost"]["flops"])
        assert resumed[key]["epochs"] == reference[key]["epochs"]
    for got, want in zip(resumed["rounds"], reference["rounds"]):
        assert got["cost"]["flops"] == pytest.approx(want["cost"]["flops"])
