"""NVFP4 weight quantization: E2M1 codes in blocks of 16 inputs, an E4M3 scale per block, an fp32 global scale.

For a weight W [out, in] with global amax A:
  global scale g = 448 * 6 / A   (ModelOpt stores weight_scale_2 = A / (6 * 448); compressed-tensors stores g)
  block scale  s = E4M3(g * (block amax / 6)); a zero block gets 0.125 so that nothing divides by zero
  code         q = E2M1(clamp(w / (s / g), -6, 6)), nearest value with ties to even; the sign bit follows w's sign
  packing      two codes a byte along the input dimension, the even column in the low nibble.
Every function is pure; nested slicing needs only `quantize` with the parent's scales.
"""

from __future__ import annotations

import torch

from .fp8 import abs_max
from .kernels import E2M1_MAX, E4M3_MAX, NVFP4_BLOCK

BLOCK = NVFP4_BLOCK
_ZERO_BLOCK_SCALE = 0.125
_ZERO_BLOCK_CODE = int(torch.tensor(_ZERO_BLOCK_SCALE).to(torch.float8_e4m3fn).view(torch.uint8))
#: blocks quantized at a time: their fp32 copy, int32 table indexes and codes (about 0.6 MiB) stay in the CPU's L2
#: cache from step to step (8192 ran fastest of 2048-16384 on one thread)
CHUNK_BLOCKS = 8192
#: the signed integer type of a float's width, and the mask that clears its sign bit
_SIGNED = {2: (torch.int16, 0x7FFF), 4: (torch.int32, 0x7FFFFFFF)}
#: the eight magnitudes of E2M1, indexed by the three low bits of a code
E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
#: round-to-nearest-even boundaries between consecutive magnitudes; a tie goes to the even code, so some
#: boundaries belong to the upper value (written as the float just below them: x >= b  <=>  x > prev(b))
_TIES_UP = (0.75, 1.75, 3.5)
_BOUNDS = torch.tensor(
    [float(torch.nextafter(torch.tensor(b), torch.tensor(0.0))) if b in _TIES_UP else b
     for b in (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)],
    dtype=torch.float32,
)


def global_scale(weight: torch.Tensor, amax: torch.Tensor | None = None) -> torch.Tensor:
    """g = 448 * 6 / amax as a 1-element fp32 tensor (1.0 when amax is zero or not finite); `amax` when known."""
    amax = abs_max(weight) if amax is None else amax
    scale = E4M3_MAX * E2M1_MAX / amax.to(torch.float32).clamp(min=torch.finfo(torch.float32).tiny)
    return torch.nan_to_num(scale, nan=1.0, posinf=1.0, neginf=1.0).reshape(1)


def block_scales(weight: torch.Tensor, global_scale_: torch.Tensor) -> torch.Tensor:
    """E4M3 scale of every block of 16 inputs: [out, in / 16]."""
    scales = (global_scale_.to(torch.float32) * (block_amax(weight) / E2M1_MAX)).clamp_(-E4M3_MAX, E4M3_MAX)
    scales = scales.to(torch.float8_e4m3fn)
    codes = scales.view(torch.uint8)
    codes.masked_fill_((codes & 0x7F) == 0, _ZERO_BLOCK_CODE)  # +0 and -0
    return scales


