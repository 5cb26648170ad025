import mmap
import os
import time

import pytest
import torch

from cifar_s12 import device as runtime
from cifar_s12.benchmarks import throughput as bench
from cifar_s12.benchmarks.throughput import run_bench
from cifar_s12.config import make_config
from cifar_s12.dataset import subset
from cifar_s12.device import Runtime
from cifar_s12.model import CustomResNet
from cifar_s12.utils import UserError

TINY_BENCH = dict(batch_size=8, steps=1, warmup=1, loader_batches=2, matmul_size=64, matmul_repeats=1)


@pytest.fixture
def measured(monkeypatch):
    """run_bench with each measurement replaced by a known figure, to check what it makes of them: the training
    step runs 300 images/s on the bf16 fast path and 100 in fp32, the loader 600, the step costs 2 GFLOP per
    image, and the matrix products' rounds give these rates (best: fp32 100, bf16 250); the batched loader gives 6000.
    Records each call."""
    calls = {"train": [], "loader": [], "matmul": []}
    rates = {torch.float32: iter([90.0, 100.0, 95.0]), torch.bfloat16: iter([200.0, 250.0, 240.0])}

    def train(cfg, runtime, batch_size, steps, warmup):
        calls["train"].append((runtime.dtype, runtime.memory_format, batch_size, steps, warmup))
        return {torch.bfloat16: 300.0, None: 100.0}[runtime.dtype]

    def loader(cfg, data, batch_size, batches, num_workers, device=None):
        calls["loader"].append((cfg.data_path, batch_size, batches, num_workers, device.type))
        return {"albumentations": 600.0, "batched": 6000.0}[cfg.data_path]

    def matmul(device, dtype, size, repeats):
        calls["matmul"].append((device.type, dtype, size, repeats))
        return next(rates[dtype])

    monkeypatch.setattr(bench, "train_step_throughput", train)
    monkeypatch.setattr(bench, "loader_throughput", loader)
    monkeypatch.setattr(bench, "training_flops_per_image", lambda cfg: 2e9)
    monkeypatch.setattr(bench, "matmul_gflops", matmul)
    return calls, rates


def test_bench_combines_the_fast_and_fp32_measurements_into_its_figures(data, measured, monkeypatch):
    calls, rates = measured
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: True)
    r = run_bench(make_config("best", num_workers=1), data=subset(data, train=40), device="cpu",
                  **{**TINY_BENCH, "loader_batches": 20})
    # the fast path is bf16 on channels_last, the baseline fp32 channels-first, each timed once
    assert calls["train"] == [(torch.bfloat16, torch.channels_last, 8, 1, 1), (None, torch.contiguous_format, 8, 1, 1)]
    assert r["fast_path"] == "autocast cpu, bfloat16 + channels_last" and r["device"] == "cpu"
    assert (r["train_images_per_second"], r["baseline_fp32_images_per_second"], r["fast_vs_baseline"]) == (300, 100, 3)
    # 40 images are 5 batches of 8: the first is start-up, so at most 4 of the 20 asked for are timed; the two
    # paths alternate, 3 rounds, the batched one on the training device
    assert calls["loader"] == [("albumentations", 8, 4, 1, "cpu"), ("batched", 8, 4, 1, "cpu")] * 3
    assert (r["loader_batches"], r["loader_workers"], r["loader_rounds"]) == (4, 1, 3)
    assert (r["loader_images_per_second"], r["loader_vs_model"]) == (600, 2)
    assert r["loaders"] == {"albumentations": 600, "batched": 6000} and r["batched_vs_albumentations"] == 10
    assert r["loaders_vs_model"] == {"albumentations": 2, "batched": 20}
    # each loader feeds a step of its images/s: at 2 GFLOP per image, 1.2 and 12 TFLOP/s of training arithmetic;
    # both outrun this step (300 images/s): the model is the bottleneck here
    assert r["loader_feeds_tflops"] == pytest.approx({"albumentations": 1.2, "batched": 12})
    assert r["bottleneck"] == {"albumentations": "model", "batched": "model"} and "epoch" not in r
    assert (r["train_gflop_per_image"], r["train_gflops"], r["baseline_fp32_gflops"]) == (2, 600, 200)
    # the dtypes alternate round by round, and each keeps its best round
    assert calls["matmul"] == [("cpu", torch.float32, 64, 1), ("cpu", torch.bfloat16, 64, 1)] * 3
    assert (r["matmul_fp32_gflops"], r["matmul_fast_gflops"], r["matmul_fast_vs_fp32"]) == (100, 250, 2.5)
    # the ceiling: the whole step at bf16's 250 GFLOP/s over the baseline's 200; the fast path's 600 over 250
    assert r["ceiling_vs_baseline"] == pytest.approx(1.25) and r["train_gflops_of_matmul"] == pytest.approx(2.4)
    assert r["fp32_convolutions_in_tf32"] is False


