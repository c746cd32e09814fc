"""Human-readable results of a search: results.md (a table laid out like the paper's) and
accuracy_vs_params.png (test accuracy against parameters), and where the planted network
lies against the networks trained the standard way (--table), on the terms a user needs:
trained as long.
"""

from __future__ import annotations

import math
from pathlib import Path

from plantops.search.checkpoints import atomic_write

# The poster's tables (docs/method.md, "The paper's results"): network, params, test loss
# ("Test Err."), test acc, loss.
PAPER = {
    "cifar10": [("Teacher[128]", "857.5K", 0.5007, 88.10, "CE"),
                ("Student[128]", "857.5K", 0.3823, 88.51, "KD"),
                ("Student[8]", "20.4K", 0.8300, 71.55, "CE"), ("Student[8]", "20.4K", 0.8245, 71.69, "KD"),
                ("Student[16]", "43.9K", 0.6071, 79.42, "CE"), ("Student[16]", "43.9K", 0.6108, 79.23, "KD"),
                ("Student[32]", "104.8K", 0.4898, 84.03, "CE"), ("Student[32]", "104.8K", 0.4791, 84.02, "KD"),
                ("Student[64]", "282.0K", 0.4431, 86.83, "CE"), ("Student[64]", "282.0K", 0.4103, 86.80, "KD"),
                ("Planted", "40.6K", 0.4825, 84.35, "KD")],
    "cifar100": [("Teacher[128]", "869.1K", 2.5010, 57.76, "CE"),
                 ("Student[128]", "869.1K", 1.6232, 60.05, "KD"),
                 ("Student[8]", "32.0K", 2.5280, 36.53, "CE"), ("Student[8]", "32.0K", 2.5053, 36.90, "KD"),
                 ("Student[16]", "55.5K", 2.1190, 45.45, "CE"), ("Student[16]", "55.5K", 2.0679, 46.66, "KD"),
                 ("Student[32]", "116.5K", 1.9022, 52.15, "CE"), ("Student[32]", "116.5K", 1.7805, 53.72, "KD"),
                 ("Student[64]", "293.6K", 1.9510, 55.74, "CE"), ("Student[64]", "293.6K", 1.6707, 57.71, "KD"),
                 ("Planted", "78.5K", 1.7584, 54.31, "KD")],
    "stl10": [("Teacher[64]", "445.8K", 1.5360, 66.33, "CE"),
              ("Student[64]", "445.8K", 1.1807, 66.47, "KD"),
              ("Student[8]", "40.8K", 1.2776, 55.55, "CE"), ("Student[8]", "40.8K", 1.2682, 54.99, "KD"),
              ("Student[16]", "84.9K", 1.2924, 59.34, "CE"), ("Student[16]", "84.9K", 1.1998, 61.10, "KD"),
              ("Student[32]", "186.8K", 1.2213, 64.57, "CE"), ("Student[32]", "186.8K", 1.1712, 64.07, "KD"),
              ("Student[128]", "1.2M", 1.7612, 67.04, "CE"), ("Student[128]", "1.2M", 1.1643, 67.71, "KD"),
              ("Planted", "82.6K", 1.0772, 67.12, "KD")],
}


# The sizes a network is placed at: its parameters (the paper's axis) and its forward FLOPs per
# image (what running it costs).
AXES = {"params": "parameters", "flops": "FLOPs"}


def size_text(row: dict, axis: str) -> str:
    value = row.get(axis)
    if value is None:
        return "-"
    return f"{value / 1000:.1f}K" if axis == "params" else f"{value / 1e6:.2f}M"


def student_curves(result: dict, axis: str = "params") -> dict[str, list[tuple[int, float]]]:
    """The curves of the networks trained the standard way: loss ("CE", "KD") -> [(size on
    ``axis``, test accuracy)] sorted by size, of the --table students, and of the initial
    network where it trained as many epochs as they did; curves of 2 points or more."""
    students = result.get("students", [])
    epochs = {r.get("epochs") for r in students}
    curves = {}
    for loss in ("CE", "KD"):
        rows = [r for r in students if r["loss_fn"] == loss]
        initial = result["initial"]
        if initial["loss_fn"] == loss and initial.get("epochs") in epochs:
            rows.append(initial)
        pts = [(r[axis], r["test_acc"]) for r in rows if r.get(axis)]
        if len(pts) > 1:
            curves[loss] = sorted(pts)
    return curves


