"""The shipped weights: ``weights/custom_resnet.safetensors`` (fp16, 13 MB) and its card ``custom_resnet.json``
(how they were made and what they measure), written by ``python -m cifar_s12 export`` from a run's checkpoint.

``predict``, ``report`` and ``app`` use them when no ``--checkpoint`` is given, so a fresh clone classifies at once.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..analysis.predictions import Predictions, predict_split
from ..analysis.report import read_run_metrics
from ..config import TrainConfig
from ..dataset import REPO_DIR, Split, load_cifar10
from ..model import count_parameters
from ..runs.checkpoints import load_checkpoint, save_safetensors
from ..runs.folder import MODEL, RunFolder
from ..runs.provenance import PROVENANCE_KEYS, cli_command, provenance
from ..utils import UserError, write_json
from .mistakes import cache_paths, file_sha256, mistakes_of, write_mistakes

SHIPPED_WEIGHTS = REPO_DIR / "weights" / "custom_resnet.safetensors"
EXAMPLES_DIR = REPO_DIR / "examples"  # one CIFAR-10 test image per class, <class>.png (the app's examples)


def card_path(weights: str | os.PathLike) -> Path:
    return Path(weights).with_suffix(".json")


def read_card(weights: str | os.PathLike) -> dict | None:
    """The card beside ``weights``, or None (a user's own checkpoint has none)."""
    try:
        card = json.loads(card_path(weights).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return card if isinstance(card, dict) else None


def checkpoint_or_shipped(checkpoint: str | os.PathLike | None) -> Path:
    """``--checkpoint`` when given, else the shipped weights (a clear error if this checkout has none)."""
    if checkpoint:
        return Path(checkpoint)
    if not SHIPPED_WEIGHTS.is_file():
        shown = SHIPPED_WEIGHTS.relative_to(REPO_DIR) if SHIPPED_WEIGHTS.is_relative_to(REPO_DIR) else SHIPPED_WEIGHTS
        raise UserError(f"no --checkpoint given, and this checkout has no shipped weights ({shown}): "
                        f"pass --checkpoint runs/NAME/{MODEL}")
    return SHIPPED_WEIGHTS


def flip_tta_accuracy(loaded, test: Split, plain: Predictions) -> float:
    """Accuracy of the mean logits of each image and its mirror image (the trainers' ``--tta``), given the
    ``plain`` predictions of ``test``."""
    mirrored = predict_split(loaded, Split(np.ascontiguousarray(test.images[:, :, ::-1]), test.labels))
    return ((plain.logits + mirrored.logits).argmax(dim=1) == plain.labels).float().mean().item()


def export_weights(checkpoint: str | os.PathLike, out: str | os.PathLike = SHIPPED_WEIGHTS,
                   data_dir: str | None = None, commit: str | None = None) -> list[str]:
    """``checkpoint`` (model.pt or .ckpt) -> fp16 safetensors at ``out``, its card, and its mistakes cache.

    The card's test accuracy is measured on the exported fp16 weights (what users get), over the whole test set,
    by the code ``report`` uses; the run's own figures come from the metrics.json beside the checkpoint."""
    loaded = load_checkpoint(checkpoint)
    out = Path(out)
    if out.suffix != ".safetensors":
        raise UserError(f"--out {out}: name a .safetensors file")
    data = load_cifar10(data_dir, download=False)  # before anything is written: no data, no card with no numbers
    metrics = read_run_metrics(RunFolder.of_checkpoint(loaded.path).metrics) or {}
    cfg = TrainConfig.from_dict(loaded.config)
    save_safetensors(out, loaded.model, loaded.model_name, cfg.model_kwargs(), loaded.config, loaded.classes)
    shipped = load_checkpoint(out)
    runtime = shipped.runtime()
    preds = predict_split(shipped, data.test, runtime)
    mistakes, tta = mistakes_of(preds), flip_tta_accuracy(shipped, data.test, preds)
    run_keys = ("trainer", "device", "command", "epochs_completed", "wall_seconds", "final_test_accuracy",
                "final_test_accuracy_tta", *PROVENANCE_KEYS)
    card = {"weights": out.name, "sha256": file_sha256(out), "dtype": "float16", "model": loaded.model_name,
            "parameters": count_parameters(loaded.model), "classes": list(loaded.classes),
            "test_accuracy": mistakes.accuracy, "test_accuracy_tta": tta, "test_images": mistakes.test_images,
            "measured_on": runtime.describe(),  # bf16 autocast and fp32 can differ in a prediction or two
            "recipe": cfg.recipe, "seed": cfg.seed, "epochs": cfg.epochs,
            "run": {key: metrics[key] for key in run_keys if metrics.get(key) is not None},
            "trained_at_commit": commit or metrics.get("git_commit"),
            "export_command": cli_command(), "exported_at_commit": provenance()["git_commit"]}
    write_json(card_path(out), card)
    cache = write_mistakes(mistakes, cache_paths(out)[:1])
    done, measured = metrics.get("epochs_completed"), metrics.get("final_test_accuracy")
    unfinished = [f"note: the run stopped after {done} of its {cfg.epochs} epochs (finish it with --resume)"] \
        if done is not None and done < cfg.epochs else []
    return unfinished + [f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, fp16) and {card_path(out)}",
            f"test accuracy of the exported weights: {mistakes.accuracy:.4f} (flip TTA {tta:.4f}) on "
            f"{mistakes.test_images:,} test images; the run measured {'nothing' if measured is None else f'{measured:.4f}'}",
            f"wrote {cache}" if cache else "could not write the mistakes cache beside the weights"]


def write_examples(data_dir: str | None = None, out: str | os.PathLike = EXAMPLES_DIR) -> list[Path]:
    """The first test image of each class as ``out/<class>.png`` (chosen by position, not by how well the model
    does on it)."""
    from PIL import Image

    data = load_cifar10(data_dir, download=False)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for c, name in enumerate(data.classes):
        index = int(np.flatnonzero(data.test.labels == c)[0])
        path = out / f"{name}.png"
        Image.fromarray(data.test.images[index]).save(path)
        paths.append(path)
    return paths


def example_images() -> list[Path]:
    """The shipped examples, in class order."""
    return sorted(EXAMPLES_DIR.glob("*.png"), key=lambda p: p.stem) if EXAMPLES_DIR.is_dir() else []
