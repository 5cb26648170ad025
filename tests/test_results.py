import json

import pytest

from cifar_s12.runs.table import load_runs, markdown_table, summarise
from cifar_s12.utils import UserError


def _run(seed, acc, trainer="torch", epochs=24, done=24, tta=None):
    run = {"trainer": trainer, "final_test_accuracy": acc, "wall_seconds": 600.0, "train_images": 50000,
           "device": "cuda, bfloat16", "epochs_completed": done, "command": "python -m cifar_s12 train --seed N",
           "config": {"recipe": "best", "epochs": epochs, "seed": seed}}
    if tta is not None:
        run["final_test_accuracy_tta"] = tta
    return run


def test_runs_are_grouped_and_summarised(tmp_path):
    for seed, acc in ((1, 0.940), (2, 0.942), (3, 0.944)):
        (tmp_path / f"torch-best-seed{seed}.json").write_text(json.dumps(_run(seed, acc, tta=acc + 0.005)))
    (tmp_path / "lightning-best-seed1.json").write_text(json.dumps(_run(1, 0.93, trainer="lightning")))
    (tmp_path / "torch-best-seed9.json").write_text(json.dumps(_run(9, 0.5, done=3)))  # unfinished: left out
    rows = summarise(load_runs(tmp_path))
    assert [(r["trainer"], r["seeds"]) for r in rows] == [("lightning", [1]), ("torch", [1, 2, 3])]
    torch_row = rows[1]
    assert torch_row["mean"] == pytest.approx(94.2) and torch_row["std"] == pytest.approx(0.2)
    assert torch_row["tta_mean"] == pytest.approx(94.7) and rows[0]["tta_mean"] is None
    table = markdown_table(rows)
    assert "94.20 ± 0.20 (94.00–94.40)" in table and table.count("\n") == 3


def test_tta_is_averaged_over_the_runs_that_have_it(tmp_path):
    (tmp_path / "torch-best-seed1.json").write_text(json.dumps({**_run(1, 0.940), "final_test_accuracy_tta": None,
                                                                "epochs_completed": None}))  # null is as absent
    for seed in (2, 3):
        (tmp_path / f"torch-best-seed{seed}.json").write_text(json.dumps(_run(seed, 0.942, tta=0.946 + seed / 1000)))
    (row,) = summarise(load_runs(tmp_path))
    assert row["tta_mean"] == pytest.approx(94.85) and row["tta_runs"] == 2
    assert "| 94.85 (2 of 3 runs) |" in markdown_table([row])


