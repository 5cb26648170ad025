"""The Lightning trainer: module, data module, outputs (via the CLI), DDP on 2 CPU processes, resume."""
import json
import signal
import time
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from figures import png_image
from test_cli import cli
from test_train import flip_tta_accuracy

from cifar_s12.__main__ import main
from cifar_s12.config import make_config
from cifar_s12.dataset import subset
from cifar_s12.device import Runtime
from cifar_s12.lit import CifarDataModule, CifarLitModule, fit_lightning, workers_per_process
from cifar_s12.onecycle import planned_lrs
from cifar_s12.runs.lightning_history import read_resume_checkpoint
from cifar_s12.utils import UserError

# Small and quick: a few hundred images, batches of 32-64, 1-3 epochs, no loader workers (the CPU is shared).
TINY = dict(subset=256, test_subset=128, batch_size=64, max_lr=0.05, num_workers=0)
TINY_FLAGS = ["--subset", "256", "--test-subset", "128", "--batch-size", "64", "--max-lr", "0.05", "--workers", "0"]


def test_module_saves_the_hparams_a_loader_needs():
    cfg = make_config("best", **TINY)
    module = CifarLitModule.from_config(cfg)
    assert module.hparams["model_name"] == "custom_resnet" and module.hparams["model_kwargs"] == cfg.model_kwargs()
    assert module.hparams["config"] == cfg.to_dict() and len(module.hparams["classes"]) == 10
    assert all(key.startswith("model.") for key in module.state_dict())
    loss = module.training_step((torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))), 0)
    assert loss.ndim == 0 and loss.requires_grad


@pytest.mark.parametrize("device, precision, channels_last", [("cpu", "32-true", True), ("cpu", "bf16-mixed", True),
                                                              ("cuda", "16-mixed", True), ("cuda", "32-true", False)])
def test_module_takes_the_plain_trainers_memory_format(device, precision, channels_last):
    # setup() reads only the trainer's precision and device: a stand-in trainer tells it those
    module = CifarLitModule.from_config(make_config("fast", **TINY))
    module._trainer = SimpleNamespace(precision=precision, strategy=SimpleNamespace(root_device=torch.device(device)))
    module.setup("fit")
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert module.memory_format == Runtime(torch.device(device), None if precision == "32-true" else torch.bfloat16,
                                           ).memory_format == layout
    conv_weights = [p for name, p in module.named_parameters() if p.ndim == 4]
    assert conv_weights and all(p.is_contiguous(memory_format=layout) for p in conv_weights)


def test_datamodule_sizes_and_val_is_the_test_split(data):
    dm = CifarDataModule(make_config("best", subset=300, test_subset=100, batch_size=64, num_workers=0), data)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_dataloader().dataset) == 300 and len(dm.train_dataloader()) == 300 // 64  # full batches
    assert len(dm.val_dataloader().dataset) == 100 and dm.test_dataloader() is dm.val_dataloader()
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (64, 3, 32, 32) and y.dtype == torch.int64


def test_optimizer_is_the_recipes_onecycle_stepped_per_batch(data, tmp_path):
    cfg = make_config("best", epochs=3, **TINY)
    module = CifarLitModule.from_config(cfg)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=CifarDataModule(cfg, data))
    (config,) = trainer.lr_scheduler_configs
    assert config.interval == "step" and isinstance(config.scheduler, torch.optim.lr_scheduler.OneCycleLR)
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"]
    # OneCycle spans the recipe's 3 epochs of (here) 2 batches, whatever max_epochs the Trainer stops at.
    assert config.scheduler.total_steps == 3 * 2
    assert optimizer.param_groups[0]["lr"] == pytest.approx(planned_lrs(cfg, cfg.max_lr, 2)[2])  # after 2 steps


