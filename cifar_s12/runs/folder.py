"""The layout of a run folder (``train --out DIR``): every file a run writes is named here and nowhere else.
Trainers, report, export, compare, the CLI and the notebooks ask ``RunFolder`` for a path.

    DIR/metrics.json            the run's history and provenance, rewritten after every epoch (both trainers)
    DIR/model.pt                the last epoch's weights, self-describing (predict, report, export read it)
    DIR/curves.png              loss, accuracy and LR per epoch, at the end
    DIR/lr_finder.png           the LR range test, when the run chose its max LR with one
    DIR/checkpoints/last.pt     the plain trainer's whole state after the last epoch: train --resume DIR
    DIR/checkpoints/last.ckpt   Lightning's, for the same; best-epoch=N-val_acc=X.ckpt beside it
    DIR/tensorboard/version_N   Lightning's TensorBoard logs, DIR/csv/version_N its CSV logs (N per part of a run)

Imports nothing of the package but utils.py: the trainers, the CLI, the analysis tools and the notebooks use it.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..utils import UserError

METRICS = "metrics.json"
MODEL = "model.pt"
CURVES = "curves.png"
LR_FINDER = "lr_finder.png"
CHECKPOINTS = "checkpoints"
TRAIN_STATE = "last.pt"          # in CHECKPOINTS
LIGHTNING_LAST = "last"          # ModelCheckpoint's filename (it adds .ckpt), in CHECKPOINTS
LIGHTNING_BEST = "best-{epoch}-{val_acc:.4f}"
TENSORBOARD = "tensorboard"
CSV = "csv"
COMPARE = "compare.json"         # compare --out DIR: DIR/compare.json, DIR/compare.png, DIR/torch/, DIR/lightning/
COMPARE_FIGURE = "compare.png"


@dataclass(frozen=True)
class RunFolder:
    """One run's folder and the paths of what it holds."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def model(self) -> Path:
        return self.root / MODEL

    @property
    def curves(self) -> Path:
        return self.root / CURVES

    @property
    def lr_finder(self) -> Path:
        return self.root / LR_FINDER

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def train_state(self) -> Path:
        return self.checkpoints / TRAIN_STATE

    @property
    def lightning_last(self) -> Path:
        return self.checkpoints / f"{LIGHTNING_LAST}.ckpt"

    def lightning_checkpoints(self) -> list[Path]:
        return sorted(self.checkpoints.glob("*.ckpt"))

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    @property
    def csv(self) -> Path:
        return self.root / CSV

    def csv_logs(self) -> list[Path]:
        """Lightning's CSV logs, one ``metrics.csv`` per part of the run, in order."""
        return sorted(self.csv.glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))

    def written(self) -> list[Path]:
        """What a run has written here (what --overwrite replaces); other files are left alone."""
        names = (METRICS, MODEL, CURVES, LR_FINDER, CHECKPOINTS, TENSORBOARD, CSV)
        return [self.root / name for name in names if (self.root / name).exists()]

    def remove_run(self) -> list[Path]:
        """Delete what a run has written here (``written``), leaving a user's own files; returns what went."""
        return remove(self.written())

    def has_run(self) -> bool:
        return self.metrics.exists() or self.model.exists() or self.checkpoints.exists()

    @classmethod
    def of_checkpoint(cls, checkpoint: str | os.PathLike) -> "RunFolder":
        """The run a checkpoint file belongs to: model.pt's folder, or the one above checkpoints/."""
        folder = Path(checkpoint).parent
        return cls(folder.parent if folder.name == CHECKPOINTS else folder)


def remove(paths: list[Path]) -> list[Path]:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return paths


TRAINERS = {"torch": "the plain trainer", "lightning": "the Lightning trainer"}


def resume_file(resume: str | os.PathLike, trainer: str) -> Path:
    """``--resume``'s argument -> the checkpoint to continue: a run folder's ``checkpoints/last.pt`` (plain
    trainer) or ``checkpoints/last.ckpt`` (Lightning), or a checkpoint file named directly."""
    path = Path(resume)
    if not path.is_dir():
        return path
    folder = RunFolder(path)
    mine, other = (folder.train_state, folder.lightning_last) if trainer == "torch" else (folder.lightning_last,
                                                                                        folder.train_state)
    if mine.is_file():
        return mine
    hint = ""
    if other.is_file():
        hint = f": it is a run of {TRAINERS['lightning' if trainer == 'torch' else 'torch']}, resume it with --trainer "
        hint += "lightning" if trainer == "torch" else "torch"
    raise UserError(f"--resume: {path} has no {CHECKPOINTS}/{mine.name} to continue{hint}")


@dataclass(frozen=True)
class CompareFolder:
    """``compare --out DIR``: the two trainers' run folders and the comparison of them."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    @property
    def summary(self) -> Path:
        return self.root / COMPARE

    @property
    def figure(self) -> Path:
        return self.root / COMPARE_FIGURE

    def run(self, trainer: str) -> RunFolder:
        return RunFolder(self.root / trainer)

    def written(self) -> list[Path]:
        return [p for p in (self.summary, self.figure, self.root / "torch", self.root / "lightning") if p.exists()]

    def remove_run(self) -> list[Path]:
        return remove(self.written())
