"""The plain-PyTorch trainer: optimizer + OneCycle construction (shared with Lightning), train/test epochs, fit.

Read top to bottom: Runtime (device + precision) -> builders -> LR range test -> one epoch -> evaluate -> fit.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from tqdm import TqdmWarning, tqdm

# Text progress bars everywhere (terminal, Jupyter, Colab, a saved notebook): widget bars need ipywidgets and leave
# nothing readable in committed outputs. Lightning's bar makes the same choice without ipywidgets. tqdm.auto's
# "IProgress not found" warning (torch-lr-finder imports it) is noise.
warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)

from .config import TrainConfig
from .dataset import CifarData, CifarDataset, load_cifar10, make_loader, subset
from .errors import UserError
from .model import build_model, count_parameters
from .transform import test_transform, train_transform
from .utils import (autocast_dtype, cli_command, interrupts_deferred, pick_device, save_checkpoint, seed_everything,
                    write_json)


# ----------------------------------------------------------------------------------------------------------------
# Device and precision
@dataclass
class Runtime:
    """Where and how fast: the device and the autocast dtype (None = fp32). Mixed precision goes with
    channels_last, which lets oneDNN (CPU) and cuDNN (GPU) use their fastest convolution kernels."""

    device: torch.device
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self):
        # fp16 needs loss scaling against underflow; bf16 has fp32's range and does not.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed 32x32 input: time cuDNN's algorithms once, keep the fastest

    @classmethod
    def create(cls, precision: str = "auto", device: str | None = None) -> "Runtime":
        dev = pick_device(device)
        return cls(dev, autocast_dtype(dev, precision))

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.dtype is not None else torch.contiguous_format

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def prepare(self, model: nn.Module) -> nn.Module:
        return model.to(self.device, memory_format=self.memory_format)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True, memory_format=self.memory_format)

    def describe(self) -> str:
        return f"{self.device.type}, {str(self.dtype).replace('torch.', '') if self.dtype else 'fp32'}"


class AutocastModel(nn.Module):
    """Runs ``model`` under the runtime's autocast and memory format, returning fp32 logits.

    For code that drives the model itself and knows nothing of mixed precision (torch-lr-finder, pytorch-grad-cam).
    """

    def __init__(self, model: nn.Module, runtime: Runtime):
        super().__init__()
        self.model, self.runtime = model, runtime

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.runtime.autocast():
            return self.model(self.runtime.inputs(x)).float()


# ----------------------------------------------------------------------------------------------------------------
# Builders shared by both trainers
def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float | None = None) -> torch.optim.Optimizer:
    lr = lr if lr is not None else (cfg.max_lr or 1e-3)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, nesterov=True,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    raise UserError(f"unknown optimizer {cfg.optimizer!r}; choose sgd or adam")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, max_lr: float,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """OneCycle stepped every batch: linear up to ``max_lr`` at ``pct_start`` (epoch 5 of 24), linear down."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch, pct_start=cfg.pct_start,
        anneal_strategy="linear", three_phase=False, div_factor=cfg.div_factor,
        final_div_factor=cfg.final_div_factor, cycle_momentum=False)  # constant momentum, as in Page's recipe


def build_criterion(cfg: TrainConfig) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


def build_model_for(cfg: TrainConfig) -> nn.Module:
    try:
        return build_model(cfg.model, **cfg.model_kwargs())
    except (ValueError, TypeError) as err:
        raise UserError(f"cannot build model {cfg.model!r}: {err}") from None


def prepare_data(cfg: TrainConfig, data: CifarData | None = None) -> CifarData:
    data = data if data is not None else load_cifar10(cfg.data_dir, download=cfg.download)
    return subset(data, cfg.subset, cfg.test_subset, seed=0)  # the same subset whatever the training seed


def build_loaders(cfg: TrainConfig, data: CifarData):
    train_ds = CifarDataset(data.train, train_transform(cfg.augment, seed=cfg.seed))
    test_ds = CifarDataset(data.test, test_transform())
    return (make_loader(train_ds, cfg.batch_size, train=True, num_workers=cfg.num_workers, seed=cfg.seed),
            make_loader(test_ds, cfg.batch_size, train=False, num_workers=cfg.num_workers))


# ----------------------------------------------------------------------------------------------------------------
# LR range test (torch-lr-finder)
@dataclass
class LRFindResult:
    suggested_lr: float
    lrs: list[float]
    losses: list[float]