def test_without_bf16_instructions_the_fast_path_is_the_fp32_baseline(data, measured, monkeypatch):
    calls, rates = measured
    rates[torch.float32] = iter([80.0, 70.0, 60.0])
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: False)
    r = run_bench(make_config("best", num_workers=0), data=data, device="cpu", **TINY_BENCH)
    # fp32 twice: on channels_last (the CPU's fast path, prefers_channels_last) and channels-first (the baseline)
    assert calls["train"] == [(None, torch.channels_last, 8, 1, 1), (None, torch.contiguous_format, 8, 1, 1)]
    assert r["fast_path"] == "fp32 (no autocast here) + channels_last"
    assert r["fast_vs_baseline"] == 1  # the stand-in timer gives fp32 100 images/s in either layout
    assert calls["matmul"] == [("cpu", torch.float32, 64, 1)] * 3  # fp32 only: a gain of exactly 1
    assert (r["matmul_fp32_gflops"], r["matmul_fast_gflops"], r["matmul_fast_vs_fp32"]) == (80, 80, 1)


def test_the_timers_leave_out_the_warm_up_steps_and_the_loaders_start_up(data, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    steps = []

    def step(model, x, y, optimizer, criterion, rt):  # by this clock a warm-up step takes 10 s, a timed one 0.5 s
        now[0] += 10.0 if len(steps) < 2 else 0.5
        steps.append((len(x), model.training))

    monkeypatch.setattr(bench, "train_step", step)
    monkeypatch.setattr(bench, "build_model_for", lambda cfg: torch.nn.Conv2d(3, 10, 32))
    cfg = make_config("best", num_workers=0)
    assert bench.train_step_throughput(cfg, Runtime.create("fp32", "cpu"), 8, steps=4, warmup=2) == 16.0  # 32 / 2 s
    assert steps == [(8, True)] * 6

    def batches():  # worker start-up makes the first batch take 100 s, then 1 s a batch; the last batch is short
        for seconds, size in ((100.0, 8), (1.0, 8), (1.0, 8), (1.0, 5)):
            now[0] += seconds
            yield torch.zeros(size, 3, 32, 32), torch.zeros(size, dtype=torch.long)

    monkeypatch.setattr(bench, "build_loaders", lambda cfg, data, device=None: (batches(), None))
    assert bench.loader_throughput(cfg, data, 8, batches=3, num_workers=0) == pytest.approx(21 / 3)  # 8 + 8 + 5


def test_matmul_gflops_times_the_products_after_the_warm_up_and_counts_as_torch_does(monkeypatch):
    from torch.utils.flop_counter import FlopCounterMode

    now, real_mm = [0.0], torch.mm

    def mm(a, b):  # each product, the warm-up's too, takes 1 s by this clock
        now[0] += 1.0
        return real_mm(a, b)

    with FlopCounterMode(display=False) as one:
        real_mm(torch.zeros(64, 64), torch.zeros(64, 64))
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(torch, "mm", mm)
    # 3 timed products in 3 s: one product's operations (as torch's counter counts them) per second
    assert bench.matmul_gflops(torch.device("cpu"), torch.float32, 64, 3) == pytest.approx(one.get_total_flops() / 1e9)


def test_training_flops_are_the_forward_three_times_less_the_first_layers_input_gradient():
    # Counted here from the layers' shapes: each convolution and the linear layer do 2 operations per
    # multiply-add (weights per output x outputs); backward computes the gradients of the weights and of the
    # inputs, each as much again, except the image's, which nothing asks for.
    model, forward = CustomResNet(), []
    for layer in model.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            layer.register_forward_hook(lambda m, args, out: forward.append(2 * m.weight[0].numel() * out[0].numel()))
    model(torch.zeros(1, 3, 32, 32))
    assert len(forward) == 9 and sum(forward) == pytest.approx(0.7585e9, rel=1e-3)  # 0.76 GFLOP per image
    assert bench.training_flops_per_image(make_config("best")) == 3 * sum(forward) - forward[0]


def test_a_loader_of_one_batch_is_an_error_not_zero_images_per_second(data):
    with pytest.raises(UserError, match="needs 2 or more batches: 20 training images at batch size 16 give 1"):
        run_bench(make_config("best", num_workers=0), data=subset(data, train=20), device="cpu", batch_size=16)


def test_the_bench_command_prints_the_figures_it_writes(tiny_dir, tmp_path, capsys):
    import json

    from cifar_s12.__main__ import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--data-dir", str(tiny_dir), "--no-download", "--batch-size", "8", "--steps", "1",
                 "--warmup", "0", "--loader-batches", "2", "--workers", "0", "--json", str(out)]) == 0
    result, printed = json.loads(out.read_text()), capsys.readouterr().out
    r = result
    for fragment in [f"{r['train_images_per_second']:8.1f} images/s ({r['train_gflops']:.0f} GFLOP/s",
                     f"{r['baseline_fp32_images_per_second']:8.1f} images/s ({r['baseline_fp32_gflops']:.0f} GFLOP/s)"
                     f"  -> fast path is {r['fast_vs_baseline']:.2f}x",
                     f"{r['loader_images_per_second']:8.1f} images/s  -> {r['loader_vs_model']:.1f}x the model",
                     f"{r['matmul_fast_gflops']:.0f} vs {r['matmul_fp32_gflops']:.0f} GFLOP/s  -> "
                     f"{r['matmul_fast_vs_fp32']:.2f}x; at that rate the fast path could reach "
                     f"{r['ceiling_vs_baseline']:.2f}x the baseline"]:
        assert fragment in printed, (fragment, printed)
    assert r["matmul_size"] == (2048 if r["device"] == "cpu" else 4096)
    assert r["batch_size"] == 8 and r["loader_workers"] == 0
    assert set(r["loaders"]) == {"albumentations", "batched"} and "epoch" not in r  # no epochs unless asked
    for path, rate in r["loaders"].items():
        assert f"{path}: feeds a training step of up to {rate:,.0f} images/s" in printed
        assert f"the {r['bottleneck'][path]} is the bottleneck on this device" in printed
    assert f"{r['batched_vs_albumentations']:.1f}x the albumentations loader" in printed


