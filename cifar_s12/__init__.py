"""cifar-s12: train the course ResNet on CIFAR-10 with plain PyTorch + OneCycle, or with PyTorch Lightning."""
import warnings

# In Jupyter without ipywidgets, tqdm.auto (imported by huggingface_hub under albumentations, and by torch-lr-finder)
# warns that it falls back to text bars. Text bars are what the package wants: they read the same in a terminal, in
# Jupyter and Colab, and in a saved notebook, where widget bars leave nothing readable.
warnings.filterwarnings("ignore", message="IProgress not found")
