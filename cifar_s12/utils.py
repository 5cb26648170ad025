"""Small shared helpers: seeding, the command line of a run, atomic file writes (checkpoints: checkpoints.py).

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


def provenance() -> dict:
    """What a result needs to be reproduced: the git commit the package ran at (None outside a git checkout) and
    whether the tree had uncommitted changes, and the versions of the libraries that decide the numbers."""
    import subprocess
    from importlib import metadata

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True,
                                  text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_clean": None if status is None else status == "",
            "versions": {name: version(name) for name in ("torch", "pytorch-lightning", "albumentations")}}


PROVENANCE_KEYS = ("git_commit", "git_clean", "versions")


def provenance_of_parts(parts: list[dict]) -> dict:
    """The provenance of a run trained in parts (``--resume``), each part's as ``provenance()`` gave it plus the
    ``device`` it trained on (the trainer's description: "cpu, bfloat16"), oldest first: ``git_commit`` and
    ``versions`` are the last part's, ``git_clean`` says whether every part ran on a clean tree (None when a part
    could not tell), ``device`` names each device the parts trained on, in order ("cpu, fp32 + cpu, bfloat16": a
    run continued on another machine), and ``parts`` keeps each part's, so no commit a run ran at is lost."""
    parts = [{key: part.get(key) for key in (*PROVENANCE_KEYS, "device")} for part in parts]
    devices = list(dict.fromkeys(part["device"] for part in parts if part["device"]))  # in order, each once
    # No device known: none is returned, so the run's own device field is not overwritten with None.
    run = {**{key: parts[-1][key] for key in PROVENANCE_KEYS}, **({"device": " + ".join(devices)} if devices else {})}
    if len(parts) == 1:
        return run
    cleans = [part["git_clean"] for part in parts]
    clean = False if False in cleans else (None if None in cleans else True)
    return {**run, "git_clean": clean, "parts": parts}


def cpu_name() -> str:
    """The CPU's model name and core count (Linux's /proc/cpuinfo), for figures that depend on the machine."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"cpu ({os.cpu_count()} cores)"


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
