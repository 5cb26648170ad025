"""Stopping and resuming is a non-event: both trainers, with and without loader workers, and under DDP, continue a
run exactly as if it had never stopped (the data order, the augmentations, dropout, the optimizer, OneCycle)."""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import cli_process

import cifar_s12.train as train
from cifar_s12.config import make_config
from cifar_s12.dataset import CifarData, Split, build_loaders
from cifar_s12.lit import fit_lightning
from cifar_s12.runs.checkpoints import load_checkpoint
from cifar_s12.runs.folder import RunFolder
from cifar_s12.runs.notebook_cell import FINISHED, continue_or_start
from cifar_s12.utils import UserError

REPO = Path(__file__).resolve().parent.parent
QUIET = dict(log=lambda *_: None)


def recipe(workers: int):
    # fp32 on the CPU: the same kernels on every machine. Dropout: the step itself draws random numbers too.
    return make_config("best", epochs=3, subset=64, test_subset=32, batch_size=16, max_lr=0.1, precision="fp32",
                       dropout=0.1, num_workers=workers)


FITS = {"torch": train.fit, "lightning": fit_lightning}


def assert_same_run(a: RunFolder, b: RunFolder) -> None:
    """Per-epoch losses to 1e-6 (relative), the LR of every step, and the final weights."""
    ha, hb = (json.loads(f.metrics.read_text()) for f in (a, b))
    assert [h["epoch"] for h in hb["history"]] == [h["epoch"] for h in ha["history"]]
    for key in ("train_loss", "test_loss", "train_acc", "test_acc"):
        np.testing.assert_allclose([h[key] for h in hb["history"]], [h[key] for h in ha["history"]], rtol=1e-6)
    np.testing.assert_allclose(hb["lr_schedule"], ha["lr_schedule"], rtol=1e-12)
    wa, wb = (load_checkpoint(f.model).model.state_dict() for f in (a, b))
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data):
    """The uninterrupted 3-epoch runs, made once per (trainer, workers)."""
    runs = {}

    def run(trainer: str, workers: int) -> RunFolder:
        if (trainer, workers) not in runs:
            folder = RunFolder(tmp_path_factory.mktemp(f"{trainer}-{workers}"))
            FITS[trainer](recipe(workers), folder.root, data=data, **QUIET)
            runs[trainer, workers] = folder
        return runs[trainer, workers]
    return run


@pytest.mark.parametrize("trainer, workers", [("torch", 0), ("torch", 2), ("lightning", 2)])
def test_one_epoch_then_resume_for_two_is_the_uninterrupted_run(straight, data, tmp_path, trainer, workers):
    folder = RunFolder(tmp_path)
    first = FITS[trainer](recipe(workers), tmp_path, data=data, stop_after=1, **QUIET).metrics
    assert first["epochs_completed"] == 1 and "final_test_accuracy_tta" not in first
    resumed = FITS[trainer](recipe(workers), tmp_path, data=data, resume=tmp_path, **QUIET).metrics
    assert resumed["epochs_completed"] == 3
    assert_same_run(straight(trainer, workers), folder)
    # The last step leaves the annealed LR in the optimizer (OneCycle is not stepped past its plan, where linear
    # annealing goes below 0), and the history's last LR is that one.
    assert 0 < resumed["history"][-1]["lr"] < 1e-5
    if trainer == "torch":
        state = torch.load(folder.train_state, weights_only=True)
        assert state["training"]["optimizer"]["param_groups"][0]["lr"] == resumed["history"][-1]["lr"]
    with pytest.raises(UserError, match=r"finished run \(3 of 3 epochs\)"):
        FITS[trainer](recipe(workers), tmp_path, data=data, resume=tmp_path, **QUIET)


