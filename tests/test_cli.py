import json
import os
import subprocess
import sys

import pytest
import torch
from figures import png_image

from cifar_s12.dataset import REPO_DIR


def cli(*args, env=None) -> subprocess.CompletedProcess:
    """``python -m cifar_s12 ARGS`` run in this process (main(), as the CLI calls it: argv, cwd and environment
    set, stdout and stderr captured, argparse's exit turned into a return code): the same outcome as a new
    process, without a new interpreter importing torch for every call. An exception main() does not turn into
    an error line escapes and fails the test, as a traceback would."""
    import contextlib
    import io

    import cifar_s12.__main__ as entry

    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv, os.getcwd(), dict(os.environ)
    sys.argv = [entry.__file__, *map(str, args)]
    os.environ.update(env or {})
    os.chdir(REPO_DIR)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = entry.main(sys.argv[1:])
            except SystemExit as exit_:  # argparse: --help, usage errors
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved[0]
        os.chdir(saved[1])
        os.environ.clear()
        os.environ.update(saved[2])
    return subprocess.CompletedProcess(["python", "-m", "cifar_s12", *map(str, args)], code, out.getvalue(),
                                       err.getvalue())


def cli_process(*args, env=None, timeout=900) -> subprocess.CompletedProcess:
    """The same in a new process, for what needs one: DDP's process launch, signals, a clean interpreter."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "cifar_s12", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO_DIR, env=full_env, timeout=timeout)


@pytest.mark.parametrize("command", ["train", "lr-find", "compare"])
def test_help(command):
    r = cli(command, "--help")
    assert r.returncode == 0 and "--data-dir" in r.stdout and "--subset" in r.stdout


@pytest.mark.parametrize("args", [["train", "--epochs", "0", "--out", "x"], ["train", "--model", "vgg", "--out", "x"],
                                  ["train", "--max-lr", "0.1", "--find-lr", "--out", "x"],
                                  ["train", "--workers", "-1", "--out", "x"],
                                  ["train", "--weight-decay", "-1", "--out", "x"], ["bench", "--warmup", "-1"],
                                  ["train", "--seed", "-1", "--out", "x"],
                                  ["train", "--trainer", "lightning", "--accelerator", "tpu", "--out", "x"],
                                  ["lr-find", "--num-iter", "1"]])
def test_invalid_arguments_are_argparse_errors(args):
    r = cli(*args)
    assert r.returncode == 2 and "usage:" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args, message", [
    (["train", "--seed", str(2**64), "--out", "x"], "must be in [0, 2**63)"),
    (["train", "--max-lr", "inf", "--out", "x"], "must be a finite number"),
    (["train", "--weight-decay", "1e999", "--out", "x"], "must be a finite number"),
    (["train", "--epochs", "abc", "--out", "x"], "not a whole number: 'abc'"),
    (["lr-find", "--end-lr", "nan"], "must be a finite number"),
    (["train", "--trainer", "lightning", "--devices", "abc", "--out", "x"], "must be a count of 1 or more"),
    (["train", "--trainer", "lightning", "--devices", "0", "--out", "x"], "must be a count of 1 or more"),
])
def test_bad_numbers_are_argparse_errors_in_plain_words(args, message, capsys):
    from cifar_s12.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "_positive" not in err and "Traceback" not in err, err


@pytest.mark.parametrize("command, default", [(["train", "--out", "x"], None), (["lr-find"], None),
                                              (["report", "--checkpoint", "m.pt", "--out", "x"], True),
                                              (["bench"], True)])
def test_every_data_reading_command_takes_no_download(command, default):
    """Recipe commands leave download to the recipe (None); report and bench download unless told not to."""
    from cifar_s12.__main__ import build_parser

    parser = build_parser()
    assert parser.parse_args(command).download is default
    assert parser.parse_args([*command, "--no-download"]).download is False
    assert parser.parse_args([*command, "--data-dir", "d"]).data_dir == "d"


def test_report_test_subset_keeps_the_old_subset_spelling():
    from cifar_s12.__main__ import build_parser

    for flag in ("--test-subset", "--subset"):
        assert build_parser().parse_args(["report", "--checkpoint", "m.pt", "--out", "x", flag, "50"]).test_subset == 50


@pytest.mark.parametrize("args, message", [
    (["lr-find", "--start-lr", "10", "--end-lr", "1e-5"], "--start-lr (10) must be below --end-lr (1e-05)"),
    (["train", "--out", ""], "--out is empty"),
    (["train", "--resume", "nowhere"], "--resume: checkpoint nowhere does not exist"),
    (["train"], "--out is required: name a folder for the run (or --resume DIR to continue one)"),
    (["train", "--lr-finder", "torch", "--out", "x"], "--lr-finder chooses the LR range test, and this run has a "
                                                      "fixed max LR"),
    (["train", "--trainer", "lightning", "--resume", "x.ckpt", "--lr-finder", "torch", "--out", "x"],
     "--resume continues the checkpoint's recipe; drop --lr-finder"),
    (["train", "--trainer", "lightning", "--resume", "x.ckpt", "--fast-dev-run", "--out", "x"],
     "--fast-dev-run checks a new run's setup; it cannot be combined with --resume"),
])
def test_inconsistent_flags_fail_before_any_work(args, message, capsys):
    from cifar_s12.__main__ import main

    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), lines


@pytest.mark.parametrize("command, files, named", [("train", ["metrics.json"], "metrics.json, checkpoints"),
                                                   ("train", ["model.pt"], "model.pt, checkpoints"),
                                                   ("compare", ["torch/metrics.json"], "torch"),
                                                   ("compare", ["compare.json"], "compare.json")])
def test_an_out_folder_holding_a_run_is_refused_without_overwrite(command, files, named, tmp_path, capsys):
    from cifar_s12.__main__ import main

    out = tmp_path / "run"
    run_files = [*files, "checkpoints/best-epoch=23-val_acc=0.9400.ckpt"] if command == "train" else files
    for name in [*run_files, "my notes.txt"]:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("a finished run")
    no_data = ["--data-dir", str(tmp_path / "nothing"), "--no-download", "--out", str(out)]
    assert main([command, *no_data]) == 2
    assert capsys.readouterr().err.strip() == (f"error: --out {out} already holds a run ({named}): choose "
                                               f"another folder, or pass --overwrite to replace it")
    assert all((out / name).read_text() == "a finished run" for name in run_files)  # refused: nothing touched
    # --overwrite removes the earlier run's files (only those: not the user's own), then goes on (here to the
    # missing data), so no old checkpoint is left beside the new run's.
    assert main([command, *no_data, "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"--overwrite: removed the earlier run's files from {out}"
    assert err[-1].startswith("error: CIFAR-10 not found")
    assert not any((out / name).exists() for name in run_files) and (out / "my notes.txt").exists()


def test_resume_skips_the_out_check_only_for_its_own_run(tmp_path, capsys):
    from cifar_s12.__main__ import main

    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.json").write_text("a finished run")
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"  # another folder's run, resumed into --out other
    ckpt.parent.mkdir(parents=True)
    ckpt.write_text("not a checkpoint")
    (tmp_path / "first" / "metrics.json").write_text("its first part")
    assert main(["train", "--trainer", "lightning", "--resume", str(ckpt.parent.parent), "--out", str(other)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    # Into its own folder (named, or left to --resume) the check does not apply: here the file is what stops it.
    for out in (["--out", str(tmp_path / "first")], []):
        assert main(["train", "--trainer", "lightning", "--resume", str(tmp_path / "first"), *out]) == 2
        err = capsys.readouterr().err
        assert "is not a checkpoint" in err and "already holds a run" not in err


def test_the_course_recipe_runs_its_range_test_with_either_finder(tmp_path, capsys):
    from cifar_s12.__main__ import main

    # The recipe has no max LR, so --lr-finder needs no --find-lr: the command gets as far as the (missing) data.
    assert main(["train", "--recipe", "course", "--trainer", "lightning", "--lr-finder", "lightning",
                 "--data-dir", str(tmp_path / "nothing"), "--no-download", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: CIFAR-10 not found")


def test_missing_data_is_one_line_and_exit_2(tmp_path):
    r = cli("train", "--data-dir", tmp_path / "nothing", "--no-download", "--out", tmp_path / "run")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: CIFAR-10 not found") and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def test_corrupt_image_is_one_line_naming_the_file(tiny_dir, tmp_path):
    import shutil

    tree = tmp_path / "tree"
    shutil.copytree(tiny_dir, tree)
    (tree / "train" / "dog" / "00003.png").write_text("hello")
    r = cli("train", "--data-dir", tree, "--out", tmp_path / "run")
    # stderr is not a terminal here, so the decoding bar is off (dataset._decode): the error is all there is.
    assert r.returncode == 2 and r.stderr.startswith("error: cannot read image") and "dog/00003.png" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args", [["compare", "--out", "README.md"], ["report", "--checkpoint", "x.pt", "--out", "README.md"],
                                  ["lr-find", "--plot", "README.md/lr.png"], ["bench", "--json", "cifar_s12"]])
def test_unusable_output_paths_fail_before_any_work(args):
    r = cli(*args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: cannot"), r.stderr[-2000:]


def test_a_class_folder_without_images_is_one_line(tiny_dir, tmp_path):
    import shutil

    tree = tmp_path / "tree"
    shutil.copytree(tiny_dir, tree)
    for image in (tree / "test" / "cat").iterdir():
        image.unlink()
    r = cli("train", "--data-dir", tree, "--out", tmp_path / "run")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "not a usable image-folder tree" in lines[0], r.stderr[-2000:]


def test_train_writes_metrics_checkpoint_and_curves(tmp_path):
    out = tmp_path / "run"
    r = cli("train", "--epochs", "2", "--subset", "300", "--test-subset", "200", "--batch-size", "64",
            "--max-lr", "0.05", "--workers", "0", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["wall_seconds"] > 0 and metrics["final_test_accuracy"] == metrics["history"][-1]["test_acc"]
    assert metrics["config"]["epochs"] == 2 and metrics["config"]["max_lr"] == 0.05
    assert metrics["command"].startswith("python -m cifar_s12 train --epochs 2")
    assert [list(h) for h in metrics["history"]] == [
        ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_second", "epoch_seconds",
         "grad_scale"]] * 2
    ckpt = torch.load(out / "model.pt", map_location="cpu", weights_only=False)
    assert ckpt["model"] == "custom_resnet" and len(ckpt["classes"]) == 10 and ckpt["epoch"] == 2
    assert ckpt["data_source"] == metrics["data_source"]  # report finds the data again from here
    png_image(out / "curves.png")


def test_lr_find_prints_a_suggestion(tmp_path):
    plot = tmp_path / "lr.png"
    r = cli("lr-find", "--subset", "256", "--batch-size", "32", "--num-iter", "15", "--workers", "0", "--plot", plot,
            "--start-lr", "0.02", "--end-lr", "0.05")
    assert r.returncode == 0, r.stderr[-2000:]
    suggested = float(r.stdout.split("suggested max LR: ")[1].split()[0])
    assert 0.02 <= suggested <= 0.05  # one of the LRs tried in this narrow range: --start-lr and --end-lr were used
    png_image(plot)


@pytest.mark.parametrize("command, flag", [("app", "--port"), ("export", "--commit"), ("space", "--out"),
                                           ("app-bench", "--clients"), ("predict", "--checkpoint")])
def test_help_of_the_app_commands_in_process(command, flag, capsys):
    from cifar_s12.__main__ import main

    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and flag in out and (command != "predict" or "custom_resnet.safetensors" in out)


@pytest.mark.parametrize("args, message", [(["app", "--port", "0"], "a port number"),
                                           (["app", "--port", "x"], "not a whole number"),
                                           (["app-bench", "--clients", "0"], "a positive integer")])
def test_bad_app_flags_are_argparse_errors(args, message, capsys):
    from cifar_s12.__main__ import main

    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 2 and message in capsys.readouterr().err


def test_app_on_a_port_in_use_is_one_line(checkpoint, capsys):
    import socket

    from cifar_s12.__main__ import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["app", "--checkpoint", str(checkpoint), "--port", str(port), "--data-dir", "no-such-dir"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot serve on 127.0.0.1:{port}") and err.count("\n") == 1