def test_cli_lightning_writes_the_plain_trainers_outputs_and_lightnings_logs(tmp_path):
    out = tmp_path / "run"
    r = cli("train", "--trainer", "lightning", "--epochs", "1", *TINY_FLAGS, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainer"] == "lightning" and metrics["final_test_accuracy"] == metrics["history"][-1]["test_acc"]
    assert [list(h) for h in metrics["history"]] == [  # the plain loop's columns, in its order
        ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_second", "epoch_seconds",
         "grad_scale"]]
    row = metrics["history"][0]  # images/s is the epoch's training images over its training time
    assert row["images_per_second"] == pytest.approx(256 / row["epoch_seconds"], rel=1e-6)
    assert {"final_test_accuracy", "history", "lr_schedule", "wall_seconds", "config"} <= set(metrics)
    ckpt = torch.load(out / "model.pt", map_location="cpu", weights_only=False)
    assert ckpt["model"] == "custom_resnet" and ckpt["epoch"] == 1 and ckpt["trainer"] == "lightning"
    png_image(out / "curves.png")
    assert list((out / "tensorboard").glob("version_0/events.out.tfevents.*"))
    assert "val_acc" in (out / "csv" / "version_0" / "metrics.csv").read_text()
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert {"model_name", "model_kwargs", "config", "classes"} <= set(last["hyper_parameters"])
    assert all(key.startswith("model.") for key in last["state_dict"])
    # The analysis tools read Lightning's last.ckpt as they read model.pt: the same weights, the same classes.
    from cifar_s12.runs.checkpoints import load_checkpoint

    from_ckpt, from_pt = load_checkpoint(out / "checkpoints" / "last.ckpt"), load_checkpoint(out / "model.pt")
    assert from_ckpt.classes == from_pt.classes and from_ckpt.model_name == "custom_resnet"
    pt_state = from_pt.model.state_dict()
    assert all(torch.equal(v, pt_state[k]) for k, v in from_ckpt.model.state_dict().items())


def test_resume_continues_the_onecycle_schedule_time_and_command(data, tmp_path, monkeypatch):
    cfg = make_config("best", epochs=3, **{**TINY, "subset": 128, "test_subset": 64, "batch_size": 32})
    monkeypatch.setenv("CIFAR_S12_COMMAND", "first part")
    first = fit_lightning(cfg, tmp_path, data=data, stop_after=2, log=lambda *_: None).metrics
    assert [h["epoch"] for h in first["history"]] == [1, 2] and first["command"] == "first part"
    last = tmp_path / "checkpoints" / "last.ckpt"
    # The checkpoint carries the first part's wall time (taken before its end: at most the part's total). Set to
    # 1000 s, it must come back as the start of the whole run's clock: 1000 s + this part, which the call bounds.
    ckpt = torch.load(last, weights_only=False)
    (history_key,) = [k for k in ckpt["callbacks"] if k.startswith("EpochHistory")]
    assert 0 < ckpt["callbacks"][history_key]["wall_seconds"] <= first["wall_seconds"]
    ckpt["callbacks"][history_key]["wall_seconds"] = 1000.0
    torch.save(ckpt, last)
    monkeypatch.setenv("CIFAR_S12_COMMAND", "second part")
    called = time.perf_counter()
    resumed = fit_lightning(cfg, tmp_path, data=data, resume=last, log=lambda *_: None).metrics
    second_part = time.perf_counter() - called
    steps = 128 // 32
    plan = planned_lrs(cfg, cfg.max_lr, steps)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert resumed["lr_schedule"][2 * steps] == pytest.approx(plan[2 * steps])  # first step after resuming
    np.testing.assert_allclose(resumed["lr_schedule"], plan)
    # The whole run's wall time and both commands, not only the second part's.
    assert 1000.0 < resumed["wall_seconds"] < 1000.0 + second_part
    assert resumed["command"] == "first part && second part"
    with pytest.raises(UserError, match=r"finished run \(3 of 3 epochs\)"):
        fit_lightning(cfg, tmp_path, data=data, resume=last, log=lambda *_: None)
    assert json.loads((tmp_path / "metrics.json").read_text())["wall_seconds"] == resumed["wall_seconds"]


