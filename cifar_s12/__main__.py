"""The command line: ``python -m cifar_s12 {train,lr-find,report,predict} ...``. Parses flags and calls the package; no
training logic of its own. A UserError (missing data, bad file, unknown name) becomes one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .config import RECIPES, TrainConfig, make_config
from .errors import UserError
from .model import MODELS
from .utils import PRECISIONS


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _add_recipe_flags(p: argparse.ArgumentParser) -> None:
    """Flags that override fields of the chosen recipe; left out, the recipe's value stands."""
    p.add_argument("--recipe", choices=sorted(RECIPES), default="best", help="preset hyper-parameters (default: best)")
    p.add_argument("--model", choices=sorted(MODELS), help="network (default: custom_resnet)")
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--optimizer", choices=["sgd", "adam"])
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--label-smoothing", type=_fraction)
    p.add_argument("--dropout", type=_fraction)
    p.add_argument("--data-dir", help="CIFAR-10 location: torchvision's files (downloaded if missing) or an "
                                      "image-folder tree train/<class>/*.png (default: $CIFAR_S12_DATA, else data/)")
    p.add_argument("--no-download", dest="download", action="store_false", default=None,
                   help="fail instead of downloading CIFAR-10 when it is missing")
    p.add_argument("--subset", type=_positive_int, help="train on a class-balanced subset of N images")
    p.add_argument("--test-subset", type=_positive_int, help="evaluate on a class-balanced subset of N test images")
    p.add_argument("--seed", type=int)
    p.add_argument("--precision", choices=PRECISIONS,
                   help="auto (default): bf16 autocast + channels_last on CPU, fp16/bf16 on CUDA; fp32 turns it off")
    p.add_argument("--workers", type=int, dest="num_workers", help="DataLoader workers (default: CPU count, max 8)")


def _config(args: argparse.Namespace) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"recipe"}
    cfg = make_config(args.recipe, **{k: v for k, v in vars(args).items() if k in fields})
    if getattr(args, "find_lr", False):
        cfg = dataclasses.replace(cfg, max_lr=None)
    return cfg


def cmd_train(args: argparse.Namespace) -> None:
    from .plots import plot_curves, plot_lr_finder, save_figure
    from .train import fit

    cfg = _config(args)
    out = Path(args.out)
    result = fit(cfg, out_dir=out)
    save_figure(plot_curves(result.metrics["history"], result.metrics["lr_schedule"]), out / "curves.png")
    if result.lr_find:
        r = result.lr_find
        save_figure(plot_lr_finder(r.lrs, r.losses, r.suggested_lr), out / "lr_finder.png")
    print(f"final test accuracy {result.metrics['final_test_accuracy']:.4f} in "
          f"{result.metrics['wall_seconds']:.0f} s; wrote {out}/metrics.json, model.pt, curves.png")


def cmd_lr_find(args: argparse.Namespace) -> None:
    from .plots import plot_lr_finder, save_figure
    from .train import Runtime, build_loaders, build_model_for, find_lr, prepare_data
    from .utils import seed_everything

    cfg = _config(args)
    seed_everything(cfg.seed)
    runtime = Runtime.create(cfg.precision)
    train_loader, _ = build_loaders(cfg, prepare_data(cfg))
    model = runtime.prepare(build_model_for(cfg))
    result = find_lr(model, train_loader, cfg, runtime, start_lr=args.start_lr, end_lr=args.end_lr,
                     num_iter=args.num_iter)
    save_figure(plot_lr_finder(result.lrs, result.losses, result.suggested_lr), args.plot)
    print(f"suggested max LR: {result.suggested_lr:.4g} (plot: {args.plot})")


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import run_bench
    from .utils import write_json

    cfg = make_config("best", model=args.model, data_dir=args.data_dir, num_workers=args.num_workers)
    result = run_bench(cfg, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                       loader_batches=args.loader_batches)
    print(f"device: {result['device_name']} ({result['device']}), {result['torch_threads']} torch threads, "
          f"batch {result['batch_size']}")
    print(f"train step, fast path ({result['fast_path']}): {result['train_images_per_second']:8.1f} images/s")
    print(f"train step, fp32 channels-first eager:      {result['baseline_fp32_images_per_second']:8.1f} images/s"
          f"  -> fast path is {result['fast_vs_baseline']:.2f}x")
    print(f"loader with training augmentations ({result['loader_workers']} workers): "
          f"{result['loader_images_per_second']:8.1f} images/s  -> {result['loader_vs_model']:.1f}x the model")
    if args.json:
        write_json(args.json, result)


