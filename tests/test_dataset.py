import numpy as np
import pytest
import torch

from cifar_s12 import dataset as ds
from cifar_s12.dataset import CLASSES, CifarDataset, balanced_subset, load_cifar10, make_loader, subset
from cifar_s12.transform import test_transform as eval_transform
from cifar_s12.utils import UserError


def test_image_folder_is_decoded_and_cached(tiny_dir, tmp_path, monkeypatch):
    data = load_cifar10(tiny_dir, download=False, cache_dir=tmp_path)
    assert data.classes == CLASSES and data.source.startswith("image-folder:")
    assert data.train.images.shape == (60, 32, 32, 3) and data.train.images.dtype == np.uint8
    assert data.test.images.shape == (20, 32, 32, 3)
    assert np.bincount(data.train.labels).tolist() == [6] * 10
    assert len(list(tmp_path.glob("*.npz"))) == 1

    monkeypatch.setattr(ds, "_decode", lambda folder: pytest.fail("decoded again instead of using the cache"))
    again = load_cifar10(tiny_dir, download=False, cache_dir=tmp_path)
    assert np.array_equal(again.train.images, data.train.images)
    assert np.array_equal(again.test.labels, data.test.labels)


def test_a_changed_image_or_a_broken_cache_is_decoded_again(tiny_dir, tmp_path):
    import os
    import shutil

    tree, cache_dir = tmp_path / "tree", tmp_path / "cache"
    shutil.copytree(tiny_dir, tree)
    first = load_cifar10(tree, download=False, cache_dir=cache_dir)
    # Replace one training image in place (same name): its pixels must not come from the old cache.
    changed = tree / "train" / "dog" / "00000.png"
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))  # a different modification time whatever the clock's resolution
    second = load_cifar10(tree, download=False, cache_dir=cache_dir)
    assert len(list(cache_dir.glob("*.npz"))) == 1  # the folder's new cache replaced its old one
    assert (second.train.images == 7).all(axis=(1, 2, 3)).sum() == 1 and not (first.train.images == 7).all(
        axis=(1, 2, 3)).any()
    # A cache file that cannot be read (e.g. cut short) is decoded anew and replaced, not an error.
    (cache,) = cache_dir.glob("*.npz")
    cache.write_bytes(b"PK not a zip")
    third = load_cifar10(tree, download=False, cache_dir=cache_dir)
    assert np.array_equal(third.train.images, second.train.images)
    assert ds._read_cache(cache) is not None and list(cache_dir.glob("*.npz")) == [cache]
    assert not list(cache_dir.glob(".*.tmp"))  # no temporary files left behind


def test_half_an_image_folder_tree_is_an_error_not_a_download(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(UserError, match=r"has train/ but no test/"):
        load_cifar10(tmp_path, download=True)
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_data_dir_comes_from_the_environment(tiny_dir, monkeypatch):
    monkeypatch.setenv("CIFAR_S12_DATA", str(tiny_dir))
    assert ds.resolve_data_dir() == tiny_dir.resolve()
    assert ds.resolve_data_dir("elsewhere").name == "elsewhere"


def test_real_tree_matches_published_statistics(real_data_dir):
    data = load_cifar10(real_data_dir, download=False)
    assert len(data.train) == 50_000 and len(data.test) == 10_000
    assert np.bincount(data.train.labels).tolist() == [5000] * 10
    mean = data.train.images.reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(mean, [0.4914, 0.4822, 0.4465], atol=1e-4)


def test_corrupt_image_names_the_file(tiny_dir, tmp_path):
    import shutil

    broken = tmp_path / "tree"
    shutil.copytree(tiny_dir, broken)
    bad = broken / "test" / "cat" / "00000.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read image .*cat/00000.png"):
        load_cifar10(broken, download=False, cache_dir=tmp_path / "cache")


def test_an_image_of_another_size_names_the_file(tiny_dir, tmp_path):
    import shutil

    from PIL import Image

    tree = tmp_path / "tree"
    shutil.copytree(tiny_dir, tree)
    Image.new("RGB", (64, 32)).save(tree / "train" / "dog" / "00001.png")
    with pytest.raises(UserError, match=r"image .*dog/00001.png is 64x32; CIFAR-10 images are 32x32"):
        load_cifar10(tree, download=False, cache_dir=tmp_path / "cache")


def test_wrong_class_folders(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "cats").mkdir(parents=True)
        (tmp_path / split / "cats" / "a.png").write_bytes(b"")
    with pytest.raises(UserError, match="expected CIFAR-10's"):
        load_cifar10(tmp_path, download=False, cache_dir=tmp_path / "cache")


