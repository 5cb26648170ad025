"""The plain-PyTorch trainer: one epoch of training, one pass of evaluation, the whole run (fit), and the
metrics.json / model.pt / figures writers that the Lightning trainer shares.

Everything the recipe builds (model, optimizer, OneCycle, loss, loaders) comes from builders.py, so this module is
only the loop. Read top to bottom: train_step -> train_epoch -> evaluate -> fit -> writers.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
# Text progress bars everywhere (terminal, Jupyter, Colab, a saved notebook): widget bars need ipywidgets and leave
# nothing readable in committed outputs. Lightning's bar makes the same choice without ipywidgets.
from tqdm import tqdm

from .builders import build_criterion, build_loaders, build_model_for, build_optimizer, build_scheduler, load_data
from .checkpoints import save_checkpoint
from .config import TrainConfig
from .dataset import CifarData
from .errors import UserError
from .lr_find import LRFindResult, find_lr, range_test_iters
from .model import count_parameters
from .runtime import Runtime, predict_logits
from .utils import cli_command, interrupts_deferred, provenance, seed_everything, write_json


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
                lrs: list[float] | None = None) -> dict:
    """One pass over ``loader``, stepping ``scheduler`` after every batch; the LR of each step is appended to ``lrs``."""
    model.train()
    accuracy = MulticlassAccuracy(num_classes=10, average="micro").to(runtime.device)
    loss_sum, seen = torch.zeros((), device=runtime.device), 0
    # Exactly len(loader) batches, as Lightning takes them. Running a worker-less loader to its end would make
    # RandomSampler draw one more (empty) permutation from the shuffling generator, and from epoch 2 on the two
    # trainers would see the data in different orders.
    batches = itertools.islice(loader, len(loader))
    bar = tqdm(batches, total=len(loader), desc=desc, leave=False, mininterval=1.0, dynamic_ncols=True)
    start = time.perf_counter()
    for step, (x, y) in enumerate(bar):
        x, y = runtime.inputs(x), y.to(runtime.device, non_blocking=True)
        loss, logits = train_step(model, x, y, optimizer, criterion, runtime)
        lr = optimizer.param_groups[0]["lr"]  # the LR this step used (after the last step OneCycle overshoots)
        if lrs is not None:
            lrs.append(lr)
        scheduler.step()
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
            "images_per_second": seen / seconds, "epoch_seconds": seconds}


@torch.no_grad()
def evaluate(model, loader, criterion, runtime: Runtime, tta: bool = False, desc: str = "test") -> dict:
    """Test loss and accuracy; with ``tta`` the logits of each image and its mirror image are averaged."""
    model.eval()
    accuracy = MulticlassAccuracy(num_classes=10, average="micro").to(runtime.device)
    loss_sum, seen = torch.zeros((), device=runtime.device), 0
    for x, y in tqdm(loader, desc=desc, leave=False, mininterval=1.0, dynamic_ncols=True):
        x, y = runtime.inputs(x), y.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits = predict_logits(model, x, tta)
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
        runtime: Runtime | None = None, log=print) -> RunResult:
    """Train ``cfg`` and evaluate after each epoch. With ``out_dir``: ``model.pt`` and ``metrics.json`` are
    (re)written atomically after every epoch, so an interrupted run keeps its last complete epoch; ``curves.png``
    (and ``lr_finder.png``) at the end."""
    wall_start = time.perf_counter()
    seed_everything(cfg.seed)
    runtime = runtime or Runtime.create(cfg.precision)
    data = load_data(cfg, data)
    train_loader, test_loader = build_loaders(cfg, data)
    if len(train_loader) == 0:
        raise UserError(f"no training batches: {len(data.train)} images with batch size {cfg.batch_size}")
    model = runtime.prepare(build_model_for(cfg))
    log(f"{cfg.model}: {count_parameters(model):,} parameters | {runtime.describe()} | "
        f"{len(data.train):,} train / {len(data.test):,} test images from {data.source}")

    lr_result = None
    if cfg.max_lr is None:
        lr_result = find_lr(model, train_loader, cfg, runtime, num_iter=range_test_iters(len(train_loader)))
        log(f"LR range test suggests max_lr = {lr_result.suggested_lr:.3g}")
        cfg = replace(cfg, max_lr=lr_result.suggested_lr)
        # Training starts from the same random state with or without the range test: reseed, and fresh loaders
        # (the range test advanced the old ones' shuffling and augmentation streams).
        seed_everything(cfg.seed)
        train_loader, test_loader = build_loaders(cfg, data)

    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, cfg.max_lr, len(train_loader))
    criterion = build_criterion(cfg)
    lr_schedule: list[float] = []  # the LR of every step, as the optimizer used it
    out = Path(out_dir) if out_dir else None
    metrics = new_metrics("torch", cfg, model, runtime.describe(), data, train_loader.num_workers)
    for epoch in range(1, cfg.epochs + 1):
        stats = train_epoch(model, train_loader, optimizer, scheduler, criterion, runtime,
                            desc=f"epoch {epoch}/{cfg.epochs}", lrs=lr_schedule)
        stats.update(evaluate(model, test_loader, criterion, runtime))
        row = {"epoch": epoch, **stats}
        record_epoch(metrics, row, lr_schedule, wall_start)
        log(format_epoch(row, cfg.epochs))
        if out:
            save_outputs(out, model, cfg, data.classes, metrics)
    if cfg.tta:
        metrics["final_test_accuracy_tta"] = evaluate(model, test_loader, criterion, runtime, tta=True)["test_acc"]
        log(f"test accuracy with flip TTA: {metrics['final_test_accuracy_tta']:.4f}")
    metrics["wall_seconds"] = time.perf_counter() - wall_start
    if out:
        write_json(out / "metrics.json", metrics)
        save_run_figures(out, metrics, lr_result)
    return RunResult(metrics, model, lr_result)


# ----------------------------------------------------------------------------------------------------------------
# metrics.json, model.pt and the figures: one schema and one writer for both trainers
HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_second",
                "epoch_seconds")


def new_metrics(trainer: str, cfg: TrainConfig, model: nn.Module, device: str, data: CifarData,
                loader_workers: int) -> dict:
    """The head of metrics.json; ``record_epoch`` fills in the rest as epochs finish.

    ``loader_workers`` is recorded because each worker has its own augmentation stream: the same seed with another
    number of workers is another run.
    """
    return {"trainer": trainer, "model": cfg.model, "parameters": count_parameters(model), "device": device,
            "data_source": data.source, "train_images": len(data.train), "test_images": len(data.test),
            "loader_workers": loader_workers, "config": cfg.to_dict(), "command": cli_command(), **provenance(),
            "history": [], "lr_schedule": []}


def record_epoch(metrics: dict, row: dict, lr_schedule: list[float], wall_start: float) -> None:
    """Append one history row (the HISTORY_KEYS of ``row``, in that order) and update the run's totals."""
    metrics["history"].append({key: row[key] for key in HISTORY_KEYS})
    metrics.update(lr_schedule=lr_schedule, final_test_accuracy=row["test_acc"], epochs_completed=row["epoch"],
                   wall_seconds=time.perf_counter() - wall_start)


