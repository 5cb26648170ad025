import numpy as np
import pytest
import torch

from cifar_s12.transform import CIFAR10_MEAN, CIFAR10_STD, AugmentConfig, describe, train_transform
from cifar_s12.transform import test_transform as eval_transform

MEAN_PIXEL = np.round(np.array(CIFAR10_MEAN) * 255).astype(np.uint8)


def test_test_transform_normalises_to_chw_float():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    x = eval_transform()(image=image)["image"]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    expected = (image / 255.0 - np.array(CIFAR10_MEAN)) / np.array(CIFAR10_STD)
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_train_transform_shape_and_steps():
    t = train_transform()
    x = t(image=np.zeros((32, 32, 3), np.uint8))["image"]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert [s.split("(")[0] for s in describe(t)] == [
        "Normalize", "PadIfNeeded", "RandomCrop", "HorizontalFlip", "CoarseDropout", "ToTensorV2"]
    assert describe(train_transform(AugmentConfig(gray_p=0.2)))[0] == "ToGray(p=0.2)"


def test_cutout_is_one_8x8_hole_filled_with_the_mean():
    t = train_transform(AugmentConfig(pad=0, flip_p=0, cutout_p=1.0), seed=3)
    image = np.full((32, 32, 3), 200, np.uint8)  # far from the mean, so only the hole is 0
    for _ in range(5):
        x = t(image=image)["image"]
        zero = (x == 0).all(dim=0)
        rows, cols = torch.nonzero(zero, as_tuple=True)
        assert zero.sum() == 64
        assert rows.max() - rows.min() == 7 and cols.max() - cols.min() == 7


def test_cutout_hole_of_a_mean_image_is_invisible():
    t = train_transform(AugmentConfig(cutout_p=1.0), seed=0)
    x = t(image=np.broadcast_to(MEAN_PIXEL, (32, 32, 3)).copy())["image"]
    assert x.abs().max() < 0.01  # mean-valued pixels, padding and hole all normalise to ~0


def test_crop_moves_the_image_and_flip_mirrors_it():
    ramp = np.tile(np.arange(32, dtype=np.uint8)[None, :, None] * 8, (32, 1, 3))
    crop = train_transform(AugmentConfig(flip_p=0, cutout_p=0), seed=1)
    outs = [crop(image=ramp)["image"] for _ in range(10)]
    assert any(not torch.equal(o, outs[0]) for o in outs)
    flip = train_transform(AugmentConfig(pad=0, flip_p=1.0, cutout_p=0))
    plain = eval_transform()(image=ramp)["image"]
    assert torch.equal(flip(image=ramp)["image"], torch.flip(plain, dims=[2]))


@pytest.mark.parametrize("seed", [0, 7])
def test_seeded_pipelines_repeat(seed):
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    a, b = train_transform(seed=seed), train_transform(seed=seed)
    for _ in range(3):
        assert torch.equal(a(image=image)["image"], b(image=image)["image"])
