"""What a student needs from "utils": seeding, atomic file writes, and the one error the CLI prints as a line."""
from __future__ import annotations

import json
import os
import random
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (all devices): what the initial weights are drawn from. (The data order and the
    augmentations have seeds of their own: dataset.EpochSampler, CifarDataset.)"""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed torch's global generator (dropout, anything random in the step) from (seed, epoch, process rank) at
    the start of an epoch: an epoch after a resume draws what the uninterrupted run's did."""
    torch.manual_seed(int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0]))


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block finishes.

    So a crash or Ctrl-C never leaves a half-written checkpoint or metrics file, and the previous one survives.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private (0600); the result gets a normal file's permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")


class UserError(Exception):
    """Bad input from the user: missing data, an unreadable file, an unknown name. The message says what to do."""
