"""The command line: ``cifar-s12 COMMAND ...`` (or ``python -m cifar_s12 COMMAND ...``); ``--help`` lists the commands.

Parses flags and calls the package; no training logic of its own. A UserError (missing data, bad file, unknown name) becomes one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
from pathlib import Path

from .app.bench import CLIENTS
from .config import LOADING_FIELDS, RECIPES, TrainConfig, apply_settings, make_config
from .device import PRECISIONS
from .model import MODELS
from .utils import UserError


def _parse(kind: type, text: str):
    """``int(text)`` or a finite ``float(text)``, as an argparse error that says what was wrong."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {'a whole number' if kind is int else 'a number'}: {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _number(kind: type, ok, requirement: str):
    """An argparse type: ``kind(text)`` (finite, for floats) that passes ``ok``, else "must be <requirement>"."""
    def parse(text: str):
        value = _parse(kind, text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value
    return parse


_positive_int = _number(int, lambda v: v > 0, "a positive integer")
_non_negative_int = _number(int, lambda v: v >= 0, "0 or more")
_seed = _number(int, lambda v: 0 <= v < 2**63, "in [0, 2**63)")  # torch.manual_seed takes a signed 64-bit number
_num_iter = _number(int, lambda v: v >= 2, "2 or more (a range test needs two LRs)")
_non_negative_float = _number(float, lambda v: v >= 0, "0 or more")
_positive_float = _number(float, lambda v: v > 0, "a positive number")
_fraction = _number(float, lambda v: 0 <= v < 1, "in [0, 1)")
_unit_interval = _number(float, lambda v: 0 <= v <= 1, "in [0, 1]")
_port = _number(int, lambda v: 0 < v < 65536, "a port number, 1-65535")
CHECKPOINT_HELP = ("model.pt from train, a Lightning .ckpt or a .safetensors from export "
                   "(default: the shipped weights, weights/custom_resnet.safetensors)")


def _add_data_flags(p: argparse.ArgumentParser, where: str, download_default: bool | None = True) -> None:
    """--data-dir and --no-download, declared once for every command that reads CIFAR-10.

    `download_default=None` leaves the choice to the recipe (TrainConfig.download) unless the flag is given.
    """
    p.add_argument("--data-dir", help=f"CIFAR-10 location{where}")
    p.add_argument("--no-download", dest="download", action="store_false", default=download_default,
                   help="fail instead of downloading CIFAR-10 when it is missing")


def _add_recipe_flags(p: argparse.ArgumentParser) -> None:
    """Flags that override fields of the chosen recipe; left out, the recipe's value stands."""
    p.add_argument("--recipe", choices=sorted(RECIPES), default="best", help="preset hyper-parameters (default: best)")
    p.add_argument("--model", choices=sorted(MODELS), help="network (default: custom_resnet)")
    p.add_argument("--epochs", type=_positive_int, help="epochs; OneCycle spans them all (best: 24)")
    p.add_argument("--batch-size", type=_positive_int, help="training batch size (best: 512)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], help="sgd: Nesterov momentum 0.9 (best); adam (course)")
    p.add_argument("--weight-decay", type=_non_negative_float, help="best: 5e-4, course: 1e-4")
    p.add_argument("--label-smoothing", type=_fraction, help="best: 0.2, course: 0")
    p.add_argument("--dropout", type=_fraction, help="dropout after every conv block, custom_resnet only (default: 0)")
    _add_data_flags(p, ": torchvision's files (downloaded if missing) or an image-folder tree "
                       "train/<class>/*.png (default: $CIFAR_S12_DATA, else data/)", download_default=None)
    p.add_argument("--subset", type=_positive_int, help="train on a class-balanced subset of N images")
    p.add_argument("--test-subset", type=_positive_int, help="evaluate on a class-balanced subset of N test images")
    p.add_argument("--seed", type=_seed, help="seeds weights, shuffling and augmentations (default: 1)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="auto (default): bf16 autocast + channels_last where bf16 is native (AVX512-bf16/AMX CPUs, "
                        "Ampere+ GPUs), fp16 on older GPUs, else fp32 (on CPUs channels_last throughout); fp32 "
                        "turns autocast off")
    p.add_argument("--workers", type=_non_negative_int, dest="num_workers",
                   help="DataLoader workers (default: CPU count, max 8)")
    p.add_argument("--set", dest="settings", action="append", metavar="FIELD=VALUE",
                   help="any other recipe field, e.g. --set batch_size=256 --set augment.flip=random (repeatable)")


def _config(args: argparse.Namespace) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"recipe"}
    cfg = make_config(args.recipe, **{k: v for k, v in vars(args).items() if k in fields})
    cfg = apply_settings(cfg, getattr(args, "settings", None) or [])
    if getattr(args, "find_lr", False):
        cfg = dataclasses.replace(cfg, max_lr=None)
    return cfg


LIGHTNING_FLAGS = {"devices": "--devices", "accelerator": "--accelerator", "strategy": "--strategy",
                   "fast_dev_run": "--fast-dev-run"}


def _check_trainer_flags(args: argparse.Namespace) -> None:
    given = [flag for name, flag in LIGHTNING_FLAGS.items() if getattr(args, name) not in (None, False)]
    if args.trainer != "lightning" and (given or args.lr_finder == "lightning"):
        flags = given or ["--lr-finder lightning"]
        raise UserError(f"{', '.join(flags)} {'needs' if len(flags) == 1 else 'need'} --trainer lightning")
    if args.resume and args.fast_dev_run:
        raise UserError("--fast-dev-run checks a new run's setup; it cannot be combined with --resume")
    if args.resume:
        # A resumed run continues the checkpoint's recipe and OneCycle plan; only where the data is may change.
        _refuse_recipe_flags(args, "--resume continues the checkpoint's recipe")
    elif args.lr_finder and _config(args).max_lr is not None:  # the course recipe runs a range test by itself
        raise UserError("--lr-finder chooses the LR range test, and this run has a fixed max LR: pass --find-lr too")


def _refuse_recipe_flags(args: argparse.Namespace, why: str) -> None:
    """For a command that takes its recipe from a run already made: any recipe flag given is an error."""
    given = [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(TrainConfig)
             if f.name not in {"recipe", *LOADING_FIELDS} and getattr(args, f.name, None) not in (None, False)]
    given += [flag for flag, name in (("--max-lr", "max_lr"), ("--find-lr", "find_lr"), ("--lr-finder", "lr_finder"),
                                      ("--set", "settings")) if getattr(args, name, None)]
    if given or args.recipe != "best":
        raise UserError(f"{why}; drop {', '.join(given) or '--recipe'}")


def _check_out_dir(path: str, flag: str = "--out") -> Path:
    """Check --out before any work, so a bad path fails now and not after the first epoch (nothing is created yet:
    a run that fails on its data leaves no empty folder behind)."""
    if not path.strip():
        raise UserError(f"{flag} is empty: name a folder")
    out = Path(path)
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"cannot use {flag} {out}: {existing} is a file")
    if not os.access(existing, os.W_OK):
        raise UserError(f"cannot use {flag} {out}: {existing} is not writable")
    return out


def _check_out_file(path: str, flag: str) -> Path:
    """The same early check for an output file (a plot, a JSON): its folder must be usable, it must not be one."""
    out = Path(path)
    if out.is_dir():
        raise UserError(f"cannot use {flag} {out}: it is a folder")
    _check_out_dir(str(out.parent), flag)
    return out


def _make_room_for_new_run(out: Path, overwrite: bool, compare: bool = False) -> None:
    """An --out that already holds a run is refused: a new run would replace its model and metrics after the first
    epoch, and mix its checkpoints and logs with the new ones. With --overwrite the old run's files go first (only
    those run_folder.py names, so a user's own files in the folder stay)."""
    from .runs.folder import CompareFolder, RunFolder

    folder = CompareFolder(out) if compare else RunFolder(out)
    _refuse_to_replace(out, folder.written(), overwrite, "a run")
    if folder.remove_run():
        print(f"--overwrite: removed the earlier run's files from {out}", file=sys.stderr)


def _refuse_to_replace(out: Path, found: list[Path], overwrite: bool, what: str) -> None:
    if found and not overwrite:
        raise UserError(f"--out {out} already holds {what} ({', '.join(p.name for p in found)}): choose another "
                        f"folder, or pass --overwrite to replace it")


def cmd_train(args: argparse.Namespace) -> None:
    from .runs.folder import RunFolder, resume_file

    _check_trainer_flags(args)
    cfg = _config(args)
    if args.out is None and not args.resume:
        raise UserError("--out is required: name a folder for the run (or --resume DIR to continue one)")
    resumed = RunFolder.of_checkpoint(resume_file(args.resume, args.trainer)) if args.resume else None
    out = _check_out_dir(args.out if args.out is not None else str(resumed.root))
    # A fast dev run writes nothing; a resumed run continues in its own folder (or starts a new one elsewhere).
    resumes_here = resumed is not None and resumed.root.resolve() == out.resolve()
    if not (args.fast_dev_run or resumes_here):
        _make_room_for_new_run(out, args.overwrite)
    if args.trainer == "lightning":
        from .lit import fit_lightning

        result = fit_lightning(cfg, out, devices=args.devices or 1, accelerator=args.accelerator or "auto",
                               strategy=args.strategy or "auto", resume=args.resume, stop_after=args.stop_after,
                               fast_dev_run=args.fast_dev_run, lr_finder=args.lr_finder or "torch")
    else:
        from .train import fit

        result = fit(cfg, out_dir=out, resume=args.resume, stop_after=args.stop_after)
    if not result.is_global_zero:  # under DDP every process returns here; one reports
        return
    if args.fast_dev_run:
        print(f"fast dev run: one training and one test batch ran; nothing written to {out}")
    else:
        from .analysis.plots import save_run_figures

        m, folder = result.metrics, RunFolder(out)
        save_run_figures(folder, m, result.lr_find)
        epochs = m["config"]["epochs"]  # the run's, which a resumed run took from its checkpoint
        if m["epochs_completed"] == epochs:
            done = f"final test accuracy {m['final_test_accuracy']:.4f}"
        else:
            done = (f"stopped after epoch {m['epochs_completed']} of {epochs} (test accuracy "
                    f"{m['final_test_accuracy']:.4f}; continue with --resume {out})")
        print(f"{done} in {m['wall_seconds']:.0f} s; wrote {folder.metrics}, {folder.model}, {folder.curves}")


def cmd_lr_find(args: argparse.Namespace) -> None:
    from .analysis.plots import figure_format, figure_formats, plot_lr_finder, plot_lr_finders, save_figure
    from .lit import CifarLitModule
    from .lr_find import LR_FINDERS, range_tests

    _check_out_file(args.plot, "--plot")
    plot_format, formats = figure_format(args.plot), figure_formats()
    if plot_format not in formats:
        raise UserError(f"--plot {args.plot}: matplotlib cannot write .{plot_format} files; "
                        f"use one of {', '.join(sorted(formats))}")
    if args.start_lr >= args.end_lr:
        raise UserError(f"--start-lr ({args.start_lr:g}) must be below --end-lr ({args.end_lr:g})")
    kinds = list(LR_FINDERS) if args.lr_finder == "both" else [args.lr_finder]
    results = range_tests(kinds, _config(args), lightning_module=CifarLitModule, start_lr=args.start_lr,
                          end_lr=args.end_lr, num_iter=args.num_iter)
    if len(results) == 1:
        (result,) = results.values()
        save_figure(plot_lr_finder(result.lrs, result.losses, result.suggested_lr), args.plot)
    else:
        save_figure(plot_lr_finders({LR_FINDERS[k]: r for k, r in results.items()}), args.plot)
    found = ", ".join(f"{r.suggested_lr:.4g}" + (f" ({LR_FINDERS[k]})" if len(results) > 1 else "")
                      for k, r in results.items())
    print(f"suggested max LR: {found} (plot: {args.plot})")


def cmd_compare(args: argparse.Namespace) -> None:
    from .runs.comparison import compare_runs, compare_trainers
    from .runs.folder import CompareFolder

    out = _check_out_dir(args.out)
    if args.runs:
        _refuse_recipe_flags(args, "--runs compares two runs as they were trained")
        # Only compare.json and compare.png are written: a folder holding the two runs themselves is fine.
        found = [p for p in (CompareFolder(out).summary, CompareFolder(out).figure) if p.exists()]
        _refuse_to_replace(out, found, args.overwrite, "a comparison")
        s = compare_runs(*args.runs, out)
    else:
        _make_room_for_new_run(out, args.overwrite, compare=True)
        s = compare_trainers(_config(args), out)
    for name in ("torch", "lightning"):
        by_epoch = ", ".join(f"{v:.0f}" for v in s[name]["images_per_second_by_epoch"])
        cpu = f", {s[name]['cpu_seconds']:.0f} s CPU" if s[name]["cpu_seconds"] is not None else ""
        print(f"{name:9s} final test accuracy {s[name]['final_test_accuracy']:.4f} | "
              f"{s[name]['images_per_second']:.1f} images/s in training (by epoch: {by_epoch}) | "
              f"{s[name]['wall_seconds']:.0f} s wall{cpu}")
    print(f"lightning / torch throughput: {s['throughput_ratio']:.3f}; accuracy difference "
          f"{100 * s['accuracy_difference']:+.2f} points; epoch losses differ by at most "
          f"{s['max_relative_loss_difference']:.1e} (relative) (wrote {CompareFolder(out).summary} and "
          f"{CompareFolder(out).figure.name})")


def _devices(text: str) -> int | str:
    """A count (1 or more), "auto", or Lightning's list of device indices such as "0,1"."""
    if text.isdigit() and int(text) > 0:
        return int(text)
    if text == "auto" or re.fullmatch(r"\d+(,\d+)+", text):
        return text
    raise argparse.ArgumentTypeError(f"must be a count of 1 or more, 'auto' or indices like 0,1; got {text!r}")


def _add_lightning_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Lightning (with --trainer lightning)")
    g.add_argument("--lr-finder", choices=["torch", "lightning"],
                   help="with --find-lr: torch-lr-finder (default) or Lightning's Tuner.lr_find")
    g.add_argument("--devices", type=_devices, help="devices (processes) to train on: N, 'auto' (default: 1)")
    g.add_argument("--accelerator", choices=["cpu", "gpu", "cuda", "mps", "auto"], help="default: auto")
    g.add_argument("--strategy", help="e.g. ddp for several devices (default: auto)")
    g.add_argument("--fast-dev-run", action="store_true", help="one training and one validation batch, no logs")


def cmd_bench(args: argparse.Namespace) -> None:
    from .benchmarks.throughput import run_bench
    from .utils import write_json

    if args.json:
        _check_out_file(args.json, "--json")
    cfg = make_config(args.recipe, model=args.model, data_dir=args.data_dir, num_workers=args.num_workers,
                      download=args.download)
    result = run_bench(cfg, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                       loader_batches=args.loader_batches, epoch_images=args.epoch_images)
    print(f"device: {result['device_name']} ({result['device']}), {result['torch_threads']} torch threads, "
          f"batch {result['batch_size']}")
    print(f"train step, fast path ({result['fast_path']}): {result['train_images_per_second']:8.1f} images/s "
          f"({result['train_gflops']:.0f} GFLOP/s at {result['train_gflop_per_image']:.2f} GFLOP per image)")
    print(f"train step, fp32 channels-first eager:      {result['baseline_fp32_images_per_second']:8.1f} images/s "
          f"({result['baseline_fp32_gflops']:.0f} GFLOP/s)  -> fast path is {result['fast_vs_baseline']:.2f}x")
    print(f"matrix product {result['matmul_size']}x{result['matmul_size']}, fast dtype vs fp32: "
          f"{result['matmul_fast_gflops']:.0f} vs {result['matmul_fp32_gflops']:.0f} GFLOP/s  -> "
          f"{result['matmul_fast_vs_fp32']:.2f}x; at that rate the fast path could reach "
          f"{result['ceiling_vs_baseline']:.2f}x the baseline (it runs at {result['train_gflops_of_matmul']:.0%} of it)")
    print(f"loader with training augmentations ({result['loader_workers']} workers): "
          f"{result['loader_images_per_second']:8.1f} images/s  -> {result['loader_vs_model']:.1f}x the model")
    print(f"batched loader on {result['device']} (data_path=batched): {result['loaders']['batched']:8.1f} images/s  "
          f"-> {result['loaders_vs_model']['batched']:.1f}x the model, {result['batched_vs_albumentations']:.1f}x "
          f"the albumentations loader (best of {result['loader_rounds']} rounds each, alternating)")
    for path, rate in result["loaders"].items():
        tflops = result["loader_feeds_tflops"][path]
        print(f"  {path}: feeds a training step of up to {rate:,.0f} images/s ({tflops:.1f} TFLOP/s of training "
              f"arithmetic; a GPU step faster than that waits on it); here the step runs "
              f"{result['train_images_per_second']:,.0f} images/s: the {result['bottleneck'][path]} is the bottleneck "
              f"on this device")
    if "epoch" in result:
        print(f"training epoch, {result['epoch_images']:,} images after the first batch, each path in a process of "
              f"its own (memory: {result['epoch_memory']}):")
        for path, e in result["epoch"].items():
            device = (f", device peak {e['device_peak_mb']:,.0f} MiB (from {e['device_before_mb']:,.0f})"
                      if e["device_peak_mb"] is not None else "")
            print(f"  {path:<14} {e['images_per_second']:8.1f} images/s ({e['workers']} workers), host peak "
                  f"{e['host_peak_mb']:,.0f} MiB ({e['host_memory']}; +{e['host_added_mb']:,.0f} over "
                  f"{e['host_before_mb']:,.0f} before the loader){device}")
        print(f"  -> the batched epoch runs {result['epoch_batched_vs_albumentations']:.2f}x the albumentations one")
    if args.json:
        write_json(args.json, result)


def cmd_results(args: argparse.Namespace) -> None:
    from .runs.table import load_runs, markdown_table, summarise

    runs = [run for folder in args.dir for run in load_runs(folder)]  # several folders make one table
    if not runs:
        raise UserError(f"no finished runs in {' or '.join(args.dir)} (copy a run's metrics.json there)")
    print(markdown_table(summarise(runs)))


def cmd_report(args: argparse.Namespace) -> None:
    from .analysis.report import write_report
    from .app.shipped_weights import checkpoint_or_shipped

    _check_out_dir(args.out)
    for line in write_report(checkpoint_or_shipped(args.checkpoint), args.out, data_dir=args.data_dir,
                             test_images=args.test_subset, layer=args.layer, opacity=args.opacity, n=args.n,
                             download=args.download):
        print(line)


def cmd_predict(args: argparse.Namespace) -> None:
    from .analysis.predictions import load_image, predict_probabilities, top_k
    from .app.shipped_weights import checkpoint_or_shipped
    from .runs.checkpoints import load_checkpoint

    loaded = load_checkpoint(checkpoint_or_shipped(args.checkpoint))
    loaded_images = [load_image(path) for path in args.images]  # every file is checked before any output
    probabilities = predict_probabilities(loaded, [image for image, _ in loaded_images])
    for path, (_, note), best in zip(args.images, loaded_images, top_k(probabilities, loaded.classes, args.top)):
        if note:
            print(f"note: {note}")
        print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in best))


