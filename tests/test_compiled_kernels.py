"""The compiled bf16 kernels (quant/_kernels.c) give torch's bytes, and a run that uses them never imports torch.

The torch kernels are tested against compressed-tensors (test_quant_kernels.py); these tests hold the compiled ones
to the torch ones bit for bit, from single codes to whole output folders.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli, tree_hash
from elastic_slice.plan import TensorOp
from elastic_slice.quant import apply, fp8, kernels, nvfp4
from elastic_slice.quant.formats import COMPRESSED_TENSORS, FORMATS, KV_SCALE, WEIGHT
from elastic_slice.quant.planning import QuantPart
from elastic_slice.quant.schemes import FP8, NVFP4, SCHEMES, Scheme

#: CI sets this, so that an install that did not build the extension fails here instead of skipping
REQUIRE_ENV = "ELASTIC_SLICE_REQUIRE_COMPILED"
pytestmark = pytest.mark.skipif(
    kernels._extension() is None and os.environ.get(REQUIRE_ENV) != "1",
    reason=f"the compiled kernels were not built (no C compiler at install); set {REQUIRE_ENV}=1 to fail instead",
)
ALL_PATTERNS = np.arange(2**16, dtype=np.uint16)
_NAN, _INF, _NEG_INF, _NEG_NAN = 0x7FC1, 0x7F80, 0xFF80, 0xFFC0


@pytest.fixture(autouse=True)
def compiled_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here runs with the compiled kernels on, whatever the environment says."""
    monkeypatch.delenv(kernels.KERNELS_ENV, raising=False)


def as_torch(bits: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)


def as_bits(tensor: torch.Tensor) -> np.ndarray:
    return tensor.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _weights() -> dict[str, np.ndarray]:
    """bf16 weights (bit patterns) of every shape and kind of value the kernels must agree on."""
    g = torch.Generator().manual_seed(1)

    def normal(rows: int, cols: int, scale: float = 1.0) -> np.ndarray:
        return as_bits(torch.randn(rows, cols, generator=g) * scale)

    zero_blocks = normal(24, 96)
    zero_blocks[:, 16:48] = 0
    zero_blocks[3, 48:64] = 0x8000  # a block of -0
    non_finite = normal(16, 64)
    for row, col, value in ((0, 3, _NAN), (1, 17, _INF), (2, 40, _NEG_INF), (3, 0, _NEG_NAN), (4, 5, _NAN)):
        non_finite[row, col] = value
    non_finite[4, 6] = _INF  # NaN and inf in one block
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 0.0, 6.0])
    ties = torch.cat([ties, -ties]).repeat(6, 1) * torch.tensor([2.0**k for k in (-20, -3, 0, 1, 7, 30)])[:, None]
    rng = np.random.default_rng(2)
    return {
        "expert-like": normal(232, 2688, 0.02),
        "small": normal(3, 32),
        "one block": normal(1, 16),
        "odd rows": normal(7, 48),
        "odd rows, many chunks": normal(33, 160, 40.0),
        "all zero": np.zeros((8, 32), np.uint16),
        "all negative zero": np.full((8, 32), 0x8000, np.uint16),
        "zero blocks": zero_blocks,
        "non-finite": non_finite,
        "subnormal": normal(16, 64, 1e-39),
        "huge": normal(16, 64, 1e38),
        "ties": as_bits(ties),
        "every bf16 pattern": rng.permutation(ALL_PATTERNS).reshape(4096, 16),
        "every finite pattern, in order": ALL_PATTERNS[(ALL_PATTERNS & 0x7FFF) < 0x7F80].reshape(-1, 16),
    }


WEIGHTS = _weights()


def test_the_extension_is_built_in_this_install() -> None:
    """CI must run the compiled kernels: an install that could not build them fails here (and falls back to torch
    everywhere else)."""
    from elastic_slice.quant import _kernels

    assert Path(_kernels.__file__).parent == Path(kernels.__file__).parent
    assert kernels.compiled() is _kernels


def test_the_environment_switch_forces_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    op = _quant_op("BF16", NVFP4)
    assert kernels.computes(op)
    monkeypatch.setenv(kernels.KERNELS_ENV, "torch")
    assert kernels.compiled() is None and not kernels.computes(op)


