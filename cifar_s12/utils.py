"""Small shared helpers: seeding, device and precision choice, atomic file writes, checkpoints."""
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

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


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


def pick_device(name: str | None = None) -> torch.device:
    """``name`` if given, else cuda > mps > cpu."""
    if name and name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32.

    auto: bf16 where the hardware computes it natively: CPUs with AVX512-bf16 or AMX (2.8x fp32's speed on the
    development machines' AMD EPYC), CUDA GPUs from Ampere on. fp16 on older GPUs (e.g. Colab's T4, where
    bf16 would only be emulated), fp32 on CPUs without bf16 instructions (emulated bf16 is slower than fp32)
    and on MPS.
    """
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "fp32" or (precision == "auto" and device.type == "mps"):
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
        return torch.bfloat16 if native_cpu_bf16() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def native_cpu_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-bf16 or AMX), which oneDNN's bf16 kernels need to be fast."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def lightning_precision(device: torch.device, precision: str = "auto") -> str:
    """The same choice as ``autocast_dtype``, spelled the way Lightning's Trainer wants it."""
    dtype = autocast_dtype(device, precision)
    return {None: "32-true", torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed"}[dtype]


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
