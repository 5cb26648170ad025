"""scripts/fast_runs.sh: which runs it starts, continues and skips, with a stand-in for Python that records the
training commands (the real runs take hours)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fast_runs.sh"
# the script's runs in its order (ORDER): the preset from three seeds, in the Lightning trainer, with the batched data
# path (the moving-average runs and the ablations were the script's at commit 68880f0, and need code this package no
# longer has)
ORDER = ("seed1", "seed2", "seed3", "lightning-seed1", "batched-seed1")


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
    (runs / "fast-seed2" / "checkpoints").mkdir(parents=True)
    (runs / "fast-seed2" / "checkpoints" / "last.pt").write_bytes(b"")
    (runs / "fast-lightning-seed1" / "checkpoints").mkdir(parents=True)
    (runs / "fast-lightning-seed1" / "checkpoints" / "last.ckpt").write_bytes(b"")
    (runs / "fast-seed3").mkdir()
    (runs / "fast-seed3" / "metrics.json").write_text(json.dumps({"epochs_completed": 12, "config": {"epochs": 12}}))
    done, calls = run("seed1", "seed2", "lightning-seed1", "seed3")
    assert done.returncode == 0, done.stderr
    assert calls == [
        f"-m cifar_s12 train --recipe fast --seed 1 --out {runs}/fast-seed1",
        f"-m cifar_s12 train --trainer torch --resume {runs}/fast-seed2",
        f"-m cifar_s12 train --trainer lightning --resume {runs}/fast-lightning-seed1"]  # Lightning's checkpoint
    assert "seed3: finished before, skipped" in done.stdout


def test_a_run_stopped_part_way_is_resumed_not_skipped(fast_runs):
    run, runs = fast_runs
    (runs / "fast-seed2" / "checkpoints").mkdir(parents=True)
    (runs / "fast-seed2" / "checkpoints" / "last.pt").write_bytes(b"")
    (runs / "fast-seed2" / "metrics.json").write_text(json.dumps({"epochs_completed": 5, "config": {"epochs": 12}}))
    done, calls = run("seed2")
    assert done.returncode == 0 and calls == [f"-m cifar_s12 train --trainer torch --resume {runs}/fast-seed2"]


def test_an_unknown_run_is_refused_before_anything_trains(fast_runs):
    run, _ = fast_runs
    for gone in ("nope", "ema-seed1", "dirac-seed1"):  # the removed experiments' runs are unknown names now
        done, calls = run("seed1", gone)
        assert done.returncode == 2 and calls == []
        assert done.stderr.strip() == f"unknown run {gone}; the runs: " + " ".join(ORDER)


def test_without_names_every_run_starts_in_order_the_preset_first(fast_runs):
    run, runs = fast_runs
    done, calls = run()
    assert done.returncode == 0, done.stderr
    assert [call.split("--out ")[1] for call in calls] == [f"{runs}/fast-{name}" for name in ORDER]
    assert calls[0] == f"-m cifar_s12 train --recipe fast --seed 1 --out {runs}/fast-seed1"
    assert calls[2] == f"-m cifar_s12 train --recipe fast --seed 3 --out {runs}/fast-seed3"  # seed from the name
    assert calls[3] == (f"-m cifar_s12 train --recipe fast --seed 1 --trainer lightning "
                        f"--out {runs}/fast-lightning-seed1")
    assert calls[4] == f"-m cifar_s12 train --recipe fast --seed 1 --set data_path=batched --out {runs}/fast-batched-seed1"


def test_every_run_of_the_script_is_one_this_package_can_train():
    """Each entry's settings are the CLI's own: no entry names a field the package no longer has (the moving
    average's ema_decay, dirac_init), which would fail only when its turn came, hours into the script."""
    import re
    import shlex

    from cifar_s12.config import apply_settings, make_config

    script = SCRIPT.read_text()
    runs = {name: shlex.split(flags) for name, flags in re.findall(r'^  \[([\w-]+)\]="([^"]*)"$', script, re.MULTILINE)}
    assert tuple(runs) == ORDER
    for name, flags in runs.items():
        if flags[:2] == ["--trainer", "lightning"]:
            flags = flags[2:]
        assert flags[0::2] == ["--set"] * (len(flags) // 2), f"{name}: only --set flags expected, got {flags}"
        apply_settings(make_config("fast", seed=int(name.rpartition("seed")[2])), flags[1::2])  # UserError if not


def test_ctrl_c_stops_the_script_and_a_failed_run_only_its_own_turn(fast_runs):
    run, _ = fast_runs
    done, calls = run("seed1", "lightning-seed1", exit_code=130)  # the CLI's exit code after Ctrl-C
    assert done.returncode == 130 and len(calls) == 1
    assert "seed1: exit 130" in done.stdout and "lightning-seed1: starting" not in done.stdout
    done, calls = run("seed1", "lightning-seed1", exit_code=2)  # a failed run: the next one still trains
    assert done.returncode == 2 and len(calls) == 2


def test_a_run_that_stopped_in_its_final_tta_evaluation_is_reported_not_taken_as_done(fast_runs):
    run, runs = fast_runs
    (runs / "fast-seed1").mkdir(parents=True)
    (runs / "fast-seed1" / "metrics.json").write_text(json.dumps({"epochs_completed": 12,
                                                                   "config": {"epochs": 12, "tta": True}}))
    done, calls = run("seed1", "seed2")
    assert done.returncode == 1 and calls == [f"-m cifar_s12 train --recipe fast --seed 2 --out {runs}/fast-seed2"]
    assert "seed1: trained all its epochs but has no TTA figure" in done.stderr


def test_a_run_folder_whose_metrics_cannot_be_read_stops_the_script_before_anything_trains(fast_runs):
    run, runs = fast_runs
    (runs / "fast-seed2").mkdir(parents=True)
    (runs / "fast-seed2" / "metrics.json").write_text("{not json")
    done, calls = run("seed1", "seed2")
    assert done.returncode == 2 and calls == []  # every folder is read first; seed2's is left as it was
    assert f"cannot read {runs}/fast-seed2/metrics.json" in done.stderr and "Traceback" not in done.stderr
    assert (runs / "fast-seed2" / "metrics.json").read_text() == "{not json"
