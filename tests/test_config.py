"""The search's options: the Config, its presets, --config files, the command line and
--help, and the README's table of them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from plantops import search


def test_the_paper_preset_is_the_posters_procedure_and_flags_override_it():
    assert search.parse_args([]) == search.Config()  # quick: Config's own defaults
    paper = search.parse_args(["--preset", "paper"])
    assert (paper.select_rule, paper.finetune_epochs, paper.teacher_width, paper.plant_epochs,
            paper.train_subset) == ("lowest", 0, 128, 30, 0)
    assert search.parse_args(["--preset", "paper", "--plant-epochs", "5"]).plant_epochs == 5


def test_config_file_rejects_unknown_keys(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"plant-channels": 2, "plant_epoch": 3}))
    with pytest.raises(ValueError, match=rf"{path}: unknown option 'plant_epoch'; did you mean "
                                         "'plant_epochs'\\?"):
        search.parse_args(["--config", str(path)])
    path.write_text(json.dumps({"plant-channels": 2, "init_width": 16}))
    cfg = search.parse_args(["--config", str(path), "--init-width", "8"])
    assert cfg.plant_channels == 2 and cfg.init_width == 8  # flags override the file


def test_broken_config_file_is_named(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"plant-channels": 2,}')
    with pytest.raises(ValueError, match=rf"--config {path}: not valid JSON \(line 1 column"):
        search.parse_args(["--config", str(path)])
    with pytest.raises(FileNotFoundError, match="--config /nonexistent.json: no such file"):
        search.parse_args(["--config", "/nonexistent.json"])


def test_help_lists_every_option_with_the_defaults_that_apply_and_what_paper_changes():
    help_text = subprocess.run([sys.executable, "-m", "plantops.search", "--help"],
                               capture_output=True, text=True, check=True).stdout
    flat = " ".join(help_text.split())
    assert "--teacher-epochs N teacher epochs (default 15; --preset paper: 100)" in flat
    assert "--init-loss {kd,ce}" in flat and "(default None)" not in flat
    for title in ("data and output:", "planting:", "training (every network):"):
        assert title in help_text
    for flag in ["--preset", "--config", "--resume", "--seeds", "--sweep",
                 *(f"--{f.name.replace('_', '-')}" for f in search.Config.__dataclass_fields__.values())]:
        assert flag in help_text, flag


@pytest.mark.parametrize("argv, words", [
    (["--dataset", "mnist"], "argument --dataset: invalid choice: 'mnist' (choose from"),
    (["--plant-channels", "0"], "--plant-channels must be >= 1"),
    (["--label-weight", "2"], "--label-weight must be in [0, 1]"),
    (["--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    (["--plant-epochs", "0"], "--plant-epochs must be >= 1, got 0"),
    (["--init-epochs", "0"], "--init-epochs must be >= 1, got 0"),
    (["--teacher-epochs", "0"], "--teacher-epochs must be >= 1, got 0"),
    (["--cuda-graphs", "yes"], "argument --cuda-graphs: invalid choice: 'yes'"),
    (["--plant-lr", "0"], "--plant-lr must be > 0"),
    (["--finetune-lr", "-1"], "--finetune-lr must be > 0"),
    (["--finetune-epochs", "-1"], "--finetune-epochs must be >= 0"),
    (["--plant-init", "zero"], "argument --plant-init: invalid choice: 'zero'"),
    (["--table-widths", "16,x"], "--table-widths must be comma-separated positive widths"),
])
def test_bad_options_are_one_line_errors_with_exit_code_2(argv, words, capsys):
    try:
        code = search.main(argv)
    except SystemExit as exit:  # argparse's own checks
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2 and words in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_zero_teacher_epochs_are_refused_unless_a_trained_teacher_is_given():
    with pytest.raises(ValueError, match=r"--teacher-epochs must be >= 1, got 0: a network "
                                         r"trained for 0 epochs does not change \(or --teacher"):
        search.parse_args(["--teacher-epochs", "0"])
    search.parse_args(["--teacher-epochs", "0", "--teacher", "runs/x/teacher.pt"])  # no error


def test_a_missing_dataset_is_one_line_and_exit_code_2():
    bad = subprocess.run([sys.executable, "-m", "plantops.search", "--dataset", "folder",
                          "--data", "/nonexistent/place", "--out", "/tmp/plantops-x"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "/nonexistent/place does not exist" in bad.stderr
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_resume_of_a_folder_without_a_search():
    with pytest.raises(FileNotFoundError, match="no config.json there"):
        search.parse_args(["--resume", "/nonexistent/run"])


def test_readme_lists_every_option_with_its_defaults():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert search.options_table() in readme, "README's options table is stale: paste " \
        "the output of python -c 'from plantops import search; print(search.options_table())'"


def test_unknown_precision_is_refused():
    from plantops.engine import Schedule
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16, got 'float16'"):
        Schedule(1, 0.1, precision="float16")


def test_channels_last_default_follows_the_device_and_the_network_and_a_flag_overrides_it():
    """Unset, --channels-last is off for chains (their convs run on the planted kernels, which
    read NCHW) and on GPUs, on for other modules on a CPU (a user's teacher); an explicit
    choice is honoured on either device for any network."""
    from plantops import models
    auto = search.config_from_dict({})
    chain, other = models.student(64), torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3))
    assert search.layout(auto, "cpu", chain) == torch.contiguous_format
    assert search.layout(auto, "cpu", other) == torch.channels_last
    assert search.layout(auto, torch.device("cuda"), other) == torch.contiguous_format
    for flag, expected in (("--channels-last", torch.channels_last),
                           ("--no-channels-last", torch.contiguous_format)):
        cfg = search.parse_args(["--dataset", "folder", "--data", "x", flag])
        assert search.layout(cfg, "cpu", chain) == search.layout(cfg, "cuda", other) == expected


def test_a_config_dict_is_validated_like_the_command_line():
    with pytest.raises(ValueError, match="--plant-init must be one of preserve, small, random"):
        search.config_from_dict(dict(plant_init="zero")).validate()
