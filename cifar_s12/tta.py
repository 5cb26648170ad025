"""Test-time augmentation: average the logits of each test image and its mirror image (and of both moved a pixel)."""
from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig


def predict_logits(model: nn.Module, x: torch.Tensor, tta: bool = False, shift: int = 0) -> torch.Tensor:
    """fp32 logits; with ``tta`` the average of the image's and its mirror image's. With a ``shift`` too, half the
    weight goes to those two and half to both of them moved ``shift`` pixels down-right and up-left (the training
    crops' kind of change), as airbench's test-time augmentation does."""
    logits = model(x).float()
    if not tta:
        return logits
    views = (x, torch.flip(x, dims=[3]))
    logits = (logits + model(views[1]).float()) / 2
    if shift:
        moved = [model(translate(v, d)).float() for v in views for d in (shift, -shift)]
        logits = logits / 2 + sum(moved) / (2 * len(moved))
    return logits


def translate(x: torch.Tensor, d: int) -> torch.Tensor:
    """Images moved ``d`` pixels down and right (up and left if negative), the edge reflected into the gap."""
    n = abs(d)
    padded = torch.nn.functional.pad(x, (n, n, n, n), mode="reflect")
    h, w = x.shape[-2:]
    top = n - d  # d > 0: the crop starts above, so the content moves down
    return padded[..., top:top + h, top:top + w]


def tta_variants(cfg: TrainConfig) -> dict[str, int]:
    """The test-time augmentations a finished ``--tta`` run reports, as {metrics key: pixel shift}: the recipe's
    (flip, and the views moved ``tta_shift`` pixels), and with a shift also the flip alone, so one run measures
    what the shifts add."""
    variants = {"final_test_accuracy_tta": cfg.tta_shift}
    if cfg.tta_shift:
        variants["final_test_accuracy_flip_tta"] = 0
    return variants
