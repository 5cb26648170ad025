"""The Lightning trainer: the package's model, data and OneCycle schedule, with PyTorch Lightning running the loop.

Nothing here re-derives the recipe: the model, optimizer, OneCycle, criterion and DataLoaders come from
builders.py, and metrics.json / model.pt / curves.png from train.py's writers, so both trainers produce the same
outputs. Read top to bottom: LightningModule -> DataModule -> history callback -> Trainer -> Lightning's LR range
test -> fit_lightning.
"""
from __future__ import annotations

import math
import os
import signal
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, ModelSummary, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from .builders import (build_criterion, build_ema, build_loaders, build_model_for, build_optimizer, build_scheduler,
                       load_data, step_schedule)
from .checkpoints import read_checkpoint_file
from .config import TrainConfig, resume_config
from .dataset import CLASSES, CifarData, load_cifar10
from .errors import UserError
from .lr_find import LR_FINDERS, LRFindResult, find_lr, range_test_iters, steepest_descent_lr
from .model import NUM_CLASSES, build_model
from .run_folder import LIGHTNING_BEST, LIGHTNING_LAST, RunFolder, resume_file
from .runtime import (Runtime, accelerator_device, lightning_precision, predict_logits,
                      prefers_channels_last)
from .train import (RunResult, describe_run, format_epoch, new_metrics, record_epoch, save_outputs,
                    save_run_figures, tta_variants)
from .utils import cli_command, provenance, provenance_of_parts, seed_epoch, seed_everything, write_json

# Lightning's own notices that a user cannot act on: an internal deprecation of its pytree code under newer torch,
# and ModelSummary's note that it sizes bf16 parameters as fp32 (they are fp32: autocast keeps fp32 weights).
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
warnings.filterwarnings("ignore", message="Precision bf16-mixed is not supported by the model summary")
# A run shorter than log_every_n_steps (a smoke run) logs no per-step values: plots.plot_csv_log says so itself.
warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging interval")
# A resumed run writes its checkpoints beside the first part's, in the folder ModelCheckpoint then finds "not empty".
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")