def _quant_op(dtype: str, scheme: Scheme, part: str = WEIGHT) -> TensorOp:
    spec = QuantPart(scheme, COMPRESSED_TENSORS, part)
    return TensorOp("w", dtype, (16, 16), (((0, 16),), ((0, 16),)), "w", "U8", (16, 8), None, "", quant=spec)


def test_only_quantization_of_bf16_weights_is_compiled() -> None:
    bf16 = _quant_op("BF16", FP8)
    assert kernels.computes(bf16)
    assert not kernels.computes(_quant_op("F16", FP8)) and not kernels.computes(_quant_op("F32", NVFP4))
    assert kernels.computes(_quant_op("F32", FP8, KV_SCALE))  # a calibrated constant, whatever the weight
    assert not kernels.computes(replace(bf16, quant=None, out_dtype="F32"))  # a cast
    assert not kernels.computes(replace(bf16, pad_value=0.0))


def test_e2m1_codes_equal_the_torch_table() -> None:
    from elastic_slice.quant import _kernels

    assert _kernels.E2M1_CODES == nvfp4._CODES.numpy().tobytes()


@pytest.mark.parametrize("scale", [1.0, 0.5, 1 / 448, 3.7e-5, 2.0**-23, 1e-30, 1e-41, 3e38])
def test_fp8_code_of_every_bf16_pattern(scale: float) -> None:
    scale32 = np.float32(scale)
    ours = kernels.fp8_codes(ALL_PATTERNS, scale32)
    reference = fp8.quantize(as_torch(ALL_PATTERNS), torch.tensor(scale32)).view(torch.uint8).numpy()
    mismatched = np.nonzero(ours != reference)[0]
    assert mismatched.size == 0, f"patterns {ALL_PATTERNS[mismatched[:5]]}: {ours[mismatched[:5]]} != " \
                                 f"{reference[mismatched[:5]]}"


@pytest.mark.parametrize("name", list(WEIGHTS))
def test_abs_max_and_scalar_scales_equal_torch(name: str) -> None:
    weight = WEIGHTS[name]
    amax = kernels.abs_max(weight)
    reference = fp8.abs_max(as_torch(weight))
    assert amax.tobytes() == tensor_bytes(reference)
    assert kernels.fp8_scale(amax).tobytes() == tensor_bytes(fp8.tensor_scale(as_torch(weight), reference))
    assert kernels.nvfp4_global_scale(amax).tobytes() == tensor_bytes(nvfp4.global_scale(as_torch(weight), reference))


