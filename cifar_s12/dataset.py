"""CIFAR-10 as uint8 arrays, the Dataset that applies a transform, and the loaders (DataLoaders, or
batch_transform.BatchLoaders with the recipe's ``data_path="batched"``).

Where the pixels come from, chosen from ``data_dir`` (argument, else ``$CIFAR_S12_DATA``, else the repo's ``data/``):
  1. torchvision's ``CIFAR10`` files under data_dir (downloaded there when missing: the default on Colab/laptops);
  2. an image-folder tree ``data_dir/{train,test}/<class>/*.png``, read with torchvision's ``ImageFolder``,
     decoded once and cached as arrays in ``data/cache/`` (a changed file re-decodes).
Either way the whole data set lives in memory as uint8 HWC arrays (150 MB): airbench-style, no per-epoch file I/O.
"""
from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .batch_transform import BatchLoader
from .config import TrainConfig
from .transform import test_transform, train_transform
from .utils import UserError, atomic_path

# torchvision.datasets.CIFAR10's class order (index = position). It is also alphabetical, as ImageFolder sorts.
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
REPO_DIR = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_DIR / "data"
ENV_VAR = "CIFAR_S12_DATA"


@dataclass
class Split:
    images: np.ndarray  # (N, 32, 32, 3) uint8, RGB
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> "Split":
        return Split(self.images[indices], self.labels[indices])


@dataclass
class CifarData:
    train: Split
    test: Split
    source: str  # where the pixels came from, for logs and metrics.json
    classes: tuple[str, ...] = CLASSES


def described_data_dir(data_dir: str | os.PathLike | None = None) -> str:
    """Where the data is, as the user gave it, for logs and metrics.json: the argument as written, else the
    variable's name ``$CIFAR_S12_DATA``, else ``data/``; never this machine's absolute path."""
    if data_dir:
        return str(data_dir)
    return f"${ENV_VAR}" if os.environ.get(ENV_VAR) else "data/"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The argument, else $CIFAR_S12_DATA, else the repo's data/ folder."""
    chosen = data_dir or os.environ.get(ENV_VAR) or DEFAULT_DATA_DIR
    return Path(chosen).expanduser().resolve()


def load_cifar10(data_dir: str | os.PathLike | None = None, download: bool = True,
                 cache_dir: str | os.PathLike | None = None) -> CifarData:
    """Load both splits from ``data_dir`` (see the module docstring for the order of sources)."""
    root, described = resolve_data_dir(data_dir), described_data_dir(data_dir)
    splits = [name for name in ("train", "test") if (root / name).is_dir()]
    if len(splits) == 2:
        return _load_image_folder(root, Path(cache_dir) if cache_dir else DEFAULT_DATA_DIR / "cache", described)
    if splits:  # half an image-folder tree: say so, rather than download CIFAR-10 beside it
        missing = ({"train", "test"} - set(splits)).pop()
        raise UserError(f"{root} has {splits[0]}/ but no {missing}/: an image-folder tree needs both "
                        f"train/<class>/*.png and test/<class>/*.png")
    return _load_torchvision(root, download, described)


def _load_torchvision(root: Path, download: bool, described: str) -> CifarData:
    from torchvision.datasets import CIFAR10

    if root.exists() and not root.is_dir():
        raise UserError(f"the CIFAR-10 location {root} is a file, not a folder (--data-dir / ${ENV_VAR})")
    existed = root.exists()
    try:
        splits = [CIFAR10(str(root), train=train, download=download) for train in (True, False)]
    except Exception as err:  # no network, no files, or a read-only folder: one message names both ways out
        if not existed and root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # the failed download's empty folder: leave nothing behind
        tried = ("downloading is off (--no-download)" if not download
                 else f"could not be downloaded ({type(err).__name__}: {err})")
        raise UserError(
            f"CIFAR-10 not found in {root} and {tried}. Either allow the download (torchvision fetches it into "
            f"--data-dir), or point --data-dir / ${ENV_VAR} at an image-folder tree with train/<class>/*.png and "
            f"test/<class>/*.png.") from None
    train, test = (Split(np.asarray(s.data, dtype=np.uint8), np.asarray(s.targets, dtype=np.int64)) for s in splits)
    return CifarData(train, test, source=f"torchvision:{described}", classes=tuple(splits[0].classes))


