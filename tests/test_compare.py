"""Parity of the two trainers: the same recipe and seed through `compare` give the same run."""
import json

import numpy as np
import pytest
from test_cli import cli
from test_lit import TINY_FLAGS


def test_compare_trains_both_and_they_agree(tmp_path):
    out = tmp_path / "cmp"
    r = cli("compare", "--epochs", "2", *TINY_FLAGS, "--seed", "3", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "lightning / torch throughput" in r.stdout
    summary = json.loads((out / "compare.json").read_text())
    for name in ("torch", "lightning"):
        assert summary[name]["images_per_second"] > 0 and len(summary[name]["images_per_second_by_epoch"]) == 2
        assert summary[name]["cpu_seconds"] > 0
    runs = {name: json.loads((out / name / "metrics.json").read_text()) for name in ("torch", "lightning")}
    # One model, recipe, data order and schedule: the step-by-step LRs are identical and the losses agree to float
    # rounding (the two loops sum the epoch loss in different orders).
    assert runs["torch"]["lr_schedule"] == runs["lightning"]["lr_schedule"]
    for key in ("train_loss", "test_loss"):
        np.testing.assert_allclose([h[key] for h in runs["torch"]["history"]],
                                   [h[key] for h in runs["lightning"]["history"]], rtol=1e-4)
    assert abs(summary["accuracy_difference"]) <= 2 / 128  # at most two of the 128 test images differ
    # compare.json keeps the evidence: each epoch's losses of both, and their largest relative difference.
    assert [e["train_loss"] for e in summary["torch"]["epochs"]] == [h["train_loss"] for h in runs["torch"]["history"]]
    largest = max(abs(a[key] - b[key]) / abs(b[key]) for a, b in zip(runs["lightning"]["history"],
                                                                       runs["torch"]["history"])
                  for key in ("train_loss", "test_loss"))
    assert summary["max_relative_loss_difference"] == pytest.approx(largest, rel=0.01, abs=1e-12)
    assert largest < 1e-4 and "epoch losses differ by at most" in r.stdout