@pytest.mark.parametrize("trainer, workers", [("torch", 0), ("lightning", 2)])
def test_a_notebooks_training_cell_run_again_continues_an_interrupted_run(straight, data, tmp_path, trainer,
                                                                          workers):
    """The notebooks' training cell: ``resume = continue_or_start(OUT, trainer, cfg)`` then fit(resume=resume)."""
    folder, cfg = RunFolder(tmp_path), recipe(workers)
    (tmp_path / "notes.txt").write_text("mine")
    assert continue_or_start(tmp_path, trainer, cfg, log=QUIET["log"]) is None  # nothing to continue: a new run
    FITS[trainer](cfg, tmp_path, data=data, stop_after=1, **QUIET)  # ... which a disconnect stops after epoch 1
    other = "lightning" if trainer == "torch" else "torch"
    resume = continue_or_start(tmp_path, trainer, replace(cfg, num_workers=0, data_dir="elsewhere"))
    assert resume == (folder.train_state if trainer == "torch" else folder.lightning_last)  # where the data is: free
    lines = []
    FITS[trainer](cfg, tmp_path, data=data, resume=resume, log=lines.append)
    assert_same_run(straight(trainer, workers), folder)
    # The cell's output is the whole run: the epoch already done, then where training goes on, each epoch once.
    said = [line for line in lines if line.startswith(("resuming", "continuing", "epoch "))]
    n, epochs = cfg.epochs, [" ".join(line.split(" | ")[0].split()) for line in said]
    assert said[0] == f"resuming after epoch 1 of {n}; the epochs already done:" and said[2] == "continuing from epoch 2:"
    assert epochs[1] == f"epoch 1/{n}" and epochs[3:] == ([f"epoch {e}/{n}" for e in range(2, n + 1)]
                                                         if trainer == "torch" else [])  # Lightning's go to stdout
    # Run again once the run has finished ("Run all" after a reconnect): nothing to train, the run stays.
    written = folder.written()
    assert continue_or_start(tmp_path, trainer, cfg) == FINISHED and folder.written() == written
    # The other trainer's cell, or this cell with another recipe, pointed at the finished run: refused, the run
    # untouched to the byte, and the message says what differs and how to go on.
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for cfg_now, trainer_now, says in ((replace(cfg, max_lr=0.2), trainer, "max_lr: 0.1 there, 0.2 here"),
                                       (cfg, other, f"trainer: {trainer} here, {other} in this cell")):
        with pytest.raises(UserError, match="will not replace") as refused:
            continue_or_start(tmp_path, trainer_now, cfg_now)
        assert says in str(refused.value) and "set OUT to a new folder, or delete" in str(refused.value)
        assert "\n" not in str(refused.value)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    # An interrupted run: continued when the recipe is the same (a range test's LR counts as the one it found),
    # refused when it is not; never deleted.
    checkpoint = folder.train_state if trainer == "torch" else folder.lightning_last
    for saved_lr, cfg_now, continues in ((None, cfg, True), (None, replace(cfg, max_lr=0.2), False),
                                         (0.087, replace(cfg, max_lr=None), True)):
        saved = replace(cfg, max_lr=saved_lr or cfg.max_lr).to_dict()
        folder.metrics.write_text(json.dumps({"trainer": trainer, "config": saved, "epochs_completed": 1}))
        if continues:
            assert continue_or_start(tmp_path, trainer, cfg_now) == checkpoint
        else:
            with pytest.raises(UserError, match="max_lr"):
                continue_or_start(tmp_path, trainer, cfg_now)
        assert checkpoint.is_file()
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("trainer", ["torch", "lightning"])
def test_a_run_made_in_parts_records_the_commit_of_each(data, tmp_path, monkeypatch, trainer):
    import cifar_s12.runs.lightning_history as lightning_history
    asked = []  # one entry per call of provenance(), which runs git twice

    def at(commit: str, clean: bool):
        def fake() -> dict:
            asked.append(commit)
            return {"git_commit": commit, "git_clean": clean, "versions": {"torch": commit[:3]}}
        for module in (train, lightning_history):
            monkeypatch.setattr(module, "provenance", fake)

    at("a" * 40, True)
    first = FITS[trainer](recipe(0), tmp_path, data=data, stop_after=1, **QUIET).metrics
    assert first["git_commit"] == "a" * 40 and first["git_clean"] is True and "parts" not in first
    at("b" * 40, False)
    FITS[trainer](recipe(0), tmp_path, data=data, resume=tmp_path, stop_after=2, **QUIET)
    at("c" * 40, True)
    FITS[trainer](recipe(0), tmp_path, data=data, resume=tmp_path, **QUIET)
    saved = json.loads(RunFolder(tmp_path).metrics.read_text())
    # The last part's commit and versions; clean only if every part was; each part's, oldest first.
    assert (saved["git_commit"], saved["git_clean"], saved["versions"]) == ("c" * 40, False, {"torch": "ccc"})
    assert [(p["git_commit"][0], p["git_clean"]) for p in saved["parts"]] == [("a", True), ("b", False), ("c", True)]
    # ... and the device each trained on: here all three the same, so the run names it once
    device = {"torch": "cpu, fp32", "lightning": "cpu x1, 32-true"}[trainer]
    assert [p["device"] for p in saved["parts"]] == [device] * 3 and saved["device"] == device
    # Each part asks git once, however many epochs it trains (the last part trains two).
    assert [commit[0] for commit in asked] == ["a", "b", "c"]


