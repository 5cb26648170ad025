"""LR range tests: raise the LR exponentially over a few steps, watch the loss, suggest a max LR for OneCycle.

Both tests live here: torch-lr-finder's (``find_lr``, the plain trainer's) and Lightning's ``Tuner.lr_find``
(``lightning_lr_find``); ``range_test`` picks one by name and ``range_tests`` runs several from the same weights on
the same batches, so their curves compare side by side. Lightning is imported only when its test runs.
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

from .config import TrainConfig
from .dataset import CifarData, build_loaders, load_data
from .device import AutocastModel, Runtime, accelerator_device, lightning_precision
from .onecycle import build_criterion, build_model_for, build_optimizer
from .runs.plumbing import RUN_NOTICES, TUNER_NOTICES, ctrl_c_raises, lightning_notices_hidden
from .utils import UserError, seed_everything

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


def lightning_lr_find(module, loaders, cfg: TrainConfig, accelerator: str = "auto", start_lr: float = 1e-5,
                      end_lr: float = 10.0, num_iter: int = 100) -> LRFindResult:
    """``Tuner.lr_find`` of the LightningModule ``module`` on one device over ``loaders`` (train, test); its
    weights are restored afterwards."""
    import tempfile

    import pytorch_lightning as pl
    from pytorch_lightning.tuner import Tuner

    # Tuner keeps the initial weights in a checkpoint file in tmp
    with tempfile.TemporaryDirectory() as tmp, lightning_notices_hidden(*RUN_NOTICES, *TUNER_NOTICES):
        trainer = pl.Trainer(accelerator=accelerator, devices=1, max_steps=num_iter, max_epochs=num_iter,
                             precision=lightning_precision(accelerator_device(accelerator), cfg.precision),
                             logger=False, enable_checkpointing=False, enable_model_summary=False,
                             num_sanity_val_steps=0, default_root_dir=tmp)
        with ctrl_c_raises(trainer):
            finder = Tuner(trainer).lr_find(module, train_dataloaders=loaders[0], val_dataloaders=loaders[1],
                                            min_lr=start_lr, max_lr=end_lr, num_training=num_iter, update_attr=False)
        suggestion = finder.suggestion()
    lrs, losses = [float(v) for v in finder.results["lr"]], [float(v) for v in finder.results["loss"]]
    return LRFindResult(suggestion if suggestion is not None else steepest_descent_lr(lrs, losses), lrs, losses)


def range_test(kind: str, cfg: TrainConfig, model: nn.Module, loaders, accelerator: str = "auto",
               lightning_module=None, **limits) -> LRFindResult:
    """Run the range test ``kind`` (a key of LR_FINDERS) on ``loaders`` (train, test) from ``model``'s current
    weights, which it leaves as found. ``lightning_module``: the LightningModule class Lightning's test trains
    (lit.CifarLitModule; passed in, since lit.py imports this module). ``limits``: start_lr, end_lr, num_iter."""
    if kind not in LR_FINDERS:
        raise UserError(f"unknown LR finder {kind!r}; choose from {', '.join(LR_FINDERS)}")
    limits.setdefault("num_iter", range_test_iters(len(loaders[0])))
    if kind == "lightning":
        if lightning_module is None:
            raise ValueError("Lightning's range test needs lightning_module=lit.CifarLitModule")
        return lightning_lr_find(lightning_module.from_config(cfg, model=model), loaders, cfg, accelerator, **limits)
    runtime = Runtime.create(cfg.precision, accelerator_device(accelerator).type)
    return find_lr(runtime.prepare(model), loaders[0], cfg, runtime, **limits)


def range_tests(kinds, cfg: TrainConfig, accelerator: str = "auto", data: CifarData | None = None,
                lightning_module=None, **limits) -> dict[str, LRFindResult]:
    """Each range test of ``kinds`` (keys of LR_FINDERS) from the same seeded initial weights and fresh loaders (so
    the same batches in the same order), for comparing them. ``data``: arrays already loaded (else ``cfg``'s)."""
    data = load_data(cfg, data)
    results = {}
    for kind in kinds:
        seed_everything(cfg.seed)
        results[kind] = range_test(kind, cfg, build_model_for(cfg), build_loaders(cfg, data), accelerator,
                                   lightning_module, **limits)
    return results

