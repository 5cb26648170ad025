import numpy as np
import torch

from cifar_s12.transform import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    AugmentConfig,
    describe,
    test_transform as eval_transform,
    train_transform,
)

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


def test_crop_shifts_the_reflect_padded_image_and_flip_mirrors_it():
    idx = np.arange(32, dtype=np.uint8) * 8
    ramps = np.zeros((32, 32, 3), np.uint8)
    ramps[..., 0], ramps[..., 1] = idx[None, :], idx[:, None]  # red says the column, green the row
    plain = eval_transform()(image=ramps)["image"]
    # pad 4 by reflecting the edge (reflect-101: ... 2 1 | 0 1 2 ... 30 31 | 30 29 ...), then crop 32x32 at (dy, dx)
    padded = np.abs(np.arange(-4, 36))
    padded = np.where(padded > 31, 62 - padded, padded)
    crop = train_transform(AugmentConfig(flip_p=0, cutout_p=0), seed=1)
    shifts = set()
    for _ in range(10):
        out = crop(image=ramps)["image"]
        found = [(dy, dx) for dy in range(9) for dx in range(9)
                 if torch.equal(out, plain[:, padded[dy:dy + 32]][:, :, padded[dx:dx + 32]])]
        assert len(found) == 1, found  # each crop is one window of the reflect-padded image, no other pixels
        shifts.add(found[0])
    assert len(shifts) >= 5  # random windows; each but the centre one (4, 4) shows reflected rows or columns
    flip = train_transform(AugmentConfig(pad=0, flip_p=1.0, cutout_p=0))
    assert torch.equal(flip(image=ramps)["image"], torch.flip(plain, dims=[2]))


def test_seeded_pipelines_repeat_and_other_seeds_draw_otherwise():
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    a, b, other = train_transform(seed=0), train_transform(seed=0), train_transform(seed=7)
    draws = [(a(image=image)["image"], b(image=image)["image"], other(image=image)["image"]) for _ in range(3)]
    assert all(torch.equal(x, y) for x, y, _ in draws)
    assert not all(torch.equal(x, z) for x, _, z in draws)
