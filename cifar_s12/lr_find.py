"""LR range tests: raise the LR exponentially over a few steps, watch the loss, suggest a max LR for OneCycle.

The plain trainer's test is torch-lr-finder's (``find_lr``). Lightning's ``Tuner.lr_find`` lives in lit.py, which
also picks one of the two by name (``range_test``); compare.range_tests runs both from the same weights on the same
batches, so their curves can be compared side by side. This module imports neither of those: the plain trainer
never needs Lightning.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import TqdmWarning

from .builders import build_criterion, build_optimizer
from .config import TrainConfig
from .runtime import AutocastModel, Runtime

# torch-lr-finder's bar comes from tqdm.auto, which warns "IProgress not found" without ipywidgets and then draws a
# text bar, as the trainers do: the warning is noise.
warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)

LR_FINDERS = {"torch": "torch-lr-finder", "lightning": "Lightning Tuner.lr_find"}


@dataclass
class LRFindResult:
    suggested_lr: float
    lrs: list[float]
    losses: list[float]


def find_lr(model: nn.Module, loader, cfg: TrainConfig, runtime: Runtime, start_lr: float = 1e-5,
            end_lr: float = 10.0, num_iter: int = 100) -> LRFindResult:
    """torch-lr-finder's exponential range test; suggests the LR where the loss falls fastest.

    torch-lr-finder restores the model's and optimizer's state afterwards, so training starts from the same weights.
    """
    from torch_lr_finder import LRFinder

    optimizer = build_optimizer(model, cfg, lr=start_lr)
    # fp16 (GPUs before Ampere, e.g. Colab's T4) needs loss scaling here as in training; torch-lr-finder applies
    # a GradScaler through its "torch" amp backend. A scaler of its own: the test's diverging last steps shrink the
    # scale, and training must start from a fresh one. Autocast itself stays in AutocastModel (the backend's is off).
    amp = (dict(amp_backend="torch", amp_config={"device_type": runtime.device.type, "enabled": False},
                grad_scaler=torch.amp.GradScaler(runtime.device.type)) if runtime.scaler.is_enabled() else {})
    finder = LRFinder(AutocastModel(model, runtime), optimizer, build_criterion(cfg), device=runtime.device, **amp)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # its closing line tells you to call "{finder_name}.plot()"
        finder.range_test(loader, start_lr=start_lr, end_lr=end_lr, num_iter=num_iter, step_mode="exp")
    if "diverged" in printed.getvalue():
        print(f"LR range test stopped early at LR {finder.history['lr'][-1]:.3g}: the loss diverged")
    lrs, losses = list(finder.history["lr"]), list(finder.history["loss"])
    finder.reset()
    return LRFindResult(steepest_descent_lr(lrs, losses), lrs, losses)


def range_test_iters(steps_per_epoch: int) -> int:
    """Range-test steps before a run with no max LR (both trainers): 100, or 3 epochs of a small subset."""
    return max(2, min(100, 3 * steps_per_epoch))


def steepest_descent_lr(lrs: list[float], losses: list[float], skip_start: int = 10, skip_end: int = 5) -> float:
    """torch-lr-finder's suggestion rule (min of d loss / d step after trimming the ends), without a plot."""
    if len(lrs) <= skip_start + skip_end + 1:
        skip_start, skip_end = 0, 0
    sel_lrs, sel_losses = lrs[skip_start:len(lrs) - skip_end], losses[skip_start:len(losses) - skip_end]
    return float(sel_lrs[int(np.gradient(np.asarray(sel_losses)).argmin())])
