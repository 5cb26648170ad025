"""Image transforms: the albumentations pipelines (per sample, in DataLoader workers) and the CIFAR-10 statistics.

Imports nothing else from the package.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would otherwise call the network at import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402  (albumentations' own dependency; only its border-mode constants are used)
from albumentations.pytorch import ToTensorV2  # noqa: E402

# Training-set statistics (per channel, pixels scaled to [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class AugmentConfig:
    """What the training pipeline does; each step's size or probability. 0 switches a step off."""

    pad: int = 4              # pad to 32 + 2*pad, then take a random 32x32 crop
    flip_p: float = 0.5       # horizontal flip
    # "random": each image flipped with flip_p in each epoch. "alternating" (airbench): a random half of the images
    # flipped in the first epoch, the other half in the next, and so on: every image is seen both ways in any two
    # epochs in a row (dataset.CifarDataset does it; the pipeline then has no flip of its own).
    flip: str = "random"
    cutout_size: int = 8      # one square hole, filled with the data mean (0 after normalisation)
    cutout_p: float = 1.0     # every image (Page's recipe); the course preset uses 0.5
    # Cutout in the first N epochs only (None: in all): the last epochs of a short run train on whole images, the
    # ones it is tested on (dataset.CifarDataset switches pipelines by epoch).
    cutout_epochs: int | None = None
    gray_p: float = 0.0       # optional ToGray


def train_transform(cfg: AugmentConfig = AugmentConfig(), seed: int | None = None) -> A.Compose:
    """Normalize -> PadIfNeeded -> RandomCrop -> HorizontalFlip -> CoarseDropout -> ToTensorV2 (ToGray first if on).

    Normalising first means the cutout hole can be filled with 0, which is the data mean. The padding reflects the
    image's edge rows and columns (BORDER_REFLECT_101), so a crop never shows an artificial border.
    """
    size = 32
    steps: list[A.BasicTransform] = []
    if cfg.gray_p > 0:
        steps.append(A.ToGray(num_output_channels=3, p=cfg.gray_p))  # on uint8 RGB, before Normalize
    steps.append(A.Normalize(mean=CIFAR10_MEAN, std=CIFAR10_STD))
    if cfg.pad > 0:
        steps += [A.PadIfNeeded(min_height=size + 2 * cfg.pad, min_width=size + 2 * cfg.pad,
                                border_mode=cv2.BORDER_REFLECT_101),
                  A.RandomCrop(height=size, width=size)]
    if cfg.flip not in ("random", "alternating"):
        raise ValueError(f"unknown flip {cfg.flip!r}: random or alternating")
    if cfg.flip_p > 0 and cfg.flip == "random":
        steps.append(A.HorizontalFlip(p=cfg.flip_p))
    if cfg.cutout_size > 0 and cfg.cutout_p > 0:
        hole = (cfg.cutout_size, cfg.cutout_size)
        steps.append(A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=hole, hole_width_range=hole,
                                     fill=0, p=cfg.cutout_p))
    steps.append(ToTensorV2())
    return A.Compose(steps, seed=seed)


def test_transform() -> A.Compose:
    """Normalize -> ToTensorV2: what evaluation, prediction and GradCAM see."""
    return A.Compose([A.Normalize(mean=CIFAR10_MEAN, std=CIFAR10_STD), ToTensorV2()])


def describe(transform: A.Compose) -> list[str]:
    """One line per step, e.g. for a notebook cell whose output nbval checks."""
    return [repr(t).split("(")[0] + f"(p={t.p})" for t in transform.transforms]
