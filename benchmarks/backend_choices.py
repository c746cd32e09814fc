"""Which backends plantops' convolutions took in a benchmark, for its table."""

import collections


def chosen_backends(run) -> str:
    """Which backends ``run()``'s convolutions took (the C++ kernels or oneDNN, by
    plantops.kernels' choice, measured on this machine unless PLANTOPS_AUTOTUNE=0; or as
    plantops.inference measured them in place), as "cpu 4, torch 1"."""
    from plantops import kernels
    kernels._resolved.clear()  # the tuner keeps what it measured: this only recounts
    run()
    taken = collections.Counter(kernels._resolved.values())
    return ", ".join(f"{name} {count}" for name, count in sorted(taken.items())) or "none"
