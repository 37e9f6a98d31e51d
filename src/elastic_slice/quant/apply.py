"""Quantize one weight for the output, with the parent's scales (so every budget's slice is nested)."""

from __future__ import annotations

import torch

from . import fp8, nvfp4
from .formats import BLOCK_SCALE, GLOBAL_SCALE, INPUT_SCALE, KV_SCALE, MODELOPT, TENSOR_SCALE, WEIGHT
from .planning import Dequant, QuantPart


def _scalar(value: torch.Tensor | float, fmt: str) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=torch.float32).reshape(())
    return tensor if fmt == MODELOPT else tensor.reshape(1)


def quantize_parts(parent: torch.Tensor, child: torch.Tensor, spec: QuantPart) -> dict[str, torch.Tensor]:
    """Every stored part of `child` (a slice of `parent`), quantized with scales taken from the whole parent."""
    amax = fp8.abs_max(parent)  # once for the scales of every part
    if spec.scheme == "nvfp4":
        global_scale = nvfp4.global_scale(parent, amax)
        scales = nvfp4.block_scales(child, global_scale)
        result = {
            WEIGHT: nvfp4.quantize(child, scales, global_scale),
            BLOCK_SCALE: scales,
            # ModelOpt stores amax / (6 * 448); compressed-tensors its reciprocal, the global scale itself
            GLOBAL_SCALE: _scalar(amax / (nvfp4.E2M1_MAX * nvfp4.E4M3_MAX), spec.fmt)
            if spec.fmt == MODELOPT else _scalar(global_scale, spec.fmt),
        }
        if spec.input_amax is not None:
            step = spec.input_amax / (nvfp4.E2M1_MAX * nvfp4.E4M3_MAX)
            result[INPUT_SCALE] = _scalar(step if spec.fmt == MODELOPT else 1.0 / step, spec.fmt)
        return result
    scale = fp8.tensor_scale(parent, amax)
    result = {WEIGHT: fp8.quantize(child, scale), TENSOR_SCALE: _scalar(scale, spec.fmt)}
    if spec.input_amax is not None:
        result[INPUT_SCALE] = _scalar(spec.input_amax / fp8.E4M3_MAX, spec.fmt)
    return result


def kv_scale(spec: QuantPart) -> dict[str, torch.Tensor]:
    """The FP8 KV-cache scale of a key or value projection: its calibrated output amax / 448."""
    assert spec.input_amax is not None
    return {KV_SCALE: _scalar(fp8.tensor_scale(torch.tensor(spec.input_amax)), spec.fmt)}


def dequantize_weight(stored: torch.Tensor, scales: dict[str, torch.Tensor], spec: Dequant) -> torch.Tensor:
    """The fp32 values of a stored FP8 or NVFP4 weight (ModelOpt or compressed-tensors)."""
    if spec.scheme == "nvfp4":
        second = scales[GLOBAL_SCALE].to(torch.float32).reshape(1)
        global_scale = 1.0 / second if spec.fmt == MODELOPT else second
        return nvfp4.dequantize(stored, scales[BLOCK_SCALE], global_scale, torch.float32)
    return fp8.dequantize(stored, scales[TENSOR_SCALE], torch.float32)
