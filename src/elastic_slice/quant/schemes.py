"""Weight quantization schemes as objects: FP8 (one scale per tensor) and NVFP4 (blocks of 16 inputs).

A scheme carries everything that is its own: the module kinds it leaves alone by default, the parts a quantized
weight is stored as (dtype and shape), how a cut of the dense weight becomes a cut of those parts, its bytes on disk,
`verify --numerics`' tolerance, and the tensor side: quantize with the parent's scales (torch's kernels, or the
compiled bf16 kernels of quant/kernels.py on numpy arrays, the same bytes), dequantize and the rounding bound `verify`
checks (torch, imported only there). How a part is named on disk and how scalars are stored belong
to the format (formats.py). Adding a scheme is one subclass and one entry in SCHEMES.

The per-kind defaults (the broad recipe, for every family) follow NVIDIA's Nemotron FP8/NVFP4 releases: only the
linear kinds of `arch.base.LINEAR_KINDS` are quantized, and NVFP4 also keeps attention projections in bf16.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..arch.base import LINEAR_KINDS
from ..errors import InputError
from ..selection import Ranges, Selection
from .formats import BLOCK_SCALE, GLOBAL_SCALE, INPUT_SCALE, TENSOR_SCALE, WEIGHT, Format
from .kernels import E2M1_MAX, E4M3_MAX

if TYPE_CHECKING:
    import torch

BF16_BYTES = 2
SCALAR_BYTES = 4  # fp32 per-tensor scales (weight_scale / weight_scale_2 / input_scale)


@dataclass(frozen=True)
class StoredShape:
    """One part of a quantized [out, in] weight: its dtype and shape (None: a scalar, shaped by the format)."""

    part: str
    dtype: str
    shape: tuple[int, ...] | None


@dataclass(frozen=True)
class Scheme:
    """A weight quantization scheme; subclasses give its storage and kernels."""

    name: str
    block_size: int | None
    excluded_kinds: frozenset[str]
    #: the stored part whose presence marks a module as quantized by this scheme (its per-tensor or block scale)
    scale_part: str
    #: default `verify --numerics` tolerance (largest logit difference relative to the largest logit), measured on
    #: the random miniature parent over every budget and both formats (docs/quantization.md): FP8 up to 0.34, NVFP4
    #: up to 0.55; random weights are far less kind to low-bit rounding than trained ones, so these catch gross
    #: errors (a wrong scale convention), not small drifts
    numeric_tolerance: float

    def quantizes(self, kind: str, name: str) -> bool:
        """Whether the tensor `name` of a module of `kind` is stored quantized."""
        return name.endswith(".weight") and kind in LINEAR_KINDS and kind not in self.excluded_kinds

    def stored_bytes(self, kind: str, name: str, shape: tuple[int, ...]) -> int:
        """Bytes on disk for one tensor, with its scales, under this scheme (bf16 where not quantized)."""
        numel = math.prod(shape)
        if not self.quantizes(kind, name):
            return numel * BF16_BYTES
        if self.block_size is None:
            return numel + 2 * SCALAR_BYTES
        return numel // 2 + numel // self.block_size + 2 * SCALAR_BYTES

    # ----- storage ----------------------------------------------------------------------------------------------
    def stored_shapes(self, rows: int, cols: int) -> list[StoredShape]:
        """The parts of a quantized [rows, cols] weight (without its activation scale), in the order written."""
        raise NotImplementedError

    def dense_shape(self, rows: int, cols: int) -> tuple[int, int]:
        """The dense [out, in] shape of a stored weight part of shape [rows, cols]."""
        raise NotImplementedError

    def check_input_cut(self, cols: Ranges, in_features: int, tensor: str, budget: str) -> None:
        """Raise InputError when a budget's cut of the input dimension cannot be stored in this scheme."""

    def stored_selection(self, part: str, dense: Selection, tensor: str, budget: str) -> Selection:
        """The selection of a stored (non-scalar) part from the selection of its dense weight."""
        raise NotImplementedError

    # ----- tensors (torch) --------------------------------------------------------------------------------------
    def quantize(self, parent: torch.Tensor, child: torch.Tensor, fmt: Format,
                 input_amax: float | None) -> dict[str, torch.Tensor]:
        """Every stored part of `child` (a slice of `parent`), with scales taken from the whole parent; the
        activation scale too when `input_amax` is given."""
        raise NotImplementedError

    def quantize_bf16(self, parent: np.ndarray, child: np.ndarray, fmt: Format,
                      input_amax: float | None) -> dict[str, np.ndarray]:
        """`quantize` by the compiled kernels (quant/kernels.py) on bf16 bit patterns (uint16 arrays): the same
        bytes, as numpy arrays, without torch."""
        raise NotImplementedError

    def input_scale(self, input_amax: float, fmt: Format) -> float:
        """The stored activation scale of a calibrated input amax."""
        raise NotImplementedError

    def _with_input_scale(self, parts: dict[str, Any], scalar: Callable[[float], Any], fmt: Format,
                          input_amax: float | None) -> dict[str, Any]:
        """`parts`, with the activation scale of `input_amax` when given, stored by `scalar` (the format's torch
        `scalar` or numpy `scalar_array`)."""
        if input_amax is not None:
            parts[INPUT_SCALE] = scalar(self.input_scale(input_amax, fmt))
        return parts

    def dequantize(self, stored: torch.Tensor, scales: dict[str, torch.Tensor], fmt: Format) -> torch.Tensor:
        """The fp32 values of a stored weight."""
        raise NotImplementedError

    def error_bound(self, dense: torch.Tensor, scales: dict[str, torch.Tensor], fmt: Format) -> torch.Tensor:
        """The largest rounding error each element of `dense` may have after quantization."""
        raise NotImplementedError


