"""The one table of tensor dtypes: safetensors codes, torch dtypes, byte sizes and user-facing names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    import torch

#: safetensors dtype code -> (torch dtype name, bytes per element); torch itself is imported only to convert values
SAFETENSORS_DTYPES: dict[str, tuple[str, int]] = {
    "BOOL": ("bool", 1),
    "U8": ("uint8", 1),
    "I8": ("int8", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "I16": ("int16", 2),
    "U16": ("uint16", 2),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I32": ("int32", 4),
    "U32": ("uint32", 4),
    "F32": ("float32", 4),
    "I64": ("int64", 8),
    "U64": ("uint64", 8),
    "F64": ("float64", 8),
}

#: names accepted by --dtype -> safetensors code
USER_DTYPES: dict[str, str] = {
    "bf16": "BF16", "bfloat16": "BF16",
    "fp16": "F16", "float16": "F16",
    "fp32": "F32", "float32": "F32",
}

#: floating-point codes that --dtype may convert (quantized codes are never converted by a plain cast)
CASTABLE_FLOATS = frozenset({"BF16", "F16", "F32", "F64"})

#: safetensors code -> the `torch_dtype` string Hugging Face configs use
CONFIG_DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}


def itemsize(code: str) -> int:
    """Bytes per element of a safetensors dtype code."""
    return SAFETENSORS_DTYPES[code][1]


def torch_dtype(code: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype code."""
    import torch

    return getattr(torch, SAFETENSORS_DTYPES[code][0])


def parse_user_dtype(name: str) -> str:
    """Map a --dtype value (bf16, fp16, fp32) to its safetensors code, or fail naming the choices."""
    code = USER_DTYPES.get(name.lower())
    if code is None:
        raise InputError(f"--dtype {name!r} is not supported; use one of bf16, fp16, fp32.")
    return code
