"""The results table: group committed runs (``results/*.json``, each a run's metrics.json) and summarise them.

README's results table is this module's output, so it can be regenerated from the files at any time:
``python -m cifar_s12 results``.
"""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from ..config import recipe_changes
from ..utils import UserError

KEY_FIELDS = ("trainer", "recipe", "changes", "epochs", "train_images", "device")


def load_runs(folder: str | os.PathLike) -> list[dict]:
    """The finished runs among ``folder/*.json``, each checked (``read_run``); an unfinished run is not a result."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"results folder {folder} {'is a file' if folder.exists() else 'does not exist'}")
    runs = []
    for path in sorted(folder.glob("*.json")):
        run = read_run(path)
        if is_finished(run):
            run["_file"] = path.name
            runs.append(run)
    return runs


def read_run(path: str | os.PathLike, needs: tuple[str, ...] = ()) -> dict:
    """A run's metrics.json with every field the table reads checked (and ``needs``, further keys the caller
    reads); a file that is not one is a UserError naming it and what is wrong. A null is as good as absent (e.g.
    ``final_test_accuracy_tta`` of a run made without --tta), so it is dropped."""
    try:
        run = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read run {path}: {err}") from None
    if isinstance(run, dict):
        run = {key: value for key, value in run.items() if value is not None}
    problem = _problem(run) or next((f"no {key}" for key in needs if key not in run), None)
    if problem:
        raise UserError(f"{path} is not a run's metrics.json: {problem}")
    return run


def is_finished(run: dict) -> bool:
    """Whether a run (``read_run``'s) trained all its recipe's epochs."""
    return run.get("epochs_completed", run["config"]["epochs"]) >= run["config"]["epochs"]


def lacks_tta(run: dict) -> bool:
    """Whether a run whose recipe has TTA has no TTA figure (it stopped in its final evaluation)."""
    return bool(run["config"].get("tta")) and run.get("final_test_accuracy_tta") is None


NUMBER, TEXT = (int, float), str
# What the table reads, and as what: (key, types, required). bool is an int to isinstance, so it is refused apart.
FIELDS = (("final_test_accuracy", NUMBER, True), ("wall_seconds", NUMBER, True), ("train_images", int, True),
          ("final_test_accuracy_tta", NUMBER, False), ("final_test_accuracy_flip_tta", NUMBER, False),
          ("epochs_completed", int, False), ("trainer", TEXT, False),
          ("device", TEXT, False), ("command", TEXT, False))
CONFIG_FIELDS = (("epochs", int, True), ("seed", int, True), ("recipe", TEXT, False))
KIND_NAMES = {NUMBER: "a number", int: "a whole number", TEXT: "text"}


def _problem(run) -> str | None:
    """What is missing or of the wrong type among the fields the table reads; None when all is well."""
    if not isinstance(run, dict) or not isinstance(run.get("config"), dict):
        return "no config"
    for where, obj, fields in (("", run, FIELDS), ("config.", run["config"], CONFIG_FIELDS)):
        for key, kinds, required in fields:
            value = obj.get(key)
            if value is None and not required:
                continue
            if value is None:
                return f"no {where}{key}"
            if isinstance(value, bool) or not isinstance(value, kinds):
                return f"{where}{key} is {value!r}, not {KIND_NAMES[kinds]}"
    return None


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (trainer, recipe and its changes, epochs, training images, device): seeds, mean and spread of
    accuracy. A run made with ``--set`` (an ablation) is its own row."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        key = (run.get("trainer", "torch"), run["config"].get("recipe", "?"), " ".join(recipe_changes(run["config"])),
               run["config"]["epochs"], run.get("train_images"), run.get("device"))
        groups.setdefault(key, []).append(run)
    rows = []
    for key, group in sorted(groups.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
        acc = [100 * r["final_test_accuracy"] for r in group]
        tta = [100 * r["final_test_accuracy_tta"] for r in group if "final_test_accuracy_tta" in r]
        flip = [100 * r["final_test_accuracy_flip_tta"] for r in group if "final_test_accuracy_flip_tta" in r]
        rows.append({
            **dict(zip(KEY_FIELDS, key)),
            "seeds": sorted(r["config"]["seed"] for r in group),
            "mean": statistics.mean(acc), "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "min": min(acc), "max": max(acc),
            # Flip TTA is reported beside the headline, over the runs made with --tta (not every run has it).
            "tta_mean": statistics.mean(tta) if tta else None, "tta_runs": len(tta),
            # A recipe whose TTA also shifts the views (tta_shift) reports the flip alone too, from the same runs.
            "flip_tta_mean": statistics.mean(flip) if flip else None,
            "wall_minutes": statistics.mean(r["wall_seconds"] for r in group) / 60,
            "commands": sorted({r["command"] for r in group if r.get("command")}),
            "files": [r["_file"] for r in group],
        })
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The table; "with TTA" is the recipe's (flip, plus the shifted views of a tta_shift recipe), and a column for
    the flip alone appears when a run measured it beside shifted views."""
    flip_column = any(r["flip_tta_mean"] is not None for r in rows)
    lines = ["| trainer | recipe | epochs | train images | seeds | test accuracy % (mean ± std, min–max) "
             f"| with TTA % |{' flip TTA alone % |' if flip_column else ''} device | wall time / run | command |",
             "|---|---|---|---|---|---|---|" + "---|" * flip_column + "---|---|---|"]
    for r in rows:
        tta = f"{r['tta_mean']:.2f}" if r["tta_mean"] is not None else "–"
        if 0 < r["tta_runs"] < len(r["seeds"]):
            tta += f" ({r['tta_runs']} of {len(r['seeds'])} runs)"
        if flip_column:
            tta += f" | {r['flip_tta_mean']:.2f}" if r["flip_tta_mean"] is not None else " | –"
        command = "<br>".join(f"`{c}`" for c in r["commands"]) or "–"
        recipe = f"{r['recipe']} `--set {' --set '.join(r['changes'].split())}`" if r["changes"] else r["recipe"]
        lines.append(f"| {r['trainer']} | {recipe} | {r['epochs']} | {r['train_images']:,} "
                     f"| {', '.join(map(str, r['seeds']))} | {r['mean']:.2f} ± {r['std']:.2f} "
                     f"({r['min']:.2f}–{r['max']:.2f}) | {tta} | {r['device']} | {r['wall_minutes']:.1f} min "
                     f"| {command} |")
    return "\n".join(lines)
