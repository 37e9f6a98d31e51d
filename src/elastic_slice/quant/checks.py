"""Checks `verify` makes on quantized outputs with the project's own decoder (never a third-party quantized loader).

- Calibrated scales (activation `input_scale`s, KV-cache `k_scale`/`v_scale`) cannot be re-derived without running
  calibration again: each must be one finite, positive number.
- A weight quantized during the run must dequantize to within the format's rounding bound of the parent's slice:
  NVFP4 within one block step (block scale / global scale: half the widest E2M1 gap), or what clamping at 6 steps
  cuts off a block whose E4M3 scale rounded down; FP8 within half an E4M3 step (|w| * 2^-4, and scale * 2^-10 for
  subnormals).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..dtypes import torch_dtype
from ..transform import as_torch
from .apply import dequantize_weight
from .formats import INPUT_SCALE, KV_SCALE, WEIGHT
from .planning import Dequant, ParentQuantization, StoredPart

if TYPE_CHECKING:
    from ..checkpoint import Checkpoint, ShardFiles
    from ..plan import TensorOp

CALIBRATED_PARTS = (INPUT_SCALE, KV_SCALE)


def calibrated_tensors(quantization: ParentQuantization | None) -> dict[str, StoredPart]:
    """The stored tensors that come from calibration (activation and KV-cache scales)."""
    if quantization is None:
        return {}
    return {name: part for name, part in quantization.stored.items() if part.part in CALIBRATED_PARTS}


def bad_calibrated_scales(names: list[str], files: ShardFiles) -> list[str]:
    """The names of calibrated scales that are not one finite, positive number."""
    bad = []
    for name in names:
        value = files.read_tensor(name).to(torch.float32).reshape(-1)
        if value.numel() != 1 or not torch.isfinite(value).all() or not (value > 0).all():
            bad.append(name)
    return bad


@dataclass
class BoundWriter:
    """Stands in for a ShardWriter on the parent's dense (unquantized) plan: each dense weight the child stores
    quantized is compared, once whole, with the child's weight dequantized by the project's own kernels."""

    child: Checkpoint
    files: ShardFiles
    quantization: ParentQuantization
    #: dense weight name -> stored part names of the child, by part
    modules: dict[str, dict[str, str]] = field(default_factory=dict)
    outside: list[str] = field(default_factory=list)
    checked: int = 0
    _buffers: dict[str, bytearray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, part in self.quantization.stored.items():
            if part.part not in CALIBRATED_PARTS:
                self.modules.setdefault(part.dense_name, {})[part.part] = name

    def write(self, op: TensorOp, data: Any) -> None:
        parts = self.modules.get(op.out_name)
        if parts is None or WEIGHT not in parts:
            return
        buffer = self._buffers.setdefault(op.out_name, bytearray())
        buffer += memoryview(data).cast("B")
        if len(buffer) == op.nbytes:
            del self._buffers[op.out_name]
            self._compare(op, buffer, parts)

    def _compare(self, op: TensorOp, data: bytearray, parts: dict[str, str]) -> None:
        import numpy as np

        dense = as_torch(np.frombuffer(data, np.uint8).view(_unsigned(op.out_dtype)).reshape(op.out_shape), op.out_dtype)
        dense = dense.to(torch.float32)
        stored = self.files.read_tensor(parts[WEIGHT])
        scales = {part: self.files.read_tensor(name) for part, name in parts.items() if part != WEIGHT}
        spec = Dequant(self.quantization.scheme, self.quantization.fmt, {})
        restored = dequantize_weight(stored, scales, spec)
        bound = self.quantization.scheme.error_bound(dense, scales, self.quantization.fmt)
        # ties sit exactly on the bound: allow fp32 rounding of the bound itself
        if restored.shape != dense.shape or not ((restored - dense).abs() <= bound * (1 + 2**-20) + 1e-12).all():
            self.outside.append(op.out_name)
        self.checked += 1

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _unsigned(code: str) -> Any:
    import numpy as np

    return {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[torch_dtype(code).itemsize]
