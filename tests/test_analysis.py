import numpy as np
import pytest
import torch
from PIL import Image

from cifar_s12.analysis import (Predictions, check_cam_layer, collect_logits, confusion_matrix, first_per_class, gradcam,
                                load_image, normalised, per_class_accuracy, predict_probabilities, predict_split,
                                resolve_layer, top_k, write_per_class_csv)
from cifar_s12.checkpoints import load_checkpoint
from cifar_s12.dataset import CLASSES, CifarDataset, make_loader, subset
from cifar_s12.errors import UserError
from cifar_s12.runtime import Runtime
from cifar_s12.transform import test_transform as eval_transform

FP32 = Runtime.create("fp32", "cpu")


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def test_split(data):
    return subset(data, test=60).test


@pytest.fixture(scope="module")
def preds(loaded, test_split):
    return predict_split(loaded, test_split, runtime=FP32)


def test_predictions_are_one_pass_and_match_the_model(loaded, test_split, preds):
    calls = []
    handle = loaded.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        again = predict_split(loaded, test_split, runtime=FP32, batch_size=25)
    finally:
        handle.remove()
    assert len(calls) == 3  # ceil(60 / 25) batches: every image once
    with torch.no_grad():
        direct = loaded.model(normalised(test_split.images))
    torch.testing.assert_close(preds.logits, direct, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again.logits, direct, rtol=1e-4, atol=1e-5)
    assert torch.equal(preds.labels, torch.as_tensor(test_split.labels))
    assert torch.equal(preds.predicted, direct.argmax(1))
    torch.testing.assert_close(preds.probabilities.sum(1), torch.ones(60))


def test_autocast_predictions_stay_close_to_fp32(loaded, test_split, preds):
    loader = make_loader(CifarDataset(test_split, eval_transform()), 32, train=False, num_workers=0)
    logits, labels = collect_logits(loaded.model, loader, Runtime.create("bf16", "cpu"))
    assert logits.dtype == torch.float32 and labels.tolist() == test_split.labels.tolist()
    torch.testing.assert_close(logits.softmax(1), preds.probabilities, atol=0.05, rtol=0)


