import pytest

from cifar_s12.bench import run_bench
from cifar_s12.config import make_config
from cifar_s12.utils import native_cpu_bf16


def test_bench_reports_all_three_throughputs(data):
    result = run_bench(make_config("best", num_workers=1), batch_size=8, steps=1, warmup=1, loader_batches=2,
                       data=data)
    for key in ("train_images_per_second", "baseline_fp32_images_per_second", "loader_images_per_second"):
        assert result[key] > 0
    assert result["device"] == "cpu" and result["loader_workers"] == 1
    # Forward + backward of the course ResNet: about 3x the forward's 0.76 GFLOP per image.
    assert 2.0 < result["train_gflop_per_image"] < 2.5
    assert result["train_gflops"] == pytest.approx(result["train_images_per_second"] * result["train_gflop_per_image"])
    # The fast path is bf16 autocast where this CPU computes bf16 natively, else fp32 (then the two are the same).
    assert ("bfloat16" in result["fast_path"]) == native_cpu_bf16()