# ----------------------------------------------------------------------------------------------------------------
# The LightningModule
class CifarLitModule(pl.LightningModule):
    """Any model of the factory (``self.model``, so state_dict keys start with ``model.``) trained with the recipe.

    The constructor's arguments are the saved hyper-parameters, so ``CifarLitModule.load_from_checkpoint(path)``
    rebuilds the model from a ``.ckpt`` alone. ``model`` (not saved) hands in an already built network instead.
    """

    def __init__(self, model_name: str, model_kwargs: dict, config: dict, classes: list[str],
                 model: nn.Module | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.cfg = TrainConfig.from_dict(config)
        self.model = model if model is not None else build_model(model_name, **model_kwargs)
        # The recipe's moving average of the weights (builders.build_ema), or None: updated after every step,
        # it is what validation and test measure and model.pt holds (``evaluated``). A submodule, so the .ckpt
        # keeps it.
        self.ema = build_ema(self.model, self.cfg)
        self.criterion = build_criterion(self.cfg)
        self.train_acc = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro")
        self.memory_format = torch.contiguous_format
        self.test_shift = self.cfg.tta_shift  # the pixels test_step's TTA moves the views by (fit_lightning: 0 too)
        # Lets ModelSummary run one image through the network and list each layer's input and output sizes.
        self.example_input_array = torch.zeros(1, 3, 32, 32)

    @classmethod
    def from_config(cls, cfg: TrainConfig, classes=CLASSES, model: nn.Module | None = None) -> "CifarLitModule":
        return cls(cfg.model, cfg.model_kwargs(), cfg.to_dict(), list(classes), model=model)

    def setup(self, stage: str) -> None:
        # The plain trainer's memory format (Runtime.memory_format): channels_last with mixed precision and on CPUs.
        if prefers_channels_last(self.trainer.strategy.root_device.type, self.trainer.precision != "32-true"):
            self.memory_format = torch.channels_last
            self.model.to(memory_format=self.memory_format)
            if self.ema is not None:
                self.ema.to(memory_format=self.memory_format)

    @property
    def evaluated(self) -> nn.Module:
        """The network that validation and test measure and model.pt holds: the moving average, if the recipe has
        one, else the trained weights."""
        return self.ema.module if self.ema is not None else self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(memory_format=self.memory_format))

    def _loss_and_logits(self, batch, tta: bool = False, evaluating: bool = False):
        x, y = batch
        net = self.evaluated if evaluating else self.model
        # fp32 logits, as the plain loop feeds the loss
        logits = predict_logits(lambda v: net(v.to(memory_format=self.memory_format)), x, tta,
                                self.test_shift if tta else 0)
        return self.criterion(logits, y), logits, y

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, logits, y = self._loss_and_logits(batch)
        batch_acc = self.train_acc(logits, y)  # this batch's accuracy; also accumulates the epoch's
        # Per step: this process's values for the progress bar (and TensorBoard), no cross-process sync each step.
        self.log_dict({"train_loss_step": loss, "train_acc_step": batch_acc}, on_step=True, on_epoch=False,
                      prog_bar=True)
        # Per epoch: averaged over all images of all processes.
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(y))
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:  # after the optimizer step, as in the plain loop
            self.ema.update_parameters(self.model)

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, logits, y = self._loss_and_logits(batch, evaluating=True)
        self.val_acc.update(logits, y)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(y))
        self.log("val_acc", self.val_acc, on_epoch=True, prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        """Like validation; with the recipe's ``tta`` the logits of each image and its mirror image are averaged."""
        loss, logits, y = self._loss_and_logits(batch, tta=self.cfg.tta, evaluating=True)
        self.test_acc.update(logits, y)
        self.log("test_loss", loss, on_epoch=True, sync_dist=True, batch_size=len(y))
        self.log("test_acc", self.test_acc, on_epoch=True)

    def on_train_epoch_start(self) -> None:
        # As the plain loop: any randomness in this epoch's steps comes from (seed, epoch, rank), so a resumed
        # run's epoch draws what the uninterrupted run's did. (The data order and augmentations: EpochSampler.)
        seed_epoch(self.cfg.seed, self.current_epoch + 1, self.global_rank)

    def lr_scheduler_step(self, scheduler, metric) -> None:
        step_schedule(scheduler)  # as the plain loop: not past OneCycle's last step

    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.cfg)
        max_lr = self.cfg.max_lr if self.cfg.max_lr is not None else optimizer.defaults["lr"]
        scheduler = build_scheduler(optimizer, self.cfg, max_lr, self._steps_per_epoch())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        # A resumed run restores OneCycle's state, whose plan (total_steps) counts the first part's steps per epoch.
        # Another device count or another training set would change them: the schedule would end early, or step
        # past its end and fail hours later. Say so now, before any epoch.
        scheduler = self.lr_schedulers()
        if not isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):  # Tuner.lr_find swaps in its own
            return
        planned, restored = self._steps_per_epoch() * self.cfg.epochs, scheduler.total_steps
        if planned != restored:
            raise UserError(f"--resume: the checkpoint's OneCycle schedule has {restored:,} steps, but this run "
                            f"would take {planned:,} ({self._steps_per_epoch()} per epoch x {self.cfg.epochs}); "
                            f"resume with the first part's --devices and training data")

    def _steps_per_epoch(self) -> int:
        # Optimizer steps per epoch in this process (its share of the data under DDP). OneCycle spans the recipe's
        # cfg.epochs even when the Trainer stops earlier (max_epochs < cfg.epochs), so a resumed run continues it.
        return max(1, math.ceil(self.trainer.estimated_stepping_batches / max(self.trainer.max_epochs, 1)))