@dataclass(frozen=True)
class Fp8(Scheme):
    """FP8 (E4M3) weights with one fp32 scale per tensor (quant/fp8.py)."""

    def stored_shapes(self, rows: int, cols: int) -> list[StoredShape]:
        return [StoredShape(WEIGHT, "F8_E4M3", (rows, cols)), StoredShape(TENSOR_SCALE, "F32", None)]

    def dense_shape(self, rows: int, cols: int) -> tuple[int, int]:
        return rows, cols

    def stored_selection(self, part: str, dense: Selection, tensor: str, budget: str) -> Selection:
        return dense

    def quantize(self, parent: torch.Tensor, child: torch.Tensor, fmt: Format,
                 input_amax: float | None) -> dict[str, torch.Tensor]:
        from . import fp8

        scale = fp8.tensor_scale(parent, fp8.abs_max(parent))
        return self._with_input_scale({WEIGHT: fp8.quantize(child, scale), TENSOR_SCALE: fmt.scalar(scale)},
                                      fmt.scalar, fmt, input_amax)

    def quantize_bf16(self, parent: np.ndarray, child: np.ndarray, fmt: Format,
                      input_amax: float | None) -> dict[str, np.ndarray]:
        from . import kernels

        scale = kernels.fp8_scale(kernels.abs_max(parent))
        return self._with_input_scale({WEIGHT: kernels.fp8_codes(child, scale), TENSOR_SCALE: fmt.scalar_array(scale)},
                                      fmt.scalar_array, fmt, input_amax)

    def input_scale(self, input_amax: float, fmt: Format) -> float:
        return input_amax / E4M3_MAX

    def dequantize(self, stored: torch.Tensor, scales: dict[str, torch.Tensor], fmt: Format) -> torch.Tensor:
        import torch

        from . import fp8

        return fp8.dequantize(stored, scales[TENSOR_SCALE], torch.float32)

    def error_bound(self, dense: torch.Tensor, scales: dict[str, torch.Tensor], fmt: Format) -> torch.Tensor:
        """Half an E4M3 step: |w| * 2^-4, and scale * 2^-10 for subnormals."""
        import torch

        scale = scales[TENSOR_SCALE].to(torch.float32)
        return torch.maximum(dense.abs() * 2**-4, scale * 2**-10)


