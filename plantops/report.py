"""Human-readable results of a search: results.md (a table laid out like the paper's) and
accuracy_vs_params.png (test accuracy against parameters)."""

from __future__ import annotations

from pathlib import Path


def results_table(result: dict, paper: list[dict] | None = None) -> str:
    """Markdown table: network, params, test loss, test acc, loss function (the paper's
    columns; its "Test Err." is the test cross-entropy), plus the validation numbers."""
    rows = [result["teacher"], result["initial"], *result["rounds"]]
    lines = ["| network | widths | params | test loss | test acc | loss | val loss | val acc |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['network']} | {'/'.join(map(str, r['widths']))}, fc {r['fc_width']} | "
                     f"{r['params'] / 1000:.1f}K | {r['test_loss']:.4f} | {r['test_acc'] * 100:.2f}% "
                     f"| {r['loss_fn']} | {r['val_loss']:.4f} | {r['val_acc'] * 100:.2f}% |")
    final = result["final"]
    lines.append(f"| **Planted (final)** | {'/'.join(map(str, final['widths']))}, fc "
                 f"{final['fc_width']} | **{final['params'] / 1000:.1f}K** | "
                 f"**{final['test_loss']:.4f}** | **{final['test_acc'] * 100:.2f}%** | KD | "
                 f"{final['val_loss']:.4f} | {final['val_acc'] * 100:.2f}% |")
    return "\n".join(lines)


def plot(points: list[tuple[str, float, float]], path: Path, title: str,
         curves: dict[str, list[tuple[float, float]]] | None = None):
    """points: (label, params, test accuracy); curves: name -> [(params, acc)] joined by lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, pts in (curves or {}).items():
        pts = sorted(pts)
        ax.plot([p / 1000 for p, _ in pts], [a * 100 for _, a in pts], "o-", label=name)
    for label, params, acc in points:
        ax.scatter([params / 1000], [acc * 100], zorder=3)
        ax.annotate(label, (params / 1000, acc * 100), textcoords="offset points",
                    xytext=(4, -10), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (thousands, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def write_results(out: Path, result: dict):
    cfg = result["config"]
    planted = [(f"round {r['round']}", r["params"], r["test_acc"]) for r in result["rounds"]]
    plot([("teacher", result["teacher"]["params"], result["teacher"]["test_acc"]),
          ("initial", result["initial"]["params"], result["initial"]["test_acc"]), *planted],
         out / "accuracy_vs_params.png", f"{cfg['dataset']}: planting from Student[{cfg['init_width']}]",
         curves={"planting": [(result["initial"]["params"], result["initial"]["test_acc"])]
                 + [(p, a) for _, p, a in planted]})
    text = [f"# Channel planting on {cfg['dataset']}", "",
            "Test loss is the test cross-entropy (the paper's \"Test Err.\").", "",
            results_table(result), "",
            f"Stopped: {result['stop_reason']}.", "",
            "![test accuracy against parameters](accuracy_vs_params.png)", "",
            "Configuration: see config.json; every trained network and candidate: log.jsonl."]
    tmp = out / "results.md.tmp"
    tmp.write_text("\n".join(text) + "\n")
    tmp.replace(out / "results.md")
