"""The report of a trained model: analysis.py's numbers drawn by plots.py's functions, written to one folder.

``python -m cifar_s12 report`` and scripts/make_readme_figures.sh call ``write_report``; the notebooks show the
same figures from ``data_figures``, ``mistake_figures`` and ``confusion_figures``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from matplotlib.figure import Figure

from ..config import TrainConfig
from ..dataset import Split, load_cifar10, subset
from ..runs.checkpoints import LoadedModel, load_checkpoint
from ..runs.folder import CURVES, RunFolder
from ..transform import train_transform
from .plots import (
    plot_augmented,
    plot_confusion_matrix,
    plot_curves,
    plot_gradcam,
    plot_misclassified,
    plot_per_class_accuracy,
    plot_samples,
    save_figure,
)
from .predictions import (
    Predictions,
    check_cam_layer,
    confusion_matrix,
    default_cam_layer,
    first_per_class,
    gradcam,
    normalised,
    per_class_accuracy,
    predict_split,
    write_per_class_csv,
)


def write_report(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, data_dir: str | None = None,
                 test_images: int | None = None, layer: str | None = None, opacity: float = 0.5,
                 n: int = 20, download: bool = True) -> list[str]:
    """Write every figure and table of ``checkpoint`` to ``out_dir``; returns what it did, one line each.

    One pass over the test set (or a class-balanced ``test_images`` subset) gives the predictions every figure uses.
    """
    loaded = load_checkpoint(checkpoint)
    check_cam_layer(loaded.model, layer)  # a layer GradCAM cannot use fails now, not after the slow part
    data = load_cifar10(data_dir or recorded_data_dir(loaded), download=download)
    test = subset(data, test=test_images).test
    preds = predict_split(loaded, test)
    out = Path(out_dir)
    lines = [f"{loaded.model_name} from {loaded.path}: test accuracy {preds.accuracy:.4f} "
             f"on {len(test):,} test images ({data.source})"]
    lines += write_data_figures(data.train, loaded, out)
    lines += write_mistakes(loaded, preds, out, n=n, layer=layer, opacity=opacity)
    lines += write_confusion(preds, out)
    lines += write_curves(RunFolder.of_checkpoint(loaded.path).metrics, out)
    return lines


# Figures as objects (the notebooks show these) ...
def data_figures(train: Split, classes, augment, per_class: int = 2) -> dict[str, Figure]:
    """samples (training images with class names) and augmented (the same through the training augmentations)."""
    idx = first_per_class(train.labels, per_class)
    images, labels = train.images[idx], train.labels[idx]
    return {"samples": plot_samples(images, labels, classes),
            "augmented": plot_augmented(images, labels, classes, train_transform(augment, seed=0))}


def mistake_figures(loaded: LoadedModel, preds: Predictions, n: int = 20, layer: str | None = None,
                    opacity: float = 0.5) -> dict[str, Figure]:
    """misclassified and gradcam (for the predicted and the true class) of the ``n`` most confident errors."""
    idx = preds.misclassified(n)
    if len(idx) == 0:
        return {}
    images, true, predicted = preds.images[idx.numpy()], preds.labels[idx], preds.predicted[idx]
    inputs = normalised(images)
    cams_predicted = gradcam(loaded.model, inputs, predicted, layer)
    cams_true = gradcam(loaded.model, inputs, true, layer)
    return {"misclassified": plot_misclassified(images, true, predicted, preds.confidence[idx], preds.classes),
            "gradcam": plot_gradcam(images, cams_predicted, cams_true, true, predicted, preds.classes, opacity)}


def confusion_figures(preds: Predictions) -> tuple[dict[str, Figure], list[dict]]:
    """confusion_matrix and per_class figures, and the per-class rows they show."""
    confusion = confusion_matrix(preds)
    rows = per_class_accuracy(confusion, preds.classes)
    return {"confusion_matrix": plot_confusion_matrix(confusion, preds.classes),
            "per_class": plot_per_class_accuracy(rows)}, rows


# ... and written to files (the CLI and README's figures).
def _save_all(figures: dict[str, Figure], out: Path) -> str:
    for name, fig in figures.items():
        save_figure(fig, out / f"{name}.png")
    return ", ".join(str(out / f"{name}.png") for name in figures)


def write_data_figures(train: Split, loaded: LoadedModel, out: Path, per_class: int = 2) -> list[str]:
    augment = TrainConfig.from_dict(loaded.config).augment
    written = _save_all(data_figures(train, loaded.classes, augment, per_class), out)
    return [f"wrote {written} ({per_class * len(loaded.classes)} training images)"]


def write_mistakes(loaded: LoadedModel, preds: Predictions, out: Path, n: int = 20, layer: str | None = None,
                   opacity: float = 0.5) -> list[str]:
    figures = mistake_figures(loaded, preds, n, layer, opacity)
    if not figures:
        return ["no misclassified images: misclassified.png and gradcam.png not written"]
    return [f"wrote {_save_all(figures, out)} ({min(n, int((~preds.correct).sum()))} images, "
            f"layer {layer or default_cam_layer(loaded.model)})"]


def write_confusion(preds: Predictions, out: Path) -> list[str]:
    """confusion_matrix.png, per_class.png and per_class.csv."""
    figures, rows = confusion_figures(preds)
    write_per_class_csv(rows, out / "per_class.csv")
    worst = min(rows, key=lambda r: r["accuracy"])
    return [f"wrote {_save_all(figures, out)}, {out / 'per_class.csv'} "
            f"(weakest class: {worst['class']} {worst['accuracy']:.3f})"]


def recorded_data_dir(loaded: LoadedModel) -> str | None:
    """Where the run found CIFAR-10, if that folder is still here: the location recorded (as given) in ``model.pt``
    or in the run's metrics.json (``data_source``), else the recipe's ``data_dir`` (None: $CIFAR_S12_DATA or data/)."""
    metrics = read_run_metrics(RunFolder.of_checkpoint(loaded.path).metrics) or {}
    sources = [loaded.data_source, metrics.get("data_source")]
    # A source is recorded as the user gave it: a path (relative to where the run started) or "$CIFAR_S12_DATA".
    candidates = [os.path.expandvars(str(source).partition(":")[2]) for source in sources if source]
    candidates.append(loaded.config.get("data_dir"))
    return next((str(c) for c in candidates if c and Path(c).is_dir()), None)


def read_run_metrics(path: Path) -> dict | None:
    """A run's metrics.json as a dict, or None when it is missing or is not one."""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return metrics if isinstance(metrics, dict) else None


def write_curves(metrics_path: Path, out: Path) -> list[str]:
    """curves.png from the run's metrics.json, when the checkpoint's folder has one."""
    if not metrics_path.is_file():
        return [f"no {metrics_path}: curves.png not written"]
    metrics = read_run_metrics(metrics_path)
    if metrics is None:
        return [f"{metrics_path} is not a metrics.json: curves.png not written"]
    if not metrics.get("history"):
        return [f"{metrics_path} has no epochs yet: curves.png not written"]
    try:
        figure = plot_curves(metrics["history"], metrics.get("lr_schedule"))
    except (KeyError, TypeError, ValueError, AttributeError) as err:  # a history of another shape
        return [f"{metrics_path}'s history cannot be drawn ({type(err).__name__}: {err}): curves.png not written"]
    save_figure(figure, out / CURVES)
    epochs = len(metrics["history"])
    return [f"wrote {out / CURVES} ({epochs} epoch{'s' if epochs != 1 else ''})"]