def _load_image_folder(root: Path, cache_dir: Path, described: str) -> CifarData:
    from torchvision.datasets import ImageFolder

    try:
        folders = {name: ImageFolder(str(root / name)) for name in ("train", "test")}
    except FileNotFoundError as err:  # a class folder without images, or no train/ or test/
        raise UserError(f"{root} is not a usable image-folder tree: {err}") from None
    for name, folder in folders.items():
        if tuple(folder.classes) != CLASSES:
            raise UserError(f"{root / name} has class folders {folder.classes}; expected CIFAR-10's {list(CLASSES)}")
    # One cache per folder (the name's first hash), replaced when the folder's files change (the second).
    folder_key = hashlib.sha1(str(root).encode()).hexdigest()[:8]
    cache = cache_dir / f"cifar10-imagefolder-{folder_key}-{_cache_key(folders)}.npz"
    source = f"image-folder:{described}"
    cached = _read_cache(cache)
    if cached is not None:
        return CifarData(*cached, source=source)
    train, test = (_decode(folders[name]) for name in ("train", "test"))
    try:
        # Atomic, through a temporary file of its own: a half-written cache is never read, and two runs that decode
        # at the same time do not write into one file.
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, train_x=train.images, train_y=train.labels, test_x=test.images, test_y=test.labels)
        for stale in cache_dir.glob(f"cifar10-imagefolder-{folder_key}-*.npz"):  # this folder's earlier contents
            if stale != cache:
                stale.unlink(missing_ok=True)
    except OSError as err:  # e.g. a read-only checkout: train anyway, decode again next time
        print(f"note: could not cache the decoded images in {cache_dir} ({err.strerror or err}); "
              f"they will be decoded again next time", file=sys.stderr)
    return CifarData(train, test, source=source)


