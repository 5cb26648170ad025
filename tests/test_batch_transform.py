"""The batched augmentations against albumentations' own transforms, their draws' distributions and determinism,
and BatchLoader against the DataLoader rules it stands in for."""
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # before albumentations is imported: no network call

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from cifar_s12.batch_transform import (
    BatchLoader,
    BatchParams,
    augment,
    draw_params,
    flip_parity_batched,
    normalize,
    seed_sequence_state,
)
from cifar_s12.transform import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    AugmentConfig,
    test_transform as eval_transform,  # a name pytest does not collect
    train_transform,
)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _reference(image: np.ndarray, aug: AugmentConfig, dy: int, dx: int, flip: bool, top: int, left: int,
               cut: bool) -> np.ndarray:
    """One image through albumentations' transforms, each applied with the given parameters; CHW float32."""
    out = A.Normalize(mean=CIFAR10_MEAN, std=CIFAR10_STD).apply(image)
    if aug.pad:
        p, size = aug.pad, 32 + 2 * aug.pad
        out = A.PadIfNeeded(min_height=size, min_width=size, border_mode=cv2.BORDER_REFLECT_101).apply(
            out, pad_top=p, pad_bottom=p, pad_left=p, pad_right=p)
        out = A.Crop().apply(out, crop_coords=(dx, dy, dx + 32, dy + 32))
    if flip:
        out = A.HorizontalFlip().apply(out)
    if cut:
        s = aug.cutout_size
        out = A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(s, s), hole_width_range=(s, s),
                              fill=0).apply(out, holes=np.array([[left, top, left + s, top + s]]), seed=0)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


@pytest.mark.parametrize("aug", [
    AugmentConfig(pad=4, flip_p=0.5, cutout_size=8, cutout_p=0.5),
    AugmentConfig(pad=4, flip_p=0.0, cutout_size=0, cutout_p=0.0),
    AugmentConfig(pad=4, flip="alternating", cutout_size=8, cutout_p=1.0),
    AugmentConfig(pad=0, flip_p=1.0, cutout_size=12, cutout_p=1.0),
    AugmentConfig(pad=2, flip_p=0.5, cutout_size=8, cutout_p=0.0),
])
def test_same_images_as_albumentations_transforms(aug):
    images = _images(48)
    params = draw_params(aug, seed=7, epoch=1, indices=torch.arange(100, 148))
    got = augment(torch.from_numpy(images), params, aug)
    assert got.dtype == torch.float32 and got.shape == (48, 3, 32, 32)
    for i, image in enumerate(images):
        want = _reference(image, aug, int(params.dy[i]), int(params.dx[i]), bool(params.flip[i]),
                          int(params.top[i]), int(params.left[i]), bool(params.cutout[i]))
        np.testing.assert_allclose(got[i].numpy(), want, atol=1e-5, rtol=0)
    if aug.pad == 4:  # the batch exercised both branches of each step that is on
        assert len(set(params.dy.tolist())) > 3
        if aug.flip_p == 0.5 or aug.flip == "alternating":
            assert 0 < int(params.flip.sum()) < 48
        if 0 < aug.cutout_p < 1:
            assert 0 < int(params.cutout.sum()) < 48


def test_same_images_as_the_train_transform_pipeline():
    """The real pipeline's own draws, read back from albumentations, give the same tensors through augment."""
    aug = AugmentConfig(pad=4, flip_p=0.5, cutout_size=8, cutout_p=0.5)
    pipeline = A.Compose(train_transform(aug).transforms, save_applied_params=True, seed=3)
    images = _images(40, seed=1)
    want, drawn = [], []
    for image in images:
        result = pipeline(image=image)
        want.append(result["image"].numpy())
        applied = dict(result["applied_transforms"])
        x1, y1, _, _ = applied["RandomCrop"]["crop_coords"]
        holes = applied.get("CoarseDropout", {}).get("holes")
        left, top = (int(holes[0][0]), int(holes[0][1])) if holes is not None else (0, 0)
        drawn.append((y1, x1, "HorizontalFlip" in applied, top, left, holes is not None))
    params = BatchParams(*(torch.tensor(col) for col in zip(*drawn)))
    got = augment(torch.from_numpy(images), params, aug)
    np.testing.assert_allclose(got.numpy(), np.stack(want), atol=1e-5, rtol=0)
    assert 0 < int(params.flip.sum()) < 40 and 0 < int(params.cutout.sum()) < 40


def test_normalize_equals_the_test_transform():
    images = _images(16, seed=2)
    want = np.stack([eval_transform()(image=image)["image"].numpy() for image in images])
    got = normalize(torch.from_numpy(images))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=0)