def test_found_max_lr_gives_the_run_of_that_lr_and_tta_is_the_mirrored_mean(data, tmp_path):
    # fp32: the TTA accuracy is recomputed exactly below
    base = make_config("best", epochs=1, subset=128, test_subset=64, batch_size=32, num_workers=0, precision="fp32")
    found_run = fit_lightning(replace(base, max_lr=None, tta=True), tmp_path / "find", data=data, log=lambda *_: None)
    found = found_run.lr_find.suggested_lr
    assert found_run.metrics["config"]["max_lr"] == found
    # The range test leaves no trace on the run (the model's weights restored, fresh seeded loaders): the same
    # losses as a run told that LR from the start.
    given_run = fit_lightning(replace(base, max_lr=found), tmp_path / "given", data=data, log=lambda *_: None)
    assert [h["train_loss"] for h in found_run.metrics["history"]] == \
        [h["train_loss"] for h in given_run.metrics["history"]]
    assert found_run.metrics["lr_schedule"] == given_run.metrics["lr_schedule"]
    expected = flip_tta_accuracy(tmp_path / "find" / "model.pt", base, data)
    assert found_run.metrics["final_test_accuracy_tta"] == pytest.approx(expected)


def test_resume_refuses_the_plain_trainers_model_pt(checkpoint):
    with pytest.raises(UserError, match="not a Lightning checkpoint of this trainer; pass the folder of a "
                                        "--trainer lightning run"):
        read_resume_checkpoint(checkpoint)


@pytest.mark.parametrize("cores, processes, asked, workers", [
    (2, 1, None, None),   # one process: the loader's own default
    (2, 2, None, 0),      # 2 cores, 2 DDP processes: each core trains, no room for workers
    (16, 2, None, 7),     # 8 cores per process: one trains, 7 load
    (16, 4, 1, 1),        # the user said: kept
])
def test_workers_per_process_share_the_cores_left_under_ddp(monkeypatch, cores, processes, asked, workers):
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert workers_per_process(make_config("best", num_workers=asked), processes) == workers


def test_resume_with_another_steps_per_epoch_fails_before_training(data, tmp_path):
    cfg = make_config("best", epochs=3, **{**TINY, "subset": 128, "test_subset": 64, "batch_size": 32})
    fit_lightning(cfg, tmp_path, data=data, stop_after=1, log=lambda *_: None)
    before = (tmp_path / "metrics.json").read_bytes()
    fewer = subset(data, train=96)  # 3 batches per epoch instead of the checkpoint's 4
    with pytest.raises(UserError, match="OneCycle schedule has 12 steps, but this run would take 9"):
        fit_lightning(cfg, tmp_path, data=fewer, resume=tmp_path / "checkpoints" / "last.ckpt", log=lambda *_: None)
    assert (tmp_path / "metrics.json").read_bytes() == before


def test_fast_dev_run_writes_nothing(data, tmp_path):
    result = fit_lightning(make_config("best", **TINY), tmp_path / "dev", data=data, fast_dev_run=True,
                           log=lambda *_: None)
    assert len(result.metrics["history"]) == 1  # it ran: one batch of training, one of validation
    assert not (tmp_path / "dev").exists() or not any((tmp_path / "dev").rglob("*"))


def test_metrics_and_model_are_written_after_every_epoch(data, tmp_path, monkeypatch):
    import cifar_s12.lit as lit

    writes = []
    real_save = lit.save_outputs

    def recording_save(out, model, cfg, classes, metrics):
        writes.append(metrics["epochs_completed"])
        real_save(out, model, cfg, classes, metrics)

    monkeypatch.setattr(lit, "save_outputs", recording_save)
    fit_lightning(make_config("best", epochs=2, **TINY), tmp_path, data=data, log=lambda *_: None)
    assert writes == [1, 2]  # after each epoch, so an interrupted run keeps its last one
    assert json.loads((tmp_path / "metrics.json").read_text())["loader_workers"] == 0


