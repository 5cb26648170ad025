"""Figures. Every figure in the notebooks, the CLI and README.md is drawn by one of these functions.

Each returns a matplotlib Figure; ``save_figure`` writes it atomically and closes it.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt  # without a display matplotlib falls back to Agg; notebooks keep inline
import numpy as np
import torch
from matplotlib.figure import Figure

from ..transform import CIFAR10_MEAN, CIFAR10_STD
from ..utils import atomic_path


def figure_format(path: str | os.PathLike) -> str:
    """The file format a figure is saved in: the path's extension (.png, .pdf, .svg, ...), PNG without one."""
    return Path(path).suffix[1:].lower() or "png"


def figure_formats() -> set[str]:
    return set(Figure().canvas.get_supported_filetypes())


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> None:
    # format= because the temporary file's name has no extension for matplotlib to go by
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=figure_format(path), dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def to_display(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Normalised CHW tensors (one or a batch) or uint8 HWC arrays -> uint8 NHWC for imshow."""
    if isinstance(images, torch.Tensor):
        x = images.detach().float().cpu()
        x = x[None] if x.ndim == 3 else x
        mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
        x = (x * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        return (x * 255).round().astype(np.uint8)
    arr = np.asarray(images)
    return arr[None] if arr.ndim == 3 else arr


def image_grid(images, titles: Sequence[str] | None = None, ncols: int = 10, title: str | None = None,
               tile: float = 1.3) -> Figure:
    """A grid of images (see ``to_display`` for what ``images`` may be), one optional caption each."""
    images = to_display(images)
    n = len(images)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(tile * ncols, (tile + 0.35) * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[i], fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(history: list[dict], lr_schedule: Sequence[float] | None = None) -> Figure:
    """Train/test loss and accuracy per epoch, and (if given) the learning rate at every step."""
    epochs = [h["epoch"] for h in history]
    panels = 3 if lr_schedule else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.4))
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", ms=3, label="train")
        ax.plot(epochs, [h[f"test_{key}"] for h in history], "o-", ms=3, label="test")
        ax.set(xlabel="epoch", ylabel=label, title=label)
        ax.grid(alpha=0.3)
        ax.legend()
    if lr_schedule:
        axes[2].plot(np.arange(len(lr_schedule)), lr_schedule)
        axes[2].set(xlabel="step", ylabel="learning rate", title="OneCycle schedule")
        axes[2].grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_planned_schedule(lrs: Sequence[float], steps_per_epoch: int, suggested_lr: float | None = None) -> Figure:
    """OneCycle's plan before training (``builders.planned_lrs``): the LR of every step against the epoch, its peak
    marked with the epoch it falls in, and (if given) the LR a range test suggested, for comparison."""
    epochs = np.arange(1, len(lrs) + 1) / steps_per_epoch  # step k ends at epoch k / steps_per_epoch
    peak = int(np.argmax(lrs))
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.plot(epochs, lrs, label="planned LR per step")
    ax.plot(epochs[peak], lrs[peak], "o", color="tab:orange",
            label=f"peak {lrs[peak]:.3g} in epoch {peak // steps_per_epoch + 1}")
    if suggested_lr is not None:
        ax.axhline(suggested_lr, color="tab:red", ls="--", label=f"range test suggested {suggested_lr:.3g}")
    ax.set(xlabel="epoch", ylabel="learning rate", title="OneCycle schedule, as planned",
           xlim=(0, len(lrs) / steps_per_epoch))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_trainer_comparison(histories: dict[str, list[dict]]) -> Figure:
    """Runs side by side, e.g. ``{"plain PyTorch": history, "Lightning": history}`` of the same recipe and seed:
    train and test loss, test accuracy and training images/s per epoch (``metrics.json``'s ``history``)."""
    fig, axes = plt.subplots(1, 3, figsize=(13.8, 3.6))
    for (label, history), style in zip(histories.items(), ({"ls": "-", "marker": "o"}, {"ls": "--", "marker": "x"},
                                                            {"ls": ":", "marker": "s"})):
        epochs = [h["epoch"] for h in history]
        axes[0].plot(epochs, [h["train_loss"] for h in history], ms=4, color="tab:blue", label=f"{label}: train",
                     **style)
        axes[0].plot(epochs, [h["test_loss"] for h in history], ms=4, color="tab:orange", label=f"{label}: test",
                     **style)
        axes[1].plot(epochs, [h["test_acc"] for h in history], ms=4, label=label, **style)
        axes[2].plot(epochs, [h["images_per_second"] for h in history], ms=4, label=label, **style)
    for ax, (ylabel, title) in zip(axes, (("loss", "loss"), ("test accuracy", "test accuracy"),
                                          ("images/s", "training images/s"))):
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_lr_finder(lrs: Sequence[float], losses: Sequence[float], suggested_lr: float | None = None,
                   ax=None, title: str = "LR range test") -> Figure:
    """Loss against learning rate (log scale), with the suggested LR marked."""
    fig = ax.figure if ax is not None else plt.figure(figsize=(5, 3.6))
    ax = ax if ax is not None else fig.gca()
    ax.plot(lrs, losses)
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel="loss", title=title)
    if suggested_lr is not None:
        ax.axvline(suggested_lr, color="tab:red", ls="--", label=f"suggested {suggested_lr:.3g}")
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_lr_finders(results: dict) -> Figure:
    """Several LR range tests side by side, e.g. torch-lr-finder and Lightning's: ``{title: LRFindResult}``."""
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for ax, (title, r) in zip(axes.flat, results.items()):
        plot_lr_finder(r.lrs, r.losses, r.suggested_lr, ax=ax, title=title)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------------------
# The data, and what the model makes of it (inputs come from analysis.py: Predictions, GradCAM maps, confusion)
def plot_samples(images: np.ndarray, labels: Sequence[int], classes: Sequence[str], ncols: int = 10,
                 title: str | None = "CIFAR-10 samples") -> Figure:
    """uint8 NHWC images captioned with their class names."""
    return image_grid(images, [classes[int(y)] for y in labels], ncols=ncols, title=title)


def plot_augmented(images: np.ndarray, labels: Sequence[int], classes: Sequence[str], transform,
                   ncols: int = 10, title: str | None = "after the training augmentations") -> Figure:
    """The same images through ``transform`` (an albumentations pipeline ending in ToTensorV2), de-normalised."""
    augmented = torch.stack([transform(image=image)["image"] for image in images])
    return plot_samples(augmented, labels, classes, ncols=ncols, title=title)


def plot_misclassified(images, true: Sequence[int], predicted: Sequence[int], confidence: Sequence[float],
                       classes: Sequence[str], ncols: int = 5) -> Figure:
    """Wrong predictions: each image captioned with its true class, the predicted one and its probability."""
    titles = [f"true: {classes[int(t)]}\npred: {classes[int(p)]} ({float(c):.0%})"
              for t, p, c in zip(true, predicted, confidence)]
    return image_grid(images, titles, ncols=ncols, title="misclassified (most confident first)", tile=1.6)


def cam_overlay(images, cams: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """GradCAM maps (N, H, W in [0, 1]) as a jet heatmap over the images; ``opacity`` is the heatmap's share."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    if not 0 <= opacity <= 1:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    pixels = to_display(images).astype(np.float32) / 255
    return np.stack([show_cam_on_image(p, c, use_rgb=True, image_weight=1 - opacity) for p, c in zip(pixels, cams)])


def plot_gradcam(images, cams_predicted: np.ndarray, cams_true: np.ndarray, true: Sequence[int],
                 predicted: Sequence[int], classes: Sequence[str], opacity: float = 0.5,
                 per_row: int = 3) -> Figure:
    """Per image three tiles: the image, GradCAM for the predicted class, GradCAM for the true class."""
    images = to_display(images)
    over_pred, over_true = cam_overlay(images, cams_predicted, opacity), cam_overlay(images, cams_true, opacity)
    tiles, titles = [], []
    for i, (t, p) in enumerate(zip(true, predicted)):
        tiles += [images[i], over_pred[i], over_true[i]]
        titles += [f"{classes[int(t)]} as {classes[int(p)]}", f"CAM {classes[int(p)]} (pred)",
                   f"CAM {classes[int(t)]} (true)"]
    return image_grid(np.stack(tiles), titles, ncols=3 * per_row, title="GradCAM: where each class's evidence is",
                      tile=1.4)


def plot_confusion_matrix(confusion, classes: Sequence[str]) -> Figure:
    """Counts, row = true class, column = predicted; each row shaded by its share so that classes compare."""
    counts = np.asarray(confusion)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, col), n in np.ndenumerate(counts):
        ax.text(col, row, str(n), ha="center", va="center", fontsize=7,
                color="white" if shares[row, col] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix ({counts.sum():,} test images)")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    return fig


def plot_per_class_accuracy(rows: Sequence[dict]) -> Figure:
    """Bars of accuracy per class (``rows`` as from analysis.per_class_accuracy)."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    names, accuracy = [r["class"] for r in rows], [r["accuracy"] for r in rows]
    bars = ax.bar(names, accuracy, color="tab:blue")
    ax.bar_label(bars, labels=[f"{a:.0%}" for a in accuracy], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set(ylabel="accuracy", title="accuracy per class")
    ax.tick_params(axis="x", rotation=45)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def read_csv_log(path: str | os.PathLike) -> dict[str, list[tuple[float, float]]]:
    """Lightning's CSVLogger ``metrics.csv`` -> {metric: [(step, value), ...]} (each row holds a few metrics)."""
    import csv

    series: dict[str, list[tuple[float, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key not in ("epoch", "step") and value not in ("", None):
                    series.setdefault(key, []).append((float(row["step"]), float(value)))
    return series


def plot_csv_log(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> Figure:
    """What Lightning logged, by optimizer step: per-step and per-epoch loss and accuracy, and the LR. ``paths``:
    one ``metrics.csv``, or a resumed run's parts in order (``RunFolder.csv_logs``; their steps run on)."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    parts = [read_csv_log(path) for path in paths]
    series: dict[str, list[tuple[float, float]]] = {}
    for part, later in zip(parts, [*parts[1:], None]):
        # A part killed mid-epoch logged steps after its last checkpoint, which the next part logs again: the next
        # part's values stand from its first step on.
        end = min((values[0][0] for values in later.values() if values), default=math.inf) if later else math.inf
        for key, values in part.items():
            series.setdefault(key, []).extend(v for v in values if v[0] < end)
    panels = [("loss", ["train_loss_step", "train_loss", "val_loss"]),
              ("accuracy", ["train_acc_step", "train_acc", "val_acc"]),
              ("learning rate", sorted(k for k in series if k.startswith("lr-")))]
    fig, axes = plt.subplots(1, 3, figsize=(13.8, 3.4))
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            if key in series:
                steps, values = zip(*series[key])
                style = {"lw": 0.8, "alpha": 0.5} if key.endswith("_step") else {"marker": "o", "ms": 3}
                ax.plot(steps, values, label=key, **style)
        ax.set(xlabel="step", title=title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:  # e.g. a run shorter than log_every_n_steps logs no per-step values
            ax.text(0.5, 0.5, "nothing logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    parts = " + ".join(Path(p).parent.name for p in paths)
    fig.suptitle(f"Lightning CSV log: {parts}", fontsize=9)
    fig.tight_layout()
    return fig


def save_run_figures(folder, metrics: dict, lr_find=None) -> None:
    """A run folder's (runs.folder.RunFolder) ``curves.png``, and ``lr_finder.png`` when a range test (an
    lr_find.LRFindResult) chose the max LR."""
    save_figure(plot_curves(metrics["history"], metrics["lr_schedule"]), folder.curves)
    if lr_find:
        save_figure(plot_lr_finder(lr_find.lrs, lr_find.losses, lr_find.suggested_lr), folder.lr_finder)
