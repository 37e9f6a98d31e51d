"""Where weights are quantized: the compiled bf16 kernels (quant/_kernels.c) or torch's (quant/fp8.py, nvfp4.py).

Both give the same bytes. The compiled kernels take a weight's bf16 bit patterns (uint16 arrays) and give numpy
arrays, so a run whose only value-changing ops quantize bf16 weights never imports torch (about 1.2 s of one core)
and quantizes at several times torch's speed. `computes` is the one place that chooses: the compiled kernels when the
extension was built (a C compiler at install time) and `ELASTIC_SLICE_KERNELS` is not `torch`; torch for everything
else (other dtypes, casts, padding, dequantizing; calibration and verify always use torch).

The fp32 scalar formulas below are those of fp8.tensor_scale and nvfp4.global_scale, on numpy fp32 scalars.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from .formats import KV_SCALE

if TYPE_CHECKING:
    from ..plan import TensorOp
    from .planning import QuantPart

#: set to `torch` to quantize with torch even where the compiled kernels are present (tests, paired benchmarks)
KERNELS_ENV = "ELASTIC_SLICE_KERNELS"
E4M3_MAX = 448.0
E2M1_MAX = 6.0
#: inputs per NVFP4 block (the compiled kernel's, and nvfp4.BLOCK)
NVFP4_BLOCK = 16
#: the FP8 scale of a weight whose largest magnitude is zero (fp8.tensor_scale: torch's float32 eps)
_ZERO_SCALE = np.float32(np.finfo(np.float32).eps)
_TINY = np.float32(np.finfo(np.float32).tiny)


@functools.cache
def _extension() -> ModuleType | None:
    try:
        from . import _kernels
    except ImportError:  # built without a C compiler: torch quantizes
        return None
    return _kernels


def compiled() -> ModuleType | None:
    """The compiled kernels, or None when they are absent or switched off by the environment."""
    setting = os.environ.get(KERNELS_ENV, "").strip().lower()
    if setting not in ("", "compiled", "torch"):
        raise InputError(
            f"{KERNELS_ENV}={os.environ[KERNELS_ENV]!r} is not understood; set it to torch (torch's kernels) or "
            "compiled (the default), or unset it."
        )
    return None if setting == "torch" else _extension()


def describe() -> str:
    """Which kernels quantize bf16 weights in this install, for `elastic-slice --version`."""
    try:
        chosen = compiled()
    except InputError as exc:
        return f"none chosen: {exc}"
    if chosen is not None:
        return "compiled (elastic_slice.quant._kernels)"
    if _extension() is None:
        return "torch (the compiled kernels were not built: reinstall with a C compiler for faster quantization)"
    return f"torch ({KERNELS_ENV}=torch; the compiled kernels are installed)"


def computes(op: TensorOp) -> bool:
    """Whether the compiled kernels compute `op`: a stored part of a bf16 weight quantized during the run, or a
    calibrated KV-cache scale, with nothing else (scale, padding, dequantizing) changing its values."""
    spec = op.quant
    if spec is None or op.dequant is not None or op.pad_value is not None or op.scale is not None:
        return False
    return (spec.part == KV_SCALE or op.source_dtype == "BF16") and compiled() is not None


def _kernels() -> ModuleType:
    module = compiled()
    if module is None:
        raise RuntimeError(f"the compiled quantization kernels are not available (or {KERNELS_ENV}=torch)")
    return module


# ----- the compiled kernels, on bf16 bit patterns ---------------------------------------------------------------
def abs_max(values: np.ndarray) -> np.float32:
    """fp8.abs_max of bf16 bit patterns."""
    return np.float32(_kernels().bf16_abs_max(np.ascontiguousarray(values)))


def fp8_codes(values: np.ndarray, scale: np.float32) -> np.ndarray:
    """fp8.quantize of bf16 bit patterns: E4M3 codes (uint8) of the same shape."""
    codes = np.empty(values.shape, np.uint8)
    _kernels().fp8_quantize(np.ascontiguousarray(values), float(scale), codes)
    return codes


def nvfp4_codes(values: np.ndarray, global_scale: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """nvfp4.quantize and nvfp4.block_scales of bf16 bit patterns [out, in]: packed codes [out, in / 2] and E4M3
    block scales (uint8 codes) [out, in / 16]."""
    if values.ndim != 2:
        raise ValueError(f"NVFP4 quantizes 2-D weights [out, in]; this one has shape {values.shape}")
    rows, cols = values.shape
    if cols % NVFP4_BLOCK:
        raise ValueError(f"NVFP4 needs whole blocks of {NVFP4_BLOCK} inputs in a row; this weight has {cols}")
    packed = np.empty((rows, cols // 2), np.uint8)
    scales = np.empty((rows, cols // NVFP4_BLOCK), np.uint8)
    _kernels().nvfp4_quantize(np.ascontiguousarray(values), float(global_scale), packed, scales)
    return packed, scales


# ----- fp32 scalars -----------------------------------------------------------------------------------------------
def fp8_scale(amax: np.float32) -> np.float32:
    """fp8.tensor_scale: amax / 448, or float32 eps when that is zero."""
    scale = np.float32(amax) / np.float32(E4M3_MAX)
    return _ZERO_SCALE if scale == 0 else scale


def nvfp4_global_scale(amax: np.float32) -> np.float32:
    """nvfp4.global_scale: 448 * 6 / amax (amax at least the smallest normal float), 1.0 when not finite; computed
    as torch computes a number over a tensor, (1 / amax) * 2688, which can differ from 2688 / amax in the last bit."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        scale = np.float32(1.0) / np.maximum(np.float32(amax), _TINY) * np.float32(E4M3_MAX * E2M1_MAX)
    return scale if np.isfinite(scale) else np.float32(1.0)


def kv_scale(spec: QuantPart) -> np.ndarray:
    """apply.kv_scale's stored scalar: the calibrated output amax (as fp32) over 448, as bytes."""
    assert spec.input_amax is not None
    return spec.fmt.scalar_array(fp8_scale(np.float32(spec.input_amax))).reshape(-1).view(np.uint8)
