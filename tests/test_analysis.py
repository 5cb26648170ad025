import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cifar_s12.analysis.predictions import (
    Predictions,
    check_cam_layer,
    collect_logits,
    confusion_matrix,
    first_per_class,
    gradcam,
    load_image,
    normalised,
    per_class_accuracy,
    predict_probabilities,
    predict_split,
    resolve_layer,
    top_k,
    write_per_class_csv,
)
from cifar_s12.dataset import CLASSES, CifarDataset, Split, make_loader, subset
from cifar_s12.device import Runtime
from cifar_s12.runs.checkpoints import load_checkpoint
from cifar_s12.transform import test_transform as eval_transform
from cifar_s12.utils import UserError

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
    torch.testing.assert_close(preds.probabilities, direct.softmax(1), rtol=1e-4, atol=1e-6)


class TemplateMatcher(nn.Module):
    """A "trained" model made by hand: one 32x32 filter per class, the normalised pattern of that class, so that
    each class's images are predicted as it with confidence (logit about 5.8 against about 0)."""

    def __init__(self, patterns: np.ndarray):
        super().__init__()
        self.conv = nn.Conv2d(3, len(patterns), 32, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(normalised(patterns) / 1000)

    def forward(self, x):
        return self.conv(x).flatten(1)


def test_autocast_predictions_match_fp32_on_confident_predictions():
    rng = np.random.default_rng(0)
    patterns = rng.choice(np.array([40, 215], np.uint8), size=(10, 32, 32, 3))
    labels = np.arange(20) % 10
    noisy = np.clip(patterns[labels] + rng.integers(-20, 21, (20, 32, 32, 3)), 0, 255).astype(np.uint8)
    split = Split(noisy, labels)
    model = TemplateMatcher(patterns)
    computed_in = []
    model.conv.register_forward_hook(lambda module, args, out: computed_in.append(out.dtype))
    loader = make_loader(CifarDataset(split, eval_transform()), 8, train=False, num_workers=0)
    fp32, fp32_labels = collect_logits(model, loader, FP32)
    assert computed_in == [torch.float32] * 3 and fp32.softmax(1).max(1).values.min() > 0.95
    computed_in.clear()
    bf16, bf16_labels = collect_logits(model, loader, Runtime.create("bf16", "cpu"))
    assert computed_in == [torch.bfloat16] * 3  # the convolution did run in bf16 ...
    assert bf16.dtype == torch.float32  # ... and the logits come back in fp32,
    assert bf16_labels.tolist() == fp32_labels.tolist() == labels.tolist()  # in the loader's order,
    assert bf16.argmax(1).tolist() == labels.tolist()  # with every prediction right,
    torch.testing.assert_close(bf16, fp32, rtol=0.01, atol=0.03)  # within bf16's rounding (8 significant bits)


def test_misclassified_are_wrong_and_most_confident_first():
    logits = torch.tensor([[5.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    preds = Predictions(logits, torch.tensor([1, 1, 1, 0, 0]), ("a", "b"))
    assert preds.misclassified(10).tolist() == [0, 2, 3]
    assert preds.misclassified(2).tolist() == [0, 2]
    assert preds.accuracy == pytest.approx(2 / 5)


def test_confusion_matrix_rows_are_the_true_class_and_per_class_accuracy_counts_them(tmp_path):
    # 6 images: two airplanes (one right, one taken for a bird), three automobiles (two right, one taken for an
    # airplane), one bird taken for an automobile; no image of any other class.
    labels, predicted = torch.tensor([0, 0, 1, 1, 1, 2]), torch.tensor([0, 2, 1, 1, 0, 1])
    preds = Predictions(torch.nn.functional.one_hot(predicted, 10).float(), labels, CLASSES)
    confusion = confusion_matrix(preds)
    expected = torch.zeros(10, 10, dtype=confusion.dtype)
    expected[0, 0], expected[0, 2], expected[1, 1], expected[1, 0], expected[2, 1] = 1, 1, 2, 1, 1
    assert torch.equal(confusion, expected)
    rows = per_class_accuracy(confusion, CLASSES)
    assert [(r["class"], r["correct"], r["total"]) for r in rows[:3]] == [("airplane", 1, 2), ("automobile", 2, 3),
                                                                         ("bird", 0, 1)]
    assert [r["accuracy"] for r in rows[:3]] == [0.5, pytest.approx(2 / 3), 0.0]
    assert all(r["total"] == 0 and np.isnan(r["accuracy"]) for r in rows[3:])  # no images: no accuracy, not 0
    write_per_class_csv(rows, tmp_path / "per_class.csv")
    lines = (tmp_path / "per_class.csv").read_text().splitlines()
    assert lines[:4] == ["class,correct,total,accuracy", "airplane,1,2,0.5000", "automobile,2,3,0.6667",
                         "bird,0,1,0.0000"] and lines[4:] == [f"{c},0,0,nan" for c in CLASSES[3:]]


class Planted(nn.Module):
    """Class 0 is the evidence of red pixels, class 1 of green ones: channel 0 of ``detect`` fires on red
    (R - G > 1 after normalisation), channel 1 on green; the logits are the channels' mean after a 4x4 max-pool."""

    cam_layer = "detect"

    def __init__(self):
        super().__init__()
        self.detect = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU())
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(2, 10, bias=False)
        with torch.no_grad():
            self.detect[0].weight.copy_(torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]]).view(2, 3, 1, 1))
            self.detect[0].bias.fill_(-1.0)
            self.fc.weight.zero_()
            self.fc.weight[0, 0] = self.fc.weight[1, 1] = 1.0

    def forward(self, x):
        return self.fc(self.pool(self.detect(x)).mean(dim=(2, 3)))


