"""FP8 (E4M3) per-tensor weight quantization: pure functions on tensors.

scale = amax / 448 (a zero amax gives the smallest positive fp32 step, 2^-23, so nothing divides by zero);
codes = clamp(w / scale, -448, 448) cast to float8_e4m3fn (round to nearest, ties to even).
"""

from __future__ import annotations

import torch

from .kernels import E4M3_MAX

_ZERO_SCALE = torch.finfo(torch.float32).eps
#: elements quantized at a time: their fp32 copy (256 KiB) stays in the CPU's L2 cache from step to step
CHUNK_ELEMENTS = 64 * 1024


def tensor_scale(weight: torch.Tensor, amax: torch.Tensor | None = None) -> torch.Tensor:
    """The per-tensor fp32 scale of a weight (0-d tensor); `amax`, its largest magnitude, when known."""
    amax = abs_max(weight) if amax is None else amax
    scale = amax.to(torch.float32) / E4M3_MAX
    return torch.where(scale == 0, torch.tensor(_ZERO_SCALE), scale)


def abs_max(weight: torch.Tensor) -> torch.Tensor:
    """The largest magnitude of a tensor as fp32, without an absolute-value copy; +0 for an all-zero tensor, whatever
    the signs of its zeros (the sign of `maximum` over zeros follows torch's reduction order and thread count: it
    would reach ModelOpt NVFP4's weight_scale_2 = amax / 2688)."""
    low, high = torch.aminmax(weight.detach())
    return torch.maximum(low.neg(), high).to(torch.float32) + 0.0  # -0 + 0 is +0


def quantize(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """E4M3 codes of `weight` under a given per-tensor scale (the parent's, for nested checkpoints): a cache-sized
    chunk at a time is copied to fp32 in one buffer, divided, clamped and cast, so no step allocates."""
    values = weight.contiguous().reshape(-1)
    codes = torch.empty(weight.shape, dtype=torch.float8_e4m3fn)
    out = codes.view(-1)
    divisor = scale.to(torch.float32)
    work = torch.empty(min(CHUNK_ELEMENTS, values.numel()), dtype=torch.float32)
    for start in range(0, values.numel(), CHUNK_ELEMENTS):
        stop = min(values.numel(), start + CHUNK_ELEMENTS)
        scaled = work[: stop - start].copy_(values[start:stop]).div_(divisor)
        out[start:stop].copy_(scaled.clamp_(-E4M3_MAX, E4M3_MAX))
    return codes


def dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return (codes.to(torch.float32) * scale.to(torch.float32)).to(dtype)