def test_the_number_of_loader_workers_does_not_change_the_run(straight):
    assert_same_run(straight("torch", 0), straight("torch", 2))
    assert_same_run(straight("torch", 2), straight("lightning", 2))  # and both trainers make the same run


def test_a_crash_after_the_checkpoint_resumes_from_the_checkpoint(straight, data, tmp_path, monkeypatch):
    """kill -9 after epoch 2's checkpoints/last.pt but before its metrics.json: the resume starts from last.pt
    (epoch 3), and the result is still the uninterrupted run."""
    import cifar_s12.runs.metrics as metrics_writer
    real_write = metrics_writer.write_json

    def crash_at_epoch_2(path, metrics):
        if metrics["epochs_completed"] == 2:
            raise SystemExit("killed")  # nothing after this line of save_outputs runs, as with kill -9
        real_write(path, metrics)

    monkeypatch.setattr(metrics_writer, "write_json", crash_at_epoch_2)
    with pytest.raises(SystemExit):
        train.fit(recipe(0), tmp_path, data=data, **QUIET)
    monkeypatch.undo()
    folder = RunFolder(tmp_path)
    assert json.loads(folder.metrics.read_text())["epochs_completed"] == 1  # one behind the checkpoint
    assert torch.load(folder.train_state, weights_only=True)["epoch"] == 2
    train.fit(recipe(0), tmp_path, data=data, resume=folder.train_state, **QUIET)
    assert_same_run(straight("torch", 0), folder)


def test_resume_names_the_other_trainer_and_refuses_a_weights_only_file(straight, checkpoint, tmp_path):
    with pytest.raises(UserError, match="it is a run of the Lightning trainer, resume it with --trainer lightning"):
        train.fit(recipe(2), resume=straight("lightning", 2).root, **QUIET)
    with pytest.raises(UserError, match="a model.pt holds weights only"):
        train.fit(recipe(0), resume=checkpoint, **QUIET)
    with pytest.raises(UserError, match="has no checkpoints/last.pt to continue"):
        train.fit(recipe(0), resume=tmp_path, **QUIET)


def identical_images(n: int = 128) -> CifarData:
    """One image n times: any difference between two training samples is their augmentations'."""
    image = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(1, 32, 32, 3)
    split = Split(np.repeat(image, n, 0), np.arange(n, dtype=np.int64) % 10)
    return CifarData(split, Split(split.images[:32], split.labels[:32]), "generated", tuple("abcdefghij"))


def test_each_epoch_draws_its_own_order_and_augmentations_from_the_seed_alone():
    data = identical_images()

    def epoch(e: int, seed: int = 1):
        loader = build_loaders(make_config("best", batch_size=32, num_workers=0, seed=seed), data)[0]
        loader.sampler.set_epoch(e)
        return torch.cat([x for x, _ in loader]), [i for _, i in loader.sampler]

    (x0, order0), (x1, order1) = epoch(0), epoch(1)
    assert sorted(order0) == list(range(128)) and order0 != order1  # every image once, a new order each epoch
    again, _ = epoch(1)
    assert torch.equal(x1, again)  # epoch 1 made afresh (as after a resume) is epoch 1
    assert not torch.equal(epoch(1, seed=2)[0], x1)
    assert len({x.numpy().tobytes() for x in x0}) > 120  # the same image, augmented differently each time