def curve_at(points: list[tuple[int, float]], size: float) -> float | None:
    """A curve's accuracy at ``size``, interpolated linearly in log size between the two
    points around it; None outside the curve (no extrapolation)."""
    points = sorted(points)
    for (p0, a0), (p1, a1) in zip(points, points[1:]):
        if p0 <= size <= p1:
            if p1 == p0:
                return max(a0, a1)
            t = (math.log(size) - math.log(p0)) / (math.log(p1) - math.log(p0))
            return a0 + t * (a1 - a0)
    return None


def against_curves(result: dict, key: str = "final", axis: str = "params") -> dict:
    """Where ``result[key]`` (the final network, or the retrained one) lies against each
    curve of the networks trained the standard way, at its size on ``axis``: {loss:
    {"curve_acc", "margin"}} (test accuracy, margin = its - the curve's), for the curves
    that reach its size."""
    row = result[key]
    out = {}
    for loss, pts in student_curves(result, axis).items():
        acc = curve_at(pts, row[axis]) if row.get(axis) else None
        if acc is not None:
            out[loss] = dict(curve_acc=acc, margin=row["test_acc"] - acc)
    return out


def _trained_as(result: dict) -> str:
    epochs = {r.get("epochs") for r in result.get("students", [])}
    return f"trained {epochs.pop()} epochs" if len(epochs) == 1 else "trained"


def _points(margin: float) -> str:
    return f"{abs(margin) * 100:.2f} points {'above' if margin >= 0 else 'below'}"


def placed(result: dict, key: str = "final", axis: str = "params") -> str | None:
    """``result[key]`` against the networks trained the standard way, at its size on
    ``axis``: against their curves where one reaches its size, else against the one nearest
    its size (a network of the user's is one point; a planted network can outgrow the
    widest student); None without them."""
    row, trained = result[key], _trained_as(result)
    where = against_curves(result, key, axis)
    if where:
        return " and ".join(
            f"{_points(c['margin'])} the {loss} students {trained} ({c['curve_acc'] * 100:.2f}%"
            f" at its {AXES[axis]}, interpolated in log {AXES[axis]})"
            for loss, c in sorted(where.items(), key=lambda kv: kv[0] != "KD"))
    students = [r for r in result.get("students", []) if r.get(axis)]
    pool = [r for r in students if r["loss_fn"] == row["loss_fn"]] or students
    if not pool or not row.get(axis):
        return None
    other = min(pool, key=lambda r: (abs(math.log(row[axis] / r[axis])), r[axis]))
    loss = f" {other['loss_fn']}" if other["loss_fn"] in ("CE", "KD") else ""
    return (f"{_points(row['test_acc'] - other['test_acc'])} {other['network']}{loss} "
            f"{trained} ({other['test_acc'] * 100:.2f}% at {size_text(other, axis)} "
            f"{AXES[axis]}, the nearest; {row[axis] / other[axis] * 100 - 100:+.0f}% "
            f"{AXES[axis]})")


def placement(result: dict, key: str = "final") -> str | None:
    """One line: ``result[key]`` against the networks trained the standard way as long, at
    its size in parameters and in FLOPs (None without them: no --table)."""
    row = result[key]
    parts = [(axis, placed(result, key, axis)) for axis in AXES]
    parts = [f"by {AXES[axis]}, {text}" for axis, text in parts if text]
    if not parts:
        return None
    return (f"{row['network']}, {row['test_acc'] * 100:.2f}% at {size_text(row, 'params')} "
            f"parameters and {size_text(row, 'flops')} FLOPs per image: " + "; ".join(parts))


def verdict(result: dict) -> list[str]:
    """What a user needs, one line each: which network to take (with --retrain), and where
    the final network and the retrained one lie against the networks trained the standard
    way as long (with --table)."""
    keys = ["final"] + (["retrained"] if result.get("retrained") else [])
    return [line for line in [advice(result), *(placement(result, key) for key in keys)]
            if line]


