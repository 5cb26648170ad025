"""Looking at a trained model: checkpoint loading, predictions on the test set, confusion, GradCAM, predict.

Read top to bottom: load a checkpoint -> collect predictions in one pass -> confusion and per-class accuracy ->
GradCAM maps -> predicting single image files. Figures of all of these are drawn by ``plots.py``.
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

from .dataset import CifarDataset, Split, make_loader
from .errors import UserError
from .model import NUM_CLASSES, build_model
from .runtime import Runtime, autocast_dtype, pick_device, predict_logits
from .transform import test_transform
from .utils import CHECKPOINT_FORMAT, atomic_path, read_checkpoint_file


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: the plain trainer's .pt and Lightning's .ckpt, to a ready model
@dataclass
class LoadedModel:
    model: nn.Module          # in eval mode, on the CPU, fp32
    model_name: str
    classes: tuple[str, ...]
    config: dict              # the training recipe (TrainConfig.to_dict())
    path: Path
    data_source: str | None = None  # where the run read CIFAR-10 (model.pt records it; a Lightning .ckpt does not)

    def runtime(self, device: str | None = None) -> Runtime:
        """The device and autocast dtype the trainer used (its ``precision``), for inference the same way; a run
        trained in fp16 on a GPU is read with this CPU's ``auto`` choice (CPUs have no fp16 path here)."""
        dev = pick_device(device)
        precision = self.config.get("precision", "auto")
        if precision == "fp16" and dev.type == "cpu":
            precision = "auto"
        return Runtime(dev, autocast_dtype(dev, precision))


def load_checkpoint(path: str | os.PathLike) -> LoadedModel:
    """A ``.pt`` from ``utils.save_checkpoint`` or a Lightning ``.ckpt`` -> the model in eval mode + class names.

    Lightning is not imported: its checkpoint is a torch dict whose ``hyper_parameters`` carry the same
    model_name / model_kwargs / config / classes as the plain payload, and whose weights are prefixed ``model.``.
    """
    path = Path(path)
    payload = read_checkpoint_file(path)
    if payload.get("format") == CHECKPOINT_FORMAT:
        missing = [key for key in ("model", "model_kwargs", "config", "classes", "state_dict") if key not in payload]
        if missing:
            raise UserError(f"{path} is an incomplete cifar_s12 checkpoint (no {', '.join(missing)})")
        name, kwargs, config, classes = (payload["model"], payload["model_kwargs"], payload["config"],
                                         payload["classes"])
        state = payload["state_dict"]
    elif isinstance(payload.get("hyper_parameters"), dict) and "model_name" in payload["hyper_parameters"]:
        hp = payload["hyper_parameters"]
        name, kwargs, config, classes = (hp["model_name"], hp.get("model_kwargs", {}), hp.get("config", {}),
                                         hp.get("classes"))
        state = {k[len("model."):]: v for k, v in payload.get("state_dict", {}).items() if k.startswith("model.")}
    else:
        raise UserError(f"{path} is a torch file but not a cifar_s12 checkpoint (no model name and classes in it)")
    if not classes:
        raise UserError(f"{path} does not name its classes (hyper_parameters['classes'])")
    if len(classes) != NUM_CLASSES:
        raise UserError(f"{path} names {len(classes)} classes; the models here predict {NUM_CLASSES}")
    model = _build(name, kwargs, path)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:])  # line 0 only says "Error(s)"
        raise UserError(f"{path}: its weights do not fit model {name!r}: {detail[:300]}") from None
    return LoadedModel(model.eval(), name, tuple(classes), dict(config), path, payload.get("data_source"))


def _build(name: str, kwargs: dict, path: Path) -> nn.Module:
    try:
        return build_model(name, **kwargs)
    except (ValueError, TypeError) as err:
        raise UserError(f"{path}: cannot build model {name!r} ({err})") from None


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


def check_cam_layer(model: nn.Module, name: str | None = None) -> str:
    """``name`` (default: ``default_cam_layer``) if GradCAM can use it, else a UserError: GradCAM weighs the
    channels of a feature map, so the layer must output (N, C, H, W). One forward pass of a blank image tells."""
    name = name or default_cam_layer(model)
    layer = resolve_layer(model, name)
    shapes = []
    handle = layer.register_forward_hook(lambda module, args, output: shapes.append(getattr(output, "shape", None)))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, 32, 32, device=next(model.parameters()).device))
    finally:
        handle.remove()
    if not shapes or shapes[0] is None or len(shapes[0]) != 4:
        raise UserError(f"GradCAM needs a layer that outputs a feature map (N, C, H, W); {name!r} outputs "
                        f"{tuple(shapes[0]) if shapes and shapes[0] is not None else 'no tensor'}: choose a "
                        f"convolutional block such as {default_cam_layer(model)}")
    return name


def gradcam(model: nn.Module, inputs: torch.Tensor, targets: Sequence[int], layer: str | None = None) -> np.ndarray:
    """GradCAM maps, (N, H, W) float32 in [0, 1] at the inputs' size, one per image for its class in ``targets``.

    Runs in fp32 (outside autocast): pytorch-grad-cam converts activations to NumPy, which has no bfloat16, and a
    few images cost nothing.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    target_layer = resolve_layer(model, layer)
    device = next(model.parameters()).device
    with GradCAM(model=model.eval(), target_layers=[target_layer]) as cam:
        maps = cam(input_tensor=inputs.to(device), targets=[ClassifierOutputTarget(int(t)) for t in targets])
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
        image = image.convert("RGB")
    if image.size != (size, size):
        crop = "centre-cropped and " if image.width != image.height else ""
        changes.append(f"{crop}resized from {image.width}x{image.height} to {size}x{size}")
        image = ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)
    note = f"{path}: {', '.join(changes)}" if changes else None
    return np.asarray(image, dtype=np.uint8), note


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
