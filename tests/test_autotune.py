"""backend="auto" on a CPU by measurement (plantops/kernels/autotune.py): the faster backend
of each shape and work, measured once and kept on disk for the next run, the fixed rule with
PLANTOPS_AUTOTUNE=0, and choices pinned from a file."""

import json

import pytest
import torch

import plantops
from plantops import kernels, planted_conv2d
from plantops.kernels import autotune

pytestmark = pytest.mark.skipif("cpu" not in plantops.backends("cpu"),
                                reason="plantops._C is not built")


@pytest.fixture
def tuning(monkeypatch, tmp_path):
    """Measuring on, with a cache of its own; ``times[name]``: what each backend measures.
    Yields the calls to measure, (backend, work, shape)."""
    monkeypatch.setenv("PLANTOPS_AUTOTUNE", "1")
    monkeypatch.setenv("PLANTOPS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PLANTOPS_AUTOTUNE_FILE", raising=False)
    kernels.forget_choices()
    calls, times = [], {"cpu": 2.0, "torch": 1.0}
    real = autotune.measure

    def measure(names, work, dtype, shape_key):
        calls.extend((name, work, shape_key[0]) for name in names)
        real(names, work, dtype, shape_key)     # it runs (and must not fail) ...
        return {name: times[name] for name in names}  # ... which wins is the test's to say

    monkeypatch.setattr(autotune, "measure", measure)
    yield calls, times
    kernels.forget_choices()


def conv(batch=4, grad=False):
    x = torch.randn(batch, 5, 9, 9, requires_grad=grad)
    w = torch.randn(6, 5, 3, 3)
    return planted_conv2d(x, w, padding=1)


def test_the_faster_backend_is_measured_once_per_shape_and_work_and_kept(tuning, tmp_path):
    calls, times = tuning
    conv()
    assert [(name, work) for name, work, _ in calls] == [("cpu", "forward"), ("torch", "forward")]
    conv()
    assert len(calls) == 2  # the same shape and work: kept
    conv(grad=True)         # another work: measured
    conv(batch=7)           # another shape: measured
    assert [(work, batch) for _, work, batch in calls[2::2]] == [("input", 4), ("forward", 7)]
    assert set(autotune.choices().values()) == {"torch"}  # the faster, by the measurements
    saved = json.loads(next((tmp_path / "cache" / "autotune").glob("*.json")).read_text())
    assert saved["machine"]["threads"] == torch.get_num_threads()
    assert saved["machine"]["simd"] in ("avx512", "avx2", "avx", "sse")
    assert len(saved["machine"]["build"]) == 12  # a rebuilt kernel measures anew
    assert len(saved["choices"]) == 3
    # A second run (a process of its own) reads them: nothing is measured.
    kernels.forget_choices()
    times.update(cpu=0.5)  # would now win, if it were measured
    conv(), conv(grad=True), conv(batch=7)
    assert len(calls) == 6 and set(autotune.choices().values()) == {"torch"}


def test_the_choice_follows_the_measurements(tuning):
    calls, times = tuning
    times.update(cpu=0.5)
    conv()
    assert set(autotune.choices().values()) == {"cpu"}


@pytest.mark.parametrize("fixed", ["cpu", "torch"])
def test_a_backend_within_noise_of_the_fixed_rules_choice_leaves_the_rule_standing(
        tuning, monkeypatch, fixed):
    calls, times = tuning
    monkeypatch.setattr(kernels, "cpu_kernels_win", lambda shape_key, work="forward":
                        fixed == "cpu")
    other = "torch" if fixed == "cpu" else "cpu"
    times.update({fixed: 1.0, other: 1.0 - autotune.MARGIN / 2})  # faster, within the margin
    conv()
    assert set(autotune.choices().values()) == {fixed}
    times.update({other: 1.0 - 2 * autotune.MARGIN})  # clearly faster: taken
    conv(batch=5)
    assert sorted(autotune.choices().values()) == sorted([fixed, other])


def test_autotune_off_is_the_fixed_rule_and_measures_nothing(tuning, monkeypatch):
    calls, _ = tuning
    monkeypatch.setenv("PLANTOPS_AUTOTUNE", "0")
    kernels.forget_choices()
    conv()
    assert not calls and not autotune.choices()
    shape_key = (4, 5, 6, 9, 9, 3, 3, (1, 1), (1, 1))
    expected = "cpu" if kernels.cpu_kernels_win(shape_key) else "torch"
    assert kernels.resolve("auto", "cpu", torch.float32, shape_key) == expected