DDP_SCRIPT = """
import hashlib, json, os, sys
import cifar_s12.dataset as dataset
from cifar_s12.config import make_config
from cifar_s12.lit import fit_lightning
sys.path.insert(0, {tests!r})
from test_resume import identical_images

rank = int(os.environ.get("LOCAL_RANK", 0))
seen = {{"indices": [], "samples": []}}
get_item = dataset.CifarDataset.__getitem__

def recording_get_item(self, key):
    x, y = get_item(self, key)
    if isinstance(key, tuple) and key[0] == 0:  # epoch 1's training images
        seen["indices"].append(key[1])
        seen["samples"].append(hashlib.sha1(x.numpy().tobytes()).hexdigest())
    return x, y

dataset.CifarDataset.__getitem__ = recording_get_item
cfg = make_config("best", epochs=1, batch_size=32, max_lr=0.1, precision="fp32", num_workers=0)
fit_lightning(cfg, sys.argv[1], data=identical_images(), devices=2, strategy="ddp", accelerator="cpu",
              log=lambda *_: None)
with open(os.path.join(sys.argv[1], f"rank{{rank}}.json"), "w") as f:
    json.dump(seen, f)
"""


def test_ddp_processes_share_out_the_images_and_draw_their_own_augmentations(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=str(REPO / "tests")))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / "run" / f"rank{r}.json").read_text()) for r in (0, 1)]
    first, second = (r["indices"] for r in ranks)
    assert len(first) == len(second) == 64 and sorted(first + second) == list(range(128))  # each image once
    # The k-th image of each process gets other augmentations (the same image everywhere, so only they differ).
    same = sum(a == b for a, b in zip(*(r["samples"] for r in ranks)))
    assert same == 0, f"{same} of 64 samples augmented alike in both processes"


