"""scripts/fast_runs.sh: which runs it starts, continues and skips, with a stand-in for Python that records the
training commands (the real runs take hours)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fast_runs.sh"
# the script's runs in its order (ORDER): the preset first, then the preset with its former moving average, then
# the ablations
ORDER = ("seed1", "seed2", "seed3", "lightning-seed1", "ema-seed1", "ema-seed2", "ema-seed3", "lightning-ema-seed1",
         "no-bnbias-seed1", "no-bs256-seed1", "no-cutout9-seed1", "randflip-seed1", "dirac-seed1", "bs1024-seed1")


@pytest.fixture
def fast_runs(tmp_path):
    calls = tmp_path / "calls.txt"
    stand_in = tmp_path / "python"
    # `python - FILE` (the script's finished-run check) goes to the real interpreter; `python -m cifar_s12 ...` is
    # recorded, and exits with $STAND_IN_EXIT (0 unless a test sets it)
    stand_in.write_text(f'#!/usr/bin/env bash\nif [ "$1" = - ]; then exec {sys.executable} "$@"; fi\n'
                        f'echo "$*" >> {calls}\nexit ${{STAND_IN_EXIT:-0}}\n')
    stand_in.chmod(0o755)
    runs = tmp_path / "runs"

    def run(*names, exit_code=0):
        done = subprocess.run(["bash", str(SCRIPT), *names], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHON": str(stand_in), "FAST_RUNS_DIR": str(runs),
                                   "STAND_IN_EXIT": str(exit_code)})
        lines = calls.read_text().splitlines() if calls.exists() else []
        calls.unlink(missing_ok=True)
        return done, lines

    return run, runs


def test_new_runs_start_interrupted_ones_resume_finished_ones_are_skipped(fast_runs):
    run, runs = fast_runs
    (runs / "fast-dirac-seed1" / "checkpoints").mkdir(parents=True)
    (runs / "fast-dirac-seed1" / "checkpoints" / "last.pt").write_bytes(b"")
    (runs / "fast-lightning-seed1" / "checkpoints").mkdir(parents=True)
    (runs / "fast-lightning-seed1" / "checkpoints" / "last.ckpt").write_bytes(b"")
    (runs / "fast-ema-seed1").mkdir()
    (runs / "fast-ema-seed1" / "metrics.json").write_text(json.dumps({"epochs_completed": 12,
                                                                       "config": {"epochs": 12}}))
    done, calls = run("no-bnbias-seed1", "dirac-seed1", "lightning-seed1", "ema-seed1")
    assert done.returncode == 0, done.stderr
    assert calls == [
        "-m cifar_s12 train --recipe fast --seed 1 --set ema_decay=0.99 --set bn_weight_frozen=false "
        f"--set bn_bias_lr_scale=1 --out {runs}/fast-no-bnbias-seed1",
        f"-m cifar_s12 train --trainer torch --resume {runs}/fast-dirac-seed1",
        f"-m cifar_s12 train --trainer lightning --resume {runs}/fast-lightning-seed1"]  # Lightning's checkpoint
    assert "ema-seed1: finished before, skipped" in done.stdout


def test_a_run_stopped_part_way_is_resumed_not_skipped(fast_runs):
    run, runs = fast_runs
    (runs / "fast-no-cutout9-seed1" / "checkpoints").mkdir(parents=True)
    (runs / "fast-no-cutout9-seed1" / "checkpoints" / "last.pt").write_bytes(b"")
    (runs / "fast-no-cutout9-seed1" / "metrics.json").write_text(json.dumps({"epochs_completed": 5,
                                                                              "config": {"epochs": 12}}))
    done, calls = run("no-cutout9-seed1")
    assert done.returncode == 0 and calls == [f"-m cifar_s12 train --trainer torch --resume {runs}/fast-no-cutout9-seed1"]


def test_an_unknown_run_is_refused_before_anything_trains(fast_runs):
    run, _ = fast_runs
    done, calls = run("seed1", "nope")
    assert done.returncode == 2 and calls == []
    assert done.stderr.strip() == "unknown run nope; the runs: " + " ".join(ORDER)


def test_without_names_every_run_starts_in_order_the_preset_first(fast_runs):
    run, runs = fast_runs
    done, calls = run()
    assert done.returncode == 0, done.stderr
    assert [call.split("--out ")[1] for call in calls] == [f"{runs}/fast-{name}" for name in ORDER]
    assert calls[2] == f"-m cifar_s12 train --recipe fast --seed 3 --out {runs}/fast-seed3"  # seed from the name
    assert calls[3] == f"-m cifar_s12 train --recipe fast --seed 1 --trainer lightning --out {runs}/fast-lightning-seed1"
    assert calls[7] == (f"-m cifar_s12 train --recipe fast --seed 1 --trainer lightning --set ema_decay=0.99 "
                        f"--out {runs}/fast-lightning-ema-seed1")


def test_ctrl_c_stops_the_script_and_a_failed_run_only_its_own_turn(fast_runs):
    run, runs = fast_runs
    done, calls = run("dirac-seed1", "ema-seed1", exit_code=130)  # the CLI's exit code after Ctrl-C
    assert done.returncode == 130 and len(calls) == 1
    done, calls = run("dirac-seed1", "ema-seed1", exit_code=2)  # a failed run: the next one still trains
    assert done.returncode == 2 and len(calls) == 2


def test_a_run_that_stopped_in_its_final_tta_evaluation_is_reported_not_taken_as_done(fast_runs):
    run, runs = fast_runs
    (runs / "fast-dirac-seed1").mkdir(parents=True)
    (runs / "fast-dirac-seed1" / "metrics.json").write_text(json.dumps({"epochs_completed": 12,
                                                                         "config": {"epochs": 12, "tta": True}}))
    done, calls = run("dirac-seed1", "ema-seed1")
    assert done.returncode == 1 and calls == [f"-m cifar_s12 train --recipe fast --seed 1 --set ema_decay=0.99 "
                                              f"--out {runs}/fast-ema-seed1"]
    assert "dirac-seed1: trained all its epochs but has no TTA figure" in done.stderr


def test_a_run_folder_whose_metrics_cannot_be_read_stops_the_script_before_anything_trains(fast_runs):
    run, runs = fast_runs
    (runs / "fast-seed2").mkdir(parents=True)
    (runs / "fast-seed2" / "metrics.json").write_text("{not json")
    done, calls = run("seed1", "seed2")
    assert done.returncode == 2 and calls == []  # every folder is read first; seed2's is left as it was
    assert f"cannot read {runs}/fast-seed2/metrics.json" in done.stderr and "Traceback" not in done.stderr
    assert (runs / "fast-seed2" / "metrics.json").read_text() == "{not json"