def block_amax(weight: torch.Tensor) -> torch.Tensor:
    """The largest magnitude of every block of 16 inputs, as fp32 [out, in / 16]: the largest bit pattern with the
    sign bit cleared (patterns of non-negative floats order as their values; a NaN is larger than any number), a
    cache-sized chunk of blocks at a time."""
    rows, cols = weight.shape
    integer, magnitude = _SIGNED[weight.element_size()]
    bits = weight.contiguous().view(integer).reshape(-1, BLOCK)
    amax = torch.empty(bits.shape[0], dtype=integer)
    work = torch.empty(min(CHUNK_BLOCKS, bits.shape[0]), BLOCK, dtype=integer)
    for start in range(0, bits.shape[0], CHUNK_BLOCKS):
        stop = min(bits.shape[0], start + CHUNK_BLOCKS)
        chunk = torch.bitwise_and(bits[start:stop], magnitude, out=work[: stop - start])
        torch.amax(chunk, dim=-1, out=amax[start:stop])
    return amax.view(weight.dtype).to(torch.float32).reshape(rows, cols // BLOCK)


def _rounded_codes(values: torch.Tensor) -> torch.Tensor:
    """4-bit codes (sign << 3 | magnitude index) of fp32 values, by clamping to [-6, 6] and bucketing: the
    definition, used to build the lookup table of `e2m1_codes`."""
    values = torch.clamp(values, -E2M1_MAX, E2M1_MAX)
    index = torch.bucketize(values.abs(), _BOUNDS).to(torch.uint8)  # boundaries strictly below each magnitude
    signed = E2M1_VALUES[index.long()] * torch.sign(values)
    return index | (torch.signbit(signed).to(torch.uint8) << 3)


def _code_table() -> torch.Tensor:
    """The code of every fp32 value by its top 11 bits (sign, exponent, two mantissa bits) and whether any lower
    bit is set: entry 2k is the value whose bits are k << 21, entry 2k + 1 any value above it within those top bits.
    Every rounding boundary of E2M1 (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5) has two mantissa bits, so the code is
    constant between such values and the table is exact."""
    top = torch.arange(2048, dtype=torch.int32) << 21
    pairs = torch.stack((top, top | 1), dim=-1).reshape(-1)
    return _rounded_codes(pairs.view(torch.float32))


_CODES = _code_table()
_LOW_BITS = (1 << 21) - 1


def e2m1_codes(values: torch.Tensor) -> torch.Tensor:
    """4-bit codes (sign << 3 | magnitude index) of fp32 values, rounded to the nearest E2M1 value with ties to
    even (values beyond 6 give 6): one table lookup per value on its bit pattern, int32 temporaries only."""
    codes = torch.empty(values.shape, dtype=torch.uint8)
    bits = values.to(torch.float32, copy=True).view(torch.int32)
    _codes_into(bits, torch.empty_like(bits), codes)
    return codes


def _codes_into(bits: torch.Tensor, sticky: torch.Tensor, codes: torch.Tensor) -> None:
    """`codes` of the fp32 values whose bit patterns are `bits` (overwritten by table indexes), through the int32
    buffer `sticky`."""
    torch.bitwise_and(bits, _LOW_BITS, out=sticky)
    bits >>= 20
    bits &= 0xFFE
    bits |= sticky.ne_(0)
    torch.index_select(_CODES, 0, bits.view(-1), out=codes.view(-1))


def quantize(weight: torch.Tensor, scales: torch.Tensor, global_scale_: torch.Tensor) -> torch.Tensor:
    """Packed codes [out, in / 2] of `weight` under given block and global scales (the parent's, when nested).

    A cache-sized chunk of blocks at a time goes through every step (fp32 copy, division by the block's step,
    table lookup, packing) in buffers made once, so no step allocates or leaves the CPU cache."""
    rows, cols = weight.shape
    blocks = weight.contiguous().reshape(-1, BLOCK)
    steps = scales.to(torch.float32).div_(global_scale_.to(torch.float32)).reshape(-1, 1)
    packed = torch.empty(rows, cols // 2, dtype=torch.uint8)
    out = packed.view(-1, BLOCK // 2)
    buffers = _Buffers(min(CHUNK_BLOCKS, blocks.shape[0]))
    for start in range(0, blocks.shape[0], CHUNK_BLOCKS):
        stop = min(blocks.shape[0], start + CHUNK_BLOCKS)
        work = buffers if stop - start == buffers.size else _Buffers(stop - start)
        work.values.copy_(blocks[start:stop]).div_(steps[start:stop])
        _codes_into(work.bits, work.sticky, work.codes)
        _pack_into(work.codes, work.pairs, out[start:stop])
    return packed


class _Buffers:
    """The buffers `quantize` takes `size` blocks through."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.values = torch.empty(size, BLOCK, dtype=torch.float32)
        self.bits = self.values.view(torch.int32)
        self.sticky = torch.empty(size, BLOCK, dtype=torch.int32)
        self.codes = torch.empty(size, BLOCK, dtype=torch.uint8)
        self.pairs = torch.empty(size, BLOCK // 2, dtype=torch.int16)


def pack(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes a byte: column 2k in the low nibble, 2k+1 in the high nibble."""
    rows, cols = codes.shape
    packed = torch.empty(rows, cols // 2, dtype=torch.uint8)
    _pack_into(codes.contiguous(), torch.empty(rows, cols // 2, dtype=torch.int16), packed)
    return packed


def _pack_into(codes: torch.Tensor, pairs: torch.Tensor, out: torch.Tensor) -> None:
    """`pack` of `codes` [n, 2m] into `out` [n, m] through the int16 buffer `pairs`: a pair of codes read as one
    int16 (the even column in the low byte) holds the packed byte in the low byte of `x | (x >> 4)`."""
    both = codes.view(torch.int16)
    torch.bitwise_right_shift(both, 4, out=pairs).bitwise_or_(both)
    out.copy_(pairs)  # int16 to uint8 keeps the low byte


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """The 4-bit codes [out, in] of packed bytes [out, in / 2]."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).reshape(packed.shape[0], -1)


def decode(codes: torch.Tensor) -> torch.Tensor:
    """E2M1 values of 4-bit codes, as fp32."""
    magnitude = E2M1_VALUES[(codes & 0x07).long()]
    return torch.where((codes & 0x08) != 0, -magnitude, magnitude)


def dequantize(
    packed: torch.Tensor, scales: torch.Tensor, global_scale_: torch.Tensor, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    values = decode(unpack(packed))
    rows, cols = values.shape
    step = scales.to(torch.float32) / global_scale_.to(torch.float32)
    return (values.reshape(rows, cols // BLOCK, BLOCK) * step.unsqueeze(-1)).reshape(rows, cols).to(dtype)