def test_gradcam_highlights_where_the_evidence_for_the_asked_class_is():
    # Two dark images with a red and a green square, the squares swapped in the second (each at the other's
    # transposed place, so a transposed map points at the wrong square).
    top_right, bottom_left = (slice(4, 12), slice(20, 28)), (slice(20, 28), slice(4, 12))
    images = np.full((2, 32, 32, 3), 30, np.uint8)
    images[0][top_right], images[0][bottom_left] = (230, 20, 20), (20, 230, 20)
    images[1][top_right], images[1][bottom_left] = (20, 230, 20), (230, 20, 20)
    model, inputs = Planted(), normalised(images)
    assert model(inputs).argmax(1).tolist() == [1, 1]  # both predicted green: the maps must follow the targets
    for layer in (None, "pool"):  # the 32x32 detector (the class's cam_layer), and its 8x8 pooled map, upsampled
        red, green = gradcam(model, inputs, [0, 0], layer), gradcam(model, inputs, [1, 1], layer)
        assert red.shape == green.shape == (2, 32, 32) and red.dtype == np.float32
        for maps, where in ((red, [top_right, bottom_left]), (green, [bottom_left, top_right])):
            for cam, square in zip(maps, where):
                inside = np.zeros((32, 32), bool)
                inside[square] = True
                assert inside[np.unravel_index(cam.argmax(), cam.shape)], (layer, cam.argmax())
                assert cam[inside].mean() > 10 * cam[~inside].mean() and cam.max() == pytest.approx(1, abs=1e-6)
    # the weights are frozen for the call only, and got no gradients: backward skipped them
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


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


def test_predict_probabilities_are_the_models(loaded, test_split):
    probabilities = predict_probabilities(loaded, list(test_split.images[:5]), runtime=FP32)
    # the same numbers as the test-set pass (its own normalisation and loader): the model's softmax, not any rows
    # that sum to one
    first_five = predict_split(loaded, test_split.take(np.arange(5)), runtime=FP32)
    torch.testing.assert_close(probabilities, first_five.probabilities, atol=1e-5, rtol=1e-4)


def test_top_k_is_the_k_most_likely_classes_most_likely_first():
    probabilities = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    assert top_k(probabilities, ("a", "b", "c"), k=2) == [[("b", pytest.approx(0.6)), ("c", pytest.approx(0.3))],
                                                         [("a", pytest.approx(0.5)), ("c", pytest.approx(0.3))]]
    assert [name for name, _ in top_k(probabilities, ("a", "b", "c"), k=5)[0]] == ["b", "c", "a"]  # k > classes


@pytest.mark.parametrize("name", ["custom_resnet", "resnet18"])
def test_cam_layer_choices_are_feature_maps_named_with_their_size(name):
    from cifar_s12.analysis.predictions import cam_layer_choices, default_cam_layer
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
