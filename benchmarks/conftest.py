"""Collects every benchmark's median and prints, at the end of the run, each implementation's
speed as a ratio to the best baseline measured in the same run, shape by shape."""

import collections
import datetime
import os
import platform

import pytest
import torch

_RESULTS = collections.defaultdict(dict)  # (group, shape) -> {impl: (median_s, flops)}


@pytest.fixture
def record(benchmark):
    def _record(group, shape, impl, flops):
        benchmark.extra_info.update(group=group, shape=shape, impl=impl, flops=flops)
        if benchmark.stats is not None:  # None under --benchmark-disable
            _RESULTS[(group, shape)][impl] = (benchmark.stats.stats.median, flops)
    return _record


def ratio_table() -> str:
    device = (torch.cuda.get_device_name() if torch.cuda.is_available()
              else f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    lines = [f"# {datetime.date.today()} | {device} | torch {torch.__version__}",
             "| group | shape | implementation | median ms | GFLOP/s | speedup vs best baseline |",
             "|---|---|---|---|---|---|"]
    for (group, shape), impls in sorted(_RESULTS.items()):
        baselines = [t for name, (t, _) in impls.items() if not name.startswith("plantops")]
        best = min(baselines) if baselines else None
        for name, (t, flops) in sorted(impls.items(), key=lambda kv: kv[1][0]):
            ratio = f"{best / t:.2f}x" if best else "-"
            lines.append(f"| {group} | {shape} | {name} | {t * 1e3:.3f} | "
                         f"{flops / t / 1e9:.1f} | {ratio} |")
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter):
    if not _RESULTS:
        return
    table = ratio_table()
    terminalreporter.write_sep("=", "plantops: speed against the best baseline, same run")
    terminalreporter.write_line(table)
    path = os.environ.get("PLANTOPS_BENCH_TABLE")
    if path:
        with open(path, "w") as f:
            f.write(table + "\n")