def cmd_report(args: argparse.Namespace) -> None:
    from .report import write_report

    for line in write_report(args.checkpoint, args.out, data_dir=args.data_dir, test_images=args.subset,
                             layer=args.layer, opacity=args.opacity, n=args.n):
        print(line)


def cmd_predict(args: argparse.Namespace) -> None:
    from .analysis import load_checkpoint, load_image, predict_probabilities, top_k

    loaded = load_checkpoint(args.checkpoint)
    loaded_images = [load_image(path) for path in args.images]  # every file is checked before any output
    probabilities = predict_probabilities(loaded, [image for image, _ in loaded_images])
    for path, (_, note), best in zip(args.images, loaded_images, top_k(probabilities, loaded.classes, args.top)):
        if note:
            print(f"note: {note}")
        print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in best))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cifar_s12", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model; writes metrics.json, model.pt and curves.png to --out")
    _add_recipe_flags(p)
    lr = p.add_mutually_exclusive_group()
    lr.add_argument("--max-lr", type=_positive_float, help="OneCycle peak LR (default: the recipe's)")
    lr.add_argument("--find-lr", action="store_true", help="choose the peak LR with an LR range test first")
    p.add_argument("--tta", action="store_true", default=None, help="also report flip-TTA test accuracy")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("lr-find", help="LR range test: print the suggested max LR and save the plot")
    _add_recipe_flags(p)
    p.add_argument("--start-lr", type=_positive_float, default=1e-5)
    p.add_argument("--end-lr", type=_positive_float, default=10.0)
    p.add_argument("--num-iter", type=_positive_int, default=100)
    p.add_argument("--plot", default="lr_finder.png", help="where to save the plot (default: lr_finder.png)")
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("bench", help="measure training-step (fast path vs fp32 baseline) and loader throughput")
    p.add_argument("--model", choices=sorted(MODELS), default="custom_resnet")
    p.add_argument("--batch-size", type=_positive_int, default=512)
    p.add_argument("--steps", type=_positive_int, default=4, help="timed training steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--loader-batches", type=_positive_int, default=20)
    p.add_argument("--data-dir")
    p.add_argument("--workers", type=int, dest="num_workers")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="figures and tables of a trained model on the test set, written to --out")
    p.add_argument("--checkpoint", required=True, help="model.pt from train, or a Lightning .ckpt")
    p.add_argument("--data-dir", help="CIFAR-10 location (default: $CIFAR_S12_DATA, else data/)")
    p.add_argument("--subset", type=_positive_int, help="use a class-balanced subset of N test images")
    p.add_argument("--layer", help="GradCAM layer, dotted module name (default: the model's cam_layer)")
    p.add_argument("--opacity", type=_unit_interval, default=0.5, help="GradCAM heatmap opacity (default: 0.5)")
    p.add_argument("-n", type=_positive_int, default=20, help="misclassified images to show (default: 20)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("predict", help="top classes with probabilities for image files (any size: made 32x32)")
    p.add_argument("--checkpoint", required=True, help="model.pt from train, or a Lightning .ckpt")
    p.add_argument("--top", type=_positive_int, default=3, help="how many classes to print (default: 3)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(func=cmd_predict)
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
