"""The recipe made into objects: model, optimizer, OneCycle schedule, loss, data and loaders from a TrainConfig.

One copy, used by both trainers (train.py, lit.py), the LR range tests (lr_find.py) and the benchmark (bench.py),
so none of them can drift from the others.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig
from .dataset import CifarData, CifarDataset, load_cifar10, make_loader, subset
from .errors import UserError
from .model import build_model
from .transform import test_transform, train_transform


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
    try:
        return build_model(cfg.model, **cfg.model_kwargs())
    except (ValueError, TypeError) as err:
        raise UserError(f"cannot build model {cfg.model!r}: {err}") from None


def load_data(cfg: TrainConfig, data: CifarData | None = None) -> CifarData:
    """The recipe's data: CIFAR-10 from ``cfg.data_dir`` (or the arrays handed in), cut to ``cfg.subset`` and
    ``cfg.test_subset``. The same subset whatever the training seed; cutting an already cut set changes nothing."""
    data = data if data is not None else load_cifar10(cfg.data_dir, download=cfg.download)
    return subset(data, cfg.subset, cfg.test_subset, seed=0)


def build_loaders(cfg: TrainConfig, data: CifarData):
    """Training loader (shuffled, the recipe's augmentations seeded by ``cfg.seed``) and test loader."""
    train_ds = CifarDataset(data.train, train_transform(cfg.augment, seed=cfg.seed))
    test_ds = CifarDataset(data.test, test_transform())
    return (make_loader(train_ds, cfg.batch_size, train=True, num_workers=cfg.num_workers, seed=cfg.seed),
            make_loader(test_ds, cfg.batch_size, train=False, num_workers=cfg.num_workers))
