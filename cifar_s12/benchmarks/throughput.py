"""Throughput benchmark: the training step on the fast path vs an fp32 eager baseline, both data paths' loaders
(albumentations in DataLoader workers, batched on the training device), the hardware's matrix-product rate in the
fast dtype and in fp32, and, on request, a partial training epoch with each data path (images/s and peak memory).

All are measured in one run on the current device, so their ratios are comparable even on a busy machine.
Timings are never asserted in tests; ``python -m cifar_s12 bench`` prints them.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

from ..config import DATA_PATHS, TrainConfig
from ..dataset import CifarData, build_loaders, default_num_workers, load_cifar10
from ..device import Runtime
from ..onecycle import build_criterion, build_model_for, build_optimizer
from ..runs.provenance import cpu_name
from ..train import train_step
from ..utils import UserError, write_json


def _sync(device: torch.device | None) -> None:
    """Wait for the device's queued work, so that a timer measures it (GPUs run asynchronously)."""
    if device is None:
        return
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def train_step_throughput(cfg: TrainConfig, runtime: Runtime, batch_size: int, steps: int, warmup: int) -> float:
    """Images/s of full training steps (forward, loss, backward, optimizer) on one synthetic batch.

    The data is fixed so that only the model's arithmetic is timed; the loader is measured separately.
    """
    model = runtime.prepare(build_model_for(cfg)).train()
    optimizer, criterion = build_optimizer(model, cfg, lr=0.01), build_criterion(cfg)
    x = runtime.inputs(torch.randn(batch_size, 3, 32, 32))
    y = torch.randint(0, 10, (batch_size,), device=runtime.device)
    for i in range(warmup + steps):
        if i == warmup:  # the first steps pick kernels and allocate: not representative
            _sync(runtime.device)
            start = time.perf_counter()
        train_step(model, x, y, optimizer, criterion, runtime)
    _sync(runtime.device)
    return steps * batch_size / (time.perf_counter() - start)


def matmul_gflops(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> float:
    """GFLOP/s of ``size`` x ``size`` matrix products in ``dtype`` (2 size^3 operations each): the arithmetic
    alone, near the hardware's peak, without the model's memory traffic, layouts and small layers. The fast dtype's
    rate over the fp32 baseline's training rate bounds how far ahead of that baseline the fast path can get."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    torch.mm(a, b)  # warm-up: kernel choice and allocation
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    _sync(device)
    return repeats * 2 * size ** 3 / (time.perf_counter() - start) / 1e9


def best_matmul_gflops(fast: Runtime, size: int, repeats: int, rounds: int = 3) -> tuple[float, float]:
    """(fp32, fast dtype) matrix-product GFLOP/s, each its best of ``rounds``. The dtypes alternate, so that a burst
    of other work on a shared machine does not land on one of them only. Without a fast dtype the fast path is fp32:
    one measurement serves both."""
    fp32, fast_rates = [], []
    for _ in range(rounds):
        fp32.append(matmul_gflops(fast.device, torch.float32, size, repeats))
        if fast.dtype:
            fast_rates.append(matmul_gflops(fast.device, fast.dtype, size, repeats))
    return max(fp32), max(fast_rates) if fast.dtype else max(fp32)


def training_flops_per_image(cfg: TrainConfig) -> float:
    """Floating-point operations of one training step per image (forward and backward), counted by torch's
    FlopCounterMode (convolutions and matrix products; 2 per multiply-add). Images/s times this is the arithmetic
    rate, to hold against the hardware's peak."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model_for(cfg).train()
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(2, 3, 32, 32)).sum().backward()  # 2 images: BatchNorm needs more than one in training
    return counter.get_total_flops() / 2