def _children(weight: np.ndarray) -> dict[str, tuple[slice, slice]]:
    rows, cols = weight.shape
    cuts = {"whole": (slice(None), slice(None)), "rows": (slice(0, max(1, rows // 2)), slice(None))}
    if cols >= 48:
        cuts["columns"] = (slice(None), slice(16, cols - 16 if cols > 48 else 32))
        cuts["rows and columns"] = (slice(1, rows), slice(0, 16 * (cols // 32)))
    return cuts


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("name", list(WEIGHTS))
def test_every_stored_part_equals_torch(name: str, scheme: str, fmt: str) -> None:
    """Nested children (row and column cuts quantized with the whole parent's scales), with activation scales."""
    parent = WEIGHTS[name]
    for cut in _children(parent).values():
        child = np.ascontiguousarray(parent[cut])
        input_amax = 3.25
        ours = SCHEMES[scheme].quantize_bf16(parent, child, FORMATS[fmt], input_amax)
        reference = SCHEMES[scheme].quantize(as_torch(parent), as_torch(parent)[cut], FORMATS[fmt], input_amax)
        assert ours.keys() == reference.keys()
        for part, tensor in reference.items():
            assert ours[part].shape == tensor.shape, part
            assert ours[part].tobytes() == tensor_bytes(tensor), (part, cut)


@pytest.mark.parametrize("amax", [0.0, 1e-45, 1.0, 123.456, 3e38, float("inf")])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_kv_scale_equals_torch(amax: float, fmt: str) -> None:
    spec = QuantPart(FP8, FORMATS[fmt], KV_SCALE, amax)
    assert kernels.kv_scale(spec).tobytes() == tensor_bytes(apply.kv_scale(spec)[KV_SCALE])


def test_kernels_run_side_by_side_in_threads() -> None:
    weight = WEIGHTS["expert-like"]
    global_scale = kernels.nvfp4_global_scale(kernels.abs_max(weight))
    expected = kernels.nvfp4_codes(weight, global_scale)
    results: list[tuple[np.ndarray, np.ndarray]] = []
    threads = [threading.Thread(target=lambda: results.append(kernels.nvfp4_codes(weight, global_scale)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    assert all(np.array_equal(p, expected[0]) and np.array_equal(s, expected[1]) for p, s in results)


def test_misuse_raises_value_error() -> None:
    from elastic_slice.quant import _kernels

    values = np.zeros(32, np.uint16)
    codes = np.zeros(32, np.uint8)
    bad_calls = [
        lambda: _kernels.fp8_quantize(values, 1.0, codes[:31]),  # wrong length
        lambda: _kernels.fp8_quantize(values.astype(np.float16), 1.0, codes),  # wrong dtype
        lambda: _kernels.fp8_quantize(values.view(np.int16), 1.0, codes),
        lambda: _kernels.fp8_quantize(values, 1.0, codes.astype(np.uint16)),
        lambda: _kernels.fp8_quantize(values[::2], 1.0, codes[:16]),  # not contiguous
        lambda: _kernels.fp8_quantize(values, 1.0, bytes(32)),  # read-only output
        lambda: _kernels.fp8_quantize([0] * 32, 1.0, codes),  # not a buffer
        lambda: _kernels.nvfp4_quantize(values[:24], 1.0, codes[:12], codes[:1]),  # not whole blocks
        lambda: _kernels.nvfp4_quantize(values, 1.0, codes[:16], codes[:3]),  # wrong scale count
        lambda: _kernels.nvfp4_quantize(values, 1.0, codes[:15], codes[:2]),
        lambda: _kernels.bf16_abs_max(values[:0]),  # empty
        lambda: _kernels.bf16_abs_max(values.astype(np.uint32)),
        lambda: kernels.nvfp4_codes(np.zeros((2, 24), np.uint16), np.float32(1.0)),  # blocks across rows
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()
    with pytest.raises(TypeError):
        _kernels.fp8_quantize(values, "one", codes)
    assert not codes.any()  # nothing was written


# ----- whole runs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    ("extract", "--size", "12B", "--quantize", "fp8"),
    ("extract", "--size", "12B", "--quantize", "nvfp4"),
    ("quantize", "--to", "nvfp4"),
])
def test_outputs_are_byte_identical_with_torch_kernels(tiny_parent: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       command: tuple[str, ...]) -> None:
    verb, *options = command
    trees = {}
    for kernel in ("compiled", "torch"):
        if kernel == "torch":
            monkeypatch.setenv(kernels.KERNELS_ENV, "torch")
        out = tmp_path / kernel / "child"  # the same folder name: the card and manifest name it
        result = run_cli(verb, str(tiny_parent), *options, "--quant-format", "compressed-tensors", "--out", str(out))
        assert result.code == 0, result.stderr
        trees[kernel] = tree_hash(out)
    assert trees["compiled"] == trees["torch"]


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    ("extract", "--size", "12B", "--quantize", "nvfp4"),
    ("quantize", "--to", "fp8"),
])
@pytest.mark.parametrize("kernel", ["compiled", "torch"])
def test_compiled_quantization_never_imports_torch(tiny_parent: Path, tmp_path: Path, kernel: str,
                                                   command: tuple[str, ...]) -> None:
    verb, *options = command
    argv = ["elastic-slice", verb, str(tiny_parent), *options, "--quant-format", "compressed-tensors",
            "--out", str(tmp_path / "o")]
    script = (
        "import atexit, sys\nfrom elastic_slice import cli\n"
        "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules))\n"
        f"sys.argv = {argv!r}\n"
        "cli.main()\n"
    )
    env = {key: value for key, value in os.environ.items() if key != kernels.KERNELS_ENV}
    if kernel == "torch":
        env[kernels.KERNELS_ENV] = "torch"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert f"torch imported: {kernel == 'torch'}" in result.stdout


def test_the_amax_of_an_all_zero_weight_is_positive_zero_in_both_paths() -> None:
    """Its sign would reach ModelOpt NVFP4's weight_scale_2; torch's maximum over zeros of both signs follows its
    reduction order and thread count, so both paths give +0 whatever the zeros' signs."""
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            for first_half in (0x8000, 0x0000):
                bits = np.zeros((300, 160), np.uint16)
                bits[:150] = first_half
                assert not torch.signbit(fp8.abs_max(as_torch(bits)))
                assert not np.signbit(kernels.abs_max(bits))
    finally:
        torch.set_num_threads(threads)
