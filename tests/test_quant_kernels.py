"""FP8 and NVFP4 kernels agree bit for bit with compressed-tensors' quantizers, and round-trip within bounds."""

from __future__ import annotations

import pytest
import torch
from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8, quantize_and_pack_fp4, unpack_fp4_from_uint8
from compressed_tensors.quantization import QuantizationArgs
from compressed_tensors.quantization.lifecycle.forward import quantize as ct_quantize
from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

from elastic_slice.quant import fp8, nvfp4

NVFP4_ARGS = QuantizationArgs(num_bits=4, type="float", strategy="tensor_group", group_size=16, symmetric=True,
                              dynamic=False, scale_dtype=torch.float8_e4m3fn)
FP8_ARGS = QuantizationArgs(num_bits=8, type="float", strategy="tensor", symmetric=True, dynamic=False)


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 128, generator=g)
    outlier = base.clone()
    outlier[7, 33] = 3e4
    zeros_block = base.clone()
    zeros_block[:, :32] = 0
    subnormal = base * 1e-38
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] * 2).repeat(4, 1)
    ties = torch.cat([ties, -ties], dim=1)  # scaled so that the block amax maps to exactly 6: values land on ties
    return {
        "random": base, "scaled": base * 1000, "zeros": torch.zeros(32, 64), "outlier": outlier,
        "zero blocks": zeros_block, "subnormal": subnormal, "ties": ties, "negative zero": -torch.zeros(16, 32),
    }


