"""Quantization kernels for bf16 weights (quant/_kernels.c), bit for bit those of quant/fp8.py and quant/nvfp4.py.

Values are bf16 bit patterns (C-contiguous uint16 buffers); outputs are C-contiguous writable uint8 buffers of the
right length. Misuse raises ValueError; the GIL is released while a kernel runs."""

import numpy as np

#: the E2M1 code of every fp32 value by its top 11 bits and whether a lower bit is set (nvfp4._CODES' layout)
E2M1_CODES: bytes

def bf16_abs_max(values: np.ndarray, /) -> float: ...
def fp8_quantize(values: np.ndarray, scale: float, codes: np.ndarray, /) -> None: ...
def nvfp4_quantize(values: np.ndarray, global_scale: float, packed: np.ndarray, scales: np.ndarray, /) -> None: ...
