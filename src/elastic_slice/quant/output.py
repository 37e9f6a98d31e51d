"""The quantization config files of an output: written fresh when quantizing, renumbered when slicing."""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING, Any

from .formats import MODELOPT, compressed_tensors_config, modelopt_config_entry, modelopt_quantization
from .planning import ParentQuantization, QuantRequest, rename_modules

if TYPE_CHECKING:
    from ..checkpoint import Checkpoint
    from ..nesting import Budget
    from ..plan import TensorOp

HF_QUANT_CONFIG = "hf_quant_config.json"


def output_quantization(
    checkpoint: Checkpoint,
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
        return _renumbered(checkpoint, child_config, kept)
    if request is None:
        return {}
    unquantized = sorted(
        {op.out_name.removesuffix(".weight") for op in ops
         if op.quant is None and op.out_name.endswith(".weight") and len(op.out_shape) == 2}
    )
    static_inputs = request.input_amax is not None
    if request.fmt == MODELOPT:
        hf = modelopt_quantization(request.scheme.name, unquantized, {"name": "elastic-slice", "version": version})
        child_config["quantization_config"] = modelopt_config_entry(hf)
        return {HF_QUANT_CONFIG: hf}
    ignore = [f"re:.*{re.escape(_without_root(name))}$" for name in unquantized]
    child_config["quantization_config"] = compressed_tensors_config(request.scheme.name, ignore, static_inputs, version)
    return {}


def _without_root(name: str) -> str:
    """`backbone.layers.3.mixer.q_proj` -> `layers.3.mixer.q_proj`: engines rename the root module."""
    return name.split(".", 1)[1] if "." in name else name


def _renumbered(checkpoint: Checkpoint, child_config: dict[str, Any], kept: list[int]) -> dict[str, Any]:
    files: dict[str, Any] = {}
    hf = checkpoint.read_json(HF_QUANT_CONFIG)
    if hf is not None:
        hf = copy.deepcopy(hf)
        block = hf.get("quantization") or {}
        if isinstance(block.get("exclude_modules"), list):
            block["exclude_modules"] = rename_modules(block["exclude_modules"], kept)
        files[HF_QUANT_CONFIG] = hf
    qconfig = child_config.get("quantization_config")
    if isinstance(qconfig, dict):
        for key in ("exclude_modules", "ignore"):
            if isinstance(qconfig.get(key), list):
                qconfig[key] = rename_modules(qconfig[key], kept)
    return files
