#!/usr/bin/env bash
# The data paths on a GPU, in one prepared check that fits in 10 minutes on one GPU (docs/data-path.md):
#   scripts/gpu_check.sh [OUT.json]        # default results/bench/gpu-check.json
# 1. bench (the fast recipe's augmentations, batch 256): both loaders' images/s on the device (albumentations in
#    DataLoader workers, batched on the GPU), the training step in the recipe's precision (its "auto": bf16
#    autocast on Ampere+), and a partial training epoch with each path (images/s, host and GPU memory);
# 2. `python -m cifar_s12 train --recipe fast --epochs 2 --set data_path=PATH --trainer TRAINER` for each path and
#    each trainer, into a temporary folder: each epoch's images/s, test accuracy, peak GPU memory
#    (torch.cuda.max_memory_allocated in the run's process) and peak host memory (the process's ru_maxrss, and the
#    summed PSS of the process and its loader workers sampled every 0.2 s);
# all in ONE JSON with the device's name, and for each path whether the loader or the model is the bottleneck.
# Without a GPU it falls back to the CPU, says so (and "device": "cpu", "fallback": true in the JSON), and trains
# on a small subset so that it finishes in minutes. The data: $CIFAR_S12_DATA or data/ as for every command (the
# GPU machine needs CIFAR-10 there, or the network to download it). Sizes can be changed with GPU_CHECK_SUBSET,
# GPU_CHECK_TEST_SUBSET (empty: the whole split), GPU_CHECK_EPOCHS, GPU_CHECK_EPOCH_IMAGES, GPU_CHECK_STEPS.
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1 GRADIO_ANALYTICS_ENABLED=False MPLBACKEND=Agg PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python}
OUT=${1:-results/bench/gpu-check.json}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$PYTHON" - "$OUT" "$WORK" <<'EOF'
import json, os, subprocess, sys, time
from pathlib import Path

import torch

from cifar_s12.config import DATA_PATHS
from cifar_s12.utils import write_json

out, work = Path(sys.argv[1]), Path(sys.argv[2])
start = time.perf_counter()
gpu = torch.cuda.is_available()  # no CUDA context here: the measuring processes have their own
env = os.environ.get
# On a GPU the whole data set; on the CPU fallback a subset that 2 cores train in about a minute per run.
subset = env("GPU_CHECK_SUBSET", "" if gpu else "512")
test_subset = env("GPU_CHECK_TEST_SUBSET", "" if gpu else "256")
epochs = int(env("GPU_CHECK_EPOCHS", "2"))
epoch_images = int(env("GPU_CHECK_EPOCH_IMAGES", "20480" if gpu else "256"))
steps = int(env("GPU_CHECK_STEPS", "20" if gpu else "1"))
if not gpu:
    print(f"gpu_check: no GPU here: falling back to the CPU, with --subset {subset or 'all'} --test-subset "
          f"{test_subset or 'all'} and a {epoch_images}-image bench epoch, so it finishes in minutes; the figures "
          f"are the CPU's", flush=True)
report = {"device": "cuda" if gpu else "cpu", "device_name": None, "fallback": not gpu,
          "recipe": "fast", "batch_size": 256, "epochs": epochs, "subset": subset or None,
          "test_subset": test_subset or None}