# ----------------------------------------------------------------------------------------------------------------
# The LightningDataModule
class CifarDataModule(pl.LightningDataModule):
    """CIFAR-10 from dataset.py with builders.py's subsets and loaders; validation and test use the test split (as the
    course does). ``data`` hands in arrays already loaded (notebooks, the trainer comparison)."""

    def __init__(self, cfg: TrainConfig, data: CifarData | None = None, first_epoch: int = 0):
        super().__init__()
        self.cfg, self.given, self.first_epoch = cfg, data, first_epoch
        self.data: CifarData | None = None
        self.loaders = None

    def prepare_data(self) -> None:
        # Once per machine, before the processes start loading: download, or decode the image folder into the cache.
        if self.given is None:
            load_cifar10(self.cfg.data_dir, download=self.cfg.download)

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:  # each process loads once (from the cache) whatever stages follow
            self.data = load_data(self.cfg, self.given)
            # Under DDP each process loads its own share (the Trainer is told not to swap in a sampler of its own).
            rank, processes = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
            self.loaders = build_loaders(self.cfg, self.data, rank, processes)
            # Lightning starts the first epoch's loader iterator before it calls set_epoch (FitLoop.setup_data),
            # and with worker processes that iterator takes its order at once: a resumed run's first epoch must
            # already carry its number, or it would replay epoch 1's order.
            self.loaders[0].sampler.set_epoch(self.first_epoch)
            if len(self.loaders[0]) < processes:  # under DDP each process takes its share of the batches
                raise UserError(f"too few training batches: {len(self.data.train)} images with batch size "
                                f"{self.cfg.batch_size} give {len(self.loaders[0])} for {processes} process(es)")

    def train_dataloader(self):
        return self.loaders[0]

    def val_dataloader(self):
        return self.loaders[1]

    def test_dataloader(self):
        return self.loaders[1]


