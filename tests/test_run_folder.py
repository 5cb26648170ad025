"""The run folder's layout: the one place that names a run's files."""
from pathlib import Path

import pytest

from cifar_s12.runs.folder import RunFolder, resume_file
from cifar_s12.utils import UserError


def test_a_checkpoint_belongs_to_the_run_folder_it_was_written_in():
    assert RunFolder.of_checkpoint("runs/a/model.pt").metrics == Path("runs/a/metrics.json")
    assert RunFolder.of_checkpoint("runs/b/checkpoints/last.ckpt").metrics == Path("runs/b/metrics.json")
    assert RunFolder.of_checkpoint("runs/b/checkpoints/last.pt").root == Path("runs/b")
    assert RunFolder.of_checkpoint("elsewhere/best.ckpt").metrics == Path("elsewhere/metrics.json")


def test_written_lists_only_the_runs_files_and_resume_finds_each_trainers_checkpoint(tmp_path):
    folder = RunFolder(tmp_path)
    (tmp_path / "my notes.txt").write_text("mine")
    assert folder.written() == [] and not folder.has_run()
    folder.checkpoints.mkdir()
    folder.train_state.write_bytes(b"")
    folder.metrics.write_text("{}")
    assert folder.written() == [folder.metrics, folder.checkpoints] and folder.has_run()
    assert resume_file(tmp_path, "torch") == tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(UserError, match="it is a run of the plain trainer, resume it with --trainer torch"):
        resume_file(tmp_path, "lightning")
    assert resume_file(tmp_path / "checkpoints" / "x.ckpt", "lightning") == tmp_path / "checkpoints" / "x.ckpt"