def advice(result: dict) -> str | None:
    """Which network to take, by validation accuracy (the test set decides nothing): the
    planted one (final.pt) or its widths retrained (final_retrained.pt); None without
    --retrain."""
    final, retrained = result["final"], result.get("retrained")
    if not retrained:
        return None
    take, other = (("final_retrained.pt", "final.pt") if retrained["val_acc"] > final["val_acc"]
                   else ("final.pt", "final_retrained.pt"))
    rows = {"final.pt": final, "final_retrained.pt": retrained}
    return (f"Take {take}: its validation accuracy is {rows[take]['val_acc'] * 100:.2f}%, "
            f"{other}'s {rows[other]['val_acc'] * 100:.2f}%")


def cost_text(cost: dict | None) -> str:
    """A training cost (search.rules.training_cost) as the table shows it."""
    if not cost:
        return "-"
    return f"{cost['flops'] / 1e12:.3g} TFLOP, {cost['seconds']:.0f} s"


def comparison_table(result: dict) -> str:
    """Ours beside the paper's, row by row, where the paper has the same network and loss."""
    paper = {(name, loss): (params, tl, ta) for name, params, tl, ta, loss in
             PAPER.get(result.get("compare_with", "none"), [])}
    ours = [result["teacher"], result["initial"], *result.get("students", []), result["final"]]
    lines = ["| network | loss | params (ours / paper) | test loss (ours / paper) | "
             "test acc (ours / paper) |", "|---|---|---|---|---|"]
    for r in ours:
        name = r["network"].replace("Initial = ", "")
        key = ("Planted", "KD") if name == "Planted (final)" else (name, r["loss_fn"])
        p_params, p_loss, p_acc = paper.get(key, ("-", None, None))
        lines.append(f"| {r['network']} | {r['loss_fn']} | {r['params'] / 1000:.1f}K / {p_params} | "
                     f"{r['test_loss']:.4f} / {'-' if p_loss is None else f'{p_loss:.4f}'} | "
                     f"{r['test_acc'] * 100:.2f}% / {'-' if p_acc is None else f'{p_acc:.2f}%'} |")
    return "\n".join(lines)


