"""Parity of the two trainers: the same recipe and seed through `compare` give the same run."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
from test_cli import cli
from test_lit import TINY_FLAGS

from cifar_s12.config import make_config
from cifar_s12.runs import comparison as compare


def test_compare_trains_both_and_they_agree(tmp_path):
    out = tmp_path / "cmp"
    r = cli("compare", "--epochs", "2", *TINY_FLAGS, "--seed", "3", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "lightning / torch throughput" in r.stdout
    summary = json.loads((out / "compare.json").read_text())
    runs = {name: json.loads((out / name / "metrics.json").read_text()) for name in ("torch", "lightning")}
    for name in ("torch", "lightning"):
        assert summary[name]["images_per_second_by_epoch"] == [h["images_per_second"] for h in runs[name]["history"]]
    # One model, recipe, data order and schedule: the step-by-step LRs are identical and the losses agree to float
    # rounding (the two loops sum the epoch loss in different orders).
    assert runs["torch"]["lr_schedule"] == runs["lightning"]["lr_schedule"]
    for key in ("train_loss", "test_loss"):
        np.testing.assert_allclose([h[key] for h in runs["torch"]["history"]],
                                   [h[key] for h in runs["lightning"]["history"]], rtol=1e-4)
    assert abs(summary["accuracy_difference"]) <= 2 / 128  # at most two of the 128 test images differ
    # compare.json keeps the evidence: each epoch's losses of both, and their largest relative difference.
    assert [e["train_loss"] for e in summary["torch"]["epochs"]] == [h["train_loss"] for h in runs["torch"]["history"]]
    assert summary["max_relative_loss_difference"] < 1e-4 and "epoch losses differ by at most" in r.stdout


def test_the_summary_weighs_each_epoch_by_its_seconds_and_keeps_the_largest_loss_difference(tmp_path, monkeypatch):
    # Two finished runs, made up: plain PyTorch trains 100 images/s for 1 s, then 300 for 3 s (250 overall, not
    # the 200 of the two rates' mean); Lightning 200 images/s throughout. Their losses differ by 0.0018 of 1.8
    # (0.1%) and by 0.001 of 0.5 (0.2%).
    def epoch(n, train_loss, test_loss, acc, rate, seconds):
        return {"epoch": n, "train_loss": train_loss, "test_loss": test_loss, "test_acc": acc,
                "images_per_second": rate, "epoch_seconds": seconds, "lr": 0.1}

    histories = {"torch": [epoch(1, 2.0, 1.8, 0.5, 100.0, 1.0), epoch(2, 0.5, 0.9, 0.6, 300.0, 3.0)],
                 "lightning": [epoch(1, 2.0, 1.8018, 0.5, 200.0, 2.0), epoch(2, 0.501, 0.9, 0.625, 200.0, 2.0)]}
    data, calls = object(), []

    def trainer(name):
        def fit(cfg, out, data, log):
            calls.append((name, out, data))
            return SimpleNamespace(metrics={"history": histories[name], "wall_seconds": 5.0,
                                            "final_test_accuracy": histories[name][-1]["test_acc"]}, lr_find=None)
        return fit

    monkeypatch.setattr(compare, "load_data", lambda cfg: data)
    monkeypatch.setattr(compare, "fit", trainer("torch"))
    monkeypatch.setattr(compare, "fit_lightning", trainer("lightning"))
    monkeypatch.setattr(compare, "save_run_figures", lambda folder, metrics, lr_find: calls.append(folder.root))
    cpu_clock = iter([10.0, 13.0, 13.0, 20.0])  # before and after each run: 3 s, then 7 s of CPU
    monkeypatch.setattr(compare, "_cpu_seconds", lambda: next(cpu_clock))
    summary = compare.compare_trainers(make_config("best"), tmp_path, log=lambda *a: None)
    # one data set for both, and each run's own curves drawn in its folder
    assert calls == [("torch", tmp_path / "torch", data), tmp_path / "torch", ("lightning", tmp_path / "lightning", data),
                     tmp_path / "lightning"]
    assert json.loads((tmp_path / "compare.json").read_text()) == summary
    torch_run, lightning_run = summary["torch"], summary["lightning"]
    assert (torch_run["images_per_second"], lightning_run["images_per_second"]) == (250, 200)
    assert torch_run["images_per_second_by_epoch"] == [100, 300] and summary["throughput_ratio"] == 0.8
    assert (torch_run["cpu_seconds"], lightning_run["cpu_seconds"], torch_run["wall_seconds"]) == (3, 7, 5)
    assert summary["accuracy_difference"] == pytest.approx(0.025)  # Lightning's 62.5% less plain's 60%
    assert summary["max_relative_loss_difference"] == pytest.approx(0.002)  # relative: 0.001 of 0.5
    assert lightning_run["epochs"][1] == {"epoch": 2, "train_loss": 0.501, "test_loss": 0.9, "test_acc": 0.625}


def test_compare_runs_compares_two_runs_already_made_and_draws_them(tmp_path):
    """The instructor's picture: two finished runs on disk (a run folder, or a metrics.json as results/ keeps it)
    -> compare.json and compare.png, nothing trained."""
    from figures import png_image

    def metrics(trainer, **config):
        history = [{"epoch": n, "train_loss": 2.0 / n, "test_loss": 1.8 / n, "test_acc": 0.3 * n, "train_acc": 0.3 * n,
                    "images_per_second": 100.0 * n, "epoch_seconds": 1.0, "lr": 0.1} for n in (1, 2)]
        return {"trainer": trainer, "config": make_config("best", **config).to_dict(), "history": history,
                "wall_seconds": 2.0, "final_test_accuracy": 0.6, "train_images": 64}

    (tmp_path / "lit").mkdir()
    (tmp_path / "lit" / "metrics.json").write_text(json.dumps(metrics("lightning", data_dir="elsewhere")))
    (tmp_path / "torch.json").write_text(json.dumps(metrics("torch")))
    out = tmp_path / "cmp"
    r = cli("compare", "--runs", tmp_path / "torch.json", tmp_path / "lit", "--out", out)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "compare.json").read_text())
    assert summary["torch"]["cpu_seconds"] is None and summary["throughput_ratio"] == 1.0
    assert summary["torch"]["images_per_second_by_epoch"] == [100.0, 200.0] and "s CPU" not in r.stdout
    png_image(out / "compare.png")
    # Only the two files are written: no torch/ or lightning/ run folders in --out.
    assert sorted(p.name for p in out.iterdir()) == ["compare.json", "compare.png"]
    again = cli("compare", "--runs", tmp_path / "torch.json", tmp_path / "lit", "--out", out)
    assert again.returncode == 2 and "already holds a comparison" in again.stderr

    (tmp_path / "other.json").write_text(json.dumps(metrics("lightning", epochs=12)))
    (tmp_path / "half.json").write_text(json.dumps({**metrics("lightning"), "epochs_completed": 1}))
    (tmp_path / "junk.json").write_text(json.dumps({"trainer": "lightning"}))
    (tmp_path / "flat.json").write_text(json.dumps({**metrics("lightning"), "history": None}))
    for args, message in (
            ([tmp_path / "lit", tmp_path / "torch.json"], "is a run of the 'lightning' trainer; give the plain"),
            ([tmp_path / "torch.json", tmp_path / "other.json"], "ran different recipes"),
            ([tmp_path / "torch.json", tmp_path / "missing"], "--runs: cannot read"),
            ([tmp_path / "torch.json", tmp_path / "half.json"], "is unfinished (1 of 24 epochs)"),
            ([tmp_path / "torch.json", tmp_path / "junk.json"], "junk.json is not a run's metrics.json: no config"),
            ([tmp_path / "torch.json", tmp_path / "flat.json"], "flat.json is not a run's metrics.json: no history"),
            ([tmp_path / "torch.json", tmp_path / "lit", "--epochs", "3"], "drop --epochs")):
        r = cli("compare", "--runs", *args, "--out", tmp_path / "cmp2")
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "cmp2").exists()


def test_compare_draws_both_trainers_loss_accuracy_and_speed_per_epoch():
    from cifar_s12.analysis.plots import plot_trainer_comparison

    history = [{"epoch": n, "train_loss": 1.0, "test_loss": 1.1, "test_acc": 0.5, "images_per_second": 90.0}
               for n in (1, 2, 3)]
    fig = plot_trainer_comparison({"plain PyTorch": history, "Lightning": history})
    assert [ax.get_title() for ax in fig.axes] == ["loss", "test accuracy", "training images/s"]
    assert [len(ax.lines) for ax in fig.axes] == [4, 2, 2]  # train and test loss of each; one line each else
    assert [t.get_text() for t in fig.axes[2].get_legend().get_texts()] == ["plain PyTorch", "Lightning"]
    assert list(fig.axes[2].lines[1].get_ydata()) == [90.0] * 3