def test_misclassified_are_wrong_and_most_confident_first():
    logits = torch.tensor([[5.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    preds = Predictions(logits, torch.tensor([1, 1, 1, 0, 0]), ("a", "b"))
    assert preds.misclassified(10).tolist() == [0, 2, 3]
    assert preds.misclassified(2).tolist() == [0, 2]
    assert preds.accuracy == pytest.approx(2 / 5)


def test_confusion_matrix_counts_every_image_and_its_diagonal_is_the_correct_ones(preds, tmp_path):
    confusion = confusion_matrix(preds)
    assert confusion.shape == (10, 10) and confusion.sum() == 60
    for c in range(10):
        is_c = preds.labels == c
        assert confusion[c, c] == (preds.correct & is_c).sum() and confusion[c].sum() == is_c.sum()
    rows = per_class_accuracy(confusion, CLASSES)
    assert [r["class"] for r in rows] == list(CLASSES)
    assert sum(r["correct"] for r in rows) == preds.correct.sum() and sum(r["total"] for r in rows) == 60
    write_per_class_csv(rows, tmp_path / "per_class.csv")
    lines = (tmp_path / "per_class.csv").read_text().splitlines()
    assert lines[0] == "class,correct,total,accuracy" and len(lines) == 11
    name, correct, total, accuracy = lines[1].split(",")
    assert name == "airplane" and float(accuracy) == pytest.approx(int(correct) / int(total), abs=1e-4)


def test_gradcam_maps_have_the_input_size_and_unit_range(loaded, test_split):
    inputs = normalised(test_split.images[:4])
    for layer in (None, "layer2"):
        maps = gradcam(loaded.model, inputs, [0, 1, 2, 3], layer)
        assert maps.shape == (4, 32, 32) and maps.dtype == np.float32
        assert maps.min() >= 0 and maps.max() <= 1 and np.isfinite(maps).all()
    other_class = gradcam(loaded.model, inputs, [5, 5, 5, 5])
    assert not np.allclose(other_class, gradcam(loaded.model, inputs, [0, 1, 2, 3]))


def test_unknown_layer_lists_valid_names(loaded):
    assert resolve_layer(loaded.model) is loaded.model.layer3[1].body[1]  # the class's cam_layer
    with pytest.raises(UserError) as err:
        resolve_layer(loaded.model, "layer3.9")
    message = str(err.value)
    assert message.startswith("no layer 'layer3.9'") and "\n" not in message
    suggested = message.split("valid names include ")[1].split(" (default")[0].split(", ")
    layers = dict(loaded.model.named_modules())
    assert suggested and all(name in layers for name in suggested), suggested
    assert "layer3.1" in suggested  # close matches of the name that was meant, not just any layers


def test_gradcam_layer_must_output_a_feature_map(loaded):
    assert check_cam_layer(loaded.model) == "layer3.1.body.1"
    assert check_cam_layer(loaded.model, "layer2") == "layer2"
    with pytest.raises(UserError, match=r"'fc' outputs \(1, 10\): choose a convolutional block"):
        check_cam_layer(loaded.model, "fc")


def test_first_per_class_gives_one_of_each_class_per_row():
    labels = np.array([3, 1, 0, 2, 1, 0, 3, 2, 2, 0])
    assert labels[first_per_class(labels, 2)].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


def test_load_image_converts_mode_and_size_with_a_note(tmp_path):
    Image.new("RGBA", (64, 48), (255, 0, 0, 128)).save(tmp_path / "big.png")
    image, note = load_image(tmp_path / "big.png")
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    # half-transparent red, shown on white as a viewer shows it: pink, not the red of the dropped alpha channel
    assert (image[..., 0] == 255).all() and (np.abs(image[..., 1:].astype(int) - 127) <= 1).all()
    assert "RGBA to RGB" in note and "resized from 64x48 to 32x32" in note
    Image.new("RGB", (32, 32)).save(tmp_path / "small.png")
    assert load_image(tmp_path / "small.png")[1] is None
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match="is not an image"):
        load_image(tmp_path / "notes.txt")
    with pytest.raises(UserError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(UserError, match="is a folder"):
        load_image(tmp_path)


def test_load_image_centre_crops_a_wide_image_instead_of_squashing_it(tmp_path):
    wide = np.zeros((32, 64, 3), np.uint8)
    wide[:, :16] = [0, 0, 255]    # the outer quarters: cut off by a centre crop, squeezed in by a plain resize
    wide[:, 16:48] = [255, 0, 0]
    wide[:, 48:] = [0, 255, 0]
    Image.fromarray(wide).save(tmp_path / "wide.png")
    image, note = load_image(tmp_path / "wide.png")
    assert "centre-cropped and resized from 64x32" in note
    assert np.abs(image.astype(int) - [255, 0, 0]).max() <= 2


def test_an_image_too_large_for_pil_is_refused(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4,096 pixels > 2x the limit: a "decompression bomb"
    with pytest.raises(UserError, match="not an image PIL can read \\(DecompressionBombError\\)"):
        load_image(tmp_path / "big.png")


def test_predict_probabilities_are_the_models_and_top_k_is_sorted(loaded, test_split):
    probabilities = predict_probabilities(loaded, list(test_split.images[:5]), runtime=FP32)
    assert probabilities.shape == (5, 10)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(5))
    # the same numbers as the test-set pass (its own normalisation and loader): the model's softmax, not any rows
    # that sum to one
    first_five = predict_split(loaded, test_split.take(np.arange(5)), runtime=FP32)
    torch.testing.assert_close(probabilities, first_five.probabilities, atol=1e-5, rtol=1e-4)
    best = top_k(probabilities, CLASSES, k=3)
    assert len(best) == 5 and all(len(row) == 3 for row in best)
    for row, p in zip(best, probabilities):
        assert [q for _, q in row] == sorted((q for _, q in row), reverse=True)
        assert row[0] == (CLASSES[int(p.argmax())], pytest.approx(float(p.max())))


@pytest.mark.parametrize("name", ["custom_resnet", "resnet18"])
def test_cam_layer_choices_are_feature_maps_named_with_their_size(name):
    from cifar_s12.analysis import cam_layer_choices, default_cam_layer
    from cifar_s12.model import build_model

    model = build_model(name)
    choices = cam_layer_choices(model)
    assert list(choices.values()) == list(type(model).cam_blocks)  # the model's menu, input side first
    for label, layer in choices.items():
        assert check_cam_layer(model, layer) == layer  # each outputs (N, C, H, W): GradCAM can use it
    (default,) = [label for label in choices if label.endswith("(default)")]
    assert choices[default] == default_cam_layer(model)
    if name == "custom_resnet":
        assert default == "layer 3: R2, second conv · 512 ch, 4x4 (default)"
        assert "prep: conv · 64 ch, 32x32" in choices