def results_table(result: dict) -> str:
    """Markdown table: network, params, test loss, test acc, loss function (the paper's
    columns; its "Test Err." is the test cross-entropy), its forward FLOPs per image, the
    epochs its oldest weights trained and what training it cost, plus the validation
    numbers."""
    rows = [result["teacher"], result["initial"], *result.get("students", []), *result["rounds"]]
    final = dict(result["final"], network="**Planted (final)**")
    retrained = [result["retrained"]] if result.get("retrained") else []
    lines = ["| network | widths | params | FLOPs | epochs | train cost | test loss | test acc "
             "| loss | val loss | val acc |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in [*rows, final, *retrained]:
        bold = (lambda t: f"**{t}**") if r is final else (lambda t: t)
        params, loss, acc = (bold(t) for t in (f"{r['params'] / 1000:.1f}K",
                                               f"{r['test_loss']:.4f}",
                                               f"{r['test_acc'] * 100:.2f}%"))
        epochs = "-" if r.get("epochs") is None else r["epochs"]
        lines.append(f"| {r['network']} | {widths_text(r)} | {params} | {size_text(r, 'flops')} "
                     f"| {epochs} | "
                     f"{cost_text(r.get('cost'))} | {loss} | {acc} | {r['loss_fn']} | "
                     f"{r['val_loss']:.4f} | {r['val_acc'] * 100:.2f}% |")
    return "\n".join(lines)


def widths_text(row: dict) -> str:
    """A network's widths as the table shows them: the paper's as conv widths and fc1's, a
    chain's as its conv planting points' widths and its linear ones' (a teacher of another
    kind has none)."""
    if not row.get("widths"):
        return "-"
    text = "/".join(map(str, row["widths"]))
    fc = row.get("fc_width")
    if fc is None:
        return text
    return f"{text}, fc {'/'.join(map(str, fc)) if isinstance(fc, list) else fc}"


def plot(points: list[tuple[str, float, float]], path: Path, title: str,
         curves: dict[str, list[tuple[float, float]]] | None = None,
         teacher: tuple[str, float, float] | None = None):
    """points: (label, params, test accuracy); curves: name -> [(params, acc)] joined by lines.

    The axes frame the students (points and curves). The teacher, usually 10-40x their size,
    is marked apart: a dashed line at its accuracy, or a note at the top edge when its
    accuracy is above the frame, with its size in the label."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    xs, ys = [], []
    for name, pts in (curves or {}).items():
        pts = sorted(pts)
        ax.plot([p / 1000 for p, _ in pts], [a * 100 for _, a in pts], "o-", label=name)
        xs += [p / 1000 for p, _ in pts]
        ys += [a * 100 for _, a in pts]
    for label, params, acc in points:
        # Small black dots on top of the curves: a colour of their own would read as a curve's.
        ax.scatter([params / 1000], [acc * 100], s=8, color="black", zorder=3)
        ax.annotate(label, (params / 1000, acc * 100), textcoords="offset points",
                    xytext=(4, -10), fontsize=7)
        xs.append(params / 1000)
        ys.append(acc * 100)
    ax.set_xscale("log")
    if xs:
        ax.set_xlim(min(xs) / 1.15, max(xs) * 1.15)
        span = max(max(ys) - min(ys), 1.0)
        low, high = min(ys) - 0.15 * span, max(ys) + 0.15 * span
        if teacher is not None and teacher[2] * 100 <= high + 0.5 * span:
            high = max(high, teacher[2] * 100 + 0.08 * span)
        ax.set_ylim(low, high)
    if teacher is not None:
        label, params, acc = teacher
        text = f"{label} ({params / 1000:.1f}K params): {acc * 100:.2f}%"
        if acc * 100 <= ax.get_ylim()[1]:
            ax.axhline(acc * 100, color="gray", linestyle="--", linewidth=1, label=text)
        else:
            ax.annotate(text + " (above)", xy=(0.99, 0.98), xycoords="axes fraction",
                        ha="right", va="top", fontsize=7, color="gray")
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 20, 30, 40 rather than 2x10^1
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("parameters (thousands, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        atomic_write(path, lambda p: fig.savefig(p, format="png"), "the plot")
    finally:
        plt.close(fig)


def write_results(out: Path, result: dict):
    cfg = result["config"]
    planted = [(f"round {r['round']}", r["params"], r["test_acc"]) for r in result["rounds"]]
    curves = {"planting": [(result["initial"]["params"], result["initial"]["test_acc"])]
              + [(p, a) for _, p, a in planted]}
    for loss, pts in student_curves(result).items():
        curves[f"Student[k], {loss}, {_trained_as(result)}"] = pts
    points = [("initial", result["initial"]["params"], result["initial"]["test_acc"]), *planted]
    points += [(r["network"], r["params"], r["test_acc"]) for r in result.get("students", [])
               if not student_curves(result)]  # a network of the user's: no curve to draw
    if result.get("retrained"):
        points.append(("retrained", result["retrained"]["params"],
                       result["retrained"]["test_acc"]))
    teacher = result["teacher"]
    lines = verdict(result)
    # A curve's warning repeats its sentence, which results.md states already.
    other_warnings = [w for w in result.get("warnings", [])
                      if not any(w.startswith(line) for line in lines)]
    dataset = result.get("dataset_name", cfg["dataset"])
    start = result.get("student_name", f"Student[{cfg['init_width']}]")
    plot(points, out / "accuracy_vs_params.png", f"{dataset}: planting from {start}",
         curves=curves, teacher=(teacher["network"], teacher["params"], teacher["test_acc"]))
    compare = result.get("compare_with", "none") != "none"
    text = [f"# Channel planting on {dataset}", "",
            "Test loss is the test cross-entropy (the paper's \"Test Err.\"). FLOPs: of one "
            "image's forward pass. Epochs: how long "
            "a network's oldest weights trained. Train cost: image-epochs times 3 forward "
            "passes' FLOPs (forward and backward) of every network trained on the way (for "
            "planting: the initial network and every candidate, rejected ones included), and "
            "the wall time on this device; the teacher's passes are not counted.", "",
            results_table(result), "",
            *([f"Beside the paper's {result['compare_with']} table (the poster's numbers, "
               "Mitsuno et al., ICPR 2020):", "", comparison_table(result), ""] if compare else []),
            f"Stopped: {result['stop_reason']}.", "",
            *[f"{line}." for line in lines],
            *[f"Warning: {w}" for w in other_warnings],
            *([""] if lines or other_warnings else []),
            "![test accuracy against parameters](accuracy_vs_params.png)", "",
            "Configuration: see config.json; every trained network and candidate: log.jsonl."]
    atomic_write(out / "results.md", lambda p: p.write_text("\n".join(text) + "\n"))
