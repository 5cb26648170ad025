"""export: a run's checkpoint -> fp16 safetensors + card + mistakes cache; predict/report use the shipped weights
when no --checkpoint is given."""
import json
import shutil

import pytest
import torch

from cifar_s12.__main__ import main
from cifar_s12.analysis.predictions import predict_split
from cifar_s12.app import shipped_weights as weights_module
from cifar_s12.app.mistakes import cache_paths, file_sha256, read_mistakes
from cifar_s12.app.shipped_weights import example_images, export_weights, read_card
from cifar_s12.dataset import CLASSES, load_cifar10
from cifar_s12.runs.checkpoints import load_checkpoint


@pytest.fixture(scope="module")
def exported(checkpoint, tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("shipped") / "custom_resnet.safetensors"
    lines = export_weights(checkpoint, out, data_dir=str(tiny_dir), commit="abc1234")
    return out, lines


def test_export_writes_weights_card_and_cache_measured_on_the_exported_weights(exported, checkpoint, tiny_dir):
    out, lines = exported
    card = read_card(out)
    assert card["sha256"] == file_sha256(out) and card["dtype"] == "float16" and card["classes"] == list(CLASSES)
    assert card["recipe"] == "best" and card["seed"] == 1 and card["epochs"] == 2
    assert card["trained_at_commit"] == "abc1234" and card["parameters"] == 6_573_120
    assert card["measured_on"] == load_checkpoint(out).runtime().describe()
    test = load_cifar10(tiny_dir, download=False).test
    shipped = load_checkpoint(out)
    assert card["test_accuracy"] == pytest.approx(predict_split(shipped, test).accuracy, abs=0)
    assert card["test_images"] == len(test) == 20
    # the card's TTA figure is the mirrored mean, recomputed here from two plain passes
    flipped = type(test)(test.images[:, :, ::-1].copy(), test.labels)
    logits = predict_split(shipped, test).logits + predict_split(shipped, flipped).logits
    assert card["test_accuracy_tta"] == pytest.approx((logits.argmax(1) == torch.as_tensor(test.labels))
                                                      .float().mean().item(), abs=1e-7)
    cache = read_mistakes(cache_paths(out)[0])
    assert cache.test_images == 20 and cache.accuracy == card["test_accuracy"]
    assert f"test accuracy of the exported weights: {card['test_accuracy']:.4f}" in lines[1]
    assert lines[1].endswith("; the run measured nothing")  # this run's metrics.json has no final figure


def test_export_prints_the_runs_own_accuracy_as_it_prints_the_exports(checkpoint, tiny_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(checkpoint.parent, run)
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "final_test_accuracy": 0.9366000294685364}))
    lines = export_weights(run / checkpoint.name, tmp_path / "w.safetensors", data_dir=str(tiny_dir))
    assert lines[1].endswith("; the run measured 0.9366"), lines[1]
    assert read_card(tmp_path / "w.safetensors")["run"]["final_test_accuracy"] == 0.9366000294685364  # kept whole


def test_export_refuses_another_suffix_and_missing_data_before_writing(checkpoint, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "w.pt")]) == 2
    assert "name a .safetensors file" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "w.safetensors"),
                 "--data-dir", str(tmp_path / "none")]) == 2
    assert list(tmp_path.iterdir()) == []


def test_predict_and_report_default_to_the_shipped_weights(exported, tiny_dir, monkeypatch, tmp_path, capsys):
    out, _ = exported
    monkeypatch.setattr(weights_module, "SHIPPED_WEIGHTS", out)
    cat = example_images()[3]
    assert main(["predict", "--top", "2", str(cat)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{cat}: ") and printed.count(",") == 1
    assert main(["report", "--data-dir", str(tiny_dir), "--out", str(tmp_path / "r")]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert f"test accuracy {card['test_accuracy']:.4f} on 20 test images" in capsys.readouterr().out


def test_without_shipped_weights_predict_says_what_to_pass(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(weights_module, "SHIPPED_WEIGHTS", tmp_path / "none.safetensors")
    assert main(["predict", str(example_images()[0])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no --checkpoint given") and err.count("\n") == 1


def test_the_examples_are_one_test_image_per_class():
    assert [p.stem for p in example_images()] == list(CLASSES)
