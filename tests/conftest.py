import os
from pathlib import Path

import pytest

from cifar_s12.dataset import ENV_VAR, load_cifar10, synthetic_image_folder


def _is_real(path: Path) -> bool:
    """The full CIFAR-10: torchvision's download, or an image-folder tree with all 5,000 airplanes."""
    if (path / "cifar-10-batches-py").is_dir():
        return True
    return (path / "train" / "airplane").is_dir() and sum(1 for _ in (path / "train" / "airplane").iterdir()) >= 5000


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """What the session uses: the real CIFAR-10 when $CIFAR_S12_DATA points at it, else the generated tree."""
    return Path(os.environ[ENV_VAR])


@pytest.fixture(scope="session")
def real_data_dir(data_dir) -> Path:
    if not _is_real(data_dir):
        pytest.skip(f"the real CIFAR-10 is not available (set {ENV_VAR})")
    return data_dir


@pytest.fixture(scope="session")
def data(data_dir):
    return load_cifar10(data_dir, download=False)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A very small generated tree of our own (for tests that break or count things)."""
    return synthetic_image_folder(tmp_path_factory.mktemp("tiny"), train_per_class=6, test_per_class=2)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained CustomResNet saved the way the plain trainer saves it (model.pt), with a metrics.json beside it."""
    import json

    import torch

    from cifar_s12.config import make_config
    from cifar_s12.dataset import CLASSES
    from cifar_s12.model import CustomResNet
    from cifar_s12.runs.checkpoints import save_checkpoint

    torch.manual_seed(0)
    cfg = make_config("best", epochs=2)
    path = tmp_path_factory.mktemp("run") / "model.pt"
    save_checkpoint(path, CustomResNet(**cfg.model_kwargs()), cfg.model, cfg.model_kwargs(), cfg.to_dict(), CLASSES,
                    epoch=2, trainer="torch")
    history = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.2 * e, "test_loss": 2.1 / e, "test_acc": 0.2 * e}
               for e in (1, 2)]
    (path.parent / "metrics.json").write_text(json.dumps({"history": history, "lr_schedule": [0.1, 0.4, 0.2, 0.0]}))
    return path
