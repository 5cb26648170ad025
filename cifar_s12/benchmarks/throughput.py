"""Throughput benchmark: the training step on the fast path vs an fp32 eager baseline, the data loader, and the
hardware's matrix-product rate in the fast dtype and in fp32.

All are measured in one run on the current device, so their ratios are comparable even on a busy machine.
Timings are never asserted in tests; ``python -m cifar_s12 bench`` prints them.
"""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from ..config import TrainConfig
from ..dataset import CifarData, build_loaders, default_num_workers, load_cifar10
from ..device import Runtime
from ..onecycle import build_criterion, build_model_for, build_optimizer
from ..runs.provenance import cpu_name
from ..train import train_step
from ..utils import UserError


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer measures it (GPUs run asynchronously)."""
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


def loader_throughput(cfg: TrainConfig, data: CifarData, batch_size: int, batches: int, num_workers: int) -> float:
    """Images/s the training DataLoader delivers with the training augmentations, all workers busy."""
    loader = build_loaders(replace(cfg, batch_size=batch_size, num_workers=num_workers), data)[0]
    iterator = iter(loader)
    next(iterator)  # start-up (worker spawn) is paid once per run, not per epoch: leave it out
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        seen += len(next(iterator)[1])
    return seen / (time.perf_counter() - start)


def run_bench(cfg: TrainConfig | None = None, batch_size: int = 512, steps: int = 4, warmup: int = 2,
              loader_batches: int = 20, data: CifarData | None = None, device: str | None = None,
              matmul_size: int | None = None, matmul_repeats: int | None = None) -> dict:
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
        "loader_images_per_second": loader_throughput(cfg, data, batch_size, loader_batches, workers),
    }
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
    return result

