"""Device and precision: which autocast dtype each machine gets, and Runtime applying it."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cifar_s12 import device as runtime
from cifar_s12.device import AutocastModel, Runtime, autocast_dtype, lightning_precision, prefers_channels_last
from cifar_s12.tta import predict_logits
from cifar_s12.utils import UserError


def test_precision_choice_on_cpu(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: True)  # AVX512-bf16 or AMX
    assert autocast_dtype(cpu, "auto") == torch.bfloat16
    assert lightning_precision(cpu, "auto") == "bf16-mixed"
    assert autocast_dtype(cpu, "fp32") is None
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: False)  # bf16 would be emulated: slower than fp32
    assert autocast_dtype(cpu, "auto") is None
    assert lightning_precision(cpu, "auto") == "32-true"
    assert autocast_dtype(cpu, "bf16") == torch.bfloat16  # asked for explicitly, it is what the user gets
    with pytest.raises(UserError):
        autocast_dtype(cpu, "fp8")
    # fp16 on a CPU: Lightning would train bf16 instead, the plain loop fp16; refused for both.
    with pytest.raises(UserError, match="fp16 is for GPUs"):
        lightning_precision(cpu, "fp16")


@pytest.mark.parametrize("gpu, capability, expected", [("Tesla T4", (7, 5), torch.float16),
                                                     ("A100", (8, 0), torch.bfloat16),
                                                     ("H100", (9, 0), torch.bfloat16)])
def test_precision_choice_on_cuda_does_not_count_emulated_bf16(monkeypatch, gpu, capability, expected):
    # The GPU as torch sees it: its compute capability, and bf16 tensors that can be made on it (on a T4, in
    # emulation). torch's own is_bf16_supported decides from these, as it would on that GPU.
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(
        name=gpu, major=capability[0], minor=capability[1]))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
    assert torch.cuda.is_bf16_supported()  # by torch's default question every one of them "supports" bf16 ...
    cuda = torch.device("cuda")
    assert autocast_dtype(cuda, "auto") == expected  # ... but a T4 computes it in emulation: fp16 there
    assert lightning_precision(cuda, "auto") == {torch.float16: "16-mixed", torch.bfloat16: "bf16-mixed"}[expected]
    assert autocast_dtype(cuda, "bf16") == torch.bfloat16 and autocast_dtype(cuda, "fp16") == torch.float16


def test_channels_last_goes_with_mixed_precision_and_with_cpus_in_fp32():
    assert prefers_channels_last("cuda", True) and prefers_channels_last("cpu", True)
    assert prefers_channels_last("cpu", False)  # oneDNN's fp32 convolutions are faster on NHWC too
    assert not prefers_channels_last("cuda", False) and not prefers_channels_last("mps", False)
    plain = Runtime(torch.device("cpu"), None)
    assert plain.memory_format == torch.channels_last
    assert plain.inputs(torch.zeros(2, 3, 8, 8)).is_contiguous(memory_format=torch.channels_last)
    baseline = Runtime(torch.device("cpu"), None, channels_last=False)  # the benchmark's fp32 channels-first
    assert baseline.memory_format == torch.contiguous_format
    assert baseline.prepare(nn.Conv2d(3, 4, 3)).weight.is_contiguous()


def test_mixed_precision_goes_with_channels_last_and_fp32_logits():
    fast, plain = Runtime(torch.device("cpu"), torch.bfloat16), Runtime(torch.device("cpu"), None)
    assert fast.memory_format == torch.channels_last
    assert fast.inputs(torch.zeros(2, 3, 8, 8)).is_contiguous(memory_format=torch.channels_last)
    conv = fast.prepare(nn.Conv2d(3, 4, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    inside = []
    conv.register_forward_hook(lambda module, args, output: inside.append((args[0].is_contiguous(
        memory_format=torch.channels_last), output.dtype)))
    assert AutocastModel(conv, fast)(torch.randn(2, 3, 8, 8)).dtype == torch.float32  # fp32 out ...
    assert inside == [(True, torch.bfloat16)]  # ... of a bf16 convolution on channels_last input
    assert not fast.scaler.is_enabled()  # only fp16 needs loss scaling
    assert fast.describe() == "cpu, bfloat16" and plain.describe() == "cpu, fp32"


def test_flip_tta_averages_the_image_and_its_mirror():
    # A "model" whose logit is the mean of the left half of the image: a flip moves the right half there.
    left_half = lambda x: x[..., : x.shape[-1] // 2].mean(dim=(1, 2, 3)).unsqueeze(1)  # noqa: E731
    x = torch.zeros(1, 3, 4, 4)
    x[..., 2:] = 1.0  # right half bright
    assert predict_logits(left_half, x).item() == 0.0
    assert predict_logits(left_half, x, tta=True).item() == pytest.approx(0.5)
