import numpy as np
import pytest
import torch
from figures import png_image
from PIL import Image

from cifar_s12.dataset import CLASSES
from cifar_s12.plots import (cam_overlay, plot_augmented, plot_confusion_matrix, plot_curves, plot_gradcam,
                             plot_lr_finder, plot_misclassified, plot_per_class_accuracy, plot_samples, save_figure,
                             to_display)
from cifar_s12.transform import AugmentConfig, train_transform
from cifar_s12.transform import test_transform as eval_transform

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
LABELS = np.arange(12) % 10


def image_tiles(fig) -> int:
    return sum(1 for ax in fig.axes if ax.images)


def saved_png(fig, path) -> Image.Image:
    save_figure(fig, path)
    return png_image(path)


def test_to_display_undoes_the_normalisation():
    x = torch.stack([eval_transform()(image=im)["image"] for im in IMAGES[:3]])
    assert np.abs(to_display(x).astype(int) - IMAGES[:3].astype(int)).max() <= 1
    assert to_display(IMAGES[0]).shape == (1, 32, 32, 3)


def test_sample_and_augmentation_grids(tmp_path):
    fig = plot_samples(IMAGES, LABELS, CLASSES, ncols=6)
    assert image_tiles(fig) == 12 and [ax.get_title() for ax in fig.axes[:3]] == ["airplane", "automobile", "bird"]
    saved_png(fig, tmp_path / "samples.png")
    transform = train_transform(AugmentConfig(cutout_p=1.0), seed=0)
    fig = plot_augmented(IMAGES, LABELS, CLASSES, transform, ncols=6)
    assert image_tiles(fig) == 12
    shown = fig.axes[0].images[0].get_array()
    assert shown.shape == (32, 32, 3) and not np.array_equal(shown, IMAGES[0])  # cropped, holed: not the original
    saved_png(fig, tmp_path / "augmented.png")


def test_misclassified_gallery_captions_true_predicted_and_confidence(tmp_path):
    fig = plot_misclassified(IMAGES[:7], LABELS[:7], (LABELS[:7] + 1) % 10, [0.91] * 7, CLASSES)
    assert image_tiles(fig) == 7
    assert fig.axes[0].get_title() == "true: airplane\npred: automobile (91%)"
    saved_png(fig, tmp_path / "misclassified.png")


def test_gradcam_figure_has_three_tiles_per_image(tmp_path):
    cams = RNG.random((4, 32, 32)).astype(np.float32)
    fig = plot_gradcam(IMAGES[:4], cams, cams[::-1], LABELS[:4], LABELS[:4] + 1, CLASSES, opacity=0.3)
    assert image_tiles(fig) == 12
    assert [ax.get_title() for ax in fig.axes[:3]] == ["airplane as automobile", "CAM automobile (pred)",
                                                       "CAM airplane (true)"]
    saved_png(fig, tmp_path / "gradcam.png")


def test_cam_overlay_opacity_is_the_heatmaps_share():
    cams = RNG.random((1, 32, 32)).astype(np.float32)[[0, 0]]  # one map over two different images
    overlay = cam_overlay(IMAGES[:2], cams, opacity=0.5)
    assert overlay.shape == (2, 32, 32, 3) and overlay.dtype == np.uint8
    assert not np.array_equal(overlay[0], overlay[1])  # half image, half heatmap
    only_heatmap, only_image = cam_overlay(IMAGES[:2], cams, opacity=1), cam_overlay(IMAGES[:2], cams, opacity=0)
    assert np.array_equal(only_heatmap[0], only_heatmap[1])
    assert np.array_equal(only_image, IMAGES[:2])  # (each test image has a 255 somewhere: no rescaling)
    with pytest.raises(ValueError, match="opacity"):
        cam_overlay(IMAGES[:2], cams, opacity=1.5)


def test_confusion_matrix_and_per_class_figures(tmp_path):
    confusion = np.diag(np.full(10, 8)) + 1
    fig = plot_confusion_matrix(confusion, CLASSES)
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert len(heatmaps) == 1 and len(heatmaps[0].texts) == 100 and "180 test images" in heatmaps[0].get_title()
    saved_png(fig, tmp_path / "confusion.png")
    rows = [{"class": c, "correct": 9, "total": 10, "accuracy": 0.9} for c in CLASSES]
    fig = plot_per_class_accuracy(rows)
    assert len(fig.axes[0].patches) == 10
    saved_png(fig, tmp_path / "per_class.png")


def test_curves_and_lr_finder_figures(tmp_path):
    history = [{"epoch": e, "train_loss": 1 / e, "train_acc": e / 4, "test_loss": 1.1 / e, "test_acc": e / 5}
               for e in (1, 2, 3)]
    fig = plot_curves(history, [0.1, 0.4, 0.2])
    assert len(fig.axes) == 3
    loss, accuracy, lr = ([tuple(line.get_ydata()) for line in ax.lines] for ax in fig.axes)
    assert loss == [(1, 1 / 2, 1 / 3), (1.1, 1.1 / 2, 1.1 / 3)]  # train, test
    assert accuracy == [(1 / 4, 2 / 4, 3 / 4), (1 / 5, 2 / 5, 3 / 5)] and lr == [(0.1, 0.4, 0.2)]
    saved_png(fig, tmp_path / "curves.png")
    assert len(plot_curves(history).axes) == 2  # no schedule recorded: no LR panel
    fig = plot_lr_finder([1e-4, 1e-3, 1e-2], [2.3, 2.0, 2.5], 1e-3)
    assert [tuple(line.get_xdata()) for line in fig.axes[0].lines][0] == (1e-4, 1e-3, 1e-2)
    assert any(tuple(line.get_xdata()) == (1e-3, 1e-3) for line in fig.axes[0].lines)  # the suggestion's line
    saved_png(fig, tmp_path / "lr.png")


def test_a_figure_is_saved_in_the_format_its_name_says(tmp_path, capsys):
    from cifar_s12.__main__ import main

    save_figure(plot_lr_finder([1e-4, 1e-3], [2.3, 2.0]), tmp_path / "lr.pdf")
    save_figure(plot_lr_finder([1e-4, 1e-3], [2.3, 2.0]), tmp_path / "lr.svg")
    assert (tmp_path / "lr.pdf").read_bytes()[:5] == b"%PDF-" and b"<svg" in (tmp_path / "lr.svg").read_bytes()
    # A name matplotlib cannot write is refused before the range test runs.
    assert main(["lr-find", "--plot", str(tmp_path / "lr.docx")]) == 2
    assert capsys.readouterr().err.startswith("error: --plot") and not (tmp_path / "lr.docx").exists()


def test_lightning_csv_log_is_read_per_metric_and_plotted(tmp_path):
    log = tmp_path / "metrics.csv"
    log.write_text("epoch,lr-SGD,step,train_acc,train_acc_step,train_loss,train_loss_step,val_acc,val_loss\n"
                   ",0.04,9,,,,,,\n0,,9,,0.25,,2.09,,\n0,,18,,,,,0.31,1.9\n0,,18,0.28,,2.0,,,\n"
                   ",0.02,19,,,,,,\n1,,37,,,,,0.38,1.71\n")
    from cifar_s12.plots import plot_csv_log, read_csv_log

    series = read_csv_log(log)
    assert series["val_acc"] == [(18.0, 0.31), (37.0, 0.38)] and series["lr-SGD"] == [(9.0, 0.04), (19.0, 0.02)]
    assert "epoch" not in series and "step" not in series
    fig = plot_csv_log(log)
    assert [len(ax.lines) for ax in fig.axes] == [3, 3, 1]
    saved_png(fig, tmp_path / "log.png")
