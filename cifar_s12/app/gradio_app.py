"""The S12 web app (Gradio Blocks): classify an upload or an example with top-k and GradCAM, and a gallery of the
model's most confident mistakes on the test set.

``python -m cifar_s12 app`` serves it; ``python -m cifar_s12 space`` packs it for a Hugging Face Space. The event
listeners are the methods of ``S12App``, plain functions that tests call without a browser; the model is loaded
once, the test-set mistakes come from a cache (mistakes.py), and every figure is drawn by analysis/plots.
"""
from __future__ import annotations

import atexit
import math
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: it would phone home

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ..analysis.plots import cam_overlay  # noqa: E402
from ..analysis.predictions import (
    cam_layer_choices,
    default_cam_layer,
    gradcam,
    load_image,
    normalised,
    predict_probabilities,
    top_k,
)
from ..model import count_parameters  # noqa: E402
from ..runs.checkpoints import load_checkpoint  # noqa: E402
from ..utils import UserError  # noqa: E402
from .mistakes import MAX_MISTAKES, cached_mistakes  # noqa: E402
from .shipped_weights import checkpoint_or_shipped, example_images, read_card  # noqa: E402

SCALE = 6            # the 32x32 images are shown 6x, pixel for pixel (nearest): 192x192
MAX_TOP_K = 10
MAX_UPLOAD = "20mb"  # Gradio refuses larger uploads; PIL's decompression-bomb limit guards the pixel count
# Uploads and the images the app returns live in Gradio's cache: files older than this go (checked every half).
KEEP_FILES_SECONDS = 600


def enlarge(image: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """Nearest-neighbour upscaling, so a 32x32 image is shown as the model sees it, not blurred by the browser."""
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def _number(value, kind, name: str):
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number):
        raise gr.Error(f"{name} must be a finite number, got {value!r}", print_exception=False)
    return number


