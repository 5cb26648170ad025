import pytest
import torch

from cifar_s12 import bench, runtime
from cifar_s12.bench import run_bench
from cifar_s12.config import make_config
from cifar_s12.dataset import subset
from cifar_s12.errors import UserError

TINY_BENCH = dict(batch_size=8, steps=1, warmup=1, loader_batches=2, matmul_size=64, matmul_repeats=1)


def test_bench_reports_all_three_throughputs(data):
    result = run_bench(make_config("best", num_workers=1), data=data, device="cpu", **TINY_BENCH)
    for key in ("train_images_per_second", "baseline_fp32_images_per_second", "loader_images_per_second"):
        assert result[key] > 0
    # the summary figures are the measured ones combined, not measured again
    assert result["fast_vs_baseline"] == pytest.approx(result["train_images_per_second"]
                                                       / result["baseline_fp32_images_per_second"])
    assert result["loader_vs_model"] == pytest.approx(result["loader_images_per_second"]
                                                      / result["train_images_per_second"])
    assert result["train_gflops"] == pytest.approx(result["train_images_per_second"]
                                                   * result["train_gflop_per_image"])
    assert result["device"] == "cpu" and result["loader_workers"] == 1 and result["loader_batches"] == 2
    # Forward + backward of the course ResNet: about 3x the forward's 0.76 GFLOP per image.
    assert 2.0 < result["train_gflop_per_image"] < 2.5


def test_the_fast_path_is_bf16_only_where_the_cpu_has_bf16_instructions(data, monkeypatch):
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: True)
    assert run_bench(make_config("best", num_workers=0), data=data, device="cpu", **TINY_BENCH)["fast_path"] == \
        "autocast cpu, bfloat16 + channels_last"
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: False)  # then the fast path is the baseline
    assert run_bench(make_config("best", num_workers=0), data=data, device="cpu", **TINY_BENCH)["fast_path"].startswith("fp32")


def test_matrix_products_alternate_the_two_dtypes_and_keep_each_ones_best_round(data, monkeypatch):
    calls, rates = [], {torch.float32: iter([90.0, 100.0, 95.0]), torch.bfloat16: iter([200.0, 250.0, 240.0])}

    def recorded(device, dtype, size, repeats):
        calls.append((device.type, dtype, size, repeats))
        return next(rates[dtype])

    monkeypatch.setattr(bench, "matmul_gflops", recorded)
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: True)
    result = run_bench(make_config("best", num_workers=0), data=data, device="cpu", **TINY_BENCH)
    assert calls == [("cpu", torch.float32, 64, 1), ("cpu", torch.bfloat16, 64, 1)] * 3
    assert (result["matmul_fp32_gflops"], result["matmul_fast_gflops"], result["matmul_fast_vs_fp32"]) == (100, 250, 2.5)
    # the ceiling: the whole step at the fast dtype's matrix-product rate, over the baseline's measured rate
    assert result["ceiling_vs_baseline"] == pytest.approx(250 / result["baseline_fp32_gflops"])
    assert result["train_gflops_of_matmul"] == pytest.approx(result["train_gflops"] / 250)
    assert result["fp32_convolutions_in_tf32"] is False

    calls.clear()
    rates[torch.float32] = iter([80.0, 70.0, 60.0])
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: False)  # no fast dtype: fp32 only, a gain of exactly 1
    result = run_bench(make_config("best", num_workers=0), data=data, device="cpu", **TINY_BENCH)
    assert calls == [("cpu", torch.float32, 64, 1)] * 3
    assert (result["matmul_fp32_gflops"], result["matmul_fast_gflops"], result["matmul_fast_vs_fp32"]) == (80, 80, 1)


def test_matmul_gflops_counts_two_operations_per_multiply_add(monkeypatch):
    clock = iter([10.0, 12.0])  # the timed products take 2 s by this clock
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    assert bench.matmul_gflops(torch.device("cpu"), torch.float32, 64, 3) == pytest.approx(3 * 2 * 64 ** 3 / 2 / 1e9)


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
