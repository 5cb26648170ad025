import json
import os
import signal

import numpy as np
import pytest
import torch
from figures import png_image

import cifar_s12.runs.metrics as metrics_writer
from cifar_s12.analysis.plots import save_run_figures
from cifar_s12.analysis.predictions import predict_split
from cifar_s12.config import make_config
from cifar_s12.dataset import Split, load_data
from cifar_s12.device import Runtime
from cifar_s12.onecycle import planned_lrs
from cifar_s12.runs.checkpoints import load_checkpoint
from cifar_s12.runs.folder import RunFolder
from cifar_s12.train import fit


def test_short_run_learns_well_above_chance(tmp_path):
    # A small learnable set (a colour and a stripe direction per class): learning shows in seconds, not minutes.
    from cifar_s12.dataset import load_cifar10, synthetic_image_folder

    data = load_cifar10(synthetic_image_folder(tmp_path / "data", train_per_class=40, test_per_class=10),
                        download=False)
    cfg = make_config("best", epochs=3, batch_size=50, max_lr=0.2, seed=0, num_workers=0)
    result = fit(cfg, out_dir=tmp_path / "run", data=data, log=lambda *_: None)
    m = result.metrics
    assert m["final_test_accuracy"] > 0.5, m["history"]  # chance is 0.1
    assert m["history"][-1]["train_loss"] < m["history"][0]["train_loss"]
    assert [h["epoch"] for h in m["history"]] == [1, 2, 3]
    independent = predict_split(load_checkpoint(tmp_path / "run" / "model.pt"), data.test).accuracy
    assert m["final_test_accuracy"] == pytest.approx(independent, abs=1 / 100 + 1e-9)  # the saved model is the run's


def test_same_seed_same_run(data):
    cfg = make_config("best", epochs=1, subset=256, test_subset=100, batch_size=64, max_lr=0.1, num_workers=0)
    a, b = (fit(cfg, data=data, log=lambda *_: None).metrics["history"][0] for _ in range(2))
    assert a["train_loss"] == b["train_loss"] and a["test_loss"] == b["test_loss"]


def test_find_lr_feeds_onecycle_and_tta_is_reported(data, tmp_path):
    from dataclasses import replace

    cfg = replace(make_config("best", epochs=1, subset=128, test_subset=64, batch_size=32, tta=True, num_workers=0,
                              precision="fp32"),  # fp32: the TTA check below recomputes the accuracy exactly
                  max_lr=None)  # None: find it (make_config treats None as "keep the preset's")
    lines = []
    result = fit(cfg, out_dir=tmp_path, data=data, log=lines.append)
    m = result.metrics
    assert result.lr_find is not None and m["config"]["max_lr"] == result.lr_find.suggested_lr
    # The same first lines as the Lightning trainer's (test_lit): the range test's LR, then what trains on what.
    assert lines[0] == f"LR range test (torch-lr-finder) suggests max_lr = {result.lr_find.suggested_lr:.3g}"
    assert lines[1].startswith("custom_resnet: 6,573,120 parameters | cpu, fp32 | 128 train / 64 test")
    found = result.lr_find.suggested_lr  # OneCycle is planned with it: the same schedule as a run given that max LR
    planned = planned_lrs(replace(cfg, max_lr=found), found, steps_per_epoch=128 // 32)
    assert m["lr_schedule"] == pytest.approx(planned)
    # ... and the optimizer really used it: the history's LR is the one of the epoch's last step, read from the
    # optimizer during training.
    assert m["history"][-1]["lr"] == pytest.approx(planned[-1]) and m["history"][-1]["lr"] < found / 100
    save_run_figures(RunFolder(tmp_path), m, result.lr_find)  # what the CLI and the notebooks draw after a run
    png_image(tmp_path / "lr_finder.png")
    assert m["final_test_accuracy_tta"] == pytest.approx(flip_tta_accuracy(tmp_path / "model.pt", cfg, data))


def flip_tta_accuracy(model_path, cfg, data) -> float:
    """The TTA accuracy of an fp32 run, recomputed from its saved model in the evaluation's batches: the mean of
    the logits of each test image and of its mirror image. (Also used by test_lit.)"""
    test = load_data(cfg, data).test
    loaded = load_checkpoint(model_path)
    plain, mirrored = (predict_split(loaded, split, runtime=Runtime.create("fp32", "cpu"), batch_size=cfg.batch_size)
                       .logits for split in (test, Split(np.ascontiguousarray(test.images[:, :, ::-1]), test.labels)))
    return float(((plain + mirrored).argmax(1).numpy() == test.labels).mean())


def test_ctrl_c_between_the_two_writes_waits_until_both_are_written(data, tmp_path, monkeypatch):
    real_save = metrics_writer.save_checkpoint

    def save_then_ctrl_c(path, *args, epoch, **kwargs):
        real_save(path, *args, epoch=epoch, **kwargs)
        if epoch == 2:  # model.pt of epoch 2 is written, metrics.json not yet
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(metrics_writer, "save_checkpoint", save_then_ctrl_c)
    cfg = make_config("best", epochs=3, subset=256, test_subset=100, batch_size=64, max_lr=0.1, num_workers=0)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, out_dir=tmp_path, data=data, log=lambda *_: None)
    assert torch.load(tmp_path / "model.pt", weights_only=False)["epoch"] == 2
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs_completed"] == 2


@pytest.mark.parametrize("trainer", ["torch", "lightning"])
def test_fp16_autocast_with_the_grad_scaler_trains_on_the_cpu_too(trainer, data, tmp_path, monkeypatch):
    """fp16 is Colab's T4 path. Switched on here for the CPU (users get a refusal there): one short epoch, finite
    losses, the scaler's scale recorded, and the same OneCycle steps as bf16 (a step the scaler skips for
    overflowing gradients still steps the schedule)."""
    import cifar_s12.device as runtime
    from cifar_s12.lit import fit_lightning
    from cifar_s12.utils import UserError

    cfg = make_config("best", epochs=1, subset=32, test_subset=16, batch_size=16, max_lr=0.1, num_workers=0,
                      precision="fp16")  # small: fp16 on a CPU is computed the slow way
    with pytest.raises(UserError, match="--precision fp16 is for GPUs"):
        runtime.Runtime.create("fp16", "cpu")
    monkeypatch.setattr(runtime, "ALLOW_CPU_FP16", True)
    fit_trainer = fit if trainer == "torch" else fit_lightning
    m = fit_trainer(cfg, tmp_path, data=data, log=lambda *_: None).metrics
    row = m["history"][0]
    assert np.isfinite([row["train_loss"], row["test_loss"]]).all()
    assert row["grad_scale"] is not None and 0 < row["grad_scale"] <= 2.0**16  # starts at 2**16, halves on overflow
    # The plan every precision follows (bf16's and fp32's runs are checked against it elsewhere).
    assert ("16" in m["device"]) and m["lr_schedule"] == pytest.approx(planned_lrs(cfg, 0.1, 32 // 16))
