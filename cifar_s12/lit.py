"""The Lightning trainer: the same model, data and OneCycle schedule as train.py, with Lightning running the loop.

Read top to bottom: the LightningModule (what one step does), the LightningDataModule (the data), the Trainer
(logs, checkpoints, precision) and fit_lightning (the run). The recipe's objects come from onecycle.py and
dataset.py, the files a run writes from runs/, exactly as for the plain trainer.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import replace
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, ModelSummary, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from .config import TrainConfig, resume_config
from .dataset import CLASSES, CifarData, build_loaders, load_cifar10, load_data
from .device import accelerator_device, lightning_precision, prefers_channels_last
from .lr_find import LR_FINDERS, LRFindResult, range_test
from .model import NUM_CLASSES, build_model
from .onecycle import build_criterion, build_model_for, build_optimizer, build_scheduler, plan_finished
from .runs.folder import LIGHTNING_BEST, LIGHTNING_LAST, RunFolder, resume_file
from .runs.lightning_history import EpochHistory, describe_trainer, read_resume_checkpoint
from .runs.metrics import RunResult, announce_resume, describe_run, new_metrics, record_epoch, save_outputs
from .runs.plumbing import RUN_NOTICES, ctrl_c_raises, hide_lightning_warnings, lightning_notices_hidden
from .runs.provenance import provenance_of_parts
from .tta import predict_logits, tta_variants
from .utils import UserError, seed_epoch, seed_everything, write_json

hide_lightning_warnings()


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(memory_format=self.memory_format))

    def _loss_and_logits(self, batch, tta: bool = False):
        x, y = batch
        logits = predict_logits(self, x, tta, self.test_shift if tta else 0)  # fp32 logits, as the plain loop's
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

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, logits, y = self._loss_and_logits(batch)
        self.val_acc.update(logits, y)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(y))
        self.log("val_acc", self.val_acc, on_epoch=True, prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        """Like validation; with the recipe's ``tta`` the logits of each image and its mirror image are averaged."""
        loss, logits, y = self._loss_and_logits(batch, tta=self.cfg.tta)
        self.test_acc.update(logits, y)
        self.log("test_loss", loss, on_epoch=True, sync_dist=True, batch_size=len(y))
        self.log("test_acc", self.test_acc, on_epoch=True)

    def on_train_epoch_start(self) -> None:
        # As the plain loop: any randomness in this epoch's steps comes from (seed, epoch, rank), so a resumed
        # run's epoch draws what the uninterrupted run's did. (The data order and augmentations: EpochSampler.)
        seed_epoch(self.cfg.seed, self.current_epoch + 1, self.global_rank)

    def lr_scheduler_step(self, scheduler, metric) -> None:
        if not plan_finished(scheduler):  # as the plain loop: never past OneCycle's last step
            scheduler.step()

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
    """CIFAR-10 from dataset.py with its subsets and loaders; validation and test use the test split (as the
    course does). ``data`` hands in arrays already loaded (notebooks, the trainer comparison). ``device``: where the
    batched data path (``cfg.data_path``) keeps the splits when no Trainer is attached yet (an LR range test before
    fit); with one, its root device, as the Trainer runs the model there."""

    def __init__(self, cfg: TrainConfig, data: CifarData | None = None, first_epoch: int = 0, device=None):
        super().__init__()
        self.cfg, self.given, self.first_epoch, self.device = cfg, data, first_epoch, device
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
            device = self.trainer.strategy.root_device if self.trainer else self.device  # this process's device
            self.loaders = build_loaders(self.cfg, self.data, rank, processes, device=device)
            # Lightning starts the first epoch's loader iterator before it calls set_epoch (FitLoop.setup_data),
            # and with worker processes that iterator takes its order at once: a resumed run's first epoch must
            # already carry its number, or it would replay epoch 1's order. (Lightning then calls set_epoch on any
            # loader's ``sampler`` each epoch, DataLoader or batch_transform.BatchLoader alike.)
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