def test_a_file_that_is_not_a_run(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(UserError, match="x.json is not a run's metrics.json: no config"):
        load_runs(tmp_path)


@pytest.mark.parametrize("change, problem", [
    ({"train_images": None}, "no train_images"),
    ({"epochs_completed": "24"}, "epochs_completed is '24', not a whole number"),
    ({"command": ["python", "-m"]}, "command is ['python', '-m'], not text"),
    ({"final_test_accuracy_tta": "0.9"}, "final_test_accuracy_tta is '0.9', not a number"),
    ({"wall_seconds": True}, "wall_seconds is True, not a number"),
    ({"config": {"epochs": 24, "seed": 1.5}}, "config.seed is 1.5, not a whole number"),
])
def test_every_field_the_table_reads_is_checked_before_the_table(change, problem, tmp_path):
    run = {**_run(1, 0.94, tta=0.945), **change}
    (tmp_path / "run.json").write_text(json.dumps({k: v for k, v in run.items() if v is not None}))
    with pytest.raises(UserError) as err:
        summarise(load_runs(tmp_path))
    assert str(err.value).endswith(problem)


@pytest.mark.parametrize("content", ['{"final_test_accuracy": 0.9, "config": {}}', "3", '{"config": "x"}',
                                     b"\xff\xfe{}"])
def test_a_json_file_that_is_not_a_run_is_one_error(tmp_path, content):
    path = tmp_path / "run.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError, match="run.json"):
        load_runs(tmp_path)


def test_a_results_folder_that_is_not_there(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_runs(tmp_path / "none")


def test_results_command_prints_the_table(tmp_path):
    import subprocess
    import sys

    from cifar_s12.dataset import REPO_DIR

    (tmp_path / "torch-best-seed1.json").write_text(json.dumps(_run(1, 0.9412)))
    r = subprocess.run([sys.executable, "-m", "cifar_s12", "results", "--dir", str(tmp_path)], capture_output=True,
                       text=True, cwd=REPO_DIR)
    assert r.returncode == 0 and "| torch | best | 24 | 50,000 | 1 | 94.12 ± 0.00" in r.stdout
    empty = subprocess.run([sys.executable, "-m", "cifar_s12", "results", "--dir", str(tmp_path / "none")],
                           capture_output=True, text=True, cwd=REPO_DIR)
    assert empty.returncode == 2 and empty.stderr.startswith("error: results folder") and "does not exist" in empty.stderr
    (tmp_path / "empty").mkdir()
    empty = subprocess.run([sys.executable, "-m", "cifar_s12", "results", "--dir", str(tmp_path / "empty")],
                           capture_output=True, text=True, cwd=REPO_DIR)
    assert empty.returncode == 2 and empty.stderr.startswith("error: no finished runs")
    # Several folders pool their runs: the same recipe's seeds from two folders make one row.
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "torch-best-seed1.json").write_text(json.dumps(_run(1, 0.9388)))
    both = subprocess.run([sys.executable, "-m", "cifar_s12", "results", "--dir", str(tmp_path), str(tmp_path / "more"),
                           str(tmp_path / "empty")], capture_output=True, text=True, cwd=REPO_DIR)
    assert both.returncode == 0 and "| 1, 1 | 94.00 ± 0.17 (93.88–94.12) |" in both.stdout, both.stdout + both.stderr


def test_an_ablation_made_with_set_is_its_own_row_named_by_its_changes(tmp_path):
    from cifar_s12.config import apply_settings, make_config

    def fast(seed, acc, *settings):
        config = apply_settings(make_config("fast", seed=seed, data_dir="elsewhere"), list(settings)).to_dict()
        return {**_run(seed, acc, epochs=12, done=12), "config": config}

    (tmp_path / "fast-seed1.json").write_text(json.dumps(fast(1, 0.941)))
    (tmp_path / "fast-seed2.json").write_text(json.dumps(fast(2, 0.943)))
    (tmp_path / "fast-bs512.json").write_text(json.dumps(fast(1, 0.935, "batch_size=512")))
    (tmp_path / "fast-random.json").write_text(json.dumps(fast(1, 0.939, "augment.flip=random", "tta_shift=0")))
    rows = summarise(load_runs(tmp_path))
    assert [(r["changes"], r["seeds"]) for r in rows] == [
        ("", [1, 2]), ("batch_size=512", [1]), ('tta_shift=0 augment.flip="random"', [1])]
    table = markdown_table(rows)
    assert "| fast `--set batch_size=512` | 12 |" in table
    assert '| fast `--set tta_shift=0 --set augment.flip="random"` |' in table


def test_a_run_of_a_removed_experiment_still_loads_and_keeps_its_own_row(tmp_path):
    """The moving average of the weights (ema_decay) and identity-initialised convolutions (dirac_init) are gone
    from TrainConfig, but the runs made with them (results/fast) still load, and the table names them by the
    setting they ran with, apart from the preset's row; a run that had them off is the preset's."""
    from cifar_s12.config import apply_settings, make_config, recipe_changes
    from cifar_s12.runs.table import read_run

    preset = make_config("fast", seed=1, data_dir="elsewhere").to_dict()
    assert "ema_decay" not in preset and "dirac_init" not in preset
    for gone in ("ema_decay=0.99", "dirac_init=true"):  # no longer settings to train with
        with pytest.raises(UserError, match=f"no recipe field '{gone.partition('=')[0]}'"):
            apply_settings(make_config("fast", seed=1), [gone])

    def fast(seed, acc, **old):
        return {**_run(seed, acc, epochs=12, done=12), "config": {**preset, "seed": seed, **old}}

    (tmp_path / "fast-seed1.json").write_text(json.dumps(fast(1, 0.941, ema_decay=None, dirac_init=False)))
    (tmp_path / "fast-seed2.json").write_text(json.dumps(fast(2, 0.943)))
    (tmp_path / "fast-ema-seed1.json").write_text(json.dumps(fast(1, 0.935, ema_decay=0.99)))
    (tmp_path / "fast-ema-seed2.json").write_text(json.dumps(fast(2, 0.937, ema_decay=0.99, dirac_init=False)))
    (tmp_path / "fast-dirac-seed1.json").write_text(json.dumps(fast(1, 0.932, ema_decay=0.99, dirac_init=True)))
    run = read_run(tmp_path / "fast-dirac-seed1.json")
    assert run["config"]["ema_decay"] == 0.99 and run["config"]["dirac_init"] is True
    assert recipe_changes(run["config"]) == ["ema_decay=0.99", "dirac_init=true"]
    assert recipe_changes(read_run(tmp_path / "fast-seed1.json")["config"]) == []
    rows = summarise(load_runs(tmp_path))
    assert [(r["changes"], r["seeds"]) for r in rows] == [
        ("", [1, 2]), ("ema_decay=0.99", [1, 2]), ("ema_decay=0.99 dirac_init=true", [1])]
    table = markdown_table(rows)
    assert "| fast `--set ema_decay=0.99` | 12 |" in table
    assert "| fast `--set ema_decay=0.99 --set dirac_init=true` | 12 |" in table


@pytest.mark.parametrize("folder", ["results", "results/fast", "results/short", "results/notebooks"])
def test_the_committed_results_make_the_readme_table(folder):
    """Every JSON in these folders is a finished run: `python -m cifar_s12 results --dir FOLDER` reads them all
    (results/bench and results/compare hold other measurements)."""
    from cifar_s12.dataset import REPO_DIR

    rows = summarise(load_runs(REPO_DIR / folder))
    assert rows and all(r["mean"] > 90 for r in rows)


def test_the_flip_alone_gets_a_column_when_a_recipe_with_shifted_views_measured_it(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({**_run(1, 0.940, tta=0.945), "final_test_accuracy_flip_tta": 0.943}))
    (tmp_path / "b.json").write_text(json.dumps(_run(1, 0.930, trainer="lightning")))
    table = markdown_table(summarise(load_runs(tmp_path)))
    assert "| with TTA % | flip TTA alone % |" in table.splitlines()[0]
    assert "| 94.50 | 94.30 |" in table and "| – | – |" in table
    (tmp_path / "a.json").unlink()  # no run measured the flip alone: no column for it
    assert "flip TTA alone" not in markdown_table(summarise(load_runs(tmp_path)))


def test_the_fast_preset_is_the_recipe_its_committed_seeds_trained():
    """README's `fast` figures are the preset's only while the preset is what those runs trained: a changed preset
    (or a run of something else committed under the preset's name) fails here, not silently in the table."""
    from cifar_s12.config import recipe_changes
    from cifar_s12.dataset import REPO_DIR

    seeds = sorted((REPO_DIR / "results" / "fast").glob("*-fast-seed*.json"))
    assert [p.name for p in seeds] == ["lightning-fast-seed1.json", "torch-fast-seed1.json", "torch-fast-seed2.json",
                                       "torch-fast-seed3.json"]
    for path in seeds:
        config = json.loads(path.read_text())["config"]
        assert config["recipe"] == "fast" and recipe_changes(config) == [], path.name
    # and the earlier preset's run is an ablation of it: by the three parts added since and the average dropped
    old = json.loads((REPO_DIR / "results" / "fast" / "torch-fast-no-bs256-bnbias-cutout9-seed1.json").read_text())
    assert recipe_changes(old["config"]) == ["batch_size=512", "max_lr=0.4", "bn_weight_frozen=false",
                                             "bn_bias_lr_scale=1.0", "ema_decay=0.99", "augment.cutout_epochs=null"]


def test_each_committed_fast_run_is_the_run_fast_runs_sh_names_it_after():
    """results/fast/TRAINER-fast-NAME.json is scripts/fast_runs.sh's run NAME (lightning-NAME for Lightning): its
    trainer, its seed and how its config differs from the preset are that run's (a file copied under the wrong name,
    or a script entry changed after its run was committed, fails here). The other files, the moving-average runs and
    the ablations, were made with code this package no longer has (the script as of commit 68880f0 names them): each
    records the commit it was made at."""
    import re
    import shlex

    from cifar_s12.config import apply_settings, make_config, recipe_changes
    from cifar_s12.dataset import REPO_DIR

    script = (REPO_DIR / "scripts" / "fast_runs.sh").read_text()
    runs = {name: shlex.split(flags) for name, flags in re.findall(r'^  \[([\w-]+)\]="([^"]*)"$', script, re.MULTILINE)}
    checked, older = [], []
    for path in sorted((REPO_DIR / "results" / "fast").glob("*-fast-*.json")):
        trainer, _, name = path.stem.partition("-fast-")
        flags = runs.get(name if trainer == "torch" else f"{trainer}-{name}")
        run = json.loads(path.read_text())
        if flags is None:  # made at an earlier commit, by code that is gone: its file says which
            assert re.fullmatch(r"[0-9a-f]{40}", run.get("git_commit") or ""), f"{path.name}: no git_commit"
            older.append(path.name)
            continue
        if flags[:2] == ["--trainer", "lightning"]:
            flags = flags[2:]
        assert flags[0::2] == ["--set"] * (len(flags) // 2), f"{path.name}: only --set flags expected, got {flags}"
        seed = int(name.rpartition("seed")[2])
        expected = apply_settings(make_config("fast", seed=seed), flags[1::2]).to_dict()
        assert (run["trainer"], run["config"]["seed"]) == (trainer, seed), path.name
        assert recipe_changes(run["config"]) == recipe_changes(expected), path.name
        checked.append(path.name)
    assert checked == ["lightning-fast-seed1.json", "torch-fast-batched-seed1.json", "torch-fast-seed1.json",
                       "torch-fast-seed2.json", "torch-fast-seed3.json"]
    assert {"lightning-fast-ema-seed1.json", "torch-fast-ema-seed1.json", "torch-fast-dirac-seed1.json",
            "torch-fast-no-bs256-bnbias-cutout9-seed1.json"} <= set(older)
