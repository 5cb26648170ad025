import csv

import numpy as np
import pytest
import torch
from figures import png_image
from PIL import Image
from test_cli import cli

from cifar_s12.analysis.predictions import Predictions, load_image, predict_probabilities
from cifar_s12.analysis.report import write_mistakes
from cifar_s12.dataset import CLASSES
from cifar_s12.runs.checkpoints import load_checkpoint
from cifar_s12.utils import UserError


def assert_one_line_error(r, *fragments):
    assert r.returncode == 2, (r.stdout, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    assert all(f in lines[0] for f in fragments), lines[0]


def test_report_writes_every_figure_and_table(checkpoint, tmp_path):
    out = tmp_path / "report"
    r = cli("report", "--checkpoint", checkpoint, "--test-subset", "50", "-n", "6", "--layer", "layer3.1",
            "--opacity", "0.4", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "layer layer3.1" in r.stdout
    for name in ("misclassified.png", "gradcam.png", "confusion_matrix.png", "per_class.png", "curves.png",
                 "samples.png", "augmented.png"):
        png_image(out / name)
    with open(out / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == list(CLASSES) and [int(r["total"]) for r in rows] == [5] * 10  # balanced
    # the accuracy printed is the per-class table's correct images counted over the 50
    correct = sum(int(r["correct"]) for r in rows)
    assert f": test accuracy {correct / 50:.4f} on 50 test images" in r.stdout, r.stdout


def test_predict_prints_top_3_and_notes_a_resize(checkpoint, data, tmp_path):
    ship = tmp_path / "ship.png"  # a test image, from whichever form of CIFAR-10 the session has
    Image.fromarray(data.test.images[list(data.test.labels).index(CLASSES.index("ship"))]).save(ship)
    Image.new("RGB", (64, 48), (20, 40, 200)).save(tmp_path / "photo.png")
    r = cli("predict", "--checkpoint", checkpoint, ship, tmp_path / "photo.png")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith(f"{ship}: ") and lines[1].startswith("note: ") and "64x48 to 32x32" in lines[1]
    # each file's three most likely classes, with the model's probabilities for them (in the checkpoint's precision)
    loaded = load_checkpoint(checkpoint)
    probabilities = predict_probabilities(loaded, [load_image(path)[0] for path in (ship, tmp_path / "photo.png")])
    for line, p in zip((lines[0], lines[2]), probabilities):
        pairs = [pair.rsplit(" ", 1) for pair in line.split(": ", 1)[1].split(", ")]
        assert [name for name, _ in pairs] == [CLASSES[i] for i in p.argsort(descending=True)[:3]]
        assert [float(q) for _, q in pairs] == [round(float(q), 3) for q in p.sort(descending=True).values[:3]]


@pytest.mark.parametrize("case", ["text_as_image", "missing_image", "text_as_checkpoint", "unknown_layer"])
def test_bad_input_is_one_line_and_exit_2(case, checkpoint, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image, not a checkpoint")
    if case == "text_as_image":
        assert_one_line_error(cli("predict", "--checkpoint", checkpoint, text), "notes.txt", "not an image")
    elif case == "missing_image":
        assert_one_line_error(cli("predict", "--checkpoint", checkpoint, tmp_path / "gone.png"), "does not exist")
    elif case == "text_as_checkpoint":
        assert_one_line_error(cli("report", "--checkpoint", text, "--out", tmp_path / "o"), "not a checkpoint")
        assert not (tmp_path / "o").exists()  # a report that fails writes nothing
    else:
        assert_one_line_error(cli("report", "--checkpoint", checkpoint, "--layer", "layer9", "--out", tmp_path / "o"),
                              "no layer 'layer9'", "layer3.1.body.1")
        assert not (tmp_path / "o").exists()


def test_report_checks_the_layer_before_the_data_and_honours_no_download(checkpoint, tmp_path):
    from cifar_s12.analysis.report import write_report

    missing = tmp_path / "no-data"
    with pytest.raises(UserError, match="GradCAM needs a layer that outputs a feature map"):
        write_report(checkpoint, tmp_path / "o", data_dir=str(missing), layer="fc", download=False)
    with pytest.raises(UserError, match=r"downloading is off \(--no-download\)"):
        write_report(checkpoint, tmp_path / "o", data_dir=str(missing), download=False)
    assert not missing.exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("content, says", [("[]", "is not a metrics.json"), ("{not json", "is not a metrics.json"),
                                           ('{"history": []}', "has no epochs yet"),
                                           ('{"history": [{"epoch": 1}]}', "cannot be drawn (KeyError")])
def test_a_metrics_json_of_another_shape_skips_the_curves_with_a_line(content, says, tmp_path):
    from cifar_s12.analysis.report import write_curves

    metrics = tmp_path / "metrics.json"
    metrics.write_text(content)
    (line,) = write_curves(metrics, tmp_path / "out")
    assert says in line and line.endswith("curves.png not written") and not (tmp_path / "out").exists()


def test_report_reads_the_data_from_where_the_run_found_it(checkpoint, tiny_dir, tmp_path, monkeypatch):
    import json
    import shutil

    from cifar_s12.analysis.report import recorded_data_dir

    monkeypatch.chdir(tmp_path)  # the run's relative --data-dir (or none at all) says nothing from here
    loaded = load_checkpoint(checkpoint)
    loaded.config["data_dir"] = "relative/elsewhere"
    assert recorded_data_dir(loaded) is None  # the fixture's metrics.json records no data source
    loaded.data_source = f"image-folder:{tiny_dir}"  # model.pt records the location as it was given
    assert recorded_data_dir(loaded) == str(tiny_dir)
    # A Lightning .ckpt records none: the run's metrics.json, one folder up, does.
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint, run / "checkpoints" / "last.ckpt")
    (run / "metrics.json").write_text(json.dumps({"data_source": f"image-folder:{tiny_dir}"}))
    loaded.path, loaded.data_source = run / "checkpoints" / "last.ckpt", None
    assert recorded_data_dir(loaded) == str(tiny_dir)


def test_a_model_without_mistakes_gets_a_line_instead_of_empty_figures(checkpoint, tmp_path):
    labels = torch.arange(10)
    perfect = Predictions(torch.nn.functional.one_hot(labels, 10).float() * 5, labels, CLASSES,
                          np.zeros((10, 32, 32, 3), np.uint8))
    assert write_mistakes(load_checkpoint(checkpoint), perfect, tmp_path) == [
        "no misclassified images: misclassified.png and gradcam.png not written"]
    assert list(tmp_path.iterdir()) == []
    all_wrong = Predictions(perfect.logits.roll(1, dims=0), labels, CLASSES, perfect.images)  # each one class off
    lines = write_mistakes(load_checkpoint(checkpoint), all_wrong, tmp_path, n=4)
    assert lines[0].startswith("wrote ") and "(4 images, layer layer3.1.body.1)" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gradcam.png", "misclassified.png"]