class S12App:
    """The loaded model and the app's event listeners."""

    def __init__(self, checkpoint: str | os.PathLike | None = None, data_dir: str | None = None):
        self.path = checkpoint_or_shipped(checkpoint)
        self.loaded = load_checkpoint(self.path)
        self.layers = cam_layer_choices(self.loaded.model)  # {label: module name}
        default = default_cam_layer(self.loaded.model)
        self.default_layer = next(label for label, name in self.layers.items() if name == default)
        self.card = read_card(self.path)
        self.mistakes, self.mistakes_note = cached_mistakes(self.loaded, data_dir)
        # GradCAM hooks into the model's layers: two requests at once must not share those hooks.
        self.lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------------------
    def header(self) -> str:
        """Which weights, how well they do, how they were trained (from the card, else from what is known here)."""
        name = type(self.loaded.model).__name__
        line = f"**Weights:** `{self.path.name}` ({name}, {count_parameters(self.loaded.model):,} parameters)"
        card, config = self.card or {}, self.loaded.config
        if card.get("test_accuracy") is not None:
            tta = card.get("test_accuracy_tta")
            line += (f" · **test accuracy {card['test_accuracy']:.2%}**" + (f" ({tta:.2%} with flip TTA)" if tta else "")
                     + f" on {card.get('test_images', 10000):,} CIFAR-10 test images")
        elif self.mistakes is not None:
            line += f" · test accuracy {self.mistakes.accuracy:.2%} on {self.mistakes.test_images:,} test images"
        else:
            line += " · test accuracy unknown (no test set here)"
        run = card.get("run", {})
        how = [f"the `{config.get('recipe', '?')}` recipe", f"seed {config.get('seed', '?')}",
               f"{config.get('epochs', '?')} epochs"]
        if run.get("trainer"):
            how.append(f"{'Lightning' if run['trainer'] == 'lightning' else 'plain PyTorch'} trainer")
        if run.get("wall_seconds") and run.get("device"):
            how.append(f"{run['wall_seconds'] / 60:.0f} min on {run['device']}")
        commit = card.get("trained_at_commit")
        return f"{line}<br>Trained with {', '.join(how)}" + (f", at commit `{commit[:7]}`." if commit else ".")

    def layer_name(self, layer: str | None) -> str:
        """A label from the menu (or a module name of the menu) -> the module name; anything else is an error."""
        if layer in self.layers:
            return self.layers[layer]
        if layer in self.layers.values():
            return layer
        raise gr.Error(f"no GradCAM layer {layer!r}; choose one of: {'; '.join(self.layers)}", print_exception=False)

    def _overlays(self, images: np.ndarray, targets, layer: str, opacity: float) -> np.ndarray:
        cams = gradcam(self.loaded.model, normalised(images), targets, layer)
        return cam_overlay(images, cams, min(max(_number(opacity, float, "opacity"), 0.0), 1.0))

    # ------------------------------------------------------------------------------------------------------------
    def classify(self, image, k=3, show_cam=True, layer=None, opacity=0.5, cams=1):
        """An upload (Gradio's file payload, or a path) -> (the 32x32 the model sees, {class: p} of the top k,
        GradCAM of the top ``cams`` classes side by side, the predicted class first, or None). Prepared exactly as
        ``predict`` prepares a file."""
        if image is None:
            return None, None, None
        path, shown = (image.get("path"), image.get("orig_name")) if isinstance(image, dict) else (image, None)
        if not path:
            raise gr.Error("no image received", print_exception=False)
        shown = shown or Path(path).name
        layer_name = self.layer_name(layer or self.default_layer)
        k = min(max(int(_number(k, float, "k")), 1), MAX_TOP_K)  # out of range: clamped, not refused
        cams = min(max(int(_number(cams, float, "cams")), 1), MAX_TOP_K)
        try:
            pixels, note = load_image(path)
        except UserError as err:  # the message names the server's temporary copy; the user knows the upload's name
            raise gr.Error(str(err).replace(str(path), shown), print_exception=False) from None
        if note:
            gr.Info(note.replace(str(path), shown))
        with self.lock:
            probs = predict_probabilities(self.loaded, [pixels])[0]
            overlay = None
            if show_cam:
                classes = probs.argsort(descending=True)[:cams].tolist()  # the predicted class first
                overlays = self._overlays(np.repeat(pixels[None], cams, axis=0), classes, layer_name, opacity)
                overlay = np.concatenate([enlarge(o) for o in overlays], axis=1)
        return enlarge(pixels), dict(top_k(probs[None], self.loaded.classes, k)[0]), overlay

    def misclassified(self, n=10, show_cam=False, layer=None, opacity=0.5):
        """The ``n`` most confident mistakes as (image, "true -> predicted (p)") pairs, GradCAM of the predicted
        class over them if asked; [] when this machine has no test set and no cache (the tab says why)."""
        layer_name = self.layer_name(layer or self.default_layer)
        if self.mistakes is None:
            return []
        m = self.mistakes
        n = min(max(int(_number(n, float, "n")), 1), len(m.images))
        images = m.images[:n]
        if show_cam:
            with self.lock:
                images = self._overlays(images, m.predicted[:n], layer_name, opacity)
        classes = self.loaded.classes
        return [(enlarge(image), f"{classes[int(t)]} -> {classes[int(p)]} ({float(c):.2f})")
                for image, t, p, c in zip(images, m.true[:n], m.predicted[:n], m.confidence[:n])]


class PngFiles:
    """The listeners' images as PNG files for Gradio, which copies a file into its cache atomically under a name
    made from its content, once. (Handed an array instead, Gradio rewrites a same-content file in place, and a
    concurrent download of it, as when two students click the same example, reads a truncated file.) Gradio's
    copies go with ``keep_files``; these originals after a minute, or when the process ends."""

    def __init__(self, keep_seconds: float = 60.0):
        self.dir = Path(tempfile.mkdtemp(prefix="cifar-s12-app-"))
        self.keep_seconds = keep_seconds
        atexit.register(shutil.rmtree, self.dir, ignore_errors=True)

    def __call__(self, image: np.ndarray | None) -> str | None:
        if image is None:
            return None
        now = time.time()
        for old in self.dir.glob("*.png"):
            try:
                if now - old.stat().st_mtime > self.keep_seconds:
                    old.unlink()
            except FileNotFoundError:  # another request pruned it first
                pass
        fd, path = tempfile.mkstemp(dir=self.dir, suffix=".png")
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(image).save(f, format="PNG")
        return path