# ----------------------------------------------------------------------------------------------------------------
# The Trainer
def build_trainer(cfg: TrainConfig, out: Path, history: EpochHistory, devices: int | str = 1, accelerator: str = "auto",
                  strategy: str = "auto", max_epochs: int | None = None, fast_dev_run: bool = False,
                  enable_model_summary: bool = True) -> pl.Trainer:
    """The defaults a Lightning user expects: TensorBoard + CSV logs under ``out``, LR monitor, best-val-accuracy
    and last checkpoints in ``out/checkpoints``, progress bar, model summary (unless the caller has shown it), the
    package's precision choice."""
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
            callbacks=[history, LearningRateMonitor(logging_interval="step"), best, last, TQDMProgressBar(),
                       *([ModelSummary(max_depth=2)] if enable_model_summary else [])],
            enable_model_summary=enable_model_summary,
            log_every_n_steps=10, default_root_dir=out)
    except (MisconfigurationException, ValueError, TypeError) as err:  # e.g. --accelerator gpu, no GPU; a bad --strategy
        raise UserError(f"Lightning cannot set up this run: {str(err).splitlines()[0]}") from None


# ----------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------
# The whole run
def fit_lightning(cfg: TrainConfig, out_dir: str | os.PathLike, data: CifarData | None = None, devices: int | str = 1,
                  accelerator: str = "auto", strategy: str = "auto", resume: str | os.PathLike | None = None,
                  stop_after: int | None = None, fast_dev_run: bool = False, lr_finder: str = "torch",
                  enable_model_summary: bool = True, log=print) -> RunResult:
    """Train ``cfg`` with Lightning. Writes (on rank 0) the plain trainer's ``metrics.json`` (with
    ``"trainer": "lightning"``), ``model.pt`` and ``curves.png`` to ``out_dir``, and Lightning's own outputs below
    it: ``tensorboard/``, ``csv/metrics.csv``, ``checkpoints/{best-...,last}.ckpt``.

    ``resume``: a run folder (or its ``checkpoints/last.ckpt``) to continue with the recipe saved there, exactly
    as the plain trainer continues its own. ``stop_after``: stop once that epoch is done, keeping the OneCycle plan
    of ``cfg.epochs``. ``lr_finder``: which range test picks the max LR when ``cfg.max_lr`` is None.
    ``enable_model_summary``: False where the summary was already shown (notebook 02 prints it before training).
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
            save_outputs(folder, module.model, module.cfg, datamodule.data.classes, run_metrics(trainer, module))

    def announce(trainer: pl.Trainer, module: CifarLitModule) -> None:  # as the plain loop's first line
        log(describe_run(module.cfg, module.model, describe_trainer(trainer), datamodule.data))
        if resume is not None:
            announce_resume(history.history, module.cfg.epochs, log)

    history = EpochHistory(after_epoch=save_epoch, wall_start=wall_start, before_training=announce)
    with lightning_notices_hidden(*RUN_NOTICES):
        trainer = build_trainer(cfg, folder.root, history, devices, accelerator, strategy,
                                max_epochs=min(stop_after or cfg.epochs, cfg.epochs), fast_dev_run=fast_dev_run,
                                enable_model_summary=enable_model_summary)
    datamodule = CifarDataModule(replace(cfg, num_workers=workers_per_process(cfg, trainer.world_size)), data,
                                 first_epoch=saved["epochs_done"] if resume is not None else 0,
                                 device=trainer.strategy.root_device)
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
        return RunResult({}, module.model, lr_result, is_global_zero=False)
    metrics = run_metrics(trainer, module)
    metrics.update(tta)
    metrics["wall_seconds"] = time.perf_counter() - history.run_start
    if fast_dev_run:
        return RunResult(metrics, module.model, lr_result)
    write_json(folder.metrics, metrics)  # model.pt is already the last epoch's (save_epoch), as in train.fit
    return RunResult(metrics, module.model, lr_result)


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
    result = range_test(lr_finder, cfg, model, datamodule.loaders, accelerator, lightning_module=CifarLitModule)
    log(f"LR range test ({LR_FINDERS[lr_finder]}) suggests max_lr = {result.suggested_lr:.3g}")
    seed_everything(cfg.seed)  # training starts from the same random state with or without the range test
    return CifarLitModule.from_config(replace(cfg, max_lr=result.suggested_lr), model=model), result