@pytest.fixture(params=["one chunk", "small chunks"])
def chunks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernels' default chunks, or chunks of 5 blocks (80 values) so that every test tensor spans many chunks
    and ends in a partial one."""
    if request.param == "small chunks":
        monkeypatch.setattr(nvfp4, "CHUNK_BLOCKS", 5)
        monkeypatch.setattr(fp8, "CHUNK_ELEMENTS", 80)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("name", list(_tensors()))
def test_nvfp4_matches_compressed_tensors(name: str, dtype: torch.dtype, chunks: None) -> None:
    weight = _tensors()[name].to(dtype)
    ours_g = nvfp4.global_scale(weight)
    ct_g = generate_gparam(weight.float().amin(), weight.float().amax())
    assert torch.equal(ours_g, ct_g)
    rows, cols = weight.shape
    blocks = weight.float().reshape(rows, cols // 16, 16)
    ct_scales, _ = calculate_qparams(blocks.amin(-1), blocks.amax(-1), NVFP4_ARGS, global_scale=ct_g)
    ours_scales = nvfp4.block_scales(weight, ours_g)
    assert torch.equal(ours_scales.float(), ct_scales.float())
    ours = nvfp4.quantize(weight, ours_scales, ours_g)
    reference = quantize_and_pack_fp4(weight, ct_scales, global_scale=ct_g, group_size=16)
    assert ours.dtype == torch.uint8 and torch.equal(ours, reference)


@pytest.mark.parametrize("name", list(_tensors()))
def test_fp8_matches_compressed_tensors(name: str, chunks: None) -> None:
    weight = _tensors()[name].to(torch.bfloat16)
    ct_scale, _ = calculate_qparams(weight.float().amin().reshape(1), weight.float().amax().reshape(1), FP8_ARGS)
    ours_scale = fp8.tensor_scale(weight)
    assert torch.equal(ours_scale.reshape(1), ct_scale)
    reference = ct_quantize(weight, ct_scale, None, FP8_ARGS, dtype=torch.float8_e4m3fn)
    ours = fp8.quantize(weight, ours_scale)
    assert torch.equal(ours.view(torch.uint8), reference.view(torch.uint8))


def test_packing_order_matches_reference() -> None:
    codes = torch.randint(0, 16, (8, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    packed = nvfp4.pack(codes)
    assert torch.equal(packed[:, 0] & 0x0F, codes[:, 0]) and torch.equal(packed[:, 0] >> 4, codes[:, 1])
    values = nvfp4.decode(codes)
    assert torch.equal(pack_fp4_to_uint8(values) & 0x77, packed & 0x77)  # magnitudes agree (the reference folds -0)
    assert torch.equal(unpack_fp4_from_uint8(packed, 8, 32, dtype=torch.float32), values)
    assert torch.equal(nvfp4.unpack(packed), codes)


def test_ties_round_to_even() -> None:
    values = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -2.5, -5.0, 0.2501, 4.99])
    expected = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -0.0, -2.0, -4.0, 0.5, 4.0])
    assert torch.equal(nvfp4.decode(nvfp4.e2m1_codes(values)), expected)


@pytest.mark.parametrize("name", ["random", "scaled", "outlier", "zero blocks"])
def test_round_trip_error_bounds(name: str) -> None:
    weight = _tensors()[name]
    g = nvfp4.global_scale(weight)
    scales = nvfp4.block_scales(weight, g)
    restored = nvfp4.dequantize(nvfp4.quantize(weight, scales, g), scales, g, torch.float32)
    step = (scales.float() / g).repeat_interleave(16, dim=1)
    # E2M1 values are at most 2 apart (4 -> 6): error at most one step, plus E4M3 rounding of the block scale
    assert ((restored - weight).abs() <= step * 1.0 + 1e-12).all()
    scale = fp8.tensor_scale(weight)
    restored8 = fp8.dequantize(fp8.quantize(weight, scale), scale, torch.float32)
    # E4M3 has 3 mantissa bits: relative error at most 2^-4, and at most half the smallest subnormal step below
    bound = torch.maximum(weight.abs() * 2**-4, scale * 2**-10)
    assert ((restored8 - weight).abs() <= bound + 1e-12).all()


def test_nvfp4_code_table_equals_rounding_by_definition() -> None:
    """The bit-pattern lookup gives the codes of clamping and bucketing, on random bit patterns of every exponent
    and on every rounding boundary, the floats next to it and its negative."""
    g = torch.Generator().manual_seed(1)
    random_bits = torch.randint(-2**31, 2**31 - 1, (1 << 20,), generator=g, dtype=torch.int64).to(torch.int32)
    bounds = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0])
    around = torch.cat([bounds, torch.nextafter(bounds, torch.tensor(0.0)), torch.nextafter(bounds, torch.tensor(9.0))])
    values = torch.cat([random_bits.view(torch.float32), around, -around, torch.tensor([float("inf"), -float("inf")])])
    numbers = ~values.isnan()
    assert torch.equal(nvfp4.e2m1_codes(values)[numbers], nvfp4._rounded_codes(values)[numbers])


def test_column_cut_views_quantize_like_their_copies(chunks: None) -> None:
    """A slice's columns (a strided view, as a budget's cut gives) quantize exactly as the same values copied."""
    weight = _tensors()["random"].to(torch.bfloat16)
    view = weight[:, 16:80]
    assert not view.is_contiguous()
    copy = view.contiguous()
    g = nvfp4.global_scale(weight)
    assert torch.equal(nvfp4.block_scales(view, g).view(torch.uint8), nvfp4.block_scales(copy, g).view(torch.uint8))
    scales = nvfp4.block_scales(copy, g)
    assert torch.equal(nvfp4.quantize(view, scales, g), nvfp4.quantize(copy, scales, g))
    scale = fp8.tensor_scale(weight)
    assert torch.equal(fp8.quantize(view, scale).view(torch.uint8), fp8.quantize(copy, scale).view(torch.uint8))


def _defined_block_scales(weight: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Block scales as first written (before the bit-pattern block amax): aminmax per block, then E4M3 and the
    zero-block scale 0.125."""
    rows, cols = weight.shape
    low, high = torch.aminmax(weight.reshape(rows, cols // 16, 16), dim=-1)
    scales = (g * (torch.maximum(low.neg(), high).float() / 6)).clamp(-448, 448).to(torch.float8_e4m3fn).float()
    return torch.where(scales == 0, torch.tensor(0.125), scales).to(torch.float8_e4m3fn)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_block_scales_of_non_finite_blocks_are_unchanged(dtype: torch.dtype) -> None:
    """inf, -inf, NaN and -NaN in a block give the same scale bytes as the aminmax definition (a NaN block scale
    stays NaN), and quantizing with them gives the same bytes as before (codes by the same table)."""
    weight = _tensors()["random"].clone()
    weight[0, 3], weight[1, 20], weight[2, 40], weight[3, 60] = float("inf"), -float("inf"), float("nan"), 1.0
    weight[4, 70] = -float("nan")
    weight = weight.to(dtype)
    g = torch.tensor([2.0])
    ours = nvfp4.block_scales(weight, g)
    assert torch.equal(ours.view(torch.uint8) & 0x7F, _defined_block_scales(weight, g).view(torch.uint8) & 0x7F)
    steps = (ours.float() / g).repeat_interleave(16, dim=1)
    expected = nvfp4.pack(nvfp4._rounded_codes(weight.float() / steps))
    finite = ~(weight.float() / steps).isnan().reshape(64, 64, 2).any(-1)
    assert torch.equal(nvfp4.quantize(weight, ours, g)[finite], expected[finite])
