"""The recipe made into objects: model, optimizer, OneCycle schedule and loss from a TrainConfig (the loaders:
dataset.build_loaders).

One copy, used by both trainers (train.py, lit.py), the LR range tests (lr_find.py) and the benchmark
(benchmarks/throughput.py), so none of them can drift from the others.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig
from .model import build_model
from .utils import UserError


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


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, max_lr: float,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """OneCycle stepped every batch: linear up to ``max_lr`` at ``pct_start`` (epoch 5 of 24), linear down."""
    peaks = [max_lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups]  # one per parameter group
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=peaks if len(peaks) > 1 else max_lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
        pct_start=cfg.pct_start,
        anneal_strategy="linear", three_phase=False, div_factor=cfg.div_factor,
        final_div_factor=cfg.final_div_factor, cycle_momentum=False)  # constant momentum, as in Page's recipe


def plan_finished(scheduler) -> bool:
    """Whether OneCycle has taken its last planned step: stepped past it, its linear annealing would go on below 0."""
    one_cycle = isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)  # Lightning's LR finder swaps in its own
    return one_cycle and scheduler.last_epoch + 1 >= scheduler.total_steps


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
    """The recipe's network; a bad model name or argument is a one-line error."""
    try:
        return build_model(cfg.model, **cfg.model_kwargs())
    except (ValueError, TypeError) as err:
        raise UserError(f"cannot build model {cfg.model!r}: {err}") from None


