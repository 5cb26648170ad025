"""The recipe made into objects: model, optimizer, OneCycle schedule, loss, data and loaders from a TrainConfig.

One copy, used by both trainers (train.py, lit.py), the LR range tests (lr_find.py) and the benchmark (bench.py),
so none of them can drift from the others.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .config import TrainConfig
from .dataset import CifarData, CifarDataset, load_cifar10, make_loader, subset
from .errors import UserError
from .model import build_model
from .transform import test_transform, train_transform


def parameter_groups(model: nn.Module, cfg: TrainConfig, lr: float):
    """What the optimizer trains: all parameters in one group (best, course), or, with ``bn_bias_lr_scale`` or
    ``bn_weight_frozen``, the BatchNorm biases in a group of their own (LR x scale, weight decay / scale, so their
    product is unchanged) and the BatchNorm scales frozen at 1 (left out, and no gradient computed for them)."""
    if cfg.bn_bias_lr_scale == 1.0 and not cfg.bn_weight_frozen:
        return model.parameters()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    biases, scales = [m.bias for m in norms], [m.weight for m in norms]
    special = {id(p) for p in biases + scales}
    groups = [{"params": [p for p in model.parameters() if id(p) not in special], "lr_scale": 1.0},
              {"params": biases, "lr": lr * cfg.bn_bias_lr_scale, "lr_scale": cfg.bn_bias_lr_scale,
               "weight_decay": cfg.weight_decay / cfg.bn_bias_lr_scale}]
    if cfg.bn_weight_frozen:
        for p in scales:
            p.requires_grad_(False)
    else:
        groups.append({"params": scales, "lr_scale": 1.0})
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float | None = None) -> torch.optim.Optimizer:
    lr = lr if lr is not None else (cfg.max_lr or 1e-3)
    params = parameter_groups(model, cfg, lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    raise UserError(f"unknown optimizer {cfg.optimizer!r}; choose sgd or adam")


def ema_decay_at(decay: float, updates: int) -> float:
    """The moving average's decay after ``updates`` updates: ramped up as (1 + n) / (10 + n) to ``decay``, so early
    on it follows the weights closely. (At a fixed 0.99 from the first step, epoch 1's average still leans on the
    random initial weights, and the network it makes predicts no better than chance.)"""
    return min(decay, (1 + updates) / (10 + updates))


def build_ema(model: nn.Module, cfg: TrainConfig):
    """The recipe's moving average of ``model`` (torch's AveragedModel, BatchNorm statistics averaged too), or
    None. The trainers call ``update_parameters(model)`` after every optimizer step and evaluate and save its
    ``module``: late in a short run it averages out the last steps' noise."""
    if cfg.ema_decay is None:
        return None
    from torch.optim.swa_utils import AveragedModel

    def average(averaged: torch.Tensor, current: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
        return averaged + (current - averaged) * (1 - ema_decay_at(cfg.ema_decay, int(updates)))

    return AveragedModel(model, avg_fn=average, use_buffers=True)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, max_lr: float,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """OneCycle stepped every batch: linear up to ``max_lr`` at ``pct_start`` (epoch 5 of 24), linear down."""
    peaks = [max_lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups]  # one per parameter group
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=peaks if len(peaks) > 1 else max_lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
        pct_start=cfg.pct_start,
        anneal_strategy="linear", three_phase=False, div_factor=cfg.div_factor,
        final_div_factor=cfg.final_div_factor, cycle_momentum=False)  # constant momentum, as in Page's recipe


def step_schedule(scheduler) -> None:
    """Step the LR schedule after a batch, except after the run's last one: OneCycle stepped past its plan would
    leave an LR below 0 (its linear annealing continues) in the optimizer and in the checkpoint."""
    one_cycle = isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
    if not one_cycle or scheduler.last_epoch + 1 < scheduler.total_steps:
        scheduler.step()


def planned_lrs(cfg: TrainConfig, max_lr: float, steps_per_epoch: int) -> list[float]:
    """The LR at every optimizer step of a run, from the same scheduler the trainers build, without training: for
    plotting the schedule beforehand, and the plan a run's recorded ``lr_schedule`` is checked against."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=max_lr)
    sched = build_scheduler(opt, cfg, max_lr, steps_per_epoch)
    lrs = []
    for _ in range(steps_per_epoch * cfg.epochs):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return lrs


def build_criterion(cfg: TrainConfig) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


def build_model_for(cfg: TrainConfig) -> nn.Module:
    """The recipe's network, initialised as the recipe says (``dirac_init``: each convolution's first
    in-channels filters start as the identity, so a deep block first passes its input on, as in airbench)."""
    try:
        model = build_model(cfg.model, **cfg.model_kwargs())
    except (ValueError, TypeError) as err:
        raise UserError(f"cannot build model {cfg.model!r}: {err}") from None
    if cfg.dirac_init:
        with torch.no_grad():
            for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
                nn.init.dirac_(conv.weight[:min(conv.in_channels, conv.out_channels)])
    return model


def load_data(cfg: TrainConfig, data: CifarData | None = None) -> CifarData:
    """The recipe's data: CIFAR-10 from ``cfg.data_dir`` (or the arrays handed in), cut to ``cfg.subset`` and
    ``cfg.test_subset``. The same subset whatever the training seed; cutting an already cut set changes nothing."""
    data = data if data is not None else load_cifar10(cfg.data_dir, download=cfg.download)
    return subset(data, cfg.subset, cfg.test_subset, seed=0)


def build_loaders(cfg: TrainConfig, data: CifarData, rank: int = 0, world_size: int = 1):
    """Training loader (each epoch's order and each image's augmentations drawn from ``cfg.seed``, the epoch and
    the image: see dataset.EpochSampler) and test loader; under DDP, process ``rank``'s share of each."""
    late = cfg.augment.cutout_epochs  # after that many epochs, the same pipeline without cutout
    train_ds = CifarDataset(data.train, train_transform(cfg.augment), seed=cfg.seed,
                            alternate_flips=cfg.augment.flip == "alternating",
                            late_transform=train_transform(replace(cfg.augment, cutout_p=0.0)) if late is not None
                            else None, late_from_epoch=late)
    test_ds = CifarDataset(data.test, test_transform())
    return (make_loader(train_ds, cfg.batch_size, train=True, num_workers=cfg.num_workers, seed=cfg.seed,
                        rank=rank, world_size=world_size),
            make_loader(test_ds, cfg.batch_size, train=False, num_workers=cfg.num_workers, rank=rank,
                        world_size=world_size))
