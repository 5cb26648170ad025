import pytest

from cifar_s12 import runtime
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
    assert result["matmul_fast_gflops"] > 0 and result["matmul_fp32_gflops"] > 0 and result["matmul_size"] == 64
    assert result["matmul_fast_vs_fp32"] == pytest.approx(result["matmul_fast_gflops"] / result["matmul_fp32_gflops"])
    assert result["device"] == "cpu" and result["loader_workers"] == 1 and result["loader_batches"] == 2
    # Forward + backward of the course ResNet: about 3x the forward's 0.76 GFLOP per image.
    assert 2.0 < result["train_gflop_per_image"] < 2.5


def test_the_fast_path_is_bf16_only_where_the_cpu_has_bf16_instructions(data, monkeypatch):
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: True)
    assert run_bench(make_config("best", num_workers=0), data=data, device="cpu", **TINY_BENCH)["fast_path"] == \
        "autocast cpu, bfloat16 + channels_last"
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: False)  # then the fast path is the baseline
    fp32_only = run_bench(make_config("best", num_workers=0), data=data, device="cpu", **TINY_BENCH)
    assert fp32_only["fast_path"].startswith("fp32")
    # ... and the fast dtype's matrix products are fp32's: one measurement, a gain of exactly 1
    assert fp32_only["matmul_fast_gflops"] == fp32_only["matmul_fp32_gflops"] and fp32_only["matmul_fast_vs_fp32"] == 1


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
    for key, spec in [("train_images_per_second", "8.1f"), ("baseline_fp32_images_per_second", "8.1f"),
                      ("loader_images_per_second", "8.1f"), ("fast_vs_baseline", ".2f"), ("loader_vs_model", ".1f"),
                      ("matmul_fast_gflops", ".0f"), ("matmul_fp32_gflops", ".0f"), ("matmul_fast_vs_fp32", ".2f")]:
        assert format(result[key], spec) in printed, key
    assert result["matmul_size"] == 2048 and result["batch_size"] == 8 and result["loader_workers"] == 0
