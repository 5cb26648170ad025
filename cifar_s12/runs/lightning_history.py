"""The Lightning trainer's metrics.json history, measured as the plain loop measures it, and its resume checkpoint."""
from __future__ import annotations

import os
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from ..utils import UserError
from .checkpoints import read_checkpoint_file
from .metrics import format_epoch
from .provenance import cli_command, provenance


# metrics.json's history, measured the way the plain loop measures it
class EpochHistory(Callback):
    """One history row per epoch (the keys of train.HISTORY_KEYS) and the LR of every step.

    images_per_second = training images (all processes) / wall time of the training part of the epoch, as in
    train.train_epoch. Its state is saved in checkpoints, so a resumed run's metrics.json has every epoch, the
    wall time of all its parts, the commands that made them (``command``: the first, then each ``--resume``) and the
    commit each ran at (``utils.provenance_of_parts``).
    """

    def __init__(self, after_epoch=None, wall_start: float | None = None, before_training=None):
        self.history: list[dict] = []
        self.lrs: list[float] = []
        self.after_epoch = after_epoch  # called on rank 0 with (trainer, pl_module) once the row is recorded
        self.before_training = before_training  # called on rank 0 with (trainer, pl_module) before the first epoch
        self.wall_start = time.perf_counter() if wall_start is None else wall_start
        self.earlier_seconds = 0.0  # wall time of the parts before a --resume
        self.commands = [cli_command()]
        self.parts = [provenance()]  # each part's git commit, versions and device (on_train_start), oldest first

    @property
    def run_start(self) -> float:
        """A perf_counter origin that counts the earlier parts' wall time too (record_epoch's ``wall_start``)."""
        return self.wall_start - self.earlier_seconds

    @property
    def command(self) -> str | None:
        """The commands of all parts, in order (a part that could not name its command says so)."""
        if not any(self.commands):
            return None
        return " && ".join(c or "<command not recorded>" for c in self.commands)

    def on_train_start(self, trainer, pl_module) -> None:
        self.parts[-1]["device"] = describe_trainer(trainer)  # this part's, as the plain loop's parts record theirs
        if self.before_training is not None and trainer.is_global_zero:
            self.before_training(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._images, self._seconds, self._start = 0, 0.0, time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])  # the LR of this step (OneCycle steps after it)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._images += len(batch[1])
        if trainer.strategy.root_device.type == "cuda" and batch_idx == trainer.num_training_batches - 1:
            torch.cuda.synchronize()
        self._seconds = time.perf_counter() - self._start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Runs after validation and before ModelCheckpoint (a "monitoring" callback), so a checkpoint has this row.
        m = trainer.callback_metrics
        self.history.append({
            "epoch": trainer.current_epoch + 1, "train_loss": float(m["train_loss"]),
            "train_acc": float(m["train_acc"]), "test_loss": float(m["val_loss"]), "test_acc": float(m["val_acc"]),
            "lr": self.lrs[-1], "images_per_second": self._images * trainer.world_size / self._seconds,
            "epoch_seconds": self._seconds, "grad_scale": _grad_scale(trainer)})
        pl_module.print(format_epoch(self.history[-1], pl_module.cfg.epochs))  # rank 0, above the progress bar
        if self.after_epoch is not None and trainer.is_global_zero:
            self.after_epoch(trainer, pl_module)

    def state_dict(self) -> dict:
        return {"history": self.history, "lrs": self.lrs, "wall_seconds": time.perf_counter() - self.run_start,
                "commands": self.commands, "parts": self.parts}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history, self.lrs = list(state_dict["history"]), list(state_dict["lrs"])
        # Checkpoints from before these keys: their earlier part's time and command are unknown.
        self.earlier_seconds = float(state_dict.get("wall_seconds", 0.0))
        self.commands = [*state_dict.get("commands", [None]), *self.commands[-1:]]
        self.parts = [*state_dict.get("parts", [{}]), *self.parts[-1:]]


def _grad_scale(trainer: pl.Trainer) -> float | None:
    scaler = getattr(trainer.precision_plugin, "scaler", None)  # fp16's GradScaler; bf16 and fp32 have none
    return scaler.get_scale() if scaler is not None else None


def read_resume_checkpoint(path: str | os.PathLike) -> dict:
    """The hyper-parameters of a ``.ckpt`` written by this trainer, and its ``epochs_done``; a UserError for
    anything else."""
    ckpt = read_checkpoint_file(path, context="--resume: ")
    hparams = ckpt.get("hyper_parameters", {})
    if "config" not in hparams or "loops" not in ckpt:
        raise UserError(f"--resume: {path} is not a Lightning checkpoint of this trainer; pass the folder of a "
                        f"--trainer lightning run (it holds checkpoints/last.ckpt)")
    done = len(ckpt.get("callbacks", {}).get(EpochHistory.__qualname__, {}).get("history", []))
    return {**hparams, "epochs_done": done}


def describe_trainer(trainer: pl.Trainer) -> str:
    return f"{trainer.strategy.root_device.type} x{trainer.world_size}, {trainer.precision}"
