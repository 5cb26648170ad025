"""LR range tests: torch-lr-finder and Lightning's Tuner from the same weights and loaders, and the suggestion rule."""
import pytest
import torch
from figures import png_image
from test_cli import cli

from cifar_s12.config import make_config
from cifar_s12.dataset import build_loaders, load_data
from cifar_s12.device import Runtime
from cifar_s12.lit import CifarLitModule
from cifar_s12.lr_find import find_lr, range_tests, steepest_descent_lr
from cifar_s12.model import CustomResNet
from cifar_s12.utils import UserError


def test_lr_finder_steps_exponentially_suggests_by_the_rule_and_restores_the_model(data):
    cfg = make_config("best", subset=256, batch_size=32, num_workers=0)
    runtime = Runtime.create("auto")
    loader, _ = build_loaders(cfg, load_data(cfg, data))
    model = runtime.prepare(CustomResNet())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = find_lr(model, loader, cfg, runtime, start_lr=1e-4, end_lr=1.0, num_iter=20)
    lrs = result.lrs
    # 20 exponential steps from 1e-4 to 1.0 (x10 every 4.75 steps), or the first of them if the loss diverged
    assert 2 <= len(lrs) == len(result.losses) <= 20
    assert lrs == pytest.approx([1e-4 * 10 ** (4 * i / 19) for i in range(len(lrs))], rel=1e-9)
    assert result.suggested_lr == steepest_descent_lr(lrs, result.losses)  # the rule, on this curve
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fp16_range_test_scales_the_loss_as_training_does(data, monkeypatch):
    # fp16 is for GPUs; the CPU's fp16 autocast stands in for one here (a tiny model keeps it quick).
    cfg = make_config("best", subset=64, batch_size=16, num_workers=0)
    runtime = Runtime(torch.device("cpu"), torch.float16)
    scaled = []
    real_scale = torch.amp.GradScaler.scale
    monkeypatch.setattr(torch.amp.GradScaler, "scale", lambda self, loss: scaled.append(self) or real_scale(self, loss))
    model = runtime.prepare(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(),
                                                torch.nn.Linear(8 * 30 * 30, 10)))
    loader, _ = build_loaders(cfg, load_data(cfg, data))
    result = find_lr(model, loader, cfg, runtime, start_lr=1e-4, end_lr=1e-2, num_iter=4)
    assert len(scaled) == len(result.lrs) == 4  # every step went through a GradScaler ...
    assert runtime.scaler not in scaled  # ... of its own: training's scaler starts fresh, whatever the test did to it
    bf16 = Runtime(torch.device("cpu"), torch.bfloat16)
    assert not bf16.scaler.is_enabled()  # bf16 (and fp32) need no scaling: the plain path


def test_torch_finder_prints_no_placeholder_line(data, capsys):
    cfg = make_config("best", subset=128, batch_size=32, num_workers=0)
    range_tests(["torch"], cfg, data=data, num_iter=4)
    assert "finder_name" not in capsys.readouterr().out  # torch-lr-finder's "See the graph with {finder_name}.plot()"


def test_both_finders_start_from_the_same_weights_and_data(data):
    cfg = make_config("best", subset=128, batch_size=32, num_workers=0)
    limits = dict(data=data, start_lr=1e-4, end_lr=1.0, num_iter=6)
    first = range_tests(["torch", "lightning"], cfg, lightning_module=CifarLitModule, **limits)
    # In the other order: each test starts from the same seeded weights and fresh loaders, so each curve repeats.
    again = range_tests(["lightning", "torch"], cfg, lightning_module=CifarLitModule, **limits)
    for kind in ("torch", "lightning"):
        assert first[kind].losses == pytest.approx(again[kind].losses) and first[kind].lrs == again[kind].lrs
    lightning = first["lightning"]
    assert len(lightning.lrs) == len(lightning.losses) == 6 and lightning.lrs[0] == pytest.approx(1e-4)
    assert lightning.suggested_lr in lightning.lrs
    # Step 1 is the same loss (initial weights, first batch), but Lightning's smoothing divides it by 1 - 0.98**2
    # instead of 1 - 0.98 (its bias correction counts the step just taken): half the value. README says so.
    assert lightning.losses[0] == pytest.approx(first["torch"].losses[0] * (1 - 0.98) / (1 - 0.98**2), rel=1e-3)
    with pytest.raises(UserError, match="unknown LR finder 'keras'"):
        range_tests(["keras"], cfg, data=data)


def test_steepest_descent_is_where_the_loss_falls_fastest():
    lrs = [10.0 ** (k / 4 - 5) for k in range(30)]
    losses = [2.3] * 12 + [2.3 - 0.05 * k for k in range(1, 4)] + [1.6, 1.0, 0.9] + [0.9 + 0.3 * k for k in range(12)]
    assert steepest_descent_lr(lrs, losses) == lrs[15]  # the 0.6 drop from 2.15 to 1.6 (centred gradient)


def test_lr_finders_side_by_side_plot(tmp_path):
    plot = tmp_path / "both.png"
    r = cli("lr-find", "--lr-finder", "both", "--subset", "128", "--batch-size", "32", "--num-iter", "8",
            "--workers", "0", "--plot", plot)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "torch-lr-finder" in r.stdout and "Lightning" in r.stdout
    png_image(plot)