def test_ddp_run_stopped_and_resumed_from_the_command_line_equals_the_uninterrupted_run(tmp_path):
    flags = ["--trainer", "lightning", "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu", "--epochs", "2",
             "--subset", "128", "--test-subset", "32", "--batch-size", "16", "--max-lr", "0.1", "--precision",
             "fp32", "--dropout", "0.1"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    for args in ([*flags, "--out", whole], [*flags, "--out", part, "--stop-after", "1"]):
        r = cli_process("train", *args)
        assert r.returncode == 0, r.stderr[-3000:]
    assert "stopped after epoch 1 of 2" in r.stdout
    r = cli_process("train", "--trainer", "lightning", "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu",
            "--resume", part)  # no --out: the run continues in its own folder
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("final test accuracy") == 1  # only rank 0 reports
    assert_same_run(RunFolder(whole), RunFolder(part))
    # Each process validates half of the 32 test images; the logged accuracy is over all of them (synchronised),
    # as an independent pass of the saved model finds.
    from cifar_s12.analysis.predictions import predict_split
    from cifar_s12.dataset import load_cifar10, subset

    metrics = json.loads(RunFolder(whole).metrics.read_text())
    assert metrics["device"].startswith("cpu x2")
    test = subset(load_cifar10(download=False), test=32).test
    independent = predict_split(load_checkpoint(RunFolder(whole).model), test).accuracy
    assert metrics["final_test_accuracy"] == pytest.approx(independent, abs=1 / 32 + 1e-9)  # one image: rounding


def test_the_fast_recipes_parts_make_the_same_run_in_both_trainers_and_resume_exactly(data, tmp_path):
    """Alternating flips, shifted TTA, BatchNorm parameter groups: plain 3 epochs straight = Lightning 1 + resume
    for 2."""
    cfg = make_config("fast", epochs=3, subset=64, test_subset=32, batch_size=16, max_lr=0.1, precision="fp32",
                      num_workers=0, bn_weight_frozen=True,
                      bn_bias_lr_scale=8.0)
    plain = train.fit(cfg, tmp_path / "torch", data=data, **QUIET).metrics
    fit_lightning(cfg, tmp_path / "lit", data=data, stop_after=1, **QUIET)
    lit = fit_lightning(cfg, tmp_path / "lit", data=data, resume=tmp_path / "lit", **QUIET).metrics
    assert_same_run(RunFolder(tmp_path / "torch"), RunFolder(tmp_path / "lit"))
    assert lit["final_test_accuracy_tta"] == plain["final_test_accuracy_tta"]
    # With shifted views each trainer also reports the flip alone, from the same weights, as an independent pass
    # of the saved model finds (one image of the 32 may differ: rounding).
    assert lit["final_test_accuracy_flip_tta"] == plain["final_test_accuracy_flip_tta"]
    from test_train import flip_tta_accuracy

    expected = flip_tta_accuracy(tmp_path / "torch" / "model.pt", cfg, data)
    assert plain["final_test_accuracy_flip_tta"] == pytest.approx(expected, abs=1 / 32 + 1e-9)


def test_the_batched_data_path_makes_the_same_run_in_both_trainers_and_resumes_exactly(data, tmp_path, monkeypatch):
    """data_path="batched" (batch_transform.BatchLoader on the training device) with the fast recipe's parts and
    dropout: plain 3 epochs straight = Lightning 1 + resume for 2. Each epoch's augmentations are drawn for the
    epoch the plain loop sets (set_epoch(epoch - 1)), in Lightning too, whose resumed first epoch is epoch 2."""
    from cifar_s12.batch_transform import BatchLoader

    drawn, iterate = [], BatchLoader.__iter__

    def recording_iter(self):  # a generator, as BatchLoader.__iter__: the epoch read at the first batch
        if self.train:
            drawn.append(self.sampler.epoch)
        yield from iterate(self)

    monkeypatch.setattr(BatchLoader, "__iter__", recording_iter)
    cfg = make_config("fast", epochs=3, subset=64, test_subset=32, batch_size=16, max_lr=0.1, precision="fp32",
                      dropout=0.1, data_path="batched")
    plain = train.fit(cfg, tmp_path / "torch", data=data, **QUIET).metrics
    assert drawn == [0, 1, 2] and plain["loader_workers"] == 0
    fit_lightning(cfg, tmp_path / "lit", data=data, stop_after=1, **QUIET)
    assert drawn[3:] == [0]
    lit = fit_lightning(cfg, tmp_path / "lit", data=data, resume=tmp_path / "lit", **QUIET).metrics
    assert drawn[4:] == [1, 2]
    assert_same_run(RunFolder(tmp_path / "torch"), RunFolder(tmp_path / "lit"))
    assert lit["config"]["data_path"] == "batched"
    assert lit["final_test_accuracy_tta"] == plain["final_test_accuracy_tta"]
    # The albumentations path draws other augmentations (of the same distributions): another run.
    other = train.fit(replace(cfg, data_path="albumentations", num_workers=0), tmp_path / "albu", data=data,
                      stop_after=1, **QUIET).metrics
    assert other["history"][0]["train_loss"] != plain["history"][0]["train_loss"]


def test_batched_ddp_shares_are_disjoint_and_each_process_draws_its_own_augmentations():
    """build_loaders' batched loaders for ranks 0 and 1 of 2, as the Lightning DataModule builds them under DDP."""
    data = identical_images()
    cfg = make_config("best", batch_size=16, data_path="batched")
    seen = {}
    for rank in (0, 1):
        train_loader, test_loader = build_loaders(cfg, data, rank, 2)
        for epoch in (0, 1):
            train_loader.sampler.set_epoch(epoch)
            images = [x for x, _ in train_loader]
            seen[rank, epoch] = torch.cat(images), train_loader.sampler.indices().tolist()
        assert len(train_loader) == 4  # 64 images each, in batches of 16
        assert torch.cat([y for _, y in test_loader]).tolist() == data.test.labels[rank::2].tolist()
    for epoch in (0, 1):
        (x0, share0), (x1, share1) = seen[0, epoch], seen[1, epoch]
        assert sorted(share0 + share1) == list(range(128))  # each image once, in one process
        assert not any(torch.equal(a, b) for a, b in zip(x0, x1))  # one image everywhere: only the draws differ
    assert seen[0, 0][1] != seen[0, 1][1]


def test_the_lightning_datamodule_builds_the_batched_loaders_on_the_trainers_device_with_its_share(data):
    from types import SimpleNamespace

    from cifar_s12.batch_transform import BatchLoader
    from cifar_s12.lit import CifarDataModule

    cfg = make_config("best", subset=64, test_subset=32, batch_size=16, data_path="batched")
    module = CifarDataModule(cfg, data, first_epoch=2)
    module.trainer = SimpleNamespace(global_rank=1, world_size=2,
                                     strategy=SimpleNamespace(root_device=torch.device("cpu")))
    module.setup("fit")
    train_loader, test_loader = module.train_dataloader(), module.val_dataloader()
    assert isinstance(train_loader, BatchLoader) and isinstance(test_loader, BatchLoader)
    assert train_loader.device == torch.device("cpu") and train_loader.sampler.epoch == 2  # a resumed run's epoch 3
    assert (train_loader.sampler.rank, train_loader.sampler.world_size, len(train_loader)) == (1, 2, 2)