def cmd_export(args: argparse.Namespace) -> None:
    from .app.shipped_weights import export_weights

    _check_out_file(args.out, "--out")
    for line in export_weights(args.checkpoint, args.out, data_dir=args.data_dir, commit=args.commit):
        print(line)


def cmd_app(args: argparse.Namespace) -> None:
    from .app.gradio_app import serve

    print(f"serving the app on http://{args.host}:{args.port}/ (Ctrl-C stops it)")
    serve(args.checkpoint, host=args.host, port=args.port, data_dir=args.data_dir, keep_files=args.keep_files)


def cmd_space(args: argparse.Namespace) -> None:
    from .app.shipped_weights import checkpoint_or_shipped
    from .app.space import write_space

    _check_out_dir(args.out)
    for line in write_space(args.out, checkpoint_or_shipped(args.checkpoint), data_dir=args.data_dir):
        print(line)


def cmd_app_bench(args: argparse.Namespace) -> None:
    from .app.bench import run_app_bench
    from .utils import write_json

    if args.json:
        _check_out_file(args.json, "--json")
    result = run_app_bench(args.checkpoint, clients=tuple(args.clients), requests=args.requests, url=args.url,
                           via=tuple(args.via))
    for row in result["runs"]:
        print(f"{row['via']:>13}, {row['clients']} client{'s' if row['clients'] > 1 else ' '}: {row['requests']} requests, "
              f"p50 {row['p50_ms']:.0f} ms, p95 {row['p95_ms']:.0f} ms, max {row['max_ms']:.0f} ms, "
              f"{row['requests_per_second']:.1f} requests/s" + (f", {row['errors']} errors" if row["errors"] else ""))
    if args.json:
        write_json(args.json, result)


