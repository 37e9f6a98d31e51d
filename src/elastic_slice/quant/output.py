"""The quantization config files of an output: written fresh when quantizing, renumbered when slicing."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..arch.base import LINEAR_KINDS
from ..checkpoint import HF_QUANT_CONFIG
from .declared import NEVER_QUANTIZED_KINDS
from .formats import INPUT_SCALE, KV_SCALE, WEIGHT, Format
from .planning import ParentQuantization, QuantRequest, rename_modules
from .schemes import Scheme

if TYPE_CHECKING:
    from ..arch import BoundArchitecture
    from ..checkpoint import Checkpoint
    from ..nesting import Budget
    from ..plan import TensorOp


@dataclass(frozen=True)
class QuantSummary:
    """How an output's weights are quantized, for its model card."""

    scheme: Scheme
    fmt: Format
    #: the recipe and calibration of a run that quantized; None for a slice of an already quantized parent
    recipe: str | None
    calibration: str | None
    exclude: tuple[str, ...]
    kv_cache: bool
    #: whether routed-expert weights are stored quantized (transformers mishandles them; see the card)
    experts_quantized: bool
    #: whether routed experts store activation scales (transformers has no place for them; see the card)
    experts_input_scales: bool = False
    #: the architecture's name for its vendor recipe and what it keeps ("" when it has none)
    recipe_description: str = ""
    #: whether the output has routed experts at all (transformers' fused experts are what it mishandles)
    has_routed_experts: bool = True
    #: module kinds the output holds that no recipe quantizes (not linear layers elastic-slice quantizes)
    never_quantized: tuple[str, ...] = ()


def summarize(
    arch: BoundArchitecture, ops: list[TensorOp], parent: ParentQuantization | None, request: QuantRequest | None,
    child_config: dict[str, Any],
) -> QuantSummary | None:
    """The card's view of the output's quantization (None when it has none)."""
    if request is not None:
        parts = [(op.source, op.quant.part) for op in ops if op.quant is not None]
        return QuantSummary(request.scheme, request.fmt, request.recipe, request.calibration, request.exclude,
                            stores_kv_scales(ops, None), _experts_store(arch, parts, WEIGHT),
                            _experts_store(arch, parts, INPUT_SCALE), arch.recipe_description(),
                            _has_routed_experts(arch, ops), _never_quantized(arch, ops))
    if parent is None or "quantization_config" not in child_config:
        return None
    parts = [(op.source, parent.stored[op.source].part) for op in ops if op.source in parent.stored]
    return QuantSummary(parent.scheme, parent.fmt, None, None, (), stores_kv_scales(ops, parent),
                        _experts_store(arch, parts, WEIGHT),
                        _experts_store(arch, parts, INPUT_SCALE), has_routed_experts=_has_routed_experts(arch, ops))


def _never_quantized(arch: BoundArchitecture, ops: list[TensorOp]) -> tuple[str, ...]:
    return tuple(sorted({kind for op in ops if (kind := arch.module_kind(op.source)) not in LINEAR_KINDS}))


def _has_routed_experts(arch: BoundArchitecture, ops: list[TensorOp]) -> bool:
    return any(arch.module_kind(op.source) == "expert_linear" for op in ops)


def _experts_store(arch: BoundArchitecture, parts: list[tuple[str, str]], wanted: str) -> bool:
    """Whether a routed expert stores the part `wanted` (its weight quantized, its activation scale)."""
    return any(part == wanted and arch.module_kind(source) == "expert_linear" for source, part in parts)


def output_quantization(
    checkpoint: Checkpoint,
    arch: BoundArchitecture,
    child_config: dict[str, Any],
    budget: Budget,
    ops: list[TensorOp],
    parent: ParentQuantization | None,
    request: QuantRequest | None,
    version: str,
) -> dict[str, Any]:
    """Set the child's `quantization_config` and return extra files (hf_quant_config.json) to write."""
    kept = list(budget.sizes.get("layers", []))
    if parent is not None:
        return _renumbered(checkpoint, child_config, kept, stores_kv_scales(ops, parent))
    if request is None:
        return {}
    modules, globs = exclusions(arch, ops, request, kept)
    return request.fmt.write_config(child_config, request.scheme, modules, globs, arch.serving_name,
                                    request.input_amax is not None, stores_kv_scales(ops, parent), version)


def stores_kv_scales(ops: list[TensorOp], parent: ParentQuantization | None) -> bool:
    """Whether the child stores KV-cache scales: a budget that keeps no attention layer has none to declare."""
    return any((op.quant is not None and op.quant.part == KV_SCALE)
               or (parent is not None and op.source in parent.stored and parent.stored[op.source].part == KV_SCALE)
               for op in ops)


def exclusions(
    arch: BoundArchitecture, ops: list[TensorOp], request: QuantRequest, kept: list[int]
) -> tuple[list[str], list[str]]:
    """The child's unquantized modules to list by name, and the user's globs (written as given, not expanded).

    The recipe's modules come first, in the release's order, renumbered for the child; then any other unquantized
    linear weight that an engine would otherwise expect quantized (embeddings and router gates never are)."""
    modules = rename_modules(list(request.recipe_modules), kept)
    listed = set(modules)
    for op in ops:
        module = op.out_name.removesuffix(".weight")
        if (op.quant is None and op.out_name.endswith(".weight") and len(op.out_shape) == 2
                and module not in listed and arch.module_kind(op.source) not in NEVER_QUANTIZED_KINDS
                and not request.excluded_by_user(op.source, op.out_name)):
            modules.append(module)
            listed.add(module)
    if "lm_head" not in listed and not any(op.out_name == "lm_head.weight" for op in ops):
        modules.append("lm_head")  # tied to the embedding (not stored), which is never quantized
    return modules, list(request.exclude)


def _renumbered(checkpoint: Checkpoint, child_config: dict[str, Any], kept: list[int], kv_stored: bool) -> dict[str, Any]:
    """The parent's declaration with exclusion lists renumbered for the kept layers, and its KV-cache declaration
    dropped (as the writers leave it: None) when the child keeps no KV-cache scale."""
    files: dict[str, Any] = {}
    blocks: list[dict[str, Any]] = []
    hf = checkpoint.hf_quant_config()
    if hf is not None:
        hf = copy.deepcopy(hf)
        block = hf.get("quantization") or {}
        if isinstance(block.get("exclude_modules"), list):
            block["exclude_modules"] = rename_modules(block["exclude_modules"], kept)
        blocks.append(block)
        files[HF_QUANT_CONFIG] = hf
    qconfig = child_config.get("quantization_config")
    if isinstance(qconfig, dict):
        for key in ("exclude_modules", "ignore"):
            if isinstance(qconfig.get(key), list):
                qconfig[key] = rename_modules(qconfig[key], kept)
        blocks.append(qconfig)
    if not kv_stored:
        for block in blocks:
            for key in ("kv_cache_quant_algo", "kv_cache_scheme"):
                if block.get(key) is not None:
                    block[key] = None
    return files
