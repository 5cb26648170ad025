"""Small shared helpers: seeding, the command line of a run, atomic file writes, checkpoints.

Device and precision choice live in runtime.py."""
from __future__ import annotations

import json
import os
import random
import shlex
import signal
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import UserError

COMMAND_ENV_VAR = "CIFAR_S12_COMMAND"


def cli_command() -> str | None:
    """The command that started this run, recorded in metrics.json for the results table.

    ``python -m cifar_s12 ...`` is read from argv. A notebook kernel's argv says nothing useful, so a notebook
    executed headless (``jupyter nbconvert --execute``) names its command in ``CIFAR_S12_COMMAND``; else None.
    """
    argv0 = Path(sys.argv[0])
    if argv0.name == "__main__.py" and argv0.parent.name == "cifar_s12":
        return shlex.join(["python", "-m", "cifar_s12", *sys.argv[1:]])
    return os.environ.get(COMMAND_ENV_VAR) or None


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (all devices). Loader workers derive their seeds from torch's."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


@contextmanager
def interrupts_deferred():
    """Ctrl-C inside the block takes effect when the block ends (as a KeyboardInterrupt).

    For files that must agree with each other, like an epoch's ``model.pt`` and ``metrics.json``: each write is
    atomic, and this keeps an interrupt from falling between them. Outside the main thread (where Python delivers
    signals) it does nothing.
    """
    received: list[int] = []
    try:
        previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")


CHECKPOINT_FORMAT = "cifar_s12.checkpoint/1"


def save_checkpoint(path: str | os.PathLike, model: nn.Module, model_name: str, model_kwargs: dict,
                    config: dict, classes: tuple[str, ...], **extra) -> None:
    """A self-describing ``.pt``: enough to rebuild the model without the code that trained it."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "state_dict": state, "model": model_name,
               "model_kwargs": model_kwargs, "config": config, "classes": list(classes), **extra}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint_file(path: str | os.PathLike, context: str = "") -> dict:
    """A torch checkpoint file as a dict, or a UserError that says what is wrong (``context`` prefixes it).

    weights_only=False: Lightning may store its hyper-parameters as an AttributeDict, which the safe unpickler
    refuses; the file is the user's own training output.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{context}checkpoint {path} is a folder; name the file (model.pt or a .ckpt)")
    if not path.is_file():
        raise UserError(f"{context}checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise UserError(f"{context}{path} is not a checkpoint: torch.load failed ({type(err).__name__})") from None
    if not isinstance(payload, dict):
        raise UserError(f"{context}{path} is not a checkpoint: it holds a {type(payload).__name__}, not a dict")
    return payload
