"""Batched training augmentations on whole uint8 batches, on whatever device the batch is on: the same
pad-crop, flip and cutout as ``transform.train_transform``, with each image's draws a pure function of
(seed, epoch, image index) computed by a vectorised hash, plus ``BatchLoader``, which keeps a split on the device
and stands in for the DataLoader with per-image workers.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from .transform import CIFAR10_MEAN, CIFAR10_STD, AugmentConfig

IMAGE_SIZE = 32

# numpy's SeedSequence constants (numpy/random/bit_generator.pyx), so the hash below is bit-for-bit numpy's.
_MASK32 = 0xFFFFFFFF
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R = 0xCA01F9DD, 0x4973F715
_POOL_SIZE = 4

# Which word of the per-image hash feeds which draw.
_DY, _DX, _FLIP, _CUTOUT, _TOP, _LEFT = range(6)
_FLIP_PARITY_KEY = 2**32  # dataset.flip_parity's middle entropy word: no epoch's key


def _mul32(x, c: int):
    """(x * c) mod 2**32 for x holding uint32 values (int64 tensor or int); c is split in 16-bit halves so that no
    int64 product overflows, which keeps the result defined and identical on every device."""
    if isinstance(x, int):
        return (x * c) & _MASK32
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _MASK32


def _xorshift16(x):
    return x ^ (x >> 16)


def _words(value) -> list:
    """An entropy entry as numpy's SeedSequence splits it: a non-negative int in little-endian 32-bit words (0 is
    one word); a tensor entry must be below 2**32 everywhere (one word per element)."""
    if isinstance(value, torch.Tensor):
        return [value]
    value = int(value)
    if value < 0:
        raise ValueError(f"seeds, epochs and indices must be non-negative, got {value}")
    out = [value & _MASK32]
    while value > _MASK32:
        value >>= 32
        out.append(value & _MASK32)
    return out


def seed_sequence_state(entropy: list, n_words: int) -> list:
    """``np.random.SeedSequence(entropy).generate_state(n_words)`` computed elementwise: the entries are ints or
    int64 tensors (one uint32 word per element, broadcast together); returns ``n_words`` int64 tensors/ints."""
    words = [w for e in entropy for w in _words(e)]
    hash_const = _INIT_A

    def hashmix(value):
        nonlocal hash_const
        value = value ^ hash_const
        hash_const = (hash_const * _MULT_A) & _MASK32
        return _xorshift16(_mul32(value, hash_const))

    def mix(x, y):
        return _xorshift16((_mul32(x, _MIX_MULT_L) - _mul32(y, _MIX_MULT_R)) & _MASK32)

    pool = [hashmix(words[i] if i < len(words) else 0) for i in range(_POOL_SIZE)]
    for i_src in range(_POOL_SIZE):
        for i_dst in range(_POOL_SIZE):
            if i_src != i_dst:
                pool[i_dst] = mix(pool[i_dst], hashmix(pool[i_src]))
    for i_src in range(_POOL_SIZE, len(words)):
        for i_dst in range(_POOL_SIZE):
            pool[i_dst] = mix(pool[i_dst], hashmix(words[i_src]))
    hash_const, state = _INIT_B, []
    for i in range(n_words):
        value = pool[i % _POOL_SIZE] ^ hash_const
        hash_const = (hash_const * _MULT_B) & _MASK32
        state.append(_xorshift16(_mul32(value, hash_const)))
    return state


def _as_indices(indices, device) -> torch.Tensor:
    indices = torch.as_tensor(indices)
    if indices.dtype.is_floating_point or indices.dtype == torch.bool or indices.ndim != 1:
        raise ValueError("indices must be a 1-d integer tensor")
    indices = indices.to(device=device, dtype=torch.int64)
    if bool(((indices < 0) | (indices > _MASK32)).any()):  # one device sync, not two
        raise ValueError("image indices must lie in [0, 2**32)")
    return indices


def _below(word: torch.Tensor, n: int) -> torch.Tensor:
    """An integer in [0, n) from a uint32 word (multiply-shift: bias at most n / 2**32)."""
    return (word * n) >> 32


def _chance(word: torch.Tensor, p: float) -> torch.Tensor:
    """True with probability p (exactly never for 0, always for 1)."""
    return word < round(min(max(p, 0.0), 1.0) * 2**32)


def flip_parity_batched(seed: int, indices: torch.Tensor) -> torch.Tensor:
    """0 or 1 per image, equal to ``dataset.flip_parity(seed, index)`` (the same SeedSequence word, vectorised):
    alternating flips flip an image in epoch e iff (parity + e) is odd."""
    index = _as_indices(indices, indices.device if isinstance(indices, torch.Tensor) else None)
    return seed_sequence_state([seed, _FLIP_PARITY_KEY, index], 1)[0] & 1


@dataclass(frozen=True)
class BatchParams:
    """One batch's draws, one entry per image (int64 unless noted)."""

    dy: torch.Tensor      # crop offset in the padded image, 0..2*pad
    dx: torch.Tensor
    flip: torch.Tensor    # bool: horizontal flip
    top: torch.Tensor     # cutout hole's top-left corner, 0..size-hole
    left: torch.Tensor
    cutout: torch.Tensor  # bool: whether the hole is cut

    def __len__(self) -> int:
        return len(self.dy)

    def __getitem__(self, key) -> BatchParams:
        return BatchParams(*(getattr(self, f.name)[key] for f in fields(self)))

    def to(self, device) -> BatchParams:
        return BatchParams(*(getattr(self, f.name).to(device) for f in fields(self)))


