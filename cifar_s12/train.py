"""The plain-PyTorch trainer: train_epoch (OneCycle stepped after every batch), evaluate, and fit, which is the loop.

The recipe's objects come from onecycle.py and dataset.py, the files a run writes from runs/: this module is the
loop and nothing else. Read top to bottom: train_step -> train_epoch -> evaluate -> fit.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch
from torchmetrics.classification import MulticlassAccuracy

# Text progress bars: they read the same in a terminal, Jupyter, Colab and a saved notebook (widgets need ipywidgets).
from tqdm import tqdm

from .config import TrainConfig, resume_config
from .dataset import CifarData, build_loaders, load_data
from .device import Runtime
from .lr_find import LR_FINDERS, LRFindResult, find_lr, range_test_iters
from .model import NUM_CLASSES
from .onecycle import build_criterion, build_model_for, build_optimizer, build_scheduler, plan_finished
from .runs.checkpoints import read_train_state
from .runs.folder import RunFolder, resume_file
from .runs.metrics import (RunResult, announce_resume, describe_run, format_epoch, new_metrics, record_epoch,
                           save_outputs)
from .runs.provenance import cli_command, provenance, provenance_of_parts
from .tta import predict_logits, tta_variants
from .utils import UserError, seed_epoch, seed_everything, write_json


# ----------------------------------------------------------------------------------------------------------------
# One step, one epoch of training, one pass of evaluation
def train_step(model, x, y, optimizer, criterion, runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch already on the device; returns the loss and the logits."""
    with runtime.autocast():
        logits = model(x)
        loss = criterion(logits.float(), y)  # the loss in fp32 whatever the autocast dtype
    optimizer.zero_grad(set_to_none=True)
    runtime.scaler.scale(loss).backward()  # a no-op scaler unless fp16
    runtime.scaler.step(optimizer)
    runtime.scaler.update()
    return loss, logits


def train_epoch(model, loader, optimizer, scheduler, criterion, runtime: Runtime, desc: str = "train",
                lrs: list[float] | None = None) -> dict:
    """One pass over ``loader``, stepping the OneCycle ``scheduler`` after every batch; each step's LR to ``lrs``."""
    model.train()
    accuracy = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro").to(runtime.device)
    loss_sum, seen = torch.zeros((), device=runtime.device), 0
    bar = tqdm(loader, total=len(loader), desc=desc, leave=False, mininterval=1.0, dynamic_ncols=True)
    start = time.perf_counter()
    for step, (x, y) in enumerate(bar):
        x, y = runtime.inputs(x), y.to(runtime.device, non_blocking=True)
        loss, logits = train_step(model, x, y, optimizer, criterion, runtime)
        lr = optimizer.param_groups[0]["lr"]  # the LR this step used
        if lrs is not None:
            lrs.append(lr)
        if not plan_finished(scheduler):  # the run's last batch ends the plan
            scheduler.step()  # per batch, not per epoch: OneCycle's plan is counted in steps
        loss_sum += loss.detach() * len(y)  # stays on the device: no sync per step
        seen += len(y)
        accuracy.update(logits.detach(), y)
        if step % 10 == 0 or step == len(loader) - 1:
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{accuracy.compute().item():.3f}",
                            lr=f"{lr:.3g}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()  # the epoch's time includes the GPU's queued work
    seconds = time.perf_counter() - start
    return {"train_loss": loss_sum.item() / seen, "train_acc": accuracy.compute().item(), "lr": lr,
            "images_per_second": seen / seconds, "epoch_seconds": seconds,
            # fp16's loss scale after the epoch (it halves on every step whose gradients overflowed): None otherwise
            "grad_scale": runtime.scaler.get_scale() if runtime.scaler.is_enabled() else None}


@torch.no_grad()
def evaluate(model, loader, criterion, runtime: Runtime, tta: bool = False, shift: int = 0,
             desc: str = "test") -> dict:
    """Test loss and accuracy; with ``tta`` each image's logits averaged with its mirror image's (tta.py)."""
    model.eval()
    accuracy = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro").to(runtime.device)
    loss_sum, seen = torch.zeros((), device=runtime.device), 0
    for x, y in tqdm(loader, desc=desc, leave=False, mininterval=1.0, dynamic_ncols=True):
        x, y = runtime.inputs(x), y.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits = predict_logits(model, x, tta, shift)
        loss_sum += criterion(logits, y) * len(y)
        seen += len(y)
        accuracy.update(logits, y)
    return {"test_loss": loss_sum.item() / seen, "test_acc": accuracy.compute().item()}


