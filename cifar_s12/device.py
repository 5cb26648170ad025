"""Where and in which precision the model runs: device choice, the autocast dtype, and ``Runtime``, which applies
them (used by both trainers, the LR range test, the benchmark and the analysis of a trained model).

The fast path: bf16 (or fp16 on older GPUs) autocast with channels_last memory format, and channels_last on CPUs in
fp32 too (``prefers_channels_last``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .utils import UserError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# fp16 is refused on CPUs (see autocast_dtype). Tests switch this on to run the fp16 path (autocast + GradScaler)
# of both trainers on a machine without a GPU; nothing else does.
ALLOW_CPU_FP16 = False


def pick_device(name: str | None = None) -> torch.device:
    """``name`` if given, else cuda > mps > cpu."""
    if name and name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32.

    auto: bf16 where the hardware computes it natively: CPUs with AVX512-bf16 or AMX (how much faster than fp32:
    docs/measurements.md), CUDA GPUs from Ampere on. fp16 on
    older GPUs (e.g. Colab's T4, where bf16 would only be emulated), fp32 on CPUs without bf16 instructions
    (emulated bf16 is slower than fp32) and on MPS.
    """
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "fp32" or (precision == "auto" and device.type == "mps"):
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
        return torch.bfloat16 if native_cpu_bf16() else None
    if precision == "fp16" and device.type == "cpu" and not ALLOW_CPU_FP16:
        # Lightning would quietly train bf16 instead (it has no fp16 on CPUs), the plain loop fp16: two recipes.
        raise UserError("--precision fp16 is for GPUs; on a CPU use bf16 (or auto, or fp32)")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def native_cpu_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-bf16 or AMX), which oneDNN's bf16 kernels need to be fast."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def lightning_precision(device: torch.device, precision: str = "auto") -> str:
    """The same choice as ``autocast_dtype``, spelled the way Lightning's Trainer wants it."""
    dtype = autocast_dtype(device, precision)
    return {None: "32-true", torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed"}[dtype]


def accelerator_device(accelerator: str = "auto") -> torch.device:
    """The kind of device Lightning's ``accelerator`` runs on, for choosing the precision."""
    return pick_device(None if accelerator == "auto" else {"gpu": "cuda"}.get(accelerator, accelerator))


def prefers_channels_last(device_type: str, mixed_precision: bool) -> bool:
    """Whether the model and its inputs go channels_last (NHWC), the layout oneDNN (CPU) and cuDNN (GPU) run their
    fastest convolutions in: always with mixed precision, and on CPUs in fp32 too (faster there as well, by
    `cifar-s12 bench`: docs/measurements.md). Not for fp32 on GPUs, whose fp32 kernels (before TF32) gain nothing
    from it."""
    return mixed_precision or device_type == "cpu"


@dataclass
class Runtime:
    """Where and how fast: the device, the autocast dtype (None = fp32) and the memory format (``channels_last``;
    None: ``prefers_channels_last``'s choice; the benchmark's baseline sets False)."""

    device: torch.device
    dtype: torch.dtype | None
    channels_last: bool | None = None
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self):
        if self.channels_last is None:
            self.channels_last = prefers_channels_last(self.device.type, self.dtype is not None)
        # fp16 needs loss scaling against underflow; bf16 has fp32's range and does not.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed 32x32 input: time cuDNN's algorithms once, keep the fastest

    @classmethod
    def create(cls, precision: str = "auto", device: str | None = None) -> "Runtime":
        dev = pick_device(device)
        return cls(dev, autocast_dtype(dev, precision))

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def prepare(self, model: nn.Module) -> nn.Module:
        return model.to(self.device, memory_format=self.memory_format)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True, memory_format=self.memory_format)

    def describe(self) -> str:
        return f"{self.device.type}, {str(self.dtype).replace('torch.', '') if self.dtype else 'fp32'}"


class AutocastModel(nn.Module):
    """Runs ``model`` under the runtime's autocast and memory format, returning fp32 logits.

    For code that drives the model itself and knows nothing of mixed precision: torch-lr-finder.
    """

    def __init__(self, model: nn.Module, runtime: Runtime):
        super().__init__()
        self.model, self.runtime = model, runtime

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.runtime.autocast():
            return self.model(self.runtime.inputs(x)).float()


