import pytest

from cifar_s12.runs.provenance import COMMAND_ENV_VAR, cli_command, provenance_of_parts
from cifar_s12.utils import atomic_path, write_json


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text().strip().startswith("{") and '"a": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_write_gives_a_normal_files_permissions(tmp_path):
    import os

    write_json(tmp_path / "metrics.json", {"a": 1})
    (tmp_path / "plain.json").write_text("{}")  # open() honours the umask: the same mode is expected
    assert os.stat(tmp_path / "metrics.json").st_mode == os.stat(tmp_path / "plain.json").st_mode


def test_run_command_comes_from_the_cli_argv_or_the_notebook_variable(monkeypatch):
    monkeypatch.setattr("sys.argv", ["/x/cifar_s12/__main__.py", "train", "--seed", "2", "--out", "runs/a b"])
    monkeypatch.setenv(COMMAND_ENV_VAR, "jupyter nbconvert --execute nb.ipynb")
    assert cli_command() == "python -m cifar_s12 train --seed 2 --out 'runs/a b'"  # the CLI names itself
    monkeypatch.setattr("sys.argv", ["/venv/bin/cifar-s12", "train", "--recipe", "fast"])
    assert cli_command() == "cifar-s12 train --recipe fast"  # the installed console command
    monkeypatch.setattr("sys.argv", ["/x/ipykernel_launcher.py", "-f", "/tmp/kernel.json"])
    assert cli_command() == "jupyter nbconvert --execute nb.ipynb"
    monkeypatch.delenv(COMMAND_ENV_VAR)
    assert cli_command() is None


def test_a_run_continued_on_another_machine_names_both_devices_in_order():
    def part(commit, clean, device=None):
        return {"git_commit": commit, "git_clean": clean, "versions": {"torch": "2"}, "device": device,
                "history": ["not provenance"]}

    alone = provenance_of_parts([part("a", True, "cpu, fp32")])
    assert alone == {"git_commit": "a", "git_clean": True, "versions": {"torch": "2"}, "device": "cpu, fp32"}
    assert "device" not in provenance_of_parts([part("a", True)])  # unknown: the run's own device field stays
    run = provenance_of_parts([part("a", True, "cpu, fp32"), part("b", True, "cpu, fp32"),
                               part("c", True, "cpu, bfloat16")])
    assert run["device"] == "cpu, fp32 + cpu, bfloat16" and run["git_commit"] == "c" and run["git_clean"] is True
    assert [p["device"] for p in run["parts"]] == ["cpu, fp32", "cpu, fp32", "cpu, bfloat16"]
    # a part from before parts named their device (None) leaves it out of the run's
    assert provenance_of_parts([part("a", None), part("b", False, "cpu, fp32")])["device"] == "cpu, fp32"
    assert "device" not in provenance_of_parts([part("a", True), part("b", True)])  # none known: the run's own stays
