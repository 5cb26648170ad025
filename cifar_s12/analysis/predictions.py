"""Looking at a trained model: predictions on the test set, confusion, GradCAM, predicting image files.

Read top to bottom (checkpoints.py loads the model): collect predictions in one pass -> confusion and per-class
accuracy -> GradCAM maps -> predicting single image files. Figures of all of these are drawn by ``plots.py``.
"""
from __future__ import annotations

import csv
import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from ..dataset import CifarDataset, Split, make_loader
from ..device import Runtime
from ..runs.checkpoints import LoadedModel
from ..transform import test_transform
from ..tta import predict_logits
from ..utils import UserError, atomic_path


# ----------------------------------------------------------------------------------------------------------------
# Predictions: one pass over a split, reused by every figure
@dataclass
class Predictions:
    logits: torch.Tensor          # (N, C) float32, CPU
    labels: torch.Tensor          # (N,) int64, the true classes
    classes: tuple[str, ...]
    images: np.ndarray | None = None  # (N, 32, 32, 3) uint8: the pixels the model saw, before normalisation

    @property
    def probabilities(self) -> torch.Tensor:
        return self.logits.softmax(dim=1)

    @property
    def predicted(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)

    @property
    def confidence(self) -> torch.Tensor:
        """The probability of the predicted class."""
        return self.probabilities.max(dim=1).values

    @property
    def correct(self) -> torch.Tensor:
        return self.predicted == self.labels

    @property
    def accuracy(self) -> float:
        return self.correct.float().mean().item()

    def misclassified(self, n: int = 20) -> torch.Tensor:
        """Indices of up to ``n`` wrong predictions, most confident first (the most instructive mistakes)."""
        wrong = torch.nonzero(~self.correct).flatten()
        order = torch.argsort(self.confidence[wrong], descending=True, stable=True)
        return wrong[order[:n]]