def workers_per_process(cfg: TrainConfig, processes: int) -> int | None:
    """Loader workers when each of ``processes`` (DDP) has its own loader and the user did not say: the cores left
    after one per process for the model, shared out (0 on 2 cores), so the machine is not oversubscribed."""
    if cfg.num_workers is not None or processes <= 1:
        return cfg.num_workers
    return max(0, (os.cpu_count() or 1) // processes - 1)


# ----------------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------------
# The Trainer
def build_trainer(cfg: TrainConfig, out: Path, history: EpochHistory, devices: int | str = 1, accelerator: str = "auto",
                  strategy: str = "auto", max_epochs: int | None = None, fast_dev_run: bool = False) -> pl.Trainer:
    """The defaults a Lightning user expects: TensorBoard + CSV logs under ``out``, LR monitor, best-val-accuracy
    and last checkpoints in ``out/checkpoints``, progress bar, model summary, the package's precision choice."""
    folder = RunFolder(out)
    best = ModelCheckpoint(dirpath=folder.checkpoints, filename=LIGHTNING_BEST, monitor="val_acc", mode="max",
                           save_on_train_epoch_end=True)  # at epoch end, after EpochHistory: the ckpt has its row
    # last.ckpt from a checkpoint of its own: since Lightning 2.6, save_last=True on `best` writes last.ckpt only in
    # epochs that also save a best one, so it would not be the last epoch.
    last = ModelCheckpoint(dirpath=folder.checkpoints, filename=LIGHTNING_LAST, monitor=None, save_top_k=1,
                           enable_version_counter=False, save_on_train_epoch_end=True)
    device = accelerator_device(accelerator)
    precision = lightning_precision(device, cfg.precision)
    plugins = None
    if precision == "16-mixed" and device.type == "cpu":  # runtime.ALLOW_CPU_FP16 (tests): Lightning itself would
        # quietly train bf16 on a CPU, so the fp16 autocast and its CPU GradScaler are handed in as a plugin.
        from pytorch_lightning.plugins import MixedPrecision

        precision, plugins = None, [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]
    try:
        return pl.Trainer(
            accelerator=accelerator, devices=devices, strategy=strategy, precision=precision, plugins=plugins,
            max_epochs=max_epochs or cfg.epochs, fast_dev_run=fast_dev_run,
            # The same kernels as the plain loop (Runtime): no deterministic mode, and cuDNN benchmarks its
            # convolution algorithms once for the fixed 32x32 input.
            benchmark=True,
            # The loaders already hold each process's share (dataset.EpochSampler): no DistributedSampler on top.
            use_distributed_sampler=False,
            # version_N per run, so a resumed run adds its logs beside the first part's instead of replacing them
            logger=[TensorBoardLogger(folder.root, name=folder.tensorboard.name),
                    CSVLogger(folder.root, name=folder.csv.name)],
            callbacks=[history, LearningRateMonitor(logging_interval="step"), best, last, ModelSummary(max_depth=2),
                       TQDMProgressBar()],
            log_every_n_steps=10, default_root_dir=out)
    except (MisconfigurationException, ValueError, TypeError) as err:  # e.g. --accelerator gpu, no GPU; a bad --strategy
        raise UserError(f"Lightning cannot set up this run: {str(err).splitlines()[0]}") from None


@contextmanager
def ctrl_c_raises(trainer: pl.Trainer):
    """Ctrl-C during ``trainer.fit``/``test`` in the block raises KeyboardInterrupt, as it does in the plain loop.

    Lightning stops gracefully on Ctrl-C, then calls ``sys.exit(1)`` and leaves SIGINT ignored for the rest of the
    process: the CLI would exit 1 (not 130) and a notebook kernel could no longer be interrupted. Undo both.
    """
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    except SystemExit:
        if not trainer.interrupted:
            raise
        if handler is not None:
            signal.signal(signal.SIGINT, handler)
        raise KeyboardInterrupt from None


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


# ----------------------------------------------------------------------------------------------------------------
# Lightning's LR range test, and the choice between it and torch-lr-finder
# Lightning's notices that tell a student nothing to act on: what the run's own first line already says (device,
# precision), an advertisement, and notes on what the package chose on purpose. Warnings stay.
RUN_NOTICES = ("Using bfloat16 Automatic Mixed Precision", "Using 16bit Automatic Mixed Precision", "GPU available:",
               "TPU available:", "HPU available:", "LOCAL_RANK:", "\N{ELECTRIC LIGHT BULB} Tip:",
               "Loading `train_dataloader` to estimate number of stepping batches",
               "Trainer already configured with model summary callbacks",
               # restoring a checkpoint (a resumed run, the Tuner's own): the machine's path of the file; the run
               # says "resuming after epoch N" itself
               "Restoring states from the checkpoint path", "Restored all states", "`weights_only` was not set")
# The Tuner's stop after its steps, and its note when a short test gives it too few points for a suggestion
# (lightning_lr_find then takes the steepest descent itself).
TUNER_NOTICES = ("`Trainer.fit` stopped: `max_steps=", "Failed to compute suggestion for learning rate")


@contextmanager
def lightning_notices_hidden(*prefixes: str):
    """Within the block, Lightning's log records that start with one of ``prefixes`` are dropped."""
    import logging

    class Hide(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not str(record.msg).startswith(prefixes)

    names = ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.tuner.lr_finder",
             "pytorch_lightning.trainer.connectors.checkpoint_connector")
    loggers, hide = [logging.getLogger(name) for name in names], Hide()
    for logger in loggers:
        logger.addFilter(hide)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(hide)


def lightning_lr_find(cfg: TrainConfig, model: nn.Module, loaders, accelerator: str = "auto",
                      start_lr: float = 1e-5, end_lr: float = 10.0, num_iter: int = 100) -> LRFindResult:
    """``Tuner.lr_find`` on one device over ``loaders`` (train, test); ``model``'s weights are restored afterwards."""
    from pytorch_lightning.tuner import Tuner

    module = CifarLitModule.from_config(cfg, model=model)
    # Tuner keeps the initial weights in a checkpoint file in tmp
    with tempfile.TemporaryDirectory() as tmp, lightning_notices_hidden(*RUN_NOTICES, *TUNER_NOTICES):
        trainer = pl.Trainer(accelerator=accelerator, devices=1, max_steps=num_iter, max_epochs=num_iter,
                             precision=lightning_precision(accelerator_device(accelerator), cfg.precision),
                             logger=False, enable_checkpointing=False, enable_model_summary=False,
                             num_sanity_val_steps=0, default_root_dir=tmp)
        with ctrl_c_raises(trainer):
            finder = Tuner(trainer).lr_find(module, train_dataloaders=loaders[0], val_dataloaders=loaders[1],
                                            min_lr=start_lr, max_lr=end_lr, num_training=num_iter, update_attr=False)
        suggestion = finder.suggestion()
    lrs, losses = [float(v) for v in finder.results["lr"]], [float(v) for v in finder.results["loss"]]
    return LRFindResult(suggestion if suggestion is not None else steepest_descent_lr(lrs, losses), lrs, losses)


def range_test(kind: str, cfg: TrainConfig, model: nn.Module, loaders, accelerator: str = "auto",
               **limits) -> LRFindResult:
    """Run the range test ``kind`` (a key of lr_find.LR_FINDERS) on ``loaders`` (train, test) from ``model``'s
    current weights, which it leaves as found. ``limits``: start_lr, end_lr, num_iter (default:
    ``range_test_iters``)."""
    if kind not in LR_FINDERS:
        raise UserError(f"unknown LR finder {kind!r}; choose from {', '.join(LR_FINDERS)}")
    limits.setdefault("num_iter", range_test_iters(len(loaders[0])))
    if kind == "lightning":
        return lightning_lr_find(cfg, model, loaders, accelerator, **limits)
    runtime = Runtime.create(cfg.precision, accelerator_device(accelerator).type)
    return find_lr(runtime.prepare(model), loaders[0], cfg, runtime, **limits)


# ----------------------------------------------------------------------------------------------------------------
# The whole run
def fit_lightning(cfg: TrainConfig, out_dir: str | os.PathLike, data: CifarData | None = None, devices: int | str = 1,
                  accelerator: str = "auto", strategy: str = "auto", resume: str | os.PathLike | None = None,
                  stop_after: int | None = None, fast_dev_run: bool = False, lr_finder: str = "torch",
                  log=print) -> RunResult:
    """Train ``cfg`` with Lightning. Writes (on rank 0) the plain trainer's ``metrics.json`` (with
    ``"trainer": "lightning"``), ``model.pt`` and ``curves.png`` to ``out_dir``, and Lightning's own outputs below
    it: ``tensorboard/``, ``csv/metrics.csv``, ``checkpoints/{best-...,last}.ckpt``.

    ``resume``: a run folder (or its ``checkpoints/last.ckpt``) to continue with the recipe saved there, exactly
    as the plain trainer continues its own. ``stop_after``: stop once that epoch is done, keeping the OneCycle plan
    of ``cfg.epochs``. ``lr_finder``: which range test picks the max LR when ``cfg.max_lr`` is None.
    """
    wall_start = time.perf_counter()
    log = rank_zero_only(log)  # DDP runs this function in every process; one of them talks
    if resume is not None:
        resume = resume_file(resume, "lightning")
        saved = read_resume_checkpoint(resume)
        cfg = resume_config(saved["config"], cfg, saved["epochs_done"], resume)
    folder = RunFolder(out_dir)

    def run_metrics(trainer: pl.Trainer, module: CifarLitModule) -> dict:
        metrics = new_metrics("lightning", module.cfg, module.model, describe_trainer(trainer), datamodule.data,
                              datamodule.train_dataloader().num_workers, history.command,
                              provenance_of_parts(history.parts))
        for row in history.history:
            record_epoch(metrics, row, history.lrs, history.run_start)
        return metrics

    def save_epoch(trainer: pl.Trainer, module: CifarLitModule) -> None:
        # As the plain loop: metrics.json and model.pt after every epoch, so an interrupted run keeps its last one.
        # A fast dev run (one batch) writes nothing, as Lightning's own loggers and checkpoints do then.
        if not fast_dev_run:
            save_outputs(folder, module.evaluated, module.cfg, datamodule.data.classes, run_metrics(trainer, module))

    def announce(trainer: pl.Trainer, module: CifarLitModule) -> None:  # as the plain loop's first line
        log(describe_run(module.cfg, module.model, describe_trainer(trainer), datamodule.data))
        if resume is not None:
            log(f"resuming after epoch {saved['epochs_done']} of {module.cfg.epochs}")

    history = EpochHistory(after_epoch=save_epoch, wall_start=wall_start, before_training=announce)
    with lightning_notices_hidden(*RUN_NOTICES):
        trainer = build_trainer(cfg, folder.root, history, devices, accelerator, strategy,
                                max_epochs=min(stop_after or cfg.epochs, cfg.epochs), fast_dev_run=fast_dev_run)
    datamodule = CifarDataModule(replace(cfg, num_workers=workers_per_process(cfg, trainer.world_size)), data,
                                 first_epoch=saved["epochs_done"] if resume is not None else 0)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # few workers per process is deliberate
    module, lr_result = _module_with_max_lr(cfg, datamodule, trainer, lr_finder, accelerator, log, fast_dev_run)
    with ctrl_c_raises(trainer), lightning_notices_hidden(*RUN_NOTICES):
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
        finished = len(history.history) == module.cfg.epochs  # not after --stop-after: TTA is the end's figure
        tta = {}
        if module.cfg.tta and finished and not fast_dev_run:
            # the recipe's TTA, and (with shifted views) the flip alone: what the shifts add, from the same weights
            for key, shift in tta_variants(module.cfg).items():
                module.test_shift = shift
                tta[key] = trainer.test(module, datamodule=datamodule, verbose=False)[0]["test_acc"]
    if not trainer.is_global_zero:
        return RunResult({}, module.evaluated, lr_result, is_global_zero=False)
    metrics = run_metrics(trainer, module)
    metrics.update(tta)
    metrics["wall_seconds"] = time.perf_counter() - history.run_start
    if fast_dev_run:
        return RunResult(metrics, module.evaluated, lr_result)
    write_json(folder.metrics, metrics)  # model.pt is already the last epoch's (save_epoch), as in train.fit
    save_run_figures(folder, metrics, lr_result)
    return RunResult(metrics, module.evaluated, lr_result)


def _module_with_max_lr(cfg: TrainConfig, datamodule: CifarDataModule, trainer: pl.Trainer, lr_finder: str,
                        accelerator: str, log,
                        fast_dev_run: bool = False) -> tuple[CifarLitModule, LRFindResult | None]:
    """The seeded model, with the max LR of an LR range test first when the recipe has none (as train.fit). A fast
    dev run (one batch, to check the setup) skips the range test: the optimizer's default LR does for one step."""
    seed_everything(cfg.seed)
    model = build_model_for(cfg)
    if cfg.max_lr is not None or fast_dev_run:
        return CifarLitModule.from_config(cfg, model=model), None
    if trainer.world_size > 1:
        raise UserError("the LR range test (--find-lr, or the course recipe) needs a single device: each process "
                        "would find its own LR. Run lr-find, then pass --max-lr")
    datamodule.prepare_data()
    datamodule.setup("fit")
    result = range_test(lr_finder, cfg, model, datamodule.loaders, accelerator)
    log(f"LR range test ({LR_FINDERS[lr_finder]}) suggests max_lr = {result.suggested_lr:.3g}")
    seed_everything(cfg.seed)  # training starts from the same random state with or without the range test
    return CifarLitModule.from_config(replace(cfg, max_lr=result.suggested_lr), model=model), result


def describe_trainer(trainer: pl.Trainer) -> str:
    return f"{trainer.strategy.root_device.type} x{trainer.world_size}, {trainer.precision}"
