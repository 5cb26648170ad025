"""Figures. Every figure in the notebooks, the CLI and README.md is drawn by one of these functions.

Each returns a matplotlib Figure; ``save_figure`` writes it atomically and closes it.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import matplotlib.pyplot as plt  # without a display matplotlib falls back to Agg; notebooks keep inline
import numpy as np
import torch
from matplotlib.figure import Figure

from .transform import CIFAR10_MEAN, CIFAR10_STD
from .utils import atomic_path


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
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
    return fig