def loader_throughput(cfg: TrainConfig, data: CifarData, batch_size: int, batches: int, num_workers: int,
                      device: torch.device | None = None) -> float:
    """Images/s the training loader of ``cfg.data_path`` delivers with the training augmentations: the DataLoader
    with all its workers busy, or the BatchLoader on ``device``. The first batch is left out: worker start-up (once
    per run: the workers persist), or the batched path's draws for the whole epoch (once per epoch, made at once)."""
    loader = build_loaders(replace(cfg, batch_size=batch_size, num_workers=num_workers), data, device=device)[0]
    iterator = iter(loader)
    next(iterator)
    _sync(device)
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        seen += len(next(iterator)[1])
    _sync(device)  # the batched path's batches are queued on a GPU: count them once made
    return seen / (time.perf_counter() - start)


def best_loader_throughput(cfg: TrainConfig, data: CifarData, batch_size: int, batches: int, num_workers: int,
                           device: torch.device | None = None, rounds: int = 3) -> dict[str, float]:
    """Each data path's loader_throughput, its best of ``rounds``; the paths alternate round by round, so that a
    burst of other work on a shared machine does not land on one of them only."""
    rates = {path: [] for path in DATA_PATHS}
    for _ in range(rounds):
        for path in DATA_PATHS:
            rates[path].append(loader_throughput(replace(cfg, data_path=path), data, batch_size, batches, num_workers,
                                                 device))
    return {path: max(found) for path, found in rates.items()}