def find_lr(model: nn.Module, loader, cfg: TrainConfig, runtime: Runtime, start_lr: float = 1e-5,
            end_lr: float = 10.0, num_iter: int = 100) -> LRFindResult:
    """Exponential LR range test; suggests the LR where the loss falls fastest (steepest negative gradient).

    torch-lr-finder restores the model's and optimizer's state afterwards, so training starts from the same weights.
    """
    from torch_lr_finder import LRFinder

    optimizer = build_optimizer(model, cfg, lr=start_lr)
    finder = LRFinder(AutocastModel(model, runtime), optimizer, build_criterion(cfg), device=runtime.device)
    finder.range_test(loader, start_lr=start_lr, end_lr=end_lr, num_iter=num_iter, step_mode="exp")
    lrs, losses = list(finder.history["lr"]), list(finder.history["loss"])
    finder.reset()
    return LRFindResult(steepest_descent_lr(lrs, losses), lrs, losses)


def range_test_iters(steps_per_epoch: int) -> int:
    """Range-test steps before a run with no max LR (both trainers): 100, or 3 epochs of a small subset."""
    return max(2, min(100, 3 * steps_per_epoch))


def steepest_descent_lr(lrs: list[float], losses: list[float], skip_start: int = 10, skip_end: int = 5) -> float:
    """torch-lr-finder's suggestion rule (min of d loss / d step after trimming the ends), without a plot."""
    import numpy as np

    if len(lrs) <= skip_start + skip_end + 1:
        skip_start, skip_end = 0, 0
    sel_lrs, sel_losses = lrs[skip_start:len(lrs) - skip_end], losses[skip_start:len(losses) - skip_end]
    return float(sel_lrs[int(np.gradient(np.asarray(sel_losses)).argmin())])


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


def train_epoch(model, loader, optimizer, scheduler, criterion, runtime: Runtime, desc: str = "train") -> dict:
    model.train()
    accuracy = MulticlassAccuracy(num_classes=10, average="micro").to(runtime.device)
    loss_sum, seen = torch.zeros((), device=runtime.device), 0
    bar = tqdm(loader, desc=desc, leave=False, mininterval=1.0, dynamic_ncols=True)
    start = time.perf_counter()
    for step, (x, y) in enumerate(bar):
        x, y = runtime.inputs(x), y.to(runtime.device, non_blocking=True)
        loss, logits = train_step(model, x, y, optimizer, criterion, runtime)
        lr = optimizer.param_groups[0]["lr"]  # the LR this step used (after the last step OneCycle overshoots)
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


def predict_logits(model: nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """fp32 logits; with ``tta`` the average of the image's and its mirror image's."""
    logits = model(x).float()
    if tta:
        logits = (logits + model(torch.flip(x, dims=[3])).float()) / 2
    return logits


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
    data = prepare_data(cfg, data)
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
    lr_schedule = planned_lrs(cfg, cfg.max_lr, len(train_loader))
    out = Path(out_dir) if out_dir else None
    metrics = new_metrics("torch", cfg, model, runtime.describe(), data, train_loader.num_workers)
    for epoch in range(1, cfg.epochs + 1):
        stats = train_epoch(model, train_loader, optimizer, scheduler, criterion, runtime,
                            desc=f"epoch {epoch}/{cfg.epochs}")
        stats.update(evaluate(model, test_loader, criterion, runtime))
        row = {"epoch": epoch, **stats}
        record_epoch(metrics, row, lr_schedule[:epoch * len(train_loader)], wall_start)
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
            "loader_workers": loader_workers, "config": cfg.to_dict(), "command": cli_command(), "history": [],
            "lr_schedule": []}


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
                        epoch=metrics["epochs_completed"], trainer=metrics["trainer"])
        write_json(out / "metrics.json", metrics)


def save_run_figures(out: Path, metrics: dict, lr_find: LRFindResult | None = None) -> None:
    """``curves.png``, and ``lr_finder.png`` when the max LR came from a range test."""
    from .plots import plot_curves, plot_lr_finder, save_figure

    save_figure(plot_curves(metrics["history"], metrics["lr_schedule"]), out / "curves.png")
    if lr_find:
        save_figure(plot_lr_finder(lr_find.lrs, lr_find.losses, lr_find.suggested_lr), out / "lr_finder.png")


def planned_lrs(cfg: TrainConfig, max_lr: float, steps_per_epoch: int) -> list[float]:
    """The LR at every optimizer step of the run, from the same scheduler the trainers use (for the LR plot)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=max_lr)
    sched = build_scheduler(opt, cfg, max_lr, steps_per_epoch)
    lrs = []
    for _ in range(steps_per_epoch * cfg.epochs):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return lrs