def test_the_loader_bottleneck_is_the_slower_of_loader_and_step():
    assert bench.bottleneck(1000.0, 30.0) == "model" and bench.bottleneck(2000.0, 20000.0) == "loader"


def test_the_epoch_comparison_runs_each_path_in_its_own_process_and_compares_them(data, measured, monkeypatch):
    asked = []

    def epoch(cfg, data, images, batch_size, num_workers, device=None):
        asked.append((cfg.data_path, images, batch_size, num_workers, device))
        rate = {"albumentations": 30.0, "batched": 45.0}[cfg.data_path]
        return {"images": images, "images_per_second": rate, "host_peak_mb": 900.0}

    monkeypatch.setattr(bench, "epoch_in_fresh_process", epoch)
    r = run_bench(make_config("fast", num_workers=2), data=subset(data, train=40), device="cpu", epoch_images=16,
                  **TINY_BENCH)
    assert asked == [("albumentations", 16, 8, 2, "cpu"), ("batched", 16, 8, 2, "cpu")]
    assert r["epoch_images"] == 16 and set(r["epoch"]) == {"albumentations", "batched"}
    assert r["epoch_batched_vs_albumentations"] == 1.5 and "PSS" in r["epoch_memory"]


def test_a_training_epoch_counts_the_images_after_the_first_batch_and_measures_memory(data):
    small = subset(data, train=64, test=16)
    for path, workers in (("albumentations", 1), ("batched", 0)):
        e = bench.training_epoch(make_config("fast", data_path=path), small, images=16, batch_size=8,
                                 num_workers=workers, device="cpu")
        assert e["images"] == 16 and e["images_per_second"] == pytest.approx(16 / e["seconds"])
        assert e["workers"] == workers and e["device_peak_mb"] is None  # no GPU memory on a CPU
        assert 0 < e["host_before_mb"] <= e["host_peak_mb"] and e["host_added_mb"] >= 0
        assert e["host_memory"] == ("pss" if os.path.exists("/proc/self/smaps_rollup") else "ru_maxrss")


def test_peak_memory_sees_an_allocation_made_and_freed_inside_the_block():
    # An anonymous mapping gets pages new to the process: a malloc'd block (torch.ones) can reuse heap pages that a
    # long test process already holds, and then no reading can rise (CI saw that once)
    size = 64 * 2**20
    with bench.PeakMemory(interval=0.01) as memory:
        block = mmap.mmap(-1, size)
        for offset in range(0, size, mmap.PAGESIZE):  # touch every page
            block[offset] = 1
        deadline = time.monotonic() + 30  # a busy machine can hold the sampling thread back for a while
        while memory.method == "pss" and memory.peak - memory.before <= 48 and time.monotonic() < deadline:
            time.sleep(0.01)
        block.close()
    if memory.method == "pss":
        assert memory.peak - memory.before > 48


def test_an_epoch_in_a_fresh_process_answers_or_says_why_not(data, tmp_path):
    import json
    import pickle

    small = subset(data, train=32, test=8)
    e = bench.epoch_in_fresh_process(make_config("best", data_path="batched"), small, 8, 8, 0, "cpu")  # a process
    assert e["images"] == 8 and e["workers"] == 0
    # A failure there comes back as its error (the other process's side, run here: no second process to start)
    job, answer = tmp_path / "job.pickle", tmp_path / "answer.json"
    job.write_bytes(pickle.dumps((make_config("best", data_path="batched"), subset(data, train=8), 8, 8, 0, "cpu")))
    bench._epoch_job(str(job), str(answer))
    assert json.loads(answer.read_text())["error"].startswith("UserError: the epoch benchmark needs 2 or more batches")


def test_the_gpu_check_script_parses():
    """scripts/gpu_check.sh (a real run takes minutes even on its CPU fallback): its shell, its Python and the
    snippet that measures each training run compile."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False).returncode == 0
    text = script.read_text()
    driver = text.split("<<'EOF'\n", 1)[1].rsplit("\nEOF", 1)[0]
    compile(driver, "gpu_check.sh (python)", "exec")
    measure = driver.split('MEASURE = """', 1)[1].split('"""', 1)[0]
    compile(measure, "gpu_check.sh (MEASURE)", "exec")
    assert '"fallback": not gpu' in driver and "results/bench/gpu-check.json" in text
