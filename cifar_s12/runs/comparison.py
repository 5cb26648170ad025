"""Side by side: the same recipe and seed trained by the plain loop and by Lightning on the same data, and the two
LR range tests from the same weights on the same batches.

``python -m cifar_s12 compare`` writes ``compare.json``: both final test accuracies and their difference, each
epoch's losses of both and the largest relative difference between them, training images/s of each and Lightning's
share of plain's, and the CPU seconds each whole run used; and ``compare.png``, both runs' loss, accuracy and
images/s per epoch in one figure. ``compare --runs`` does the same for two runs already made.
``range_tests`` is ``lr-find --lr-finder both``.
"""
from __future__ import annotations

import gc
import os
import resource

from ..analysis.plots import save_run_figures
from ..config import TrainConfig, same_recipe
from ..dataset import load_data
from ..lit import fit_lightning
from ..train import fit
from ..utils import UserError, write_json
from .folder import CompareFolder, RunFolder
from .table import is_finished, read_run

PARITY_KEYS = ("epoch", "train_loss", "test_loss", "test_acc")


def compare_trainers(cfg: TrainConfig, out_dir: str | os.PathLike, log=print) -> dict:
    """Train ``cfg`` with the plain loop, then with Lightning (one device), on the same data; write and return the
    comparison (``summarize``) and draw both runs' curves beside it (``compare.png``).

    Also the CPU seconds each whole run used (this process and its loader workers), beside the wall-clock numbers.
    On a shared machine both grow with the neighbours' load (idle threads spin), so compare runs made together.
    """
    folder = CompareFolder(out_dir)
    data = load_data(cfg)  # loaded and cut to the recipe's subsets once; both trainers get these arrays
    runs = {"torch": lambda: fit(cfg, folder.run("torch").root, data=data, log=log),
            "lightning": lambda: fit_lightning(cfg, folder.run("lightning").root, data=data, log=log)}
    metrics, cpu_seconds = {}, {}
    for name, run in runs.items():
        cpu_before = _cpu_seconds()
        result = run()
        cpu_seconds[name] = _cpu_seconds() - cpu_before
        metrics[name] = result.metrics
        save_run_figures(folder.run(name), result.metrics, result.lr_find)
    return write_comparison(folder, metrics, cpu_seconds)


def compare_runs(torch_run: str | os.PathLike, lightning_run: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """The same comparison of two runs already made: their run folders (``train --out``, the notebooks') or their
    ``metrics.json`` files (as results/ keeps them), one of each trainer, of the same recipe. Nothing is trained;
    CPU seconds are not known then."""
    metrics = {}
    for trainer, root in (("torch", torch_run), ("lightning", lightning_run)):
        try:
            m = read_run(RunFolder(root).metrics if os.path.isdir(root) else root, needs=("history",))
        except UserError as err:
            raise UserError(f"--runs: {err}") from None
        if m.get("trainer") != trainer:
            raise UserError(f"--runs: {root} is a run of the {m.get('trainer')!r} trainer; give the plain trainer's "
                            f"run first, then Lightning's")
        if not is_finished(m):
            raise UserError(f"--runs: {root} is unfinished ({m.get('epochs_completed')} of {m['config']['epochs']} "
                            f"epochs)")
        metrics[trainer] = m
    if not same_recipe(metrics["torch"]["config"], TrainConfig.from_dict(metrics["lightning"]["config"])):
        raise UserError(f"--runs: {torch_run} and {lightning_run} ran different recipes; compare one recipe and seed")
    return write_comparison(CompareFolder(out_dir), metrics)


def write_comparison(folder: CompareFolder, metrics: dict[str, dict], cpu_seconds: dict | None = None) -> dict:
    """``compare.json`` from the two runs' metrics (``summarize``) and ``compare.png``: their curves in one figure."""
    from ..analysis.plots import plot_trainer_comparison, save_figure

    summary = summarize(metrics, cpu_seconds)
    folder.root.mkdir(parents=True, exist_ok=True)
    write_json(folder.summary, summary)
    save_figure(plot_trainer_comparison({TRAINER_LABELS[name]: m["history"] for name, m in metrics.items()}),
                folder.figure)
    return summary


TRAINER_LABELS = {"torch": "plain PyTorch", "lightning": "Lightning"}


def summarize(metrics: dict[str, dict], cpu_seconds: dict | None = None) -> dict:
    """Both final test accuracies and their difference, each epoch's losses of both and the largest relative
    difference between them, each trainer's training images/s (all training images over all training seconds) and
    Lightning's share of plain's."""
    summary = {}
    for name, m in metrics.items():
        summary[name] = {"final_test_accuracy": m["final_test_accuracy"],
                         # all training images over all training seconds (not a mean of per-epoch rates)
                         "images_per_second": (sum(h["images_per_second"] * h["epoch_seconds"] for h in m["history"])
                                               / sum(h["epoch_seconds"] for h in m["history"])),
                         "images_per_second_by_epoch": [h["images_per_second"] for h in m["history"]],
                         "epochs": [{key: h[key] for key in PARITY_KEYS} for h in m["history"]],
                         "wall_seconds": m["wall_seconds"],
                         "cpu_seconds": cpu_seconds[name] if cpu_seconds else None}
    summary["throughput_ratio"] = summary["lightning"]["images_per_second"] / summary["torch"]["images_per_second"]
    summary["accuracy_difference"] = (summary["lightning"]["final_test_accuracy"]
                                      - summary["torch"]["final_test_accuracy"])
    # The same run in both trainers agrees to float rounding (the loops sum an epoch's loss in different orders).
    summary["max_relative_loss_difference"] = max(
        abs(a[key] - b[key]) / abs(b[key])
        for a, b in zip(summary["lightning"]["epochs"], summary["torch"]["epochs"])
        for key in ("train_loss", "test_loss"))
    return summary


def _cpu_seconds() -> float:
    gc.collect()  # frees the finished run's loaders, so their worker processes exit and count as children
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