# 1. The loaders, the training step and a partial epoch with each path (bench), on the training device
bench_args = ["bench", "--recipe", "fast", "--batch-size", "256", "--steps", str(steps), "--warmup",
              str(max(1, steps // 4)), "--loader-batches", "20" if gpu else "10", "--epoch-images", str(epoch_images),
              "--json", str(work / "bench.json")]
print(f"gpu_check: python -m cifar_s12 {' '.join(bench_args)}", flush=True)
if subprocess.run([sys.executable, "-m", "cifar_s12", *bench_args]).returncode:
    sys.exit("gpu_check: the bench failed (above); nothing written")
bench = json.loads((work / "bench.json").read_text())
report.update(device_name=bench["device_name"], precision=bench["fast_path"],
              bench_command="python -m cifar_s12 " + " ".join(bench_args[:-2]), bench=bench)

# 2. Two epochs with each trainer and each path, each in a process of its own (its memory its own)
MEASURE = """import json, resource, sys, torch
from cifar_s12.__main__ import main
from cifar_s12.benchmarks.throughput import PeakMemory
try:
    with PeakMemory(interval=0.2) as memory:  # this process and its loader workers, summed PSS (bench's epoch too)
        code = main(sys.argv[2:])
finally:
    json.dump({"max_memory_allocated_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available()
               else None, "host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "host_peak_with_workers_mb": memory.peak, "host_memory": memory.method}, open(sys.argv[1], "w"))
sys.exit(code)
"""
report["runs"] = {}
for trainer in ("torch", "lightning"):
    for path in DATA_PATHS:
        folder = work / f"{trainer}-{path}"
        args = ["train", "--recipe", "fast", "--epochs", str(epochs), "--set", f"data_path={path}", "--trainer",
                trainer, "--out", str(folder)]
        args += ["--subset", subset] if subset else []
        args += ["--test-subset", test_subset] if test_subset else []
        # the JSON names the temporary folder $WORK, not this machine's path of it
        command = "python -m cifar_s12 " + " ".join(args).replace(str(work), "$WORK")
        print(f"gpu_check: {command}", flush=True)
        memory = work / f"{trainer}-{path}-memory.json"
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", MEASURE, str(memory), *args])
        run = {"command": command, "exit_code": done.returncode, "process_seconds": time.perf_counter() - t0}
        if memory.is_file():
            run.update(json.loads(memory.read_text()))
        if done.returncode == 0:
            metrics = json.loads((folder / "metrics.json").read_text())
            run.update(images_per_second=[h["images_per_second"] for h in metrics["history"]],
                       epoch_seconds=[h["epoch_seconds"] for h in metrics["history"]],
                       test_acc=[h["test_acc"] for h in metrics["history"]],
                       loader_workers=metrics.get("loader_workers"), run_device=metrics.get("device"),
                       wall_seconds=metrics.get("wall_seconds"))
        report["runs"].setdefault(trainer, {})[path] = run

# What it means: for each path, the loader's images/s against the step's (bench), and the runs' last epochs
train = bench["train_images_per_second"]
summary = [f"{'GPU ' + bench['device_name'] if gpu else 'CPU fallback (no GPU): ' + bench['device_name']}; "
           f"training step ({bench['fast_path']}) {train:,.0f} images/s at batch 256"]
for path in DATA_PATHS:
    summary.append(f"{path} loader {bench['loaders'][path]:,.0f} images/s ({bench['loaders_vs_model'][path]:.1f}x "
                   f"the step): the {bench['bottleneck'][path]} is the bottleneck")
for trainer, runs in report["runs"].items():
    rates = {p: r["images_per_second"][-1] for p, r in runs.items() if r.get("images_per_second")}
    if len(rates) == len(DATA_PATHS):
        ratio = rates["batched"] / rates["albumentations"]
        memory = {p: (r["max_memory_allocated_mb"], r["host_peak_with_workers_mb"]) for p, r in runs.items()}
        summary.append(f"{trainer} trainer, epoch {epochs}: albumentations {rates['albumentations']:,.0f}, batched "
                       f"{rates['batched']:,.0f} images/s ({ratio:.2f}x); peak "
                       + (f"GPU memory {memory['albumentations'][0]:,.0f} vs {memory['batched'][0]:,.0f} MiB, "
                          if gpu else "")
                       + f"host memory with workers {memory['albumentations'][1]:,.0f} vs "
                         f"{memory['batched'][1]:,.0f} MiB")
    else:
        summary.append(f"{trainer} trainer: a run failed: " + ", ".join(
            f"{p} exit code {r['exit_code']}" for p, r in runs.items() if r["exit_code"]))
report["summary"] = summary
report["seconds"] = time.perf_counter() - start
out.parent.mkdir(parents=True, exist_ok=True)
write_json(out, report)
print("\n".join(["gpu_check:"] + [f"  {line}" for line in summary] + [f"  written to {out} "
                                                                      f"({report['seconds']:.0f} s)"]))
failed = [r["command"] for runs in report["runs"].values() for r in runs.values() if r["exit_code"]]
sys.exit(1 if failed else 0)
EOF