@dataclass(frozen=True)
class Nvfp4(Scheme):
    """NVFP4: E2M1 codes packed two a byte, an E4M3 scale per block of 16 inputs, an fp32 global scale
    (quant/nvfp4.py)."""

    def stored_shapes(self, rows: int, cols: int) -> list[StoredShape]:
        block = self._block
        return [
            StoredShape(WEIGHT, "U8", (rows, cols // 2)),
            StoredShape(BLOCK_SCALE, "F8_E4M3", (rows, cols // block)),
            StoredShape(GLOBAL_SCALE, "F32", None),
        ]

    def dense_shape(self, rows: int, cols: int) -> tuple[int, int]:
        return rows, cols * 2

    def check_input_cut(self, cols: Ranges, in_features: int, tensor: str, budget: str) -> None:
        self._check_blocks(cols, tensor, budget)
        if in_features % self._block:
            raise InputError(
                f"NVFP4 needs input dimensions that are multiples of {self._block}; {tensor!r} has {in_features}."
            )

    def stored_selection(self, part: str, dense: Selection, tensor: str, budget: str) -> Selection:
        rows, cols = dense
        self._check_blocks(cols, tensor, budget)
        divisor = 2 if part == WEIGHT else self._block
        return (rows, tuple((start // divisor, stop // divisor) for start, stop in cols))

    @property
    def _block(self) -> int:
        assert self.block_size is not None
        return self.block_size

    def _check_blocks(self, cols: Ranges, tensor: str, budget: str) -> None:
        """NVFP4 blocks of 16 inputs must survive a cut whole, so that the child's blocks are the parent's."""
        for start, stop in cols:
            if start % self._block or stop % self._block:
                raise InputError(
                    f"budget {budget!r} cuts the input dimension of NVFP4 tensor {tensor!r} at {start}:{stop}, "
                    f"which is not on a multiple of {self._block} (the NVFP4 block size); choose sizes that keep "
                    "whole blocks."
                )

    def quantize(self, parent: torch.Tensor, child: torch.Tensor, fmt: Format,
                 input_amax: float | None) -> dict[str, torch.Tensor]:
        from . import fp8, nvfp4

        amax = fp8.abs_max(parent)
        global_scale = nvfp4.global_scale(parent, amax)
        scales = nvfp4.block_scales(child, global_scale)
        return self._with_input_scale({
            WEIGHT: nvfp4.quantize(child, scales, global_scale),
            BLOCK_SCALE: scales,
            # the step amax / (6 * 448), or its reciprocal (the global scale itself), as the format stores it
            GLOBAL_SCALE: fmt.scalar(global_scale if fmt.inverts_global_scales else amax / (E2M1_MAX * E4M3_MAX)),
        }, fmt.scalar, fmt, input_amax)

    def quantize_bf16(self, parent: np.ndarray, child: np.ndarray, fmt: Format,
                      input_amax: float | None) -> dict[str, np.ndarray]:
        from . import kernels

        amax = kernels.abs_max(parent)
        global_scale = kernels.nvfp4_global_scale(amax)
        packed, scales = kernels.nvfp4_codes(child, global_scale)
        step = np.float32(amax) / np.float32(E2M1_MAX * E4M3_MAX)  # as in `quantize`, in fp32
        return self._with_input_scale({
            WEIGHT: packed,
            BLOCK_SCALE: scales,
            GLOBAL_SCALE: fmt.scalar_array(global_scale if fmt.inverts_global_scales else step),
        }, fmt.scalar_array, fmt, input_amax)

    def input_scale(self, input_amax: float, fmt: Format) -> float:
        step = input_amax / (E2M1_MAX * E4M3_MAX)
        return 1.0 / step if fmt.inverts_global_scales else step

    def dequantize(self, stored: torch.Tensor, scales: dict[str, torch.Tensor], fmt: Format) -> torch.Tensor:
        import torch

        from . import nvfp4

        return nvfp4.dequantize(stored, scales[BLOCK_SCALE], self._global_scale(scales, fmt), torch.float32)

    def error_bound(self, dense: torch.Tensor, scales: dict[str, torch.Tensor], fmt: Format) -> torch.Tensor:
        """One block step (block scale / global scale: half the widest E2M1 gap), or what clamping at 6 steps
        cuts off a block whose E4M3 scale rounded down."""
        import torch

        block = self._block
        step = (scales[BLOCK_SCALE].to(torch.float32) / self._global_scale(scales, fmt)).repeat_interleave(block, dim=1)
        # a block scale rounded down in E4M3 (subnormal ones by up to half) clamps the block's largest values at 6
        block_amax = dense.abs().reshape(dense.shape[0], -1, block).amax(dim=-1).repeat_interleave(block, dim=1)
        return torch.maximum(step, block_amax - 6 * step)

    @staticmethod
    def _global_scale(scales: dict[str, torch.Tensor], fmt: Format) -> Any:
        import torch

        second = scales[GLOBAL_SCALE].to(torch.float32).reshape(1)
        return second if fmt.inverts_global_scales else 1.0 / second


FP8 = Fp8("fp8", block_size=None, excluded_kinds=frozenset(), scale_part=TENSOR_SCALE, numeric_tolerance=0.5)
NVFP4 = Nvfp4("nvfp4", block_size=16, excluded_kinds=frozenset({"attention_linear"}), scale_part=BLOCK_SCALE,
              numeric_tolerance=0.75)
SCHEMES: dict[str, Scheme] = {scheme.name: scheme for scheme in (FP8, NVFP4)}

#: recipes for what quantize-on-extract leaves unquantized: NVIDIA's Nemotron 3 Nano NVFP4 release (the
#: architecture's `recipe_exclusions`), or the broader per-kind defaults of the schemes above
NVIDIA, BROAD = "nvidia", "broad"
RECIPES = (NVIDIA, BROAD)


def footprint(tensors: Iterable[tuple[str, str, tuple[int, ...]]],
              vendor_kept: Collection[str] | None = None) -> dict[str, int]:
    """Bytes on disk of (name, kind, shape) tensors in bf16 and every scheme, calibrated (input scales stored):
    under a vendor recipe when `vendor_kept` is given (every linear weight quantized except those modules, named as
    in these tensors), else under the broad recipe (each scheme's per-kind defaults)."""
    items = list(tensors)
    sizes = {"bf16": sum(math.prod(shape) * BF16_BYTES for _, _, shape in items)}
    kept = vendor_kept or ()
    for scheme in SCHEMES.values():
        recipe = scheme if vendor_kept is None else replace(scheme, excluded_kinds=frozenset())
        sizes[scheme.name] = sum(
            recipe.stored_bytes(kind, name, shape) if name.removesuffix(".weight") not in kept
            else math.prod(shape) * BF16_BYTES
            for name, kind, shape in items
        )
    return sizes