def test_the_hash_is_numpys_seed_sequence():
    index = torch.tensor([0, 1, 2, 99, 49_999, 2**31 + 5, 2**32 - 1])
    for entropy in ([0, 0], [7, 3], [2**40 + 9, 12], [123, 2**32]):
        words = seed_sequence_state([*entropy, index], 6)
        for j, i in enumerate(index.tolist()):
            want = np.random.SeedSequence([*entropy, i]).generate_state(6)
            assert [int(w[j]) for w in words] == want.tolist()


def test_alternating_parity_is_dataset_flip_parity():
    index = torch.arange(0, 5000, 13)
    for seed in (0, 5):
        want = [int(np.random.SeedSequence([seed, 2**32, i]).generate_state(1)[0]) & 1 for i in index.tolist()]
        assert flip_parity_batched(seed, index).tolist() == want
        from cifar_s12 import dataset
        if hasattr(dataset, "flip_parity"):  # the per-image loader's own rule, while it lives there
            assert want == [dataset.flip_parity(seed, i) for i in index.tolist()]


def _chi2(counts: np.ndarray) -> float:
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


def test_draw_distributions():
    n, aug = 20_000, AugmentConfig(pad=4, flip_p=0.3, cutout_size=8, cutout_p=0.6)
    p = draw_params(aug, seed=11, epoch=2, indices=torch.arange(n))
    for offsets in (p.dy, p.dx):
        counts = np.bincount(offsets.numpy(), minlength=9)
        assert len(counts) == 9 and counts.min() > 0
        assert _chi2(counts) < 60  # 8 degrees of freedom: ~16 is the 99th percentile
    assert abs(p.flip.float().mean().item() - 0.3) < 0.02
    assert abs(p.cutout.float().mean().item() - 0.6) < 0.02
    for corner in (p.top, p.left):
        counts = np.bincount(corner.numpy(), minlength=25)
        assert len(counts) == 25 and counts.min() > 0  # 0..32-8: albumentations' range, checked below
        assert _chi2(counts) < 120  # 24 degrees of freedom
    assert p.dy.dtype == p.top.dtype == torch.int64 and p.flip.dtype == p.cutout.dtype == torch.bool


def test_cutout_positions_span_albumentations_range():
    dropout = A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(8, 8), hole_width_range=(8, 8), fill=0,
                              p=1.0)
    pipeline = A.Compose([dropout], save_applied_params=True, seed=0)
    image = np.zeros((32, 32, 3), np.float32)
    holes = np.array([dict(pipeline(image=image)["applied_transforms"])["CoarseDropout"]["holes"][0]
                      for _ in range(1500)])
    theirs = (holes[:, 1].min(), holes[:, 1].max(), holes[:, 0].min(), holes[:, 0].max())
    p = draw_params(AugmentConfig(cutout_size=8), seed=0, epoch=0, indices=torch.arange(1500))
    ours = (int(p.top.min()), int(p.top.max()), int(p.left.min()), int(p.left.max()))
    assert theirs == ours == (0, 24, 0, 24)


def test_probabilities_at_the_ends_and_cutout_epochs():
    index = torch.arange(4000)
    off = draw_params(AugmentConfig(pad=0, flip_p=0.0, cutout_p=0.0), 1, 0, index)
    assert not off.flip.any() and not off.cutout.any() and not off.dy.any() and not off.dx.any()
    on = draw_params(AugmentConfig(flip_p=1.0, cutout_p=1.0), 1, 0, index)
    assert on.flip.all() and on.cutout.all()
    late = AugmentConfig(cutout_p=0.5, cutout_epochs=3)
    assert [draw_params(late, 1, e, index).cutout.any().item() for e in range(6)] == [True] * 3 + [False] * 3
    assert not draw_params(AugmentConfig(cutout_size=0, cutout_p=1.0), 1, 0, index).cutout.any()


def test_alternating_flips():
    aug, index = AugmentConfig(flip="alternating", flip_p=0.5), torch.arange(20_000)
    flips = [draw_params(aug, seed=4, epoch=e, indices=index).flip for e in range(4)]
    for e in range(3):
        assert torch.equal(flips[e], ~flips[e + 1])
    for f in flips:
        assert abs(f.float().mean().item() - 0.5) < 0.02
    other = draw_params(aug, seed=5, epoch=0, indices=index).flip
    assert 0.4 < (other == flips[0]).float().mean().item() < 0.6  # the seed picks which half