# ----------------------------------------------------------------------------------------------------------------
# The whole run
def fit(cfg: TrainConfig, out_dir: str | Path | None = None, data: CifarData | None = None,
        runtime: Runtime | None = None, log=print, resume: str | Path | None = None,
        stop_after: int | None = None) -> RunResult:
    """Train ``cfg``, evaluating after each epoch. With ``out_dir`` (runs/folder.py) every epoch ends with
    ``checkpoints/last.pt``, ``model.pt`` and ``metrics.json`` written atomically. ``resume``: a run folder to
    continue exactly; ``stop_after``: stop after that epoch, keeping the OneCycle plan of ``cfg.epochs``."""
    wall_start = time.perf_counter()
    state, cfg = read_resume(resume, cfg)
    seed_everything(cfg.seed)
    runtime = runtime or Runtime.create(cfg.precision)
    data = load_data(cfg, data)
    train_loader, test_loader = build_loaders(cfg, data, device=runtime.device)  # batched: kept there
    if len(train_loader) == 0:
        raise UserError(f"no training batches: {len(data.train)} images with batch size {cfg.batch_size}")
    model = runtime.prepare(build_model_for(cfg))
    cfg, lr_result = with_max_lr(cfg, model, train_loader, runtime, log)
    log(describe_run(cfg, model, runtime.describe(), data))

    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, cfg.max_lr, len(train_loader))
    criterion = build_criterion(cfg)
    folder = RunFolder(out_dir) if out_dir else None
    metrics = new_metrics("torch", cfg, model, runtime.describe(), data, train_loader.num_workers, cli_command(),
                          provenance())
    first_epoch = restore_training(state, model, optimizer, scheduler, runtime, metrics, log) if state else 1
    run_start = wall_start - metrics.pop("earlier_seconds", 0.0)  # a resumed run's wall time counts every part
    for epoch in range(first_epoch, min(stop_after or cfg.epochs, cfg.epochs) + 1):
        # Order, augmentations and any randomness in the step come from (seed, epoch): a resumed epoch is the same.
        train_loader.sampler.set_epoch(epoch - 1)
        seed_epoch(cfg.seed, epoch)
        row = {"epoch": epoch, **train_epoch(model, train_loader, optimizer, scheduler, criterion, runtime,
                                             desc=f"epoch {epoch}/{cfg.epochs}", lrs=metrics["lr_schedule"])}
        row.update(evaluate(model, test_loader, criterion, runtime))
        record_epoch(metrics, row, metrics["lr_schedule"], run_start)
        log(format_epoch(row, cfg.epochs))
        if folder:
            save_outputs(folder, model, cfg, data.classes, metrics,
                         training={"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "scheduler": scheduler.state_dict(), "scaler": runtime.scaler.state_dict()})
    if cfg.tta and metrics.get("epochs_completed") == cfg.epochs:
        report_tta(metrics, model, test_loader, criterion, runtime, cfg, log)
    metrics["wall_seconds"] = time.perf_counter() - run_start
    if folder:
        write_json(folder.metrics, metrics)
    return RunResult(metrics, model, lr_result)


# ----------------------------------------------------------------------------------------------------------------
# What fit needs besides the loop: resuming, the LR range test, the TTA figures
def read_resume(resume: str | Path | None, cfg: TrainConfig) -> tuple[dict | None, TrainConfig]:
    """The saved training state of the run to continue (or None) and its recipe, which a resumed run keeps."""
    if resume is None:
        return None, cfg
    checkpoint = resume_file(resume, "torch")
    state = read_train_state(checkpoint)
    return state, resume_config(state["config"], cfg, state["training"]["metrics"].get("epochs_completed"), checkpoint)


def with_max_lr(cfg: TrainConfig, model, train_loader, runtime: Runtime,
                log) -> tuple[TrainConfig, LRFindResult | None]:
    """``cfg`` unchanged when it has a max LR; else with the one the LR range test suggests (the course recipe)."""
    if cfg.max_lr is not None:  # a resumed run keeps the max LR its first part found
        return cfg, None
    result = find_lr(model, train_loader, cfg, runtime, num_iter=range_test_iters(len(train_loader)))
    log(f"LR range test ({LR_FINDERS['torch']}) suggests max_lr = {result.suggested_lr:.3g}")  # as Lightning's
    return replace(cfg, max_lr=result.suggested_lr), result


def restore_training(state: dict, model, optimizer, scheduler, runtime: Runtime, metrics: dict, log) -> int:
    """Load a ``checkpoints/last.pt`` into the freshly built run and carry its metrics over; returns the next epoch."""
    training, epochs = state["training"], state["config"]["epochs"]  # the recipe fit read from this state
    saved, planned = training["scheduler"].get("total_steps"), scheduler.total_steps
    if saved != planned:
        raise UserError(f"--resume: the checkpoint's OneCycle schedule has {saved:,} steps, but this run would take "
                        f"{planned:,} ({planned // epochs} per epoch); resume with the first part's training data")
    model.load_state_dict(training["state_dict"])
    optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    if training["scaler"] and runtime.scaler.is_enabled():  # empty when the first part had no fp16 scaler
        runtime.scaler.load_state_dict(training["scaler"])
    earlier = training["metrics"]
    commands = [c for c in (earlier.get("command"), metrics.get("command")) if c]
    metrics.update(history=list(earlier["history"]), lr_schedule=list(earlier["lr_schedule"]),
                   final_test_accuracy=earlier.get("final_test_accuracy"),
                   epochs_completed=earlier["epochs_completed"], command=" && ".join(commands) or None,
                   earlier_seconds=float(earlier.get("wall_seconds", 0.0)),
                   **provenance_of_parts([*earlier.get("parts", [earlier]), metrics]))
    announce_resume(earlier["history"], epochs, log)
    return earlier["epochs_completed"] + 1


def report_tta(metrics: dict, model, test_loader, criterion, runtime: Runtime, cfg: TrainConfig, log) -> None:
    """A finished ``--tta`` run's test accuracy with the recipe's test-time augmentation (and flip alone)."""
    for key, shift in tta_variants(cfg).items():
        metrics[key] = evaluate(model, test_loader, criterion, runtime, tta=True, shift=shift)["test_acc"]
        log(f"test accuracy with flip{f' + {shift}-pixel shift' if shift else ''} TTA: {metrics[key]:.4f}")