def _check(aug: AugmentConfig) -> None:
    if aug.gray_p > 0:
        raise ValueError("the batched augmentations have no ToGray: use gray_p=0 or the per-image pipeline")
    if aug.flip not in ("random", "alternating"):
        raise ValueError(f"unknown flip {aug.flip!r}: random or alternating")


def draw_params(aug: AugmentConfig, seed: int, epoch: int, indices: torch.Tensor, device=None,
                size: int = IMAGE_SIZE) -> BatchParams:
    """Each image's crop, flip and cutout in ``epoch`` (0-based), from the words of
    ``np.random.SeedSequence([seed, epoch, index])`` alone: independent of order, batch, rank and device.

    Crop offsets are uniform in [0, 2*pad] (albumentations' RandomCrop). Flips: "random" with ``flip_p``;
    "alternating" decided as dataset.CifarDataset decides them (flip_p not consulted there either), though applied
    after the crop as in the pipeline, where CifarDataset flips before it (the same images in distribution).
    Cutout: with ``cutout_p`` and only before epoch ``cutout_epochs``, a ``cutout_size`` square (clipped to the
    image) whose top-left corner is uniform in [0, size - hole] on each axis, as albumentations' CoarseDropout
    draws it.
    """
    _check(aug)
    if device is None:
        device = indices.device if isinstance(indices, torch.Tensor) else None
    index = _as_indices(indices, device)
    words = seed_sequence_state([seed, epoch, index], 6)
    if aug.pad > 0:
        dy, dx = _below(words[_DY], 2 * aug.pad + 1), _below(words[_DX], 2 * aug.pad + 1)
    else:
        dy = dx = torch.zeros_like(index)
    if aug.flip == "alternating":
        flip = ((flip_parity_batched(seed, index) + epoch) % 2).bool()
    else:
        flip = _chance(words[_FLIP], aug.flip_p)
    hole = min(aug.cutout_size, size)
    active = hole > 0 and (aug.cutout_epochs is None or epoch < aug.cutout_epochs)
    cutout = _chance(words[_CUTOUT], aug.cutout_p if active else 0.0)
    top, left = (_below(words[k], size - hole + 1) for k in (_TOP, _LEFT))
    return BatchParams(dy, dx, flip, top, left, cutout)


@functools.cache
def _channel_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Cached per device: no host-to-device copy per batch. Values as albumentations' Normalize computes them.
    mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float32, device=device) * 255
    scale = 1 / (torch.tensor(CIFAR10_STD, dtype=torch.float32, device=device) * 255)
    return mean.view(1, 3, 1, 1), scale.view(1, 3, 1, 1)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW normalised with CIFAR10_MEAN/STD (what transform.test_transform gives)."""
    _check_images(images)
    return _normalize_nchw(images.permute(0, 3, 1, 2).contiguous())


def _check_images(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 NHWC images with 3 channels, got {tuple(images.shape)} {images.dtype}")


def _normalize_nchw(images: torch.Tensor) -> torch.Tensor:
    mean, scale = _channel_stats(images.device)
    # In place on the fresh float copy: a new tensor per step costs more than the arithmetic on a CPU.
    return images.float().sub_(mean).mul_(scale)


def _reflect_101(position: torch.Tensor, length: int) -> torch.Tensor:
    """Index into the unpadded axis for a position in the padded one (BORDER_REFLECT_101: edge not repeated)."""
    if length == 1:
        return torch.zeros_like(position)
    period = 2 * (length - 1)
    position = position % period
    return torch.where(position < length, position, period - position)


def augment(images: torch.Tensor, params: BatchParams, aug: AugmentConfig) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW: normalise, reflect-101 pad by ``aug.pad`` and crop at (dy, dx), flip, cutout
    (filled with 0, the data mean), in the order and with the values of ``transform.train_transform``."""
    _check(aug)
    _check_images(images)
    n, height, width, _ = images.shape
    if len(params) != n:
        raise ValueError(f"{n} images but {len(params)} sets of parameters")
    params = params.to(images.device)
    rows = torch.arange(height, device=images.device)
    cols = torch.arange(width, device=images.device)
    # Pad, crop and flip only move pixels, and normalising is per pixel and channel: moving the uint8 pixels first
    # gives the same floats for a quarter of the memory traffic. One gather of flat pixel positions does all three.
    src_rows = _reflect_101(rows + params.dy[:, None] - aug.pad, height)                     # (N, H)
    out_cols = torch.where(params.flip[:, None], width - 1 - cols, cols)                     # flip after the crop
    src_cols = _reflect_101(out_cols + params.dx[:, None] - aug.pad, width)                  # (N, W)
    source = (src_rows[:, :, None] * width + src_cols[:, None, :]).view(n, 1, height * width)
    planes = images.permute(0, 3, 1, 2).reshape(n, 3, height * width)
    moved = planes.gather(2, source.expand(n, 3, height * width)).view(n, 3, height, width)
    out = _normalize_nchw(moved)
    hole = min(aug.cutout_size, height, width)
    if hole > 0:
        in_rows = (rows >= params.top[:, None]) & (rows < params.top[:, None] + hole)
        in_cols = (cols >= params.left[:, None]) & (cols < params.left[:, None] + hole)
        mask = in_rows[:, :, None] & in_cols[:, None, :] & params.cutout[:, None, None]      # (N, H, W)
        out.masked_fill_(mask[:, None], 0.0)
    return out