def test_choices_pinned_from_a_file_are_used_without_measuring(tuning, tmp_path, monkeypatch):
    calls, times = tuning
    times.update(cpu=0.5)
    conv()
    pinned = {key: "torch" for key in autotune.choices()}  # the other backend than measured
    path = tmp_path / "backends.json"
    path.write_text(json.dumps(pinned))
    monkeypatch.setenv("PLANTOPS_AUTOTUNE_FILE", str(path))
    kernels.forget_choices()
    measured = len(calls)
    conv()
    conv(batch=3)  # not in the file: the fixed rule
    assert len(calls) == measured
    choices = autotune.choices()
    assert [choices[key] for key in pinned] == ["torch"]
    monkeypatch.setenv("PLANTOPS_AUTOTUNE_FILE", str(tmp_path / "missing.json"))
    kernels.forget_choices()
    with pytest.raises(ValueError, match="PLANTOPS_AUTOTUNE_FILE=.*missing.json: no such file"):
        conv()


def test_batches_share_a_choice_by_power_of_two_up_to_the_cap(tuning):
    calls, _ = tuning
    for batch in (9, 16, 130, 1000, 128):
        conv(batch=batch)
    # 9 and 16 share 16; 130, 1000 and 128 share the cap, measured at the cap.
    assert [batch for _, _, batch in calls[::2]] == [16, autotune.BATCH_CAP]
    assert autotune.measured_shape((5, 1, 1, 1, 1, 3, 3, (1, 1), (1, 1)))[0] == 5


def test_a_measurement_runs_each_work_on_each_backend():
    """The real measure: seconds, for each backend and work, on a small shape."""
    key = (3, 4, 5, 7, 7, 3, 3, (1, 1), (1, 1))
    for work in autotune.WORKS:
        seconds = autotune.measure(["cpu", "torch"], work, torch.float32, key)
        assert set(seconds) == {"cpu", "torch"} and all(0 < s < 5 for s in seconds.values())


def test_a_converted_networks_convolutions_are_measured_in_place_and_kept(tuning, monkeypatch,
                                                                          tmp_path):
    """plantops.inference measures each convolution's backend where it runs (the whole chunk
    with it on each backend, the others as chosen), keeps the choice on disk under the
    isolated measurement's key, marked measured in place, and a second run measures
    nothing; the results are the module's."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from examples.resnet import resnet
    from plantops.inference import FrozenConv2d, for_inference
    isolated, _ = tuning
    runs = []
    faster = {"C3": "torch"}  # the stem's input: oneDNN, by these measurements; else cpu

    def measure_in_place(names, run_with):
        before = len(isolated)
        for name in names:  # it runs the chunk with this conv on each backend ...
            assert 0 < run_with(name) < 10  # ... and says how long the conv took
        conv = run_with.__defaults__[0]  # the convolution measured
        runs.append(conv)
        assert len(isolated) == before  # the others run as chosen: nothing measured alone
        wins = faster.get(f"C{conv.weight.shape[1]}", "cpu")
        return {name: 1.0 if name == wins else 2.0 for name in names}

    monkeypatch.setattr(autotune, "measure_in_place", measure_in_place)
    torch.manual_seed(0)
    net = resnet(8, 10, 32).eval()
    fast = for_inference(net)
    x = torch.rand(20, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), rtol=1e-4, atol=1e-4)
    convs = [m for m in fast.module.modules() if isinstance(m, FrozenConv2d)]
    # the first block's two convs have one shape: measured once, for both
    assert len(convs) == 9 and len(runs) == 8 and not isolated
    assert [next(iter(m.backends.values())) for m in convs] == ["torch"] + ["cpu"] * 8
    chosen = autotune.choices()
    assert len(chosen) == 8 and set(autotune.TUNER.in_place) == set(chosen)
    assert [v for k, v in chosen.items() if " C3 " in k] == ["torch"]
    # A second run: read from disk, nothing measured, the same choices.
    kernels.forget_choices()
    runs.clear()
    again = for_inference(net)
    with torch.no_grad():
        torch.testing.assert_close(again(x), net(x), rtol=1e-4, atol=1e-4)
    assert not runs and not isolated and autotune.choices() == chosen
