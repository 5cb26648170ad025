import pytest

from cifar_s12 import runtime
from cifar_s12.bench import run_bench
from cifar_s12.config import make_config
from cifar_s12.dataset import subset
from cifar_s12.errors import UserError

TINY_BENCH = dict(batch_size=8, steps=1, warmup=1, loader_batches=2)


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


def test_a_loader_of_one_batch_is_an_error_not_zero_images_per_second(data):
    with pytest.raises(UserError, match="needs 2 or more batches: 20 training images at batch size 16 give 1"):
        run_bench(make_config("best", num_workers=0), data=subset(data, train=20), device="cpu", batch_size=16)