def format_epoch(row: dict, epochs: int) -> str:
    return (f"epoch {row['epoch']:2d}/{epochs} | train loss {row['train_loss']:.3f} acc {row['train_acc']:.4f} | "
            f"test loss {row['test_loss']:.3f} acc {row['test_acc']:.4f} | lr {row['lr']:.3g} | "
            f"{row['images_per_second']:.0f} img/s, {row['epoch_seconds']:.0f} s")


def save_outputs(out: Path, model: nn.Module, cfg: TrainConfig, classes, metrics: dict) -> None:
    """``model.pt`` and ``metrics.json``, each written atomically, and both or neither: Ctrl-C waits for the pair."""
    with interrupts_deferred():
        save_checkpoint(out / "model.pt", model, cfg.model, cfg.model_kwargs(), cfg.to_dict(), classes,
                        epoch=metrics["epochs_completed"], trainer=metrics["trainer"],
                        data_source=metrics["data_source"])
        write_json(out / "metrics.json", metrics)


def save_run_figures(out: Path, metrics: dict, lr_find: LRFindResult | None = None) -> None:
    """``curves.png``, and ``lr_finder.png`` when the max LR came from a range test."""
    from .plots import plot_curves, plot_lr_finder, save_figure

    save_figure(plot_curves(metrics["history"], metrics["lr_schedule"]), out / "curves.png")
    if lr_find:
        save_figure(plot_lr_finder(lr_find.lrs, lr_find.losses, lr_find.suggested_lr), out / "lr_finder.png")
