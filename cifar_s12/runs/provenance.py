"""Where a run came from: the command line, the git commit and whether the tree was clean, package versions, the CPU."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

COMMAND_ENV_VAR = "CIFAR_S12_COMMAND"


def cli_command() -> str | None:
    """The command that started this run, recorded in metrics.json for the results table.

    ``python -m cifar_s12 ...`` and ``cifar-s12 ...`` are read from argv. A notebook kernel's argv says nothing
    useful, so a notebook executed headless (``jupyter nbconvert --execute``) names its command in
    ``CIFAR_S12_COMMAND``; else None.
    """
    argv0 = Path(sys.argv[0])
    if argv0.name == "__main__.py" and argv0.parent.name == "cifar_s12":
        return shlex.join(["python", "-m", "cifar_s12", *sys.argv[1:]])
    if argv0.name == "cifar-s12":  # the installed console command
        return shlex.join(["cifar-s12", *sys.argv[1:]])
    return os.environ.get(COMMAND_ENV_VAR) or None


def provenance() -> dict:
    """What a result needs to be reproduced: the git commit the package ran at (None outside a git checkout) and
    whether the tree had uncommitted changes, and the versions of the libraries that decide the numbers."""
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
