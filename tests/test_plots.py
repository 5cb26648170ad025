import numpy as np
import pytest
import torch
from figures import png_image
from PIL import Image

from cifar_s12.analysis.plots import (
    cam_overlay,
    plot_augmented,
    plot_confusion_matrix,
    plot_curves,
    plot_gradcam,
    plot_lr_finder,
    plot_misclassified,
    plot_per_class_accuracy,
    plot_samples,
    save_figure,
    to_display,
)
from cifar_s12.dataset import CLASSES
from cifar_s12.transform import CIFAR10_MEAN, AugmentConfig, test_transform as eval_transform, train_transform

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
    assert np.array_equal(fig.axes[1].images[0].get_array(), IMAGES[1])  # the image itself, in its tile
    saved_png(fig, tmp_path / "samples.png")
    # Cutout alone (no crop, no flip): each tile is its image, de-normalised, with one 8x8 hole of the mean colour.
    transform = train_transform(AugmentConfig(pad=0, flip_p=0, cutout_p=1.0), seed=0)
    fig = plot_augmented(IMAGES, LABELS, CLASSES, transform, ncols=6)
    assert image_tiles(fig) == 12
    mean_pixel = np.round(np.array(CIFAR10_MEAN) * 255)
    for ax, image in zip(fig.axes, IMAGES):
        shown = ax.images[0].get_array().astype(int)
        changed = (np.abs(shown - image) > 1).any(axis=2)
        rows, cols = np.nonzero(changed)
        assert changed.sum() == 64 and np.ptp(rows) == np.ptp(cols) == 7  # one 8x8 square, the rest as it was
        assert (np.abs(shown[changed] - mean_pixel) <= 1).all()
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


def test_cam_overlay_shows_the_maps_hot_spot_in_red_and_opacity_is_the_heatmaps_share():
    cams = np.zeros((2, 32, 32), np.float32)
    cams[:, 5, 20] = 1.0  # one hot pixel (row 5, column 20), the same map over two different images
    only_heatmap, only_image = cam_overlay(IMAGES[:2], cams, opacity=1), cam_overlay(IMAGES[:2], cams, opacity=0)
    assert only_heatmap.shape == (2, 32, 32, 3) and only_heatmap.dtype == np.uint8
    assert np.array_equal(only_heatmap[0], only_heatmap[1])  # the images do not show
    hot = np.zeros((32, 32), bool)
    hot[5, 20] = True
    assert (only_heatmap[0][hot] == [255, 0, 0]).all() and (only_heatmap[0][~hot] == [0, 0, 255]).all()  # jet
    assert np.array_equal(only_image, IMAGES[:2])  # (each test image has a 255 somewhere: no rescaling)
    grey = np.full((1, 32, 32, 3), 128, np.uint8)
    half = cam_overlay(grey, cams[:1], opacity=0.5)[0].astype(int)  # half heatmap, half image: grey tinted
    assert (np.abs(half[5, 20] - [255, 128, 128]) <= 1).all() and (np.abs(half[0, 0] - [128, 128, 255]) <= 1).all()
    with pytest.raises(ValueError, match="opacity"):
        cam_overlay(IMAGES[:2], cams, opacity=1.5)


def test_confusion_matrix_and_per_class_figures(tmp_path):
    confusion = np.diag(np.full(10, 8)) + 1
    confusion[0, 3] = 7  # 7 airplanes taken for cats (row: true class, column: predicted)
    fig = plot_confusion_matrix(confusion, CLASSES)
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert len(heatmaps) == 1 and "186 test images" in heatmaps[0].get_title()
    ax = heatmaps[0]
    cells = {tuple(int(v) for v in text.get_position()): text.get_text() for text in ax.texts}  # (column, row)
    assert len(cells) == 100 and cells[(3, 0)] == "7" and cells[(0, 3)] == "1" and cells[(4, 4)] == "9"
    assert ax.images[0].get_array()[0, 3] == pytest.approx(7 / 24)  # shaded by its share of the true class
    assert [t.get_text() for t in ax.get_yticklabels()] == list(CLASSES)
    saved_png(fig, tmp_path / "confusion.png")
    rows = [{"class": c, "correct": i, "total": 10, "accuracy": i / 10} for i, c in enumerate(CLASSES)]
    fig = plot_per_class_accuracy(rows)
    assert [bar.get_height() for bar in fig.axes[0].patches] == [i / 10 for i in range(10)]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list(CLASSES)
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
    from cifar_s12.analysis.plots import plot_csv_log, read_csv_log

    series = read_csv_log(log)
    assert series["val_acc"] == [(18.0, 0.31), (37.0, 0.38)] and series["lr-SGD"] == [(9.0, 0.04), (19.0, 0.02)]
    assert "epoch" not in series and "step" not in series
    fig = plot_csv_log(log)
    assert [len(ax.lines) for ax in fig.axes] == [3, 3, 1]
    saved_png(fig, tmp_path / "log.png")
    # A resumed run's second part (its own version_N folder) continues the first's curves.
    part2 = tmp_path / "version_1" / "metrics.csv"
    part2.parent.mkdir()
    part2.write_text("epoch,lr-SGD,step,val_acc,val_loss\n,0.01,29,,\n2,,56,0.45,1.5\n")
    # the first part also logged step 37's val_acc and 19's LR; the second part's LR starts at step 29: kept
    fig = plot_csv_log([log, part2])
    val_acc = next(line for line in fig.axes[1].lines if line.get_label() == "val_acc")
    assert list(val_acc.get_xdata()) == [18.0, 56.0] and list(val_acc.get_ydata()) == [0.31, 0.45]  # 37 redone
    lr = next(line for line in fig.axes[2].lines if line.get_label() == "lr-SGD")
    assert list(lr.get_xdata()) == [9.0, 19.0, 29.0]


def test_the_planned_schedule_marks_its_peak_epoch_and_the_range_tests_lr():
    from cifar_s12.analysis.plots import plot_planned_schedule
    from cifar_s12.config import make_config
    from cifar_s12.onecycle import planned_lrs

    cfg = make_config("best")  # 24 epochs, the peak after 5 of them
    fig = plot_planned_schedule(planned_lrs(cfg, cfg.max_lr, 10), 10, suggested_lr=0.15)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["planned LR per step", "peak 0.4 in epoch 5", "range test suggested 0.15"]
    plan, peak, suggested = ax.lines
    assert plan.get_xdata()[-1] == 24 and peak.get_xdata()[0] == pytest.approx(5.0, abs=0.1)
    assert list(suggested.get_ydata()) == [0.15, 0.15]
    fig = plot_planned_schedule(planned_lrs(cfg, cfg.max_lr, 10), 10)  # without a range test
    assert len(fig.axes[0].lines) == 2
