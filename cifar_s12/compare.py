"""Parity and overhead: the same recipe and seed trained by the plain loop and by Lightning, on the same data.

``python -m cifar_s12 compare`` writes ``compare.json``: both final test accuracies and their difference, each
epoch's losses of both and the largest relative difference between them, training images/s of each and Lightning's
share of plain's, and the CPU seconds each whole run used.
"""
from __future__ import annotations

import gc
import os
import resource
from pathlib import Path

from .builders import load_data
from .config import TrainConfig
from .lit import fit_lightning
from .train import fit
from .utils import write_json


PARITY_KEYS = ("epoch", "train_loss", "test_loss", "test_acc")


def compare_trainers(cfg: TrainConfig, out_dir: str | os.PathLike, log=print) -> dict:
    """Train ``cfg`` with the plain loop, then with Lightning (one device), on the same data; write and return the
    two final test accuracies, each trainer's training images/s (all training images over all training seconds)
    and Lightning's share of plain's.

    Also the CPU seconds each whole run used (this process and its loader workers), beside the wall-clock numbers.
    On a shared machine both grow with the neighbours' load (idle threads spin), so compare runs made together.
    """
    out = Path(out_dir)
    data = load_data(cfg)  # loaded and cut to the recipe's subsets once; both trainers get these arrays
    runs = {"torch": lambda: fit(cfg, out / "torch", data=data, log=log),
            "lightning": lambda: fit_lightning(cfg, out / "lightning", data=data, log=log)}
    summary = {}
    for name, run in runs.items():
        cpu_before = _cpu_seconds()
        m = run().metrics
        summary[name] = {"final_test_accuracy": m["final_test_accuracy"],
                         # all training images over all training seconds (not a mean of per-epoch rates)
                         "images_per_second": (sum(h["images_per_second"] * h["epoch_seconds"] for h in m["history"])
                                               / sum(h["epoch_seconds"] for h in m["history"])),
                         "images_per_second_by_epoch": [h["images_per_second"] for h in m["history"]],
                         "epochs": [{key: h[key] for key in PARITY_KEYS} for h in m["history"]],
                         "wall_seconds": m["wall_seconds"], "cpu_seconds": _cpu_seconds() - cpu_before}
    summary["throughput_ratio"] = summary["lightning"]["images_per_second"] / summary["torch"]["images_per_second"]
    summary["accuracy_difference"] = (summary["lightning"]["final_test_accuracy"]
                                      - summary["torch"]["final_test_accuracy"])
    # The same run in both trainers agrees to float rounding (the loops sum an epoch's loss in different orders).
    summary["max_relative_loss_difference"] = max(
        abs(a[key] - b[key]) / abs(b[key])
        for a, b in zip(summary["lightning"]["epochs"], summary["torch"]["epochs"])
        for key in ("train_loss", "test_loss"))
    write_json(out / "compare.json", summary)
    return summary


def _cpu_seconds() -> float:
    gc.collect()  # frees the finished run's loaders, so their worker processes exit and count as children
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)