@torch.no_grad()
def collect_logits(model: nn.Module, loader, runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels for every batch of ``loader``, under the runtime's autocast (as the trainer evaluated)."""
    model = runtime.prepare(model).eval()
    logits, labels = [], []
    for x, y in loader:
        with runtime.autocast():
            logits.append(predict_logits(model, runtime.inputs(x)).cpu())
        labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def predict_split(loaded: LoadedModel, split: Split, runtime: Runtime | None = None,
                  batch_size: int = 256) -> Predictions:
    """Predictions for every image of ``split`` (the test transform only: what evaluation sees)."""
    runtime = runtime or loaded.runtime()
    loader = make_loader(CifarDataset(split, test_transform()), batch_size, train=False, num_workers=0)
    logits, labels = collect_logits(loaded.model, loader, runtime)
    return Predictions(logits, labels, loaded.classes, split.images)


def first_per_class(labels: np.ndarray, per_class: int = 2) -> np.ndarray:
    """Indices of the first ``per_class`` images of each class, ordered so that a row of C tiles shows each class."""
    classes = np.unique(labels)
    firsts = np.stack([np.flatnonzero(labels == c)[:per_class] for c in classes])  # (C, per_class)
    return firsts.T.flatten()


# ----------------------------------------------------------------------------------------------------------------
# Confusion matrix and per-class accuracy
def confusion_matrix(preds: Predictions) -> torch.Tensor:
    """(C, C) counts; row = true class, column = predicted class."""
    metric = MulticlassConfusionMatrix(num_classes=len(preds.classes))
    metric.update(preds.predicted, preds.labels)
    return metric.compute()


def per_class_accuracy(confusion: torch.Tensor, classes: Sequence[str]) -> list[dict]:
    """One row per class: class, correct, total, accuracy (NaN where the class has no images)."""
    correct, total = confusion.diagonal(), confusion.sum(dim=1)
    return [{"class": name, "correct": int(c), "total": int(t), "accuracy": float(c) / int(t) if t else float("nan")}
            for name, c, t in zip(classes, correct, total)]


def write_per_class_csv(rows: list[dict], path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["class", "correct", "total", "accuracy"])
        writer.writeheader()
        writer.writerows({**r, "accuracy": f"{r['accuracy']:.4f}"} for r in rows)


# ----------------------------------------------------------------------------------------------------------------
# GradCAM (pytorch-grad-cam)
def default_cam_layer(model: nn.Module) -> str:
    """The model class's ``cam_layer``, else the last module that holds a convolution."""
    name = getattr(type(model), "cam_layer", None)
    if name:
        return name
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UserError(f"{type(model).__name__} has no convolution to take a GradCAM from")
    return convs[-1]


def resolve_layer(model: nn.Module, name: str | None = None) -> nn.Module:
    """The sub-module at dotted ``name`` (default: ``default_cam_layer``); an unknown name lists valid ones."""
    name = name or default_cam_layer(model)
    names = [n for n, _ in model.named_modules() if n]
    if name not in names:
        suggestions = difflib.get_close_matches(name, names, n=5, cutoff=0.5) or names[-5:]
        raise UserError(f"no layer {name!r} in {type(model).__name__}; valid names include "
                        f"{', '.join(suggestions)} (default {default_cam_layer(model)})")
    return model.get_submodule(name)


def output_shapes(model: nn.Module, names) -> dict[str, tuple | None]:
    """What each named layer outputs for one blank 32x32 image: its shape, or None (not a tensor, or not run)."""
    shapes: dict[str, tuple | None] = {}

    def record(name):
        def hook(module, args, output):  # a hook that returns something would replace the output
            shapes[name] = tuple(output.shape) if hasattr(output, "shape") else None
        return hook

    handles = [resolve_layer(model, name).register_forward_hook(record(name)) for name in names]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, 32, 32, device=next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    return {name: shapes.get(name) for name in names}


def check_cam_layer(model: nn.Module, name: str | None = None) -> str:
    """``name`` (default: ``default_cam_layer``) if GradCAM can use it, else a UserError: GradCAM weighs the
    channels of a feature map, so the layer must output (N, C, H, W). One forward pass of a blank image tells."""
    name = name or default_cam_layer(model)
    shape = output_shapes(model, [name])[name]
    if shape is None or len(shape) != 4:
        raise UserError(f"GradCAM needs a layer that outputs a feature map (N, C, H, W); {name!r} outputs "
                        f"{shape if shape is not None else 'no tensor'}: choose a "
                        f"convolutional block such as {default_cam_layer(model)}")
    return name


def cam_layer_choices(model: nn.Module) -> dict[str, str]:
    """The layers to offer for GradCAM, {readable label: dotted module name}, input side first: the model class's
    ``cam_blocks`` (else its default layer alone), each labelled with the feature map it outputs, e.g.
    "layer 3: R2, second conv · 512 ch, 4x4 (default)". One forward pass of a blank image measures them."""
    names = dict(getattr(type(model), "cam_blocks", None) or {default_cam_layer(model): default_cam_layer(model)})
    shapes = output_shapes(model, names)
    default = default_cam_layer(model)
    return {f"{label} · {shapes[name][1]} ch, {shapes[name][2]}x{shapes[name][3]}"
            f"{' (default)' if name == default else ''}": name for name, label in names.items()}


def gradcam(model: nn.Module, inputs: torch.Tensor, targets: Sequence[int], layer: str | None = None) -> np.ndarray:
    """GradCAM maps, (N, H, W) float32 in [0, 1] at the inputs' size, one per image for its class in ``targets``.

    Runs in fp32 (outside autocast): pytorch-grad-cam converts activations to NumPy, which has no bfloat16, and a
    few images cost nothing.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    target_layer = resolve_layer(model, layer)
    device = next(model.parameters()).device
    # GradCAM needs the gradients of the layer's activations only: with the weights frozen for the call and the
    # input made a leaf that wants gradients instead, backward skips every weight gradient (about half its work).
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in trainable:
            p.requires_grad_(False)
        with GradCAM(model=model.eval(), target_layers=[target_layer]) as cam:
            maps = cam(input_tensor=inputs.to(device).requires_grad_(True),
                       targets=[ClassifierOutputTarget(int(t)) for t in targets])
    finally:
        for p in trainable:
            p.requires_grad_(True)
    return np.clip(maps, 0.0, 1.0)  # its min-max scaling can overshoot 1 by rounding


def normalised(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 HWC images (an NHWC array or a list) -> the normalised NCHW batch the model takes (test transform)."""
    transform = test_transform()
    return torch.stack([transform(image=image)["image"] for image in images])


# ----------------------------------------------------------------------------------------------------------------
# Predicting image files
def load_image(path: str | os.PathLike, size: int = 32) -> tuple[np.ndarray, str | None]:
    """An image file of any size and mode -> uint8 (size, size, 3) RGB, and a note when it had to be changed.

    A non-square image is centre-cropped to a square before resizing, so objects keep their shape.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise UserError(f"image {path} is a folder, not an image file")
    if not path.is_file():
        raise UserError(f"image {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:  # the last: a huge image
        raise UserError(f"{path} is not an image PIL can read ({type(err).__name__})") from None
    changes = []
    if image.mode != "RGB":
        changes.append(f"converted from {image.mode} to RGB")
        image = _to_rgb(image)
    if image.size != (size, size):
        crop = "centre-cropped and " if image.width != image.height else ""
        changes.append(f"{crop}resized from {image.width}x{image.height} to {size}x{size}")
        image = ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)
    note = f"{path}: {', '.join(changes)}" if changes else None
    return np.asarray(image, dtype=np.uint8), note


def _to_rgb(image):
    """Any PIL mode -> RGB. 16-bit and float grey levels are scaled to 8 bits (PIL's own conversion clips them,
    turning most of a 16-bit image white); transparent pixels are shown on white, as a viewer shows them."""
    from PIL import Image

    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        image = Image.fromarray(np.clip(pixels / top * 255 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


@torch.no_grad()
def predict_probabilities(loaded: LoadedModel, images: Sequence[np.ndarray],
                          runtime: Runtime | None = None) -> torch.Tensor:
    """(N, C) class probabilities for uint8 HWC images (each row sums to 1)."""
    runtime = runtime or loaded.runtime()
    model = runtime.prepare(loaded.model).eval()
    with runtime.autocast():
        logits = predict_logits(model, runtime.inputs(normalised(images))).cpu()
    return logits.softmax(dim=1)


def top_k(probabilities: torch.Tensor, classes: Sequence[str], k: int = 3) -> list[list[tuple[str, float]]]:
    """Per image, the ``k`` most likely (class name, probability), most likely first."""
    values, indices = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return [[(classes[i], float(p)) for p, i in zip(row_p, row_i)] for row_p, row_i in zip(values, indices)]
