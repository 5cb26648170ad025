"""The parts of the fast recipe (config.RECIPES["fast"]), each a TrainConfig field built in onecycle.py or applied in
dataset.py / tta.py, so both trainers get them: what each one does, and that best and course do without."""
import numpy as np
import pytest
import torch
from torch import nn

from cifar_s12.config import RECIPES, TrainConfig, make_config
from cifar_s12.dataset import CifarData, Split, build_loaders
from cifar_s12.model import count_parameters
from cifar_s12.onecycle import build_model_for, build_optimizer, build_scheduler
from cifar_s12.transform import (
    AugmentConfig,
    test_transform as eval_transform,  # not test_*: pytest would collect it
)
from cifar_s12.tta import predict_logits, translate

PARTS = {"tta_shift": 0, "bn_weight_frozen": False, "bn_bias_lr_scale": 1.0}


def test_best_and_course_have_none_of_the_parts_and_fast_keeps_the_network():
    for name in ("best", "course"):
        cfg = RECIPES[name]
        assert {k: getattr(cfg, k) for k in PARTS} == PARTS and cfg.augment.flip == "random"
    fast = RECIPES["fast"]
    assert fast.epochs <= 12 and fast.model == "custom_resnet"
    assert count_parameters(build_model_for(fast)) == 6_573_120  # the course network, as it is
    assert TrainConfig.from_dict(fast.to_dict()) == fast  # a run's metrics.json gives the recipe back


def test_batchnorm_biases_get_a_scaled_lr_and_frozen_scales_are_not_trained():
    cfg = make_config("best", bn_bias_lr_scale=8.0, bn_weight_frozen=True, max_lr=0.4, epochs=2)
    model = build_model_for(cfg)
    optimizer = build_optimizer(model, cfg)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not any(id(m.weight) in trained or m.weight.requires_grad for m in norms)
    (biases,) = [g for g in optimizer.param_groups if any(p is norms[0].bias for p in g["params"])]
    assert biases["weight_decay"] == pytest.approx(cfg.weight_decay / 8)
    scheduler = build_scheduler(optimizer, cfg, 0.4, steps_per_epoch=10)
    for _ in range(5):  # up to the peak (epoch 5 of 24 of 2 epochs: step 4)
        optimizer.step()
        scheduler.step()
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs[1] == pytest.approx(8 * lrs[0])  # the whole OneCycle, scaled for the biases
    assert len(optimizer.param_groups) == 2  # convolutions + linear, BatchNorm biases; no scales
    plain = build_optimizer(build_model_for(RECIPES["best"]), RECIPES["best"])
    assert len(plain.param_groups) == 1


def test_alternating_flips_show_each_image_mirrored_in_one_of_two_epochs():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (64, 32, 32, 3), dtype=np.uint8)
    split = Split(images, np.zeros(64, np.int64))
    data = CifarData(split, split, "generated")
    # No crop, no cutout: the only change left is the flip.
    augment = AugmentConfig(pad=0, cutout_size=0, flip="alternating")
    loader = build_loaders(make_config("best", batch_size=64, num_workers=0, augment=augment), data)[0]

    def epoch(e):
        loader.sampler.set_epoch(e)
        (x, _), = list(loader)
        return x[np.argsort([i for _, i in loader.sampler])]  # back in image order

    e0, e1, e2 = epoch(0), epoch(1), epoch(2)
    assert torch.equal(e1, torch.flip(e0, dims=[3])) and torch.equal(e2, e0)
    plain = torch.stack([eval_transform()(image=image)["image"] for image in images])
    mirrored = [torch.equal(a, torch.flip(b, dims=[2])) for a, b in zip(e0, plain)]
    assert all(m or torch.equal(a, b) for m, a, b in zip(mirrored, e0, plain))
    assert 10 < sum(mirrored) < 54  # about half of the images start mirrored


def test_cutout_stops_after_cutout_epochs_and_the_rest_of_the_pipeline_stays():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 255, (32, 32, 32, 3), dtype=np.uint8)
    split = Split(images, np.zeros(32, np.int64))
    data = CifarData(split, split, "generated")

    def epoch(augment, e):
        loader = build_loaders(make_config("best", batch_size=32, num_workers=0, augment=augment), data)[0]
        loader.sampler.set_epoch(e)
        (x, _), = list(loader)
        return x

    def holes(x):  # images with an 8x8 square of zeros (the cutout's fill; the images have no zero pixel)
        return sum(bool((img.abs().sum(0) == 0).sum() >= 64) for img in x)

    for e in (0, 1):  # cutout in the first epoch only: the same draws otherwise (crop, flip) from the same seeds
        assert holes(epoch(AugmentConfig(cutout_epochs=1), e)) == (32 if e == 0 else 0)
        without = epoch(AugmentConfig(cutout_p=0.0), e)
        assert torch.equal(epoch(AugmentConfig(cutout_epochs=1), e), epoch(AugmentConfig(), e) if e == 0 else without)
    assert RECIPES["best"].augment.cutout_epochs is None  # best and course: cutout in every epoch


def test_shifted_tta_averages_the_moved_views_and_translate_moves_the_image():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert translate(x, 1)[0, 0, 1:, 1:].equal(x[0, 0, :3, :3])  # down and right by one
    assert translate(x, -1)[0, 0, :3, :3].equal(x[0, 0, 1:, 1:])
    seen = []

    def model(v):  # records the views it is shown; "logits" = the view's top-left pixel
        seen.append(v.clone())
        return v[:, :, 0, 0]

    flip_only = predict_logits(model, x, tta=True)
    assert len(seen) == 2 and flip_only.item() == pytest.approx((0.0 + 3.0) / 2)
    seen.clear()
    shifted = predict_logits(model, x, tta=True, shift=1)
    assert len(seen) == 6
    moved = [translate(v, d)[0, 0, 0, 0].item() for v in (x, torch.flip(x, dims=[3])) for d in (1, -1)]
    assert shifted.item() == pytest.approx(flip_only.item() / 2 + sum(moved) / 8)