def test_missing_data_names_both_ways_to_provide_it(tmp_path):
    with pytest.raises(UserError) as err:
        load_cifar10(tmp_path / "nothing", download=False)
    message = str(err.value)
    assert "download" in message and "train/<class>/*.png" in message and "\n" not in message


def test_balanced_subset_is_deterministic_and_balanced():
    labels = np.repeat(np.arange(10), 100)
    a, b = balanced_subset(labels, 95, seed=0), balanced_subset(labels, 95, seed=0)
    assert np.array_equal(a, b) and len(a) == 95 and len(set(a)) == 95
    counts = np.bincount(labels[a], minlength=10)
    assert counts.max() - counts.min() <= 1
    assert not np.array_equal(a, balanced_subset(labels, 95, seed=1))
    with pytest.raises(UserError):
        balanced_subset(labels, 0)


def test_subset_keeps_test_whole_unless_asked(data):
    small = subset(data, train=50)
    assert len(small.train) == 50 and len(small.test) == len(data.test)
    assert len(subset(data, train=50, test=20).test) == 20


def test_loader_batches(data):
    loader = make_loader(CifarDataset(data.test, eval_transform()), batch_size=16, train=False, num_workers=0)
    x, y = next(iter(loader))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    train = make_loader(CifarDataset(data.train, eval_transform()), batch_size=64, train=True, num_workers=2)
    assert train.drop_last and train.persistent_workers
    sizes = [len(yb) for _, yb in train]
    assert sizes and set(sizes) == {64}


def test_an_images_augmentations_depend_on_seed_epoch_and_index_not_on_the_worker():
    from cifar_s12.transform import train_transform

    # One image 64 times: any difference between samples is the augmentations'.
    same_image = ds.Split(np.repeat(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(1, 32, 32, 3), 64, 0),
                          np.zeros(64, np.int64))

    def epoch(workers: int, seed: int = 1, epoch: int = 0):
        loader = make_loader(CifarDataset(same_image, train_transform(), seed=seed), batch_size=32, train=True,
                             num_workers=workers, seed=seed)
        loader.sampler.set_epoch(epoch)
        return torch.cat([x for x, _ in loader])

    alone = epoch(workers=0)
    assert torch.equal(alone, epoch(workers=2))  # two workers deal the batches out: the same tensors
    assert not torch.equal(alone[:32], alone[32:])  # no two batches share their crops and cutouts
    assert not torch.equal(alone, epoch(workers=0, seed=2)) and not torch.equal(alone, epoch(workers=0, epoch=1))


def test_the_data_source_is_recorded_as_given(tiny_dir, monkeypatch):
    from cifar_s12.dataset import ENV_VAR, load_cifar10

    monkeypatch.setenv(ENV_VAR, str(tiny_dir))
    assert load_cifar10(download=False).source == f"image-folder:${ENV_VAR}"
    assert load_cifar10(str(tiny_dir), download=False).source == f"image-folder:{tiny_dir}"  # the argument as given


def test_the_recipe_chooses_the_data_path_and_a_bad_one_is_one_line(data):
    from cifar_s12.batch_transform import BatchLoader
    from cifar_s12.config import RECIPES, apply_settings, make_config

    assert {name: cfg.data_path for name, cfg in RECIPES.items()} == dict.fromkeys(RECIPES, "albumentations")
    cfg = apply_settings(make_config("fast", subset=100, test_subset=30, batch_size=16), ["data_path=batched"])
    small = ds.load_data(cfg, data)
    train, test = ds.build_loaders(cfg, small, device=torch.device("cpu"))
    assert isinstance(train, BatchLoader) and isinstance(test, BatchLoader)
    # the recipe's augmentations, seed and batch size; the test split whole, in order, normalised
    assert (train.aug, train.seed, train.batch_size, len(train), train.device.type) == (cfg.augment, 1, 16, 6, "cpu")
    x, y = next(iter(test))
    assert torch.equal(y, torch.from_numpy(small.test.labels[:16]))
    want = torch.stack([eval_transform()(image=image)["image"] for image in small.test.images[:16]])
    torch.testing.assert_close(x, want, atol=1e-5, rtol=0)
    assert isinstance(ds.build_loaders(make_config("fast", num_workers=0), small)[0], torch.utils.data.DataLoader)
    for bad in (lambda: apply_settings(cfg, ["data_path=gpu"]), lambda: make_config("best", data_path="dali")):
        with pytest.raises(UserError, match="unknown data_path .*; choose from albumentations, batched") as err:
            bad()
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="data_path=batched: .*ToGray"):  # what the batched path does not do
        ds.build_loaders(apply_settings(cfg, ["augment.gray_p=0.2"]), small)