class _TensorSplit:
    """The loader's ``dataset``: the whole split on the device."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)


class _EpochOrder:
    """Training order with dataset.EpochSampler's semantics: epoch e's permutation from (seed, e) alone; process
    ``rank`` takes every ``world_size``-th image of it, the uneven tail left out."""

    def __init__(self, size: int, seed: int, rank: int, world_size: int):
        self.size, self.seed, self.rank, self.world_size, self.epoch = size, seed, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size // self.world_size

    def indices(self) -> np.ndarray:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        return order[:len(self) * self.world_size][self.rank::self.world_size]

    def __iter__(self):
        return iter(self.indices().tolist())


class _EvalOrder:
    """Evaluation order: all images in order, or under DDP torch's DistributedSampler(shuffle=False) share (padded
    from the start to a multiple of world_size, every world_size-th from ``rank``)."""

    def __init__(self, size: int, rank: int, world_size: int):
        self.size, self.rank, self.world_size, self.epoch = size, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:  # the order does not depend on it
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.size / self.world_size)

    def indices(self) -> np.ndarray:
        total = len(self) * self.world_size
        padded = np.resize(np.arange(self.size), total)  # repeats from the start, as DistributedSampler pads
        return padded[self.rank:total:self.world_size]

    def __iter__(self):
        return iter(self.indices().tolist())


class BatchLoader:
    """A whole split (uint8 NHWC + labels) kept as tensors on ``device``, yielding ``(x, y)``: float32 NCHW
    normalised images and int64 labels, on that device.

    With a ``seed`` (training): dataset.EpochSampler's order and share, full batches only when there is more than
    one (as make_loader), and each image augmented by ``augment`` with ``draw_params(aug, seed, epoch, index)``;
    call ``sampler.set_epoch(e)`` (0-based) before each epoch. Without one (evaluation): the images in order,
    normalised, under DDP the DistributedSampler(shuffle=False) share. Drop-in for the DataLoaders the trainers use
    (``len``, iteration, ``sampler.set_epoch``, ``batch_size``, ``num_workers == 0``, ``dataset``,
    ``batch_sampler`` None), Lightning's fits included.
    """

    num_workers = 0
    batch_sampler = None  # batches are cut here, as no BatchSampler: Lightning looks for one beside ``sampler``

    def __init__(self, images, labels, batch_size: int, aug: AugmentConfig | None = None, seed: int | None = None,
                 rank: int = 0, world_size: int = 1, device=None):
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of {world_size} processes")
        images = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
        labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
        _check_images(images)
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.aug, self.seed, self.batch_size = aug if aug is not None else AugmentConfig(), seed, batch_size
        if seed is not None:
            _check(self.aug)  # fail at construction, not in the first epoch
        self.dataset = _TensorSplit(images.to(device), labels.to(device=device, dtype=torch.int64))
        self.device = self.dataset.images.device
        self.train = seed is not None
        self.sampler = (_EpochOrder(len(labels), seed, rank, world_size) if self.train
                        else _EvalOrder(len(labels), rank, world_size))
        self.drop_last = self.train and len(self.sampler) > batch_size  # no tiny last batch for BatchNorm

    @classmethod
    def from_split(cls, split, batch_size: int, **kwargs) -> BatchLoader:
        """From anything with ``images`` (uint8 NHWC) and ``labels``, e.g. a dataset.Split."""
        return cls(split.images, split.labels, batch_size, **kwargs)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        epoch = self.sampler.epoch  # fixed when the iteration starts, as a DataLoader reads its sampler then
        order = torch.as_tensor(self.sampler.indices(), dtype=torch.int64, device=self.device)
        # The whole epoch's draws at once: a few hundred small integer ops per epoch, not per batch.
        params = draw_params(self.aug, self.seed, epoch, order) if self.train else None
        images, labels = self.dataset.images, self.dataset.labels
        for b in range(len(self)):
            part = slice(b * self.batch_size, (b + 1) * self.batch_size)
            index = order[part]
            x = augment(images[index], params[part], self.aug) if self.train else normalize(images[index])
            yield x, labels[index]
