"""The results table: group committed runs (``results/*.json``, each a run's metrics.json) and summarise them.

README's results table is this module's output, so it can be regenerated from the files at any time:
``python -m cifar_s12 results``.
"""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from .errors import UserError

KEY_FIELDS = ("trainer", "recipe", "epochs", "train_images", "device")


def load_runs(folder: str | os.PathLike) -> list[dict]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"results folder {folder} {'is a file' if folder.exists() else 'does not exist'}")
    runs = []
    for path in sorted(folder.glob("*.json")):
        try:
            run = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"cannot read run {path}: {err}") from None
        if not _is_metrics(run):
            raise UserError(f"{path} is not a metrics.json (it needs final_test_accuracy, wall_seconds and a "
                            f"config with epochs and seed)")
        if run.get("epochs_completed", run["config"]["epochs"]) < run["config"]["epochs"]:
            continue  # an unfinished run is not a result
        run["_file"] = path.name
        runs.append(run)
    return runs


def _is_metrics(run) -> bool:
    """The fields the table reads, with the types it reads them as."""
    config = run.get("config") if isinstance(run, dict) else None
    numbers = (int, float)
    return (isinstance(config, dict) and isinstance(run.get("final_test_accuracy"), numbers)
            and isinstance(run.get("wall_seconds"), numbers) and isinstance(config.get("epochs"), int)
            and isinstance(config.get("seed"), int))


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (trainer, recipe, epochs, training images, device): seeds, mean and spread of accuracy."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        key = (run.get("trainer", "torch"), run["config"].get("recipe", "?"), run["config"]["epochs"],
               run.get("train_images"), run.get("device"))
        groups.setdefault(key, []).append(run)
    rows = []
    for key, group in sorted(groups.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
        acc = [100 * r["final_test_accuracy"] for r in group]
        tta = [100 * r["final_test_accuracy_tta"] for r in group if "final_test_accuracy_tta" in r]
        rows.append({
            **dict(zip(KEY_FIELDS, key)),
            "seeds": sorted(r["config"]["seed"] for r in group),
            "mean": statistics.mean(acc), "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "min": min(acc), "max": max(acc),
            # Flip TTA is reported beside the headline, over the runs made with --tta (not every run has it).
            "tta_mean": statistics.mean(tta) if tta else None, "tta_runs": len(tta),
            "wall_minutes": statistics.mean(r["wall_seconds"] for r in group) / 60,
            "commands": sorted({r["command"] for r in group if r.get("command")}),
            "files": [r["_file"] for r in group],
        })
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| trainer | recipe | epochs | train images | seeds | test accuracy % (mean ± std, min–max) "
             "| with flip TTA % | device | wall time / run | command |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tta = f"{r['tta_mean']:.2f}" if r["tta_mean"] is not None else "–"
        if 0 < r["tta_runs"] < len(r["seeds"]):
            tta += f" ({r['tta_runs']} of {len(r['seeds'])} runs)"
        command = "<br>".join(f"`{c}`" for c in r["commands"]) or "–"
        lines.append(f"| {r['trainer']} | {r['recipe']} | {r['epochs']} | {r['train_images']:,} "
                     f"| {', '.join(map(str, r['seeds']))} | {r['mean']:.2f} ± {r['std']:.2f} "
                     f"({r['min']:.2f}–{r['max']:.2f}) | {tta} | {r['device']} | {r['wall_minutes']:.1f} min "
                     f"| {command} |")
    return "\n".join(lines)
