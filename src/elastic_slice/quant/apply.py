"""Quantize one weight for the output, with the parent's scales (so every budget's slice is nested)."""

from __future__ import annotations

import torch

from . import fp8
from .formats import KV_SCALE
from .planning import Dequant, QuantPart


def quantize_parts(parent: torch.Tensor, child: torch.Tensor, spec: QuantPart) -> dict[str, torch.Tensor]:
    """Every stored part of `child` (a slice of `parent`), quantized with scales taken from the whole parent."""
    return spec.scheme.quantize(parent, child, spec.fmt, spec.input_amax)


def kv_scale(spec: QuantPart) -> dict[str, torch.Tensor]:
    """The FP8 KV-cache scale of a key or value projection: its calibrated output amax / 448."""
    assert spec.input_amax is not None
    return {KV_SCALE: spec.fmt.scalar(fp8.tensor_scale(torch.tensor(spec.input_amax)))}


def dequantize_weight(stored: torch.Tensor, scales: dict[str, torch.Tensor], spec: Dequant) -> torch.Tensor:
    """The fp32 values of a stored weight, in its scheme and format."""
    return spec.scheme.dequantize(stored, scales, spec.fmt)
