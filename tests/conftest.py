import os
from pathlib import Path

import pytest

from cifar_s12.dataset import ENV_VAR, load_cifar10, synthetic_image_folder


def _is_real(path: Path) -> bool:
    return (path / "train" / "airplane").is_dir() and sum(1 for _ in (path / "train" / "airplane").iterdir()) >= 5000


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """What the session uses: the real CIFAR-10 tree when $CIFAR_S12_DATA points at it, else the generated one."""
    return Path(os.environ[ENV_VAR])


@pytest.fixture(scope="session")
def real_data_dir(data_dir) -> Path:
    if not _is_real(data_dir):
        pytest.skip(f"the real CIFAR-10 tree is not available (set {ENV_VAR})")
    return data_dir


@pytest.fixture(scope="session")
def data(data_dir):
    return load_cifar10(data_dir, download=False)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A very small generated tree of our own (for tests that break or count things)."""
    return synthetic_image_folder(tmp_path_factory.mktemp("tiny"), train_per_class=6, test_per_class=2)