def _cache_key(folders: dict) -> str:
    """The folder's file list with each file's size and modification time: adding, renaming or replacing an
    image re-decodes (one stat per file, a fraction of a second for 60,000)."""
    h = hashlib.sha1()
    for folder in folders.values():
        for path, _ in folder.samples:
            st = os.stat(path)
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _read_cache(cache: Path) -> tuple[Split, Split] | None:
    """The cached arrays, or None when there is no cache or it cannot be read (then it is decoded anew)."""
    if not cache.is_file():
        return None
    try:
        with np.load(cache) as z:
            return Split(z["train_x"], z["train_y"]), Split(z["test_x"], z["test_y"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def _decode(folder) -> Split:
    from tqdm import tqdm

    images = np.empty((len(folder.samples), 32, 32, 3), dtype=np.uint8)
    labels = np.empty(len(folder.samples), dtype=np.int64)
    # `with`: the bar is cleared before an error is printed, so the error line starts the line. disable=None: no bar
    # where stderr is not a terminal (a log, CI, a notebook's captured output), which would keep its redraws as debris.
    with tqdm(folder.samples, desc=f"decoding {Path(folder.root).name}", mininterval=2, leave=False,
              disable=None) as bar:
        for i, (path, label) in enumerate(bar):
            try:
                image = np.asarray(folder.loader(path))  # PIL, converted to RGB
            except Exception as err:
                raise UserError(f"cannot read image {path} ({type(err).__name__}): replace or delete it") from None
            if image.shape != (32, 32, 3):
                raise UserError(f"image {path} is {image.shape[1]}x{image.shape[0]}; CIFAR-10 images are 32x32")
            images[i], labels[i] = image, label
    return Split(images, labels)


def balanced_subset(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of a deterministic, class-balanced subset of size ``n`` (sorted; the same for the same seed)."""
    classes = np.unique(labels)
    if not 0 < n <= len(labels):
        raise UserError(f"subset size must be between 1 and {len(labels)}, got {n}")
    rng = np.random.default_rng(seed)
    per_class = [n // len(classes) + (i < n % len(classes)) for i in range(len(classes))]
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, per_class)]
    return np.sort(np.concatenate(picked))


def subset(data: CifarData, train: int | None = None, test: int | None = None, seed: int = 0) -> CifarData:
    """A smaller CifarData for quick runs; ``None`` keeps a split whole."""
    def cut(split: Split, n: int | None) -> Split:
        return split if n is None or n >= len(split) else split.take(balanced_subset(split.labels, n, seed))
    return CifarData(cut(data.train, train), cut(data.test, test), data.source, data.classes)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one image's augmentations in one epoch: a function of (run seed, epoch, image index) alone."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def flip_parity(seed: int, index: int) -> int:
    """0 or 1: whether an image is flipped in even epochs (alternating flips), drawn once per (seed, image)."""
    return int(np.random.SeedSequence([seed, 2**32, index]).generate_state(1)[0]) & 1  # 2**32: no epoch's key


class CifarDataset(Dataset):
    """uint8 HWC images + labels; ``transform`` is an albumentations pipeline ending in ToTensorV2.

    With a ``seed`` (training), the loader's sampler (EpochSampler) hands in ``(epoch, index)`` and the image's
    augmentations are seeded from (seed, epoch, index) just before they are drawn. Nothing is carried from one
    image to the next, so the augmented tensors do not depend on which process (DDP rank) or loader worker draws
    them, on how many workers there are, or on what came before: epoch 5 after a resume is the uninterrupted
    run's epoch 5. (A per-worker stream seeded once would replay epoch 1 after a resume and give each DDP process
    the same draws.) Without a seed, indices are plain ints (evaluation: no randomness).
    """

    def __init__(self, split: Split, transform, seed: int | None = None, alternate_flips: bool = False,
                 late_transform=None, late_from_epoch: int | None = None):
        self.images, self.labels, self.transform, self.seed = split.images, split.labels, transform, seed
        self.alternate_flips = alternate_flips and seed is not None  # AugmentConfig.flip == "alternating"
        # From (0-based) epoch ``late_from_epoch`` on, ``late_transform`` instead (AugmentConfig.cutout_epochs).
        self.late_transform, self.late_from_epoch = late_transform, late_from_epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key) -> tuple[torch.Tensor, int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image = self.images[index]
        late = self.late_transform is not None and epoch >= self.late_from_epoch
        transform = self.late_transform if late else self.transform
        if self.seed is not None:
            transform.set_random_seed(sample_seed(self.seed, epoch, index))
        if self.alternate_flips and (flip_parity(self.seed, index) + epoch) % 2:
            image = image[:, ::-1]
        return transform(image=np.ascontiguousarray(image))["image"], int(self.labels[index])


class EpochSampler(torch.utils.data.Sampler):
    """The training order: epoch ``e``'s is a permutation drawn from (seed, e) alone, so any epoch can be
    (re)started without replaying the ones before. Under DDP, process ``rank`` of ``world_size`` takes every
    ``world_size``-th image of it (the tail that does not divide evenly is left out), so together the processes see
    each image at most once. Yields ``(epoch, index)`` for CifarDataset's per-image seeding. The trainers call
    ``set_epoch`` (0-based) before each epoch, as Lightning does with any sampler that has it."""

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of {world_size} processes")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size // self.world_size

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        share = order[:len(self) * self.world_size][self.rank::self.world_size]
        return iter([(self.epoch, int(i)) for i in share])


def default_num_workers() -> int:
    return min(os.cpu_count() or 1, 8)


def make_loader(dataset: Dataset, batch_size: int, train: bool, num_workers: int | None = None,
                seed: int = 0, pin_memory: bool | None = None, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Training: EpochSampler's order (this process's share under DDP), full batches only. Evaluation: in order
    (this process's share under DDP). Workers stay alive between epochs."""
    workers = default_num_workers() if num_workers is None else num_workers
    if train:
        sampler = EpochSampler(len(dataset), seed, rank, world_size)
    elif world_size > 1:
        sampler = torch.utils.data.DistributedSampler(dataset, world_size, rank, shuffle=False)
    else:
        sampler = None
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler,
        drop_last=train and len(sampler) > batch_size,  # no tiny last batch for BatchNorm
        num_workers=workers, persistent_workers=workers > 0,
        # A generator of its own: starting an iterator draws worker seeds from it, not from torch's global one,
        # which utils.seed_epoch keeps for the training step alone.
        generator=torch.Generator().manual_seed(seed),
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory)


def synthetic_image_folder(root: str | os.PathLike, train_per_class: int = 60, test_per_class: int = 20,
                           seed: int = 0) -> Path:
    """Write a small, learnable CIFAR-10-shaped image-folder tree (class = a colour and a stripe direction).

    For tests and offline demos when the real data set is not at hand.
    """
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            colour = np.array([(c * 37) % 256, (c * 91 + 60) % 256, (c * 53 + 120) % 256], dtype=np.float32)
            stripes = np.sin((xx * np.cos(c * np.pi / 10) + yy * np.sin(c * np.pi / 10)) * 0.8)[..., None]
            for i in range(per_class):
                pixels = colour * 0.6 + 60 * stripes + rng.normal(0, 25, (32, 32, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / split / name / f"{i:05d}.png")
    return root


def load_data(cfg: TrainConfig, data: CifarData | None = None) -> CifarData:
    """The recipe's data: CIFAR-10 from ``cfg.data_dir`` (or the arrays handed in), cut to ``cfg.subset`` and
    ``cfg.test_subset``. The same subset whatever the training seed; cutting an already cut set changes nothing."""
    data = data if data is not None else load_cifar10(cfg.data_dir, download=cfg.download)
    return subset(data, cfg.subset, cfg.test_subset, seed=0)


def build_loaders(cfg: TrainConfig, data: CifarData, rank: int = 0, world_size: int = 1, device=None):
    """Training loader (each epoch's order and each image's augmentations drawn from ``cfg.seed``, the epoch and
    the image: see dataset.EpochSampler) and test loader; under DDP, process ``rank``'s share of each.

    ``cfg.data_path``: "albumentations", DataLoaders whose workers run the pipeline image by image on the CPU;
    "batched", batch_transform.BatchLoaders that keep both splits on ``device`` (the training device) and augment
    whole batches there, with the same order and shares, each image's draws from (seed, epoch, index) alone.
    """
    if cfg.data_path == "batched":
        try:
            return (BatchLoader.from_split(data.train, cfg.batch_size, aug=cfg.augment, seed=cfg.seed, rank=rank,
                                           world_size=world_size, device=device),
                    BatchLoader.from_split(data.test, cfg.batch_size, rank=rank, world_size=world_size,
                                           device=device))
        except ValueError as err:  # e.g. augment.gray_p, which the batched path does not have
            raise UserError(f"data_path=batched: {err}") from None
    late = cfg.augment.cutout_epochs  # after that many epochs, the same pipeline without cutout
    train_ds = CifarDataset(data.train, train_transform(cfg.augment), seed=cfg.seed,
                            alternate_flips=cfg.augment.flip == "alternating",
                            late_transform=train_transform(replace(cfg.augment, cutout_p=0.0)) if late is not None
                            else None, late_from_epoch=late)
    test_ds = CifarDataset(data.test, test_transform())
    return (make_loader(train_ds, cfg.batch_size, train=True, num_workers=cfg.num_workers, seed=cfg.seed,
                        rank=rank, world_size=world_size),
            make_loader(test_ds, cfg.batch_size, train=False, num_workers=cfg.num_workers, rank=rank,
                        world_size=world_size))