def test_draws_depend_on_seed_epoch_and_index_alone():
    aug = AugmentConfig(cutout_p=0.5)
    everyone = torch.randperm(501, generator=torch.Generator().manual_seed(0)) + 1000
    together = draw_params(aug, 9, 3, everyone)
    for pos in (0, 250, 500):
        alone = draw_params(aug, 9, 3, everyone[pos:pos + 1])
        assert all(torch.equal(a, b) for a, b in zip(_fields(alone), _fields(together[pos:pos + 1])))
    order = torch.argsort(everyone)
    in_order = draw_params(aug, 9, 3, everyone[order])
    assert all(torch.equal(a, b) for a, b in zip(_fields(in_order), _fields(together[order])))
    for changed in (draw_params(aug, 10, 3, everyone), draw_params(aug, 9, 4, everyone)):
        assert (changed.dy == together.dy).float().mean() < 0.3
        assert (changed.top == together.top).float().mean() < 0.2


def _fields(p: BatchParams) -> list[torch.Tensor]:
    return [p.dy, p.dx, p.flip, p.top, p.left, p.cutout]


def test_unsupported_settings_are_refused():
    with pytest.raises(ValueError, match="ToGray"):
        draw_params(AugmentConfig(gray_p=0.1), 0, 0, torch.arange(3))
    with pytest.raises(ValueError, match="flip"):
        draw_params(AugmentConfig(flip="sometimes"), 0, 0, torch.arange(3))
    with pytest.raises(ValueError, match="ToGray"):
        BatchLoader(_images(4), np.zeros(4), 2, aug=AugmentConfig(gray_p=0.5), seed=0)


def _epoch_share(size: int, seed: int, epoch: int, rank: int, world_size: int) -> list[int]:
    order = np.random.default_rng([seed, epoch]).permutation(size)
    return order[:size // world_size * world_size][rank::world_size].tolist()


def test_batch_loader_training_order_and_batches():
    n, aug = 103, AugmentConfig(cutout_p=0.5)
    images, labels = _images(n, seed=3), np.arange(n)  # label = index: the batches show the order
    loaders = [BatchLoader(images, labels, 10, aug=aug, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for loader in loaders:
        assert loader.num_workers == 0 and loader.batch_size == 10 and len(loader.dataset) == n
        assert len(loader.sampler) == 51 and len(loader) == 5  # 51 // 10: the tail batch of 1 is dropped
    seen = {}
    for rank, loader in enumerate(loaders):
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            batches = list(loader)
            assert len(batches) == 5
            order = torch.cat([y for _, y in batches]).tolist()
            assert order == _epoch_share(n, 3, epoch, rank, 2)[:50]
            seen[rank, epoch] = order
            x, y = batches[0]
            assert x.dtype == torch.float32 and x.shape == (10, 3, 32, 32) and y.dtype == torch.int64
            want = augment(torch.from_numpy(images[y.numpy()]), draw_params(aug, 3, epoch, y), aug)
            assert torch.equal(x, want)
    assert not set(seen[0, 0]) & set(seen[1, 0])
    assert seen[0, 0] != seen[0, 1]
    from cifar_s12 import dataset
    if hasattr(dataset, "EpochSampler"):  # the per-image loader's sampler, while it lives there
        sampler = dataset.EpochSampler(n, 3, rank=1, world_size=2)
        sampler.set_epoch(1)
        assert [i for _, i in sampler] == loaders[1].sampler.indices().tolist()


def test_batch_loader_keeps_a_single_short_batch():
    loader = BatchLoader(_images(8), np.arange(8), 10, seed=0)
    assert len(loader) == 1 and [len(y) for _, y in loader] == [8]
    assert len(BatchLoader(_images(25), np.arange(25), 10, seed=0)) == 2  # more than a batch: full ones only


def test_batch_loader_evaluation():
    n, images = 23, _images(23, seed=4)
    loader = BatchLoader(images, np.arange(n), 8)
    assert len(loader) == 3 and loader.num_workers == 0
    batches = list(loader)
    assert [len(y) for _, y in batches] == [8, 8, 7]
    assert torch.cat([y for _, y in batches]).tolist() == list(range(n))
    want = np.stack([eval_transform()(image=image)["image"].numpy() for image in images])
    np.testing.assert_allclose(torch.cat([x for x, _ in batches]).numpy(), want, atol=1e-5, rtol=0)
    for rank in (0, 1):  # under DDP: DistributedSampler(shuffle=False)'s share
        shared = BatchLoader(images, np.arange(n), 8, rank=rank, world_size=2)
        want_order = list(torch.utils.data.DistributedSampler(range(n), 2, rank, shuffle=False))
        assert torch.cat([y for _, y in shared]).tolist() == want_order
        assert len(shared) == 2
