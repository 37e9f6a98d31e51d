"""The one table of tensor dtypes: safetensors codes, torch dtypes, byte sizes and user-facing names."""

from __future__ import annotations

import torch

from .errors import InputError

#: safetensors dtype code -> (torch dtype, bytes per element)
SAFETENSORS_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "BOOL": (torch.bool, 1),
    "U8": (torch.uint8, 1),
    "I8": (torch.int8, 1),
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
    "I16": (torch.int16, 2),
    "U16": (torch.uint16, 2),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I32": (torch.int32, 4),
    "U32": (torch.uint32, 4),
    "F32": (torch.float32, 4),
    "I64": (torch.int64, 8),
    "U64": (torch.uint64, 8),
    "F64": (torch.float64, 8),
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
    return SAFETENSORS_DTYPES[code][0]


def parse_user_dtype(name: str) -> str:
    """Map a --dtype value (bf16, fp16, fp32) to its safetensors code, or fail naming the choices."""
    code = USER_DTYPES.get(name.lower())
    if code is None:
        raise InputError(f"--dtype {name!r} is not supported; use one of bf16, fp16, fp32.")
    return code
