"""A Hugging Face Space folder for the app: ``python -m cifar_s12 space --out DIR``, then push DIR to a Space.

What it holds: app.py (calls ``cifar_s12.app.gradio_app.space_main``), requirements.txt, README.md with the
Space's front matter, the package itself, the weights with their card and mistakes cache, and the example images.
Nothing is fetched at run time, so the Space starts as it ran here.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ..dataset import REPO_DIR
from ..runs.checkpoints import load_checkpoint
from ..utils import UserError
from .mistakes import cache_paths, cached_mistakes
from .shipped_weights import EXAMPLES_DIR, SHIPPED_WEIGHTS, card_path, read_card

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the whole cifar_s12 package: the app imports across it
# What the app imports, and no more (no Lightning, no Jupyter): the CPU wheels of torch, as Spaces' free tier has
# no GPU. Gradio itself comes from the front matter's sdk_version.
SPACE_REQUIREMENTS = """--extra-index-url https://download.pytorch.org/whl/cpu
torch>=2.6
torchvision>=0.21
torchmetrics>=1.4
albumentations>=2.0.5,<3
grad-cam>=1.5.4
matplotlib>=3.8
numpy>=1.26
pillow>=10
safetensors>=0.4
tqdm>=4.66
"""
# The Hub takes files over 10 MB through Git LFS only; the weights are 13 MB.
GITATTRIBUTES = "".join(f"*.{ext} filter=lfs diff=lfs merge=lfs -text\n" for ext in ("safetensors", "npz", "png"))
APP_PY = '''"""Hugging Face Space entry point, written by `python -m cifar_s12 space`: serves the shipped weights."""
from cifar_s12.app.gradio_app import space_main

if __name__ == "__main__":
    space_main()
'''


def space_readme(card: dict | None) -> str:
    import gradio

    accuracy = f"{card['test_accuracy']:.2%} test accuracy" if card and card.get("test_accuracy") else "CIFAR-10"
    return f"""---
title: CIFAR-10 S12 classifier
emoji: 🖼️
colorFrom: blue
colorTo: green
sdk: gradio
sdk_version: {gradio.__version__}
app_file: app.py
pinned: false
---

# CIFAR-10 classifier (S12)

The course's custom ResNet ({accuracy}): upload an image or click an example to see the top classes and a
GradCAM of the evidence; the second tab shows the model's most confident mistakes on the test set.
How the weights were made: `weights/{SHIPPED_WEIGHTS.stem}.json`. Built with `python -m cifar_s12 space`.
"""


def write_space(out: str | Path, weights: str | Path = SHIPPED_WEIGHTS, data_dir: str | None = None) -> list[str]:
    """Write the Space folder; ``out`` must be new or empty (a Space repository's own files are not replaced)."""
    out, weights = Path(out), Path(weights)
    if out.exists() and (not out.is_dir() or any(p.name != ".git" for p in out.iterdir())):
        raise UserError(f"--out {out} is not an empty folder: name a new one")
    if not weights.is_file():
        raise UserError(f"no weights at {weights}: export a run first (python -m cifar_s12 export --checkpoint ...)")
    if weights.suffix != ".safetensors":
        raise UserError(f"{weights}: a Space serves exported weights; make them with "
                        f"python -m cifar_s12 export --checkpoint {weights} --out NAME.safetensors")
    loaded = load_checkpoint(weights)
    mistakes, note = cached_mistakes(loaded, data_dir)  # computed now if need be, so the Space needs no data set
    if mistakes is None:
        raise UserError(f"the Space needs the mistakes gallery's cache: {note}")
    cache = next((p for p in cache_paths(weights) if p.is_file()), None)
    if cache is None:
        raise UserError(f"the mistakes of {weights} could not be cached ({note}); the Space needs that file")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(PACKAGE_DIR, out / PACKAGE_DIR.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (out / "weights").mkdir()
    for path in (weights, card_path(weights), cache):  # named as the Space serves them; the cache keeps its hash
        if path.is_file():
            shutil.copy2(path, out / "weights" / (SHIPPED_WEIGHTS.stem + path.name[len(weights.stem):]))
    shutil.copytree(EXAMPLES_DIR, out / EXAMPLES_DIR.relative_to(REPO_DIR))
    (out / "app.py").write_text(APP_PY)
    (out / "requirements.txt").write_text(SPACE_REQUIREMENTS)
    (out / "README.md").write_text(space_readme(read_card(weights)))
    (out / ".gitattributes").write_text(GITATTRIBUTES)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return [f"wrote a Space to {out} ({size / 1e6:.1f} MB): app.py, requirements.txt, README.md, cifar_s12/, "
            f"weights/, examples/", f"try it: cd {out} && python app.py; publish: docs/app.md, 'A Hugging Face Space'"]
