"""Collects every benchmark's median and prints, at the end of the run, each implementation's
speed as a ratio to the best baseline measured in the same run, shape by shape."""

import collections
import datetime
import os

import pytest
import torch

_RESULTS = collections.defaultdict(dict)  # (group, shape) -> {impl: (median_s, flops, bytes)}
_FLOORS = {}  # (group, shape) -> roofline floor in seconds (GPU only)
_PEAKS = {}   # dtype -> (matrix FLOP/s, copy bytes/s), measured once per run on the GPU


def _measure_peaks(dtype):
    """The GPU's matrix rate in ``dtype`` (an 8192^3 product) and its copy bandwidth
    (bytes read plus written), each the best of 10 after warm-up, in this run."""
    if dtype not in _PEAKS:
        def best_of(fn, reps=10):
            times = []
            for _ in range(reps + 2):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            return min(times[2:])
        a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
        rate = 2 * 8192 ** 3 / best_of(lambda: a @ a)
        src = torch.empty(1 << 30, device="cuda", dtype=torch.uint8)
        dst = torch.empty_like(src)
        bandwidth = 2 * src.numel() / best_of(lambda: dst.copy_(src))
        del a, src, dst
        _PEAKS[dtype] = (rate, bandwidth)
    return _PEAKS[dtype]


@pytest.fixture
def record(benchmark):
    def _record(group, shape, impl, flops, nbytes=0, dtype=None, per=1, seconds=None):
        """``per``: the measured callable ran that many units (steps); the table shows one.
        ``seconds``: a time the callable measured of a part of itself, shown instead of the
        benchmark's median."""
        benchmark.extra_info.update(group=group, shape=shape, impl=impl, flops=flops,
                                    bytes=nbytes, per=per)
        if benchmark.stats is None:  # None under --benchmark-disable
            return
        median = benchmark.stats.stats.median if seconds is None else seconds
        _RESULTS[(group, shape)][impl] = (median / per, flops, nbytes)
        if dtype is not None and torch.cuda.is_available() and flops and nbytes:
            rate, bandwidth = _measure_peaks(dtype)
            _FLOORS[(group, shape)] = max(flops / rate, nbytes / bandwidth)
    return _record


def ratio_table() -> str:
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        from plantops.kernels import autotune
        machine = autotune.machine()
        device = (f"CPU {machine['cpu']} ({machine['simd']} kernels), "
                  f"{torch.get_num_threads()} threads for plantops and oneDNN alike")
    lines = [f"# {datetime.date.today()} | {device} | torch {torch.__version__}"]
    for dtype, (rate, bandwidth) in _PEAKS.items():
        lines.append(f"# roofline in {dtype}: matrix {rate / 1e12:.0f} TFLOP/s, "
                     f"copy {bandwidth / 1e9:.0f} GB/s (measured in this run)")
    lines += ["| group | shape | implementation | median ms | GFLOP/s | GB/s | "
              "x roofline floor | speedup vs best baseline |",
              "|---|---|---|---|---|---|---|---|"]
    for (group, shape), impls in sorted(_RESULTS.items()):
        baselines = [v[0] for name, v in impls.items() if not name.startswith("plantops")]
        best = min(baselines) if baselines else None
        floor = _FLOORS.get((group, shape))
        for name, (t, flops, nbytes) in sorted(impls.items(), key=lambda kv: kv[1][0]):
            ratio = f"{best / t:.2f}x" if best else "-"
            lines.append(f"| {group} | {shape} | {name} | {t * 1e3:.3f} | "
                         f"{flops / t / 1e9:.1f} | {nbytes / t / 1e9:.1f} | "
                         f"{f'{t / floor:.1f}' if floor else '-'} | {ratio} |")
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
