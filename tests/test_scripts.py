"""scripts/fast_runs.sh: which runs it starts, continues and skips, with a stand-in for Python that records the
training commands (the real runs take hours)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fast_runs.sh"


@pytest.fixture
def fast_runs(tmp_path):
    calls = tmp_path / "calls.txt"
    stand_in = tmp_path / "python"
    # `python - FILE` (the script's finished-run check) goes to the real interpreter; `python -m cifar_s12 ...` is
    # recorded, and succeeds
    stand_in.write_text(f'#!/usr/bin/env bash\nif [ "$1" = - ]; then exec {sys.executable} "$@"; fi\n'
                        f'echo "$*" >> {calls}\n')
    stand_in.chmod(0o755)
    runs = tmp_path / "runs"

    def run(*names):
        done = subprocess.run(["bash", str(SCRIPT), *names], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHON": str(stand_in), "FAST_RUNS_DIR": str(runs)})
        lines = calls.read_text().splitlines() if calls.exists() else []
        calls.unlink(missing_ok=True)
        return done, lines

    return run, runs


def test_new_runs_start_interrupted_ones_resume_finished_ones_are_skipped(fast_runs):
    run, runs = fast_runs
    (runs / "fast-dirac-seed1" / "checkpoints").mkdir(parents=True)
    (runs / "fast-dirac-seed1" / "checkpoints" / "last.pt").write_bytes(b"")
    (runs / "fast-noema-seed1").mkdir()
    (runs / "fast-noema-seed1" / "metrics.json").write_text(json.dumps({"epochs_completed": 12,
                                                                         "config": {"epochs": 12}}))
    done, calls = run("combo-seed1", "dirac-seed1", "noema-seed1")
    assert done.returncode == 0, done.stderr
    assert calls == [
        "-m cifar_s12 train --recipe fast --seed 1 --set batch_size=256 --set max_lr=0.2 --set bn_bias_lr_scale=64 "
        f"--set bn_weight_frozen=true --set augment.cutout_epochs=9 --out {runs}/fast-combo-seed1",
        f"-m cifar_s12 train --resume {runs}/fast-dirac-seed1"]
    assert "noema-seed1: finished before, skipped" in done.stdout


def test_a_run_stopped_part_way_is_resumed_not_skipped(fast_runs):
    run, runs = fast_runs
    (runs / "fast-cutout9-seed1" / "checkpoints").mkdir(parents=True)
    (runs / "fast-cutout9-seed1" / "checkpoints" / "last.pt").write_bytes(b"")
    (runs / "fast-cutout9-seed1" / "metrics.json").write_text(json.dumps({"epochs_completed": 5,
                                                                           "config": {"epochs": 12}}))
    done, calls = run("cutout9-seed1")
    assert done.returncode == 0 and calls == [f"-m cifar_s12 train --resume {runs}/fast-cutout9-seed1"]


def test_an_unknown_run_is_refused_before_anything_trains(fast_runs):
    run, _ = fast_runs
    done, calls = run("combo-seed1", "nope")
    assert done.returncode == 2 and calls == []
    assert done.stderr.strip() == ("unknown run nope; the runs: combo-seed1 bs256-seed1 bnbias-seed1 cutout9-seed1 "
                                   "dirac-seed1 noema-seed1 randflip-seed1")
