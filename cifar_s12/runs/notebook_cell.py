"""What a notebook's training cell does with its run folder OUT: start, continue, show a finished run, or refuse."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..config import TrainConfig, recipe_differences
from ..utils import UserError
from .folder import CHECKPOINTS, RunFolder
from .metrics import format_epoch

FINISHED = "finished"  # continue_or_start: ``out`` already holds this run, finished


def continue_or_start(out: str | os.PathLike, trainer: str, cfg: TrainConfig, log=print) -> Path | str | None:
    """What a notebook's training cell does with ``out`` when it runs (again, after a disconnect or "Run all").

    - nothing of a run in ``out``: None, a new run starts;
    - an interrupted run of ``trainer`` with ``cfg``'s recipe: its checkpoint, to continue exactly;
    - that run finished: FINISHED, and the cell trains nothing;
    - any other run (another recipe, the other trainer, files it cannot read): a UserError naming what differs and
      the two ways on. A notebook never deletes a run.
    """
    folder = RunFolder(out)
    if not folder.has_run():
        return None
    checkpoint = folder.train_state if trainer == "torch" else folder.lightning_last
    try:
        metrics = json.loads(folder.metrics.read_text())
    except (OSError, ValueError):
        metrics = {}
    saved = metrics.get("config", {})
    if metrics.get("trainer") != trainer:
        differences = [f"trainer: {metrics.get('trainer')} here, {trainer} in this cell"]
    else:
        differences = recipe_differences(saved, cfg) if saved else ["its metrics.json is missing or unreadable"]
    done = metrics.get("epochs_completed") or 0
    if not differences and done >= cfg.epochs:
        log(f"{out} holds this run, finished: nothing to train. Its epochs:")
        for row in metrics["history"]:
            log(format_epoch(row, cfg.epochs))
        return FINISHED
    if not differences and checkpoint.is_file():
        return checkpoint  # the trainer says where it resumes and shows the epochs already done
    if not differences:
        differences = [f"its {CHECKPOINTS}/{checkpoint.name} is missing"]
    raise UserError(f"{out} holds another run ({'; '.join(differences)}), which this cell will not replace: set OUT "
                    f"to a new folder, or delete {out} to train there again")
