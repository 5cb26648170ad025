"""metrics.json's schema and the per-epoch writers both trainers share: one history row, one printed line, one save."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..config import TrainConfig
from ..dataset import CifarData
from ..model import count_parameters
from ..utils import write_json
from .checkpoints import save_checkpoint
from .folder import RunFolder
from .plumbing import interrupts_deferred


@dataclass
class RunResult:
    """What fit and fit_lightning return: the run's metrics.json, the trained network, its LR range test."""

    metrics: dict
    model: nn.Module
    lr_find: Any = None  # an lr_find.LRFindResult when a range test chose the max LR
    is_global_zero: bool = True  # False in the other processes of a multi-process (DDP) run: they write nothing


HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_second",
                "epoch_seconds", "grad_scale")


def new_metrics(trainer: str, cfg: TrainConfig, model: nn.Module, device: str, data: CifarData,
                loader_workers: int, command: str | None, run_provenance: dict) -> dict:
    """The head of metrics.json; ``record_epoch`` fills in the rest as epochs finish. (``loader_workers`` is
    recorded for the record: each image's augmentations are seeded on their own, so it does not change the run.)
    ``command`` and ``run_provenance`` come from the caller, which knows them once per run (``cli_command()``,
    ``provenance()``): Lightning rebuilds this head every epoch and should not ask git again each time.
    """
    return {"trainer": trainer, "model": cfg.model, "parameters": count_parameters(model), "device": device,
            "data_source": data.source, "train_images": len(data.train), "test_images": len(data.test),
            "loader_workers": loader_workers, "config": cfg.to_dict(), "command": command, **run_provenance,
            "history": [], "lr_schedule": []}


def describe_run(cfg: TrainConfig, model: nn.Module, device: str, data: CifarData) -> str:
    """A run's first line, in both trainers: the network, where and in what precision it trains, and on what."""
    return (f"{cfg.model}: {count_parameters(model):,} parameters | {device} | "
            f"{len(data.train):,} train / {len(data.test):,} test images from {data.source}")


def record_epoch(metrics: dict, row: dict, lr_schedule: list[float], wall_start: float) -> None:
    """Append one history row (the HISTORY_KEYS of ``row``, in that order) and update the run's totals."""
    metrics["history"].append({key: row.get(key) for key in HISTORY_KEYS})  # rows from before grad_scale: None
    metrics.update(lr_schedule=lr_schedule, final_test_accuracy=row["test_acc"], epochs_completed=row["epoch"],
                   wall_seconds=time.perf_counter() - wall_start)


def format_epoch(row: dict, epochs: int) -> str:
    return (f"epoch {row['epoch']:2d}/{epochs} | train loss {row['train_loss']:.3f} acc {row['train_acc']:.4f} | "
            f"test loss {row['test_loss']:.3f} acc {row['test_acc']:.4f} | lr {row['lr']:.3g} | "
            f"{row['images_per_second']:.0f} img/s, {row['epoch_seconds']:.0f} s")


def announce_resume(history: list[dict], epochs: int, log) -> None:
    """What a resumed run of either trainer prints first, so its output is the whole run: the epochs already done."""
    log(f"resuming after epoch {len(history)} of {epochs}; the epochs already done:")
    for row in history:
        log(format_epoch(row, epochs))
    log(f"continuing from epoch {len(history) + 1}:")


def save_outputs(folder: RunFolder, model: nn.Module, cfg: TrainConfig, classes, metrics: dict,
                 training: dict | None = None) -> None:
    """``model.pt`` and ``metrics.json`` (and, with ``training``, the plain trainer's ``checkpoints/last.pt``
    first), each written atomically, all or none: Ctrl-C waits for the set. A kill -9 between two of them leaves
    last.pt ahead of the others, and a resume rewrites them from it."""
    describe = dict(model_name=cfg.model, model_kwargs=cfg.model_kwargs(), config=cfg.to_dict(), classes=classes,
                    epoch=metrics["epochs_completed"], trainer=metrics["trainer"], data_source=metrics["data_source"])
    with interrupts_deferred():
        if training is not None:
            save_checkpoint(folder.train_state, model, **describe, training={**training, "metrics": metrics})
        save_checkpoint(folder.model, model, **describe)
        write_json(folder.metrics, metrics)