def build_parser() -> argparse.ArgumentParser:
    # The installed command (cifar-s12) or python -m cifar_s12: usage lines name the one the user typed.
    prog = "cifar-s12" if Path(sys.argv[0]).name == "cifar-s12" else "python -m cifar_s12"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model; writes metrics.json, model.pt and curves.png to --out")
    _add_recipe_flags(p)
    lr = p.add_mutually_exclusive_group()
    lr.add_argument("--max-lr", type=_positive_float, help="OneCycle peak LR (default: the recipe's)")
    lr.add_argument("--find-lr", action="store_true", help="choose the peak LR with an LR range test first")
    p.add_argument("--tta", action="store_true", default=None, help="also report flip-TTA test accuracy")
    p.add_argument("--out", help="output folder (required, except with --resume: then the resumed run's)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (refused otherwise)")
    p.add_argument("--trainer", choices=["torch", "lightning"], default="torch",
                   help="plain PyTorch loop (default) or PyTorch Lightning; same recipe and outputs")
    p.add_argument("--resume", metavar="DIR",
                   help="continue the run in DIR (either trainer) exactly where its last finished epoch left it")
    p.add_argument("--stop-after", type=_positive_int, metavar="N",
                   help="stop once epoch N is done, keeping the schedule of --epochs (continue with --resume)")
    _add_lightning_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("lr-find", help="LR range test: print the suggested max LR and save the plot")
    _add_recipe_flags(p)
    p.add_argument("--start-lr", type=_positive_float, default=1e-5, help="first LR of the test (default: 1e-5)")
    p.add_argument("--end-lr", type=_positive_float, default=10.0, help="last LR of the test (default: 10)")
    p.add_argument("--num-iter", type=_num_iter, default=100, help="training steps, LR rising exponentially "
                                                                    "(default: 100)")
    p.add_argument("--plot", default="lr_finder.png", help="where to save the plot (default: lr_finder.png)")
    p.add_argument("--lr-finder", choices=["torch", "lightning", "both"], default="torch",
                   help="torch-lr-finder (default), Lightning's Tuner.lr_find, or both side by side")
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("compare", help="train with both trainers (same seed and recipe); print accuracy and speed")
    _add_recipe_flags(p)
    p.add_argument("--max-lr", type=_positive_float, help="OneCycle peak LR (default: the recipe's)")
    p.add_argument("--out", required=True, help="output folder (torch/, lightning/, compare.json, compare.png)")
    p.add_argument("--runs", nargs=2, metavar=("TORCH_RUN", "LIGHTNING_RUN"),
                   help="compare two runs already made (the plain trainer's, then Lightning's: run folders or their "
                        "metrics.json, e.g. results/*.json) instead of training; writes compare.json and compare.png")
    p.add_argument("--overwrite", action="store_true", help="replace the comparison already in --out")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("bench", help="measure training-step (fast path vs fp32 baseline) and both data paths' loader "
                                     "throughput, and matrix products in the fast dtype vs fp32")
    p.add_argument("--model", choices=sorted(MODELS), default="custom_resnet", help="network (default: custom_resnet)")
    p.add_argument("--batch-size", type=_positive_int, default=512, help="images per step (default: 512)")
    p.add_argument("--steps", type=_positive_int, default=4, help="timed training steps per variant (default: 4)")
    p.add_argument("--warmup", type=_non_negative_int, default=2, help="untimed steps first (default: 2)")
    p.add_argument("--loader-batches", type=_positive_int, default=20,
                   help="batches each loader is timed on (default: 20)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="best",
                   help="whose augmentations the loaders draw (default: best)")
    p.add_argument("--epoch-images", type=_positive_int, metavar="N",
                   help="also train a partial epoch of N images with each data path (albumentations, batched), each "
                        "in a process of its own: images/s and peak memory")
    _add_data_flags(p, ", for the loader (default: $CIFAR_S12_DATA, else data/)")
    p.add_argument("--workers", type=_non_negative_int, dest="num_workers",
                   help="loader workers (default: CPU count, max 8)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("results", help="the README results table from committed runs (results/*.json)")
    p.add_argument("--dir", nargs="+", default=["results"],
                   help="folder(s) of metrics.json copies, pooled into one table (default: results)")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("report", help="figures and tables of a trained model on the test set, written to --out")
    p.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    _add_data_flags(p, " (default: where the run found it, if it is still there; else $CIFAR_S12_DATA, else data/)")
    p.add_argument("--test-subset", type=_positive_int, help="use a class-balanced subset of N test images")
    # The flag's earlier name, still accepted; not listed, so --subset means training images everywhere in --help.
    p.add_argument("--subset", type=_positive_int, dest="test_subset", help=argparse.SUPPRESS)
    p.add_argument("--layer", help="GradCAM layer, dotted module name (default: the model's cam_layer)")
    p.add_argument("--opacity", type=_unit_interval, default=0.5, help="GradCAM heatmap opacity (default: 0.5)")
    p.add_argument("-n", type=_positive_int, default=20, help="misclassified images to show (default: 20)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("predict", help="top classes with probabilities for image files (any size: made 32x32)")
    p.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--top", type=_positive_int, default=3, help="how many classes to print (default: 3)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="a run's checkpoint -> fp16 safetensors + card (JSON) + mistakes cache, "
                                      "measured on the test set")
    p.add_argument("--checkpoint", required=True, help="model.pt from train, or a Lightning .ckpt")
    p.add_argument("--out", default="weights/custom_resnet.safetensors",
                   help="the .safetensors file (default: weights/custom_resnet.safetensors, the shipped weights)")
    p.add_argument("--data-dir", help="CIFAR-10 for measuring them (default: $CIFAR_S12_DATA, else data/)")
    p.add_argument("--commit", help="the git commit the run trained at (default: the one its metrics.json records)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("app", help="serve the Gradio app (classify uploads, GradCAM, misclassified gallery)")
    p.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=_port, default=7860, help="default: 7860")
    p.add_argument("--data-dir", help="CIFAR-10, to find the mistakes when they are not cached (default: "
                                      "$CIFAR_S12_DATA, else data/; never downloaded)")
    p.add_argument("--keep-files", type=_positive_int, default=600, metavar="SECONDS",
                   help="uploads and result images are deleted from Gradio's cache after this long (default: 600)")
    p.set_defaults(func=cmd_app)

    p = sub.add_parser("space", help="write a self-contained Hugging Face Space folder for the app")
    p.add_argument("--out", required=True, help="a new or empty folder")
    p.add_argument("--checkpoint", help="weights to ship (a .safetensors from export; default: the shipped ones)")
    p.add_argument("--data-dir", help="CIFAR-10, if the weights' mistakes are not cached yet")
    p.set_defaults(func=cmd_space)

    p = sub.add_parser("app-bench", help="latency and throughput of the app's classify + GradCAM over HTTP")
    p.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--url", help="bench an app already running there instead of starting one")
    p.add_argument("--clients", type=_positive_int, nargs="+", default=[1, 8],
                   help="concurrent client counts to measure (default: 1 8)")
    p.add_argument("--requests", type=_positive_int, default=200, help="requests per client (default: 200)")
    p.add_argument("--via", nargs="+", choices=CLIENTS, default=["http"],
                   help="the client: Gradio's REST API over plain HTTP, as a browser (default), and/or gradio_client")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.set_defaults(func=cmd_app_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; files already written are complete", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
