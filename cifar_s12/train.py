"""The plain-PyTorch trainer: one epoch of training, one pass of evaluation, the whole run (fit), and the
metrics.json / model.pt / figures writers that the Lightning trainer shares.

Everything the recipe builds (model, optimizer, OneCycle, loss, loaders) comes from builders.py, so this module is
only the loop. Read top to bottom: train_step -> train_epoch -> evaluate -> fit -> writers.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
# Text progress bars everywhere (terminal, Jupyter, Colab, a saved notebook): widget bars need ipywidgets and leave
# nothing readable in committed outputs. Lightning's bar makes the same choice without ipywidgets.
from tqdm import tqdm

from .builders import (build_criterion, build_ema, build_loaders, build_model_for, build_optimizer, build_scheduler,
                       load_data, step_schedule)
from .checkpoints import read_train_state, save_checkpoint
from .config import TrainConfig, resume_config
from .dataset import CifarData
from .errors import UserError
from .lr_find import LR_FINDERS, LRFindResult, find_lr, range_test_iters
from .model import count_parameters
from .run_folder import RunFolder, resume_file
from .runtime import Runtime, predict_logits
from .utils import (cli_command, interrupts_deferred, provenance, provenance_of_parts, seed_epoch, seed_everything,
                    write_json)


# ----------------------------------------------------------------------------------------------------------------
# One epoch of training, one pass of evaluation
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
                lrs: list[float] | None = None, ema=None) -> dict:
    """One pass over ``loader``, stepping ``scheduler`` (and the recipe's moving average ``ema``, if any) after
    every batch; the LR of each step is appended to ``lrs``."""
    model.train()
    accuracy = MulticlassAccuracy(num_classes=10, average="micro").to(runtime.device)
    loss_sum, seen = torch.zeros((), device=runtime.device), 0
    bar = tqdm(loader, total=len(loader), desc=desc, leave=False, mininterval=1.0, dynamic_ncols=True)
    start = time.perf_counter()
    for step, (x, y) in enumerate(bar):
        x, y = runtime.inputs(x), y.to(runtime.device, non_blocking=True)
        loss, logits = train_step(model, x, y, optimizer, criterion, runtime)
        if ema is not None:
            ema.update_parameters(model)
        lr = optimizer.param_groups[0]["lr"]  # the LR this step used
        if lrs is not None:
            lrs.append(lr)
        step_schedule(scheduler)  # per batch: OneCycle's plan is in steps
        loss_sum += loss.detach() * len(y)  # stays on the device: no sync per step
        seen += len(y)
        accuracy.update(logits.detach(), y)
        if step % 10 == 0 or step == len(loader) - 1:
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{accuracy.compute().item():.3f}",
                            lr=f"{lr:.3g}",
                            img_s=f"{seen / (time.perf_counter() - start):.0f}")
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"train_loss": loss_sum.item() / seen, "train_acc": accuracy.compute().item(), "lr": lr,
            "images_per_second": seen / seconds, "epoch_seconds": seconds,
            # fp16's loss scale after the epoch (it halves on every step whose gradients overflowed): None otherwise
            "grad_scale": runtime.scaler.get_scale() if runtime.scaler.is_enabled() else None}


@torch.no_grad()
def evaluate(model, loader, criterion, runtime: Runtime, tta: bool = False, desc: str = "test",
             shift: int = 0) -> dict:
    """Test loss and accuracy; with ``tta`` the logits of each image and its mirror image are averaged (and of
    both moved ``shift`` pixels: runtime.predict_logits)."""
    model.eval()
    accuracy = MulticlassAccuracy(num_classes=10, average="micro").to(runtime.device)
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
@dataclass
class RunResult:
    metrics: dict
    model: nn.Module
    lr_find: LRFindResult | None = None
    is_global_zero: bool = True  # False in the other processes of a multi-process (DDP) run: they write nothing


def fit(cfg: TrainConfig, out_dir: str | Path | None = None, data: CifarData | None = None,
        runtime: Runtime | None = None, log=print, resume: str | Path | None = None,
        stop_after: int | None = None) -> RunResult:
    """Train ``cfg`` and evaluate after each epoch. With ``out_dir`` (see run_folder.py), after every epoch:
    the whole training state (``checkpoints/last.pt``), ``model.pt`` and ``metrics.json``, each written
    atomically, so an interrupted run keeps its last complete epoch; ``curves.png`` (and ``lr_finder.png``) at
    the end.

    ``resume``: a run folder (or its ``checkpoints/last.pt``) to continue with the recipe saved there: the same
    epochs, batches, augmentations and updates as if it had never stopped. ``stop_after``: stop once that epoch is
    done, keeping the OneCycle plan of ``cfg.epochs`` (continue later with ``resume``).
    """
    wall_start = time.perf_counter()
    state = None
    if resume is not None:
        checkpoint = resume_file(resume, "torch")
        state = read_train_state(checkpoint)
        cfg = resume_config(state["config"], cfg, state["training"]["metrics"].get("epochs_completed"), checkpoint)
    seed_everything(cfg.seed)
    runtime = runtime or Runtime.create(cfg.precision)
    data = load_data(cfg, data)
    train_loader, test_loader = build_loaders(cfg, data)
    if len(train_loader) == 0:
        raise UserError(f"no training batches: {len(data.train)} images with batch size {cfg.batch_size}")
    model = runtime.prepare(build_model_for(cfg))

    lr_result = None
    if cfg.max_lr is None:  # a resumed run has the max LR its first part found
        lr_result = find_lr(model, train_loader, cfg, runtime, num_iter=range_test_iters(len(train_loader)))
        log(f"LR range test ({LR_FINDERS['torch']}) suggests max_lr = {lr_result.suggested_lr:.3g}")  # as Lightning's
        cfg = replace(cfg, max_lr=lr_result.suggested_lr)
    log(describe_run(cfg, model, runtime.describe(), data))

    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, cfg.max_lr, len(train_loader))
    criterion = build_criterion(cfg)
    ema = build_ema(model, cfg)
    evaluated = ema.module if ema is not None else model  # what is tested and saved as model.pt
    folder = RunFolder(out_dir) if out_dir else None
    metrics = new_metrics("torch", cfg, model, runtime.describe(), data, train_loader.num_workers, cli_command(),
                          provenance())
    first_epoch = 1
    if state is not None:
        first_epoch = restore_training(state, model, optimizer, scheduler, runtime, metrics, len(train_loader), ema)
        log(f"resuming after epoch {first_epoch - 1} of {cfg.epochs}")
    lr_schedule = metrics["lr_schedule"]  # the LR of every step, as the optimizer used it
    run_start = wall_start - metrics.pop("earlier_seconds", 0.0)  # a resumed run's wall time counts every part
    last_epoch = min(stop_after or cfg.epochs, cfg.epochs)
    for epoch in range(first_epoch, last_epoch + 1):
        # This epoch's order, augmentations and any randomness in the step come from (seed, epoch): a resumed
        # run's epoch draws what the uninterrupted run's did (dataset.EpochSampler, utils.seed_epoch).
        train_loader.sampler.set_epoch(epoch - 1)
        seed_epoch(cfg.seed, epoch)
        stats = train_epoch(model, train_loader, optimizer, scheduler, criterion, runtime,
                            desc=f"epoch {epoch}/{cfg.epochs}", lrs=lr_schedule, ema=ema)
        stats.update(evaluate(evaluated, test_loader, criterion, runtime))
        row = {"epoch": epoch, **stats}
        record_epoch(metrics, row, lr_schedule, run_start)
        log(format_epoch(row, cfg.epochs))
        if folder:
            save_outputs(folder, evaluated, cfg, data.classes, metrics,
                         training={"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "scheduler": scheduler.state_dict(), "scaler": runtime.scaler.state_dict(),
                                   "ema": ema.state_dict() if ema is not None else None})
    if cfg.tta and metrics.get("epochs_completed") == cfg.epochs:
        for key, shift in tta_variants(cfg).items():
            metrics[key] = evaluate(evaluated, test_loader, criterion, runtime, tta=True, shift=shift)["test_acc"]
            log(f"test accuracy with flip{f' + {shift}-pixel shift' if shift else ''} TTA: {metrics[key]:.4f}")
    metrics["wall_seconds"] = time.perf_counter() - run_start
    if folder:
        write_json(folder.metrics, metrics)
        save_run_figures(folder, metrics, lr_result)
    return RunResult(metrics, evaluated, lr_result)


def restore_training(state: dict, model, optimizer, scheduler, runtime: Runtime, metrics: dict,
                     steps_per_epoch: int, ema=None) -> int:
    """Load a ``checkpoints/last.pt`` into the freshly built run and carry its metrics over; the next epoch."""
    training = state["training"]
    planned = steps_per_epoch * TrainConfig.from_dict(state["config"]).epochs
    saved = training["scheduler"].get("total_steps")
    if saved != planned:
        raise UserError(f"--resume: the checkpoint's OneCycle schedule has {saved:,} steps, but this run would take "
                        f"{planned:,} ({steps_per_epoch} per epoch); resume with the first part's training data")
    model.load_state_dict(training["state_dict"])  # the trained weights (state_dict: what model.pt holds)
    if ema is not None:
        ema.load_state_dict(training["ema"])
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
    return earlier["epochs_completed"] + 1


# ----------------------------------------------------------------------------------------------------------------
# metrics.json, model.pt and the figures: one schema and one writer for both trainers
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


def tta_variants(cfg: TrainConfig) -> dict[str, int]:
    """The test-time augmentations a finished ``--tta`` run reports, as {metrics key: pixel shift}: the recipe's
    (flip, and the views moved ``tta_shift`` pixels), and with a shift also the flip alone, so one run measures
    what the shifts add."""
    variants = {"final_test_accuracy_tta": cfg.tta_shift}
    if cfg.tta_shift:
        variants["final_test_accuracy_flip_tta"] = 0
    return variants


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


def save_run_figures(folder: RunFolder, metrics: dict, lr_find: LRFindResult | None = None) -> None:
    """``curves.png``, and ``lr_finder.png`` when the max LR came from a range test."""
    from .plots import plot_curves, plot_lr_finder, save_figure

    save_figure(plot_curves(metrics["history"], metrics["lr_schedule"]), folder.curves)
    if lr_find:
        save_figure(plot_lr_finder(lr_find.lrs, lr_find.losses, lr_find.suggested_lr), folder.lr_finder)