class PeakMemory:
    """Host memory of this process and its child processes (a DataLoader's workers) while the block runs: their
    summed PSS (proportional set size: each page shared by k processes counts 1/k in each, so the forked workers'
    shared copy of the data set is not counted three times), read from /proc every ``interval`` seconds and on entry
    and exit. ``before`` and ``peak`` in MiB. Without /proc (not Linux): this process's peak RSS (ru_maxrss, a
    high-water mark of the whole process life, so ``before`` may already hold the peak), said in ``method``."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.before, self.peak = interval, 0.0, 0.0
        self.method = "pss" if os.path.exists("/proc/self/smaps_rollup") else "ru_maxrss"
        self._stop, self._thread = threading.Event(), None

    def now(self) -> float:
        if self.method == "ru_maxrss":  # KiB on Linux, bytes on macOS
            import resource

            unit = 1 if sys.platform == "darwin" else 1024
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2**20
        total = 0
        for pid in [os.getpid(), *(p.pid for p in multiprocessing.active_children())]:
            try:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
            except (OSError, StopIteration):  # a worker that has just exited
                pass
        return total / 1024

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> PeakMemory:
        self.before = self.peak = self.now()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.peak = max(self.peak, self.now())
        self._stop.set()
        self._thread.join()


EPOCH_MEMORY = ("host: the summed PSS of the process and its loader workers (/proc, sampled every 50 ms), before "
                "the loader is built (data set and model in memory) and at its peak during the epoch; device: "
                "torch.cuda.max_memory_allocated from the same point (model, optimizer, the batched path's splits, "
                "activations)")


def training_epoch(cfg: TrainConfig, data: CifarData, images: int, batch_size: int, num_workers: int,
                   device: str | None = None) -> dict:
    """A partial training epoch in this process with ``cfg.data_path``'s loader: train_step on the fast path over
    the first ``images`` images after the first batch (left out of the timing: worker start-up, the epoch's draws,
    kernel choice), the loader and the model sharing the machine as in a run. Images/s and memory (EPOCH_MEMORY)."""
    runtime = Runtime.create("auto", device)
    model = runtime.prepare(build_model_for(cfg)).train()
    optimizer, criterion = build_optimizer(model, cfg, lr=0.01), build_criterion(cfg)
    cuda = runtime.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    device_before = torch.cuda.memory_allocated() if cuda else None
    with PeakMemory() as memory:
        loader = build_loaders(replace(cfg, batch_size=batch_size, num_workers=num_workers), data,
                               device=runtime.device)[0]
        loader.sampler.set_epoch(0)
        start, seen = None, 0
        for x, y in loader:
            x, y = runtime.inputs(x), y.to(runtime.device, non_blocking=True)
            train_step(model, x, y, optimizer, criterion, runtime)
            if start is None:
                _sync(runtime.device)
                start = time.perf_counter()
                continue
            seen += len(y)
            if seen >= images:
                break
        _sync(runtime.device)
        seconds = time.perf_counter() - start if start is not None else 0.0
        del loader  # its workers exit inside the block: their memory was counted while they ran
    if not seen:
        raise UserError(f"the epoch benchmark needs 2 or more batches: {len(data.train):,} training images at batch "
                        f"size {batch_size}; lower --batch-size")
    return {"images": seen, "seconds": seconds, "images_per_second": seen / seconds,
            "workers": num_workers if cfg.data_path == "albumentations" else 0,
            "host_memory": memory.method, "host_before_mb": memory.before, "host_peak_mb": memory.peak,
            "host_added_mb": memory.peak - memory.before,
            "device_before_mb": device_before / 2**20 if cuda else None,
            "device_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}


def _epoch_job(job: str, answer: str) -> None:
    """The fresh process's side of epoch_in_fresh_process: training_epoch's arguments from ``job`` (a pickle),
    its figures or its error to ``answer`` (JSON)."""
    with open(job, "rb") as f:
        args = pickle.load(f)
    try:
        reply = {"ok": training_epoch(*args)}
    except Exception as err:  # noqa: BLE001 - told to the bench, which raises it there
        reply = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    write_json(answer, reply)


def epoch_in_fresh_process(cfg: TrainConfig, data: CifarData, images: int, batch_size: int, num_workers: int,
                           device: str | None = None) -> dict:
    """training_epoch in a Python process of its own, so that each data path's memory is its own: nothing
    allocated, cached or freed by the other path, or by the rest of the bench, counts. (A plain subprocess, not
    multiprocessing: nothing of the calling program is imported again there, whatever its __main__.)"""
    with tempfile.TemporaryDirectory() as tmp:
        job, answer = Path(tmp) / "job.pickle", Path(tmp) / "answer.json"
        with open(job, "wb") as f:
            pickle.dump((cfg, data, images, batch_size, num_workers, device), f, protocol=pickle.HIGHEST_PROTOCOL)
        package_parent = str(Path(__file__).resolve().parents[2])  # importable without an installed package
        paths = [package_parent, *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        code = "import sys; from cifar_s12.benchmarks.throughput import _epoch_job; _epoch_job(*sys.argv[1:])"
        done = subprocess.run([sys.executable, "-c", code, str(job), str(answer)], env=env, check=False)
        reply = json.loads(answer.read_text()) if answer.is_file() else {
            "error": f"its process ended without an answer (exit code {done.returncode})"}
    if "ok" not in reply:
        raise RuntimeError(f"the {cfg.data_path} epoch failed in its process: {reply['error']}")
    return reply["ok"]


def bottleneck(loader_images_per_second: float, train_images_per_second: float) -> str:
    """Which of the two limits a training epoch on this device: the slower."""
    return "loader" if loader_images_per_second < train_images_per_second else "model"


def run_bench(cfg: TrainConfig | None = None, batch_size: int = 512, steps: int = 4, warmup: int = 2,
              loader_batches: int = 20, data: CifarData | None = None, device: str | None = None,
              matmul_size: int | None = None, matmul_repeats: int | None = None,
              epoch_images: int | None = None, loader_rounds: int = 3) -> dict:
    """Every figure of the bench command, measured in this run. ``epoch_images``: also a partial training epoch of
    that many images with each data path, each in a fresh process (training_epoch)."""
    cfg = cfg or TrainConfig()
    fast = Runtime.create("auto", device)
    baseline = Runtime(fast.device, None, channels_last=False)  # fp32, channels-first: what plain PyTorch does
    data = data if data is not None else load_cifar10(cfg.data_dir, download=cfg.download)
    # The loader is timed after its first batch (worker start-up), on at most one epoch: it needs two batches.
    available = len(data.train) // batch_size if len(data.train) > batch_size else 1
    if available < 2:
        raise UserError(f"the loader benchmark needs 2 or more batches: {len(data.train):,} training images at "
                        f"batch size {batch_size} give {available}; lower --batch-size")
    loader_batches = min(loader_batches, available - 1)
    workers = cfg.num_workers if cfg.num_workers is not None else default_num_workers()
    result = {
        "device": str(fast.device),
        "device_name": torch.cuda.get_device_name() if fast.device.type == "cuda" else cpu_name(),
        "model": cfg.model, "batch_size": batch_size, "steps": steps, "warmup_steps": warmup,
        "fast_path": " + ".join([f"autocast {fast.describe()}" if fast.dtype else "fp32 (no autocast here)"]
                                + ["channels_last"] * fast.channels_last),
        "torch_threads": torch.get_num_threads(),
        "train_images_per_second": train_step_throughput(cfg, fast, batch_size, steps, warmup),
        "baseline_fp32_images_per_second": train_step_throughput(cfg, baseline, batch_size, steps, warmup),
        "loader_workers": workers, "loader_batches": loader_batches,
        # images/s of each data path's training loader: DataLoader workers on the CPU, or batched on the device
        "loader_rounds": loader_rounds,
        "loaders": best_loader_throughput(cfg, data, batch_size, loader_batches, workers, fast.device, loader_rounds),
    }
    result["loader_images_per_second"] = result["loaders"]["albumentations"]  # the figure earlier benches wrote
    flops = training_flops_per_image(cfg)
    result["train_gflop_per_image"] = flops / 1e9
    result["train_gflops"] = result["train_images_per_second"] * flops / 1e9
    result["baseline_fp32_gflops"] = result["baseline_fp32_images_per_second"] * flops / 1e9
    # A GPU finishes a 2048-sized product in microseconds: bigger and more products there, so that timing holds.
    on_gpu = fast.device.type != "cpu"
    matmul_size = matmul_size if matmul_size is not None else (4096 if on_gpu else 2048)
    matmul_repeats = matmul_repeats if matmul_repeats is not None else (20 if on_gpu else 3)
    fp32_matmul, fast_matmul = best_matmul_gflops(fast, matmul_size, matmul_repeats)
    result.update(matmul_size=matmul_size, matmul_fast_gflops=fast_matmul, matmul_fp32_gflops=fp32_matmul,
                  matmul_fast_vs_fp32=fast_matmul / fp32_matmul,
                  # the fast path could at best run the whole step at the fast dtype's matrix-product rate
                  ceiling_vs_baseline=fast_matmul / result["baseline_fp32_gflops"],
                  train_gflops_of_matmul=result["train_gflops"] / fast_matmul,
                  # On Ampere+ GPUs cuDNN runs "fp32" convolutions in TF32 unless told not to: say which it was.
                  fp32_convolutions_in_tf32=fast.device.type == "cuda" and torch.backends.cudnn.allow_tf32)
    result["fast_vs_baseline"] = result["train_images_per_second"] / result["baseline_fp32_images_per_second"]
    result["loader_vs_model"] = result["loader_images_per_second"] / result["train_images_per_second"]
    train = result["train_images_per_second"]
    result["loaders_vs_model"] = {path: rate / train for path, rate in result["loaders"].items()}
    result["batched_vs_albumentations"] = result["loaders"]["batched"] / result["loaders"]["albumentations"]
    # What each loader could feed: a training step of its images/s, i.e. that much training arithmetic per second
    # (a GPU's step at this rate or faster waits on the loader); and which of the two limits this device.
    result["loader_feeds_tflops"] = {path: rate * flops / 1e12 for path, rate in result["loaders"].items()}
    result["bottleneck"] = {path: bottleneck(rate, train) for path, rate in result["loaders"].items()}
    if epoch_images:
        result["epoch_images"] = epoch_images
        result["epoch_memory"] = EPOCH_MEMORY
        result["epoch"] = {path: epoch_in_fresh_process(replace(cfg, data_path=path), data, epoch_images, batch_size,
                                                        workers, device) for path in DATA_PATHS}
        result["epoch_batched_vs_albumentations"] = (result["epoch"]["batched"]["images_per_second"]
                                                     / result["epoch"]["albumentations"]["images_per_second"])
    return result