def build_app(app: S12App, keep_files: int = KEEP_FILES_SECONDS) -> gr.Blocks:
    """One Blocks layout; each control re-runs its tab's listener, which is also an API endpoint
    (``/classify``, ``/misclassified``) for gradio_client."""
    layers = list(app.layers)
    png = PngFiles(keep_seconds=min(60, keep_files))

    def classify(*args):
        seen, top, overlay = app.classify(*args)
        return png(seen), top, png(overlay)

    def misclassified(*args):
        return [(png(image), caption) for image, caption in app.misclassified(*args)]

    with gr.Blocks(title="CIFAR-10 classifier (S12)", analytics_enabled=False,
                   delete_cache=(max(1, keep_files // 2), keep_files)) as demo:
        gr.Markdown(f"## CIFAR-10 classifier\n{app.header()}")
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(label="Your image (any size: centre-cropped and resized to 32x32)",
                                     type="filepath", sources=["upload", "clipboard"], height=260)
                    gr.Examples([[str(p)] for p in example_images()], inputs=[image],
                                label="Or click a CIFAR-10 test image (one per class)", examples_per_page=10)
                    k = gr.Slider(1, MAX_TOP_K, value=3, step=1, label="How many top classes to show")
                    show_cam = gr.Checkbox(value=True, label="Show GradCAM (where the evidence for the class is)")
                    cams = gr.Slider(1, MAX_TOP_K, value=1, step=1,
                                     label="How many GradCAM images (one per top class, the predicted one first)")
                    layer = gr.Dropdown(layers, value=app.default_layer, label="GradCAM layer")
                    opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="GradCAM opacity (0: image only)")
                with gr.Column():
                    seen = gr.Image(label="What the model sees (32x32, shown 6x)", interactive=False, format="png",
                                    height=200)
                    top = gr.Label(label="Top classes")
                    overlay = gr.Image(label="GradCAM of the top classes, in the order of the list above",
                                       interactive=False, format="png", height=200)
            # preprocess=False: the listener reads the upload itself with load_image (what `predict` does), so a
            # file PIL cannot open is a clear message in the page, not Gradio's generic one.
            gr.on([image.change, k.release, show_cam.change, layer.change, opacity.release, cams.release], classify,
                  inputs=[image, k, show_cam, layer, opacity, cams], outputs=[seen, top, overlay],
                  api_name="classify", preprocess=False)
        with gr.Tab("Misclassified"):
            if app.mistakes is None:
                gr.Markdown(f"**No gallery:** {app.mistakes_note}.")
            else:
                gr.Markdown(f"The most confident mistakes on the test set ({app.mistakes_note}), captioned "
                            f"*true -> predicted (probability)*.")
            with gr.Row():
                n = gr.Slider(1, MAX_MISTAKES, value=10, step=1, label="How many")
                gallery_cam = gr.Checkbox(value=False, label="Show GradCAM of the predicted class")
                gallery_layer = gr.Dropdown(layers, value=app.default_layer, label="GradCAM layer")
                gallery_opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="GradCAM opacity")
            gallery = gr.Gallery(label="Most confident mistakes", columns=5, height="auto", format="png")
            gr.on([demo.load, n.release, gallery_cam.change, gallery_layer.change, gallery_opacity.release],
                  misclassified, inputs=[n, gallery_cam, gallery_layer, gallery_opacity], outputs=[gallery],
                  api_name="misclassified", preprocess=False)
    return demo


def serve(checkpoint: str | None = None, host: str = "127.0.0.1", port: int | None = 7860, data_dir: str | None = None,
          keep_files: int = KEEP_FILES_SECONDS, block: bool = True) -> gr.Blocks:
    """Start the app on ``host:port`` (``port`` None: the first free one from 7860), offline: no share link. In
    Jupyter it also shows inline, in an inline frame; on Colab through Colab's own proxy of the kernel's port."""
    demo = build_app(S12App(checkpoint, data_dir), keep_files)
    try:
        demo.launch(server_name=host, server_port=port, share=False, max_file_size=MAX_UPLOAD,
                    prevent_thread_lock=not block, quiet=not block)
    except OSError as err:  # the port is taken, or the host is not this machine's
        raise UserError(f"cannot serve on {host}:{port} ({str(err).splitlines()[0]})") from None
    return demo


def space_main() -> None:
    """A Space's app.py calls this: the shipped weights, Gradio's host and port from the environment."""
    demo = build_app(S12App())
    demo.launch(max_file_size=MAX_UPLOAD)
