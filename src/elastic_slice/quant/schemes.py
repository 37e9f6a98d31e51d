"""FP8 and NVFP4 schemes: which modules they quantize by default and the bytes each stored tensor takes.

Default exclusions follow NVIDIA's Nemotron FP8/NVFP4 releases: embeddings, lm_head, router gates, conv1d, norms
and Mamba A/D/dt stay in bf16 (only linear layers are quantized), and NVFP4 also keeps attention projections in bf16.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace

from ..arch.base import LINEAR_KINDS

BF16_BYTES = 2
SCALAR_BYTES = 4  # fp32 per-tensor scales (weight_scale / weight_scale_2 / input_scale)


@dataclass(frozen=True)
class Scheme:
    """A weight quantization scheme."""

    name: str
    block_size: int | None
    excluded_kinds: frozenset[str]

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


FP8 = Scheme("fp8", block_size=None, excluded_kinds=frozenset())
NVFP4 = Scheme("nvfp4", block_size=16, excluded_kinds=frozenset({"attention_linear"}))
SCHEMES = {scheme.name: scheme for scheme in (FP8, NVFP4)}

#: recipes for what quantize-on-extract leaves unquantized: NVIDIA's Nemotron 3 Nano NVFP4 release (the
#: architecture's `recipe_exclusions`), or the broader per-kind defaults of the schemes above
NVIDIA, BROAD = "nvidia", "broad"
RECIPES = (NVIDIA, BROAD)


def footprint(tensors: Iterable[tuple[str, str, tuple[int, ...]]], kept: Collection[str] = ()) -> dict[str, int]:
    """Bytes on disk of (name, kind, shape) tensors in bf16, FP8 and NVFP4 under the default (NVIDIA) recipe: every
    linear weight quantized except the modules in `kept` (the recipe's, named as in these tensors)."""
    items = list(tensors)
    sizes = {"bf16": sum(math.prod(shape) * BF16_BYTES for _, _, shape in items)}
    for scheme in SCHEMES.values():
        recipe = replace(scheme, excluded_kinds=frozenset())
        sizes[scheme.name] = sum(
            recipe.stored_bytes(kind, name, shape) if name.removesuffix(".weight") not in kept
            else math.prod(shape) * BF16_BYTES
            for name, kind, shape in items
        )
    return sizes
