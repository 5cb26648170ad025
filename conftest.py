"""Session-wide test setup, shared by tests/ and the nbval notebook runs.

Tests and notebooks read CIFAR-10 from $CIFAR_S12_DATA. When it is not set and the repo's data/ has no
CIFAR-10, a small generated image-folder tree (data/synthetic, learnable, deterministic) stands in, so a fresh
clone without network still passes. Notebook kernels inherit this environment.
"""
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# nbval re-executes the notebooks in their quick mode (QUICK: 1 epoch on 1,000 images) unless told otherwise
# (CIFAR_S12_QUICK=0 runs them in full: hours on a CPU).
os.environ.setdefault("CIFAR_S12_QUICK", "1")


def pytest_configure(config):
    from cifar_s12.dataset import DEFAULT_DATA_DIR, ENV_VAR, synthetic_image_folder

    if os.environ.get(ENV_VAR):
        # Absolute: the notebooks' kernels run in notebooks/, where a relative path would point elsewhere.
        os.environ[ENV_VAR] = os.path.abspath(os.environ[ENV_VAR])
        return
    if (DEFAULT_DATA_DIR / "cifar-10-batches-py").is_dir():  # a user's torchvision download (README's first step)
        os.environ[ENV_VAR] = str(DEFAULT_DATA_DIR)
        return
    synthetic = DEFAULT_DATA_DIR / "synthetic"
    if not (synthetic / "test" / "truck").is_dir():
        synthetic_image_folder(synthetic)
    os.environ[ENV_VAR] = str(synthetic)
