"""Many independent searches: ``--seeds 0,1,2`` and ``--sweep option=v1,v2``.

Each run is a whole search in a folder of its own under ``--out`` (``seed_1``,
``plant_epochs_30-seed_1``...), with its options in its config.json. Under torchrun the runs
are spread over the ranks, each rank running its share one after another on its own
(single-process searches), so independent runs scale with the ranks; without torchrun they run
one after another. Rank 0 then writes one combined report: ``summary.md`` and
``summary.json``, with the mean and standard deviation of each group (the runs that differ only
in their seed) and one row per run. ``runs.json`` lists the runs, so that ``--resume`` on the
folder continues every one of them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import statistics
from pathlib import Path

from plantops.search.checkpoints import atomic_write, make_folder, write_json
from plantops.search.config import Config, config_from_dict, flag, value_type
from plantops.search.distributed import Ranks, resolve_device


def parse_seeds(text: str | None) -> list[int]:
    if text is None:
        return []
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise ValueError(f"--seeds must be comma-separated seeds >= 0, got {text!r}")
    return seeds


def parse_sweep(text: str | None) -> tuple[str, list] | None:
    """``option=v1,v2`` as (option, [values]) in the option's type."""
    if text is None:
        return None
    name, _, values = text.partition("=")
    name = name.strip().replace("-", "_")
    fields = {f.name: f for f in dataclasses.fields(Config)}
    if name not in fields or not values.strip():
        raise ValueError(f"--sweep must be OPTION=V1,V2,... with an option of the search, got "
                         f"{text!r}")
    if name in ("out", "seed"):
        raise ValueError(f"--sweep {name}=... is not a sweep: use --out for the folder and "
                         "--seeds for seeds")
    kind = value_type(fields[name])
    parsed = []
    for value in values.split(","):
        value = value.strip()
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "on", "off"):
                raise ValueError(f"--sweep {name}: {value!r} is not on/off")
            parsed.append(value.lower() in ("true", "1", "on"))
        else:
            try:
                parsed.append(kind(value))
            except ValueError:
                raise ValueError(f"--sweep {name}: {value!r} is not a {kind.__name__}") from None
    return name, parsed


def plan(cfg: Config, seeds: list[int], sweep: tuple[str, list] | None) -> list[dict]:
    """The runs: [{"name": folder name, "group": label, "config": Config}], validated."""
    seeds = seeds or [cfg.seed]
    values = sweep[1] if sweep else [None]
    runs = []
    for value, seed in itertools.product(values, seeds):
        changes = dict(seed=seed)
        group = "all"
        if sweep:
            changes[sweep[0]] = value
            group = f"{flag(sweep[0])} {value}"
        name = "-".join(([f"{sweep[0]}_{value}"] if sweep else []) + [f"seed_{seed}"])
        run_cfg = config_from_dict(dict(changes, out=str(Path(cfg.out) / name)), cfg).validate()
        runs.append(dict(name=name, group=group, config=run_cfg))
    return runs


def run_many(runs: list[dict], out: Path, search) -> dict:
    """Runs ``runs`` (rank r takes every size-th from the r-th) with ``search(cfg, ranks)``
    and writes the combined report on rank 0; returns the summary."""
    device = resolve_device(runs[0]["config"].device)
    ranks = Ranks.start(device.type)
    if ranks.size > 1 and device.type == "cuda":  # each rank its own GPU
        runs = [dict(r, config=dataclasses.replace(r["config"], device=f"cuda:{ranks.local_rank}"))
                for r in runs]
    if ranks.main:
        make_folder(out, "the runs' folder")
        write_json(out / "runs.json", [dict(name=r["name"], group=r["group"]) for r in runs])
    mine = ranks.share(range(len(runs)))
    results = {}
    for index in mine:
        run = runs[index]
        print(f"run {run['name']} ({index + 1} of {len(runs)}"
              f"{f', rank {ranks.rank}' if ranks.size > 1 else ''})", flush=True)
        results[index] = search(run["config"], Ranks())
    gathered = {}
    for part in ranks.gather(results):
        gathered.update(part)
    summary = summarize(runs, [gathered[i] for i in range(len(runs))])
    if ranks.main:
        write_json(out / "summary.json", summary)
        atomic_write(out / "summary.md", lambda p: p.write_text(summary_markdown(summary)))
        print(f"summary of {len(runs)} runs in {out}/summary.md")
    ranks.close()
    return summary


def summarize(runs: list[dict], results: list[dict]) -> dict:
    rows = []
    for run, result in zip(runs, results):
        final = result["final"]
        rows.append(dict(run=run["name"], group=run["group"], seed=run["config"].seed,
                         widths=final["widths"], params=final["params"],
                         test_loss=final["test_loss"], test_acc=final["test_acc"],
                         val_loss=final["val_loss"],
                         layers=[r["layer"] for r in result["rounds"]]))
    groups = []
    for group in dict.fromkeys(r["group"] for r in rows):
        members = [r for r in rows if r["group"] == group]
        stats = {}
        for key in ("params", "test_loss", "test_acc", "val_loss"):
            values = [r[key] for r in members]
            stats[key] = dict(mean=statistics.fmean(values),
                              std=statistics.stdev(values) if len(values) > 1 else 0.0)
        groups.append(dict(group=group, runs=len(members), **stats))
    return dict(groups=groups, runs=rows)


def summary_markdown(summary: dict) -> str:
    lines = ["# Runs", "", "Mean ± standard deviation over each group's runs (sample standard "
             "deviation; 0 for a single run).", "",
             "| group | runs | params | test loss | test acc | val loss |", "|---|---|---|---|---|---|"]
    for g in summary["groups"]:
        lines.append(f"| {g['group']} | {g['runs']} | {g['params']['mean'] / 1000:.1f}K ± "
                     f"{g['params']['std'] / 1000:.1f}K | {g['test_loss']['mean']:.4f} ± "
                     f"{g['test_loss']['std']:.4f} | {g['test_acc']['mean'] * 100:.2f}% ± "
                     f"{g['test_acc']['std'] * 100:.2f} | {g['val_loss']['mean']:.4f} ± "
                     f"{g['val_loss']['std']:.4f} |")
    lines += ["", "| run | seed | widths | params | test loss | test acc | layers planted |",
              "|---|---|---|---|---|---|---|"]
    for r in summary["runs"]:
        lines.append(f"| {r['run']} | {r['seed']} | {'/'.join(map(str, r['widths']))} | "
                     f"{r['params'] / 1000:.1f}K | {r['test_loss']:.4f} | "
                     f"{r['test_acc'] * 100:.2f}% | {', '.join(r['layers']) or '-'} |")
    return "\n".join(lines) + "\n"


def resumed_runs(folder: Path) -> list[dict] | None:
    """The runs of a --seeds/--sweep folder, from its runs.json and their config.json files;
    None if ``folder`` holds a single search."""
    listing = folder / "runs.json"
    if not listing.is_file():
        return None
    runs = []
    for entry in json.loads(listing.read_text()):
        saved = json.loads((folder / entry["name"] / "config.json").read_text())["config"]
        runs.append(dict(entry, config=config_from_dict(saved).validate()))
    return runs