@pytest.mark.parametrize("args, message", [
    (["--trainer", "lightning", "--resume", "nothing.ckpt"], "error: --resume: checkpoint nothing.ckpt does not exist"),
    (["--trainer", "lightning", "--resume", "README.md"], "error: --resume: README.md is not a checkpoint"),
    (["--devices", "2"], "error: --devices needs --trainer lightning"),
    (["--trainer", "lightning", "--resume", "README.md", "--epochs", "3"],
     "error: --resume continues the checkpoint's recipe; drop --epochs"),
    pytest.param(["--trainer", "lightning", "--accelerator", "gpu"], "error: Lightning cannot set up this run",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")),
    (["--out", "README.md"], "error: cannot use --out README.md"),
])
def test_errors_are_one_line_and_exit_2(args, message, tmp_path):
    out = [] if "--out" in args else ["--out", tmp_path / "run"]
    r = cli("train", *args, *out)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(message), r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_ctrl_c_exits_130_keeps_the_finished_epoch_and_leaves_ctrl_c_working(tmp_path, monkeypatch):
    real_step = CifarLitModule.training_step

    def step_then_ctrl_c(self, batch, batch_idx):
        if self.current_epoch == 1:  # Ctrl-C during the second epoch
            raise KeyboardInterrupt
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(CifarLitModule, "training_step", step_then_ctrl_c)
    handler = signal.getsignal(signal.SIGINT)
    out = tmp_path / "run"
    # Lightning itself would sys.exit(1) and leave SIGINT ignored; the plain trainer exits 130.
    assert main(["train", "--trainer", "lightning", "--epochs", "2", *TINY_FLAGS, "--out", str(out)]) == 130
    assert signal.getsignal(signal.SIGINT) is handler
    assert json.loads((out / "metrics.json").read_text())["epochs_completed"] == 1
    assert torch.load(out / "model.pt", weights_only=False)["epoch"] == 1


def test_lightnings_notices_are_hidden_and_the_run_says_what_it_trains_on(data, tmp_path):
    """What a student reads in a notebook's training cell: the package's own first line (network, device and
    precision, data) instead of Lightning's notes on devices, precision, stepping batches, a logger advertisement,
    or the LR finder's temporary checkpoint; the epochs and Lightning's warnings still show."""
    import logging

    records, lines = [], []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    keep = Keep()
    logging.getLogger("pytorch_lightning").addHandler(keep)
    try:
        cfg = make_config("best", epochs=2, subset=128, test_subset=64, batch_size=32, num_workers=0)
        fit_lightning(replace(cfg, max_lr=None), tmp_path, data=data, lr_finder="lightning", log=lines.append,
                      stop_after=1)
        fit_lightning(cfg, tmp_path, data=data, resume=tmp_path, log=lines.append)  # restores the checkpoint
    finally:
        logging.getLogger("pytorch_lightning").removeHandler(keep)
    assert lines[0].startswith("LR range test (Lightning Tuner.lr_find) suggests max_lr = ")
    assert lines[1].startswith("custom_resnet: 6,573,120 parameters | cpu x1, ") and "128 train / 64 test" in lines[1]
    # The second part says where it resumes and shows the epoch already done, so its output is the whole run.
    assert lines[2:4] == [lines[1], "resuming after epoch 1 of 2; the epochs already done:"]
    assert len(lines) == 6 and lines[4].startswith("epoch  1/2 | train loss ") and lines[5] == "continuing from epoch 2:"
    for notice in ("GPU available", "TPU available", "Automatic Mixed Precision", "Tip:", "stepping batches",
                   "already configured with model summary", "Restoring states", "weights_only"):
        assert not any(notice in message for message in records), (notice, records)
    assert any("Trainable params" in message for message in records)  # ModelSummary's table is not a notice


@pytest.mark.parametrize("shown_before", [False, True])
def test_the_trainer_prints_the_model_summary_unless_the_caller_has_shown_it(tmp_path, shown_before):
    """Notebook 02 prints ModelSummary before training, so its training cell asks for no second copy at fit."""
    from pytorch_lightning.callbacks import ModelSummary

    from cifar_s12.lit import build_trainer
    from cifar_s12.runs.lightning_history import EpochHistory

    trainer = build_trainer(make_config("best"), tmp_path, EpochHistory(), accelerator="cpu",
                            enable_model_summary=not shown_before)
    summaries = [c for c in trainer.callbacks if isinstance(c, ModelSummary)]
    assert [s._max_depth for s in summaries] == ([] if shown_before else [2])
