"""A trained model's most confident mistakes on the test set, computed once per weights file and cached on disk.

The app's gallery reads them. The cache is named by the file's SHA-256, so other weights never show stale mistakes,
and it holds the mistaken images themselves, so a Hugging Face Space (which has no CIFAR-10) ships the cache
instead of the data set. It sits beside the weights, or in data/cache/ when that folder is read-only.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..analysis.predictions import Predictions, predict_split
from ..dataset import DEFAULT_DATA_DIR, load_cifar10
from ..runs.checkpoints import LoadedModel
from ..utils import UserError, atomic_path

MAX_MISTAKES = 50  # the gallery's largest choice
FULL_TEST_SET = 10_000


@dataclass
class Mistakes:
    """The ``len(images)`` most confident wrong predictions, most confident first."""
    accuracy: float          # over all ``test_images``
    test_images: int
    images: np.ndarray       # (n, 32, 32, 3) uint8
    true: np.ndarray         # (n,) class indices
    predicted: np.ndarray    # (n,)
    confidence: np.ndarray   # (n,) probability of the predicted class


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_paths(weights: str | os.PathLike) -> list[Path]:
    """Where the cache of ``weights`` may be: beside the file, then data/cache/ (both named by its hash)."""
    weights = Path(weights)
    name = f"{weights.stem}.mistakes-{file_sha256(weights)[:16]}.npz"
    return [weights.parent / name, DEFAULT_DATA_DIR / "cache" / name]


def compute_mistakes(loaded: LoadedModel, test, limit: int = MAX_MISTAKES) -> Mistakes:
    """One pass over the ``test`` Split, as ``report`` makes it (the same predictions and accuracy)."""
    return mistakes_of(predict_split(loaded, test), limit)


def mistakes_of(preds: Predictions, limit: int = MAX_MISTAKES) -> Mistakes:
    idx = preds.misclassified(limit).numpy()
    return Mistakes(preds.accuracy, len(preds.labels), preds.images[idx], preds.labels[idx].numpy(),
                    preds.predicted[idx].numpy(), preds.confidence[idx].numpy())


def write_mistakes(mistakes: Mistakes, paths: list[Path]) -> Path | None:
    """Into the first folder that takes it; None if none does (the app then computes them again next start)."""
    for path in paths:
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.savez_compressed(f, accuracy=mistakes.accuracy, test_images=mistakes.test_images,
                                    images=mistakes.images, true=mistakes.true, predicted=mistakes.predicted,
                                    confidence=mistakes.confidence)
            return path
        except OSError:
            continue
    return None


def read_mistakes(path: Path) -> Mistakes | None:
    try:
        with np.load(path) as z:
            return Mistakes(float(z["accuracy"]), int(z["test_images"]), z["images"], z["true"], z["predicted"],
                            z["confidence"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def cached_mistakes(loaded: LoadedModel, data_dir: str | os.PathLike | None = None) -> tuple[Mistakes | None, str]:
    """The mistakes of ``loaded`` from the cache, else computed from the test set (and cached); with a line that
    says where they came from, or why there are none (no test data here: never downloaded, the app is offline)."""
    paths = cache_paths(loaded.path)
    for path in paths:
        found = read_mistakes(path) if path.is_file() else None
        if found is not None:
            return found, f"cached in {path.name}"
    try:
        data = load_cifar10(data_dir, download=False)
    except UserError as err:
        return None, f"no test set here to find the mistakes in ({err})"
    mistakes = compute_mistakes(loaded, data.test)
    # Beside the weights (and so in a Space) only the whole test set's mistakes; a subset's go to data/cache/.
    written = write_mistakes(mistakes, paths if mistakes.test_images == FULL_TEST_SET else paths[1:])
    return mistakes, f"computed on {mistakes.test_images:,} test images" + (f", cached in {written.name}" if written
                                                                             else " (could not be cached)")
