"""Ops that change values, not just bytes: casts, scales, padding, quantizing and dequantizing (torch).

The executor copies plain cuts with numpy alone; it imports this module (and so torch) only for a plan with an op
that needs it, which keeps a plain bf16 extract free of torch's start-up cost.
"""

from __future__ import annotations

import numpy as np
import torch

from .checkpoint import ShardFiles
from .dtypes import torch_dtype
from .plan import TensorOp
from .quant.apply import dequantize_weight, kv_scale, quantize_parts
from .quant.formats import KV_SCALE
from .selection import Ranges


def as_torch(rows: np.ndarray, code: str) -> torch.Tensor:
    """The torch view of stored elements (read as unsigned integers of the same width) in dtype `code`."""
    return torch.from_numpy(rows).view(torch_dtype(code))


def as_bytes(tensor: torch.Tensor) -> np.ndarray:
    """A tensor's bytes, flat and contiguous, as the writer takes them."""
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy()


def convert(tensor: torch.Tensor, op: TensorOp) -> torch.Tensor:
    """Apply an op's scale (in fp32) and output dtype to a freshly cut slice."""
    if op.scale is not None:
        tensor = tensor.to(torch.float32) * op.scale
    return tensor.to(torch_dtype(op.out_dtype))


def select(tensor: torch.Tensor, ranges_per_dim: tuple[Ranges, ...]) -> torch.Tensor:
    """Keep the given ranges of dimensions 0, 1, ... of `tensor`."""
    for dim, ranges in enumerate(ranges_per_dim):
        if ranges == ((0, tensor.shape[dim]),):
            continue
        parts = [tensor.narrow(dim, start, stop - start) for start, stop in ranges]
        tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)
    return tensor


def transformed(
    rows: np.ndarray,
    code: str,
    op: TensorOp,
    selection: tuple[Ranges, ...],
    files: ShardFiles,
    quantized: dict[int, dict[str, torch.Tensor]],
    target: int,
) -> np.ndarray:
    """The output bytes of `op` from `rows` (stored dtype `code`), cut by `selection` (relative to `rows`).

    Quantizing and dequantizing get the parent's whole tensor; `quantized` keeps every part of one target's
    quantized weight, so its scales are computed once."""
    tensor = as_torch(rows, code)
    if op.dequant is not None:
        scales = {part: files.read_tensor(name) for part, name in op.dequant.scales.items()}
        return as_bytes(convert(select(dequantize_weight(tensor, scales, op.dequant), selection), op))
    if op.quant is not None and op.quant.part == KV_SCALE:  # a calibrated constant, not a function of the weight
        return as_bytes(kv_scale(op.quant)[KV_SCALE])
    if op.quant is not None:
        if target not in quantized:
            quantized[target] = quantize_parts(tensor, select(tensor, selection), op.quant)
        return as_bytes(quantized[target][op.quant.part])
    kept = convert(select(tensor, selection), op)
    if op.pad_value is None:
        return as_bytes(kept)
    padded = torch.full(op.out_shape, op.pad_value, dtype=kept.dtype)
    padded[tuple(slice(0, size) for size in kept.shape)] = kept
    return as_bytes(padded)
