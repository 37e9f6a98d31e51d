"""FP8 (E4M3) per-tensor weight quantization: pure functions on tensors.

scale = amax / 448 (a zero amax gives the smallest positive fp32 step, 2^-23, so nothing divides by zero);
codes = clamp(w / scale, -448, 448) cast to float8_e4m3fn (round to nearest, ties to even).
"""

from __future__ import annotations

import torch

E4M3_MAX = 448.0
_ZERO_SCALE = torch.finfo(torch.float32).eps


def tensor_scale(weight: torch.Tensor, amax: torch.Tensor | None = None) -> torch.Tensor:
    """The per-tensor fp32 scale of a weight (0-d tensor); `amax`, its largest magnitude, when known."""
    amax = abs_max(weight) if amax is None else amax
    scale = amax.to(torch.float32) / E4M3_MAX
    return torch.where(scale == 0, torch.tensor(_ZERO_SCALE), scale)


def abs_max(weight: torch.Tensor) -> torch.Tensor:
    """The largest magnitude of a tensor as fp32, without an absolute-value copy."""
    low, high = torch.aminmax(weight.detach())
    return torch.maximum(low.neg(), high).to(torch.float32)


def quantize(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """E4M3 codes of `weight` under a given per-tensor scale (the parent's, for nested checkpoints)."""
    scaled = divided(weight, scale.to(torch.float32))
    return scaled.clamp_(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def divided(weight: torch.Tensor, divisor: torch.Tensor) -> torch.Tensor:
    """`weight` in fp32 divided by `divisor`, in place in the fp32 copy when one is made (one fresh tensor)."""
    if weight.dtype == torch.float32:
        return weight / divisor
    return weight.to(torch.float32).div_(divisor)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return (codes.to(torch.float32) * scale.to(torch.float32)).to(dtype)
