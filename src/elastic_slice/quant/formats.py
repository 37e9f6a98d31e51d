"""On-disk formats of quantized modules: tensor names, shapes and the config blocks serving engines read.

- ModelOpt (NVIDIA Model Optimizer's Hugging Face export; read by vLLM, SGLang, TensorRT-LLM):
  `weight`, `weight_scale`, `weight_scale_2` (NVFP4), `input_scale`; scalars are 0-d fp32;
  `hf_quant_config.json` plus `quantization_config` with `quant_method: modelopt` in config.json.
- compressed-tensors (llm-compressor's format; read by vLLM and transformers): FP8 `float-quantized` (`weight`,
  `weight_scale`, `input_scale`), NVFP4 `nvfp4-pack-quantized` (`weight_packed`, `weight_scale`,
  `weight_global_scale` = 448*6/amax, `input_global_scale`); scalars have shape [1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MODELOPT = "modelopt"
COMPRESSED_TENSORS = "compressed-tensors"
FORMATS = (MODELOPT, COMPRESSED_TENSORS)

#: a stored part of a quantized module: (scheme, part) -> (suffix per format, dtype)
WEIGHT, BLOCK_SCALE, GLOBAL_SCALE, TENSOR_SCALE, INPUT_SCALE, KV_SCALE = (
    "weight", "block_scale", "global_scale", "tensor_scale", "input_scale", "kv_scale"
)
_SUFFIXES: dict[tuple[str, str], dict[str, str]] = {
    ("nvfp4", WEIGHT): {MODELOPT: "weight", COMPRESSED_TENSORS: "weight_packed"},
    ("nvfp4", BLOCK_SCALE): {MODELOPT: "weight_scale", COMPRESSED_TENSORS: "weight_scale"},
    ("nvfp4", GLOBAL_SCALE): {MODELOPT: "weight_scale_2", COMPRESSED_TENSORS: "weight_global_scale"},
    ("nvfp4", INPUT_SCALE): {MODELOPT: "input_scale", COMPRESSED_TENSORS: "input_global_scale"},
    ("fp8", WEIGHT): {MODELOPT: "weight", COMPRESSED_TENSORS: "weight"},
    ("fp8", TENSOR_SCALE): {MODELOPT: "weight_scale", COMPRESSED_TENSORS: "weight_scale"},
    ("fp8", INPUT_SCALE): {MODELOPT: "input_scale", COMPRESSED_TENSORS: "input_scale"},
}
_DTYPES = {WEIGHT: {"nvfp4": "U8", "fp8": "F8_E4M3"}, BLOCK_SCALE: {"nvfp4": "F8_E4M3"}}


@dataclass(frozen=True)
class PartSpec:
    """One stored tensor of a quantized linear weight."""

    part: str
    suffix: str
    dtype: str
    shape: tuple[int, ...]


def parts(scheme: str, fmt: str, out_features: int, in_features: int, with_input_scale: bool) -> list[PartSpec]:
    """The tensors a quantized [out, in] weight is stored as, in the order they are written."""
    scalar: tuple[int, ...] = () if fmt == MODELOPT else (1,)
    if scheme == "nvfp4":
        specs = [
            PartSpec(WEIGHT, _SUFFIXES[(scheme, WEIGHT)][fmt], "U8", (out_features, in_features // 2)),
            PartSpec(BLOCK_SCALE, _SUFFIXES[(scheme, BLOCK_SCALE)][fmt], "F8_E4M3", (out_features, in_features // 16)),
            PartSpec(GLOBAL_SCALE, _SUFFIXES[(scheme, GLOBAL_SCALE)][fmt], "F32", scalar),
        ]
    else:
        specs = [
            PartSpec(WEIGHT, "weight", "F8_E4M3", (out_features, in_features)),
            PartSpec(TENSOR_SCALE, "weight_scale", "F32", scalar),
        ]
    if with_input_scale:
        specs.append(PartSpec(INPUT_SCALE, _SUFFIXES[(scheme, INPUT_SCALE)][fmt], "F32", scalar))
    return specs


#: the producer block engines check: vLLM maps config `producer.name == "modelopt"` to its ModelOpt methods and
#: TensorRT-LLM refuses any other name; the version is that of the export format reproduced (the Nemotron 3 Nano
#: NVFP4 release's). The tool that wrote the folder is named beside it, under WRITTEN_BY.
MODELOPT_PRODUCER = {"name": "modelopt", "version": "0.29.0"}
WRITTEN_BY = "written_by"
#: FP8 (E4M3) per-tensor static KV-cache scales, as compressed-tensors and vLLM spell them
CT_KV_CACHE_SCHEME = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}


def modelopt_quantization(scheme: str, exclude_modules: list[str], kv_cache: bool, version: str) -> dict[str, Any]:
    """hf_quant_config.json; every key vLLM asks for is present."""
    block: dict[str, Any] = {
        "quant_algo": scheme.upper(),
        "kv_cache_quant_algo": "FP8" if kv_cache else None,
        "exclude_modules": exclude_modules,
    }
    if scheme == "nvfp4":
        block["group_size"] = 16
    return {
        "producer": dict(MODELOPT_PRODUCER),
        "quantization": block,
        WRITTEN_BY: {"name": "elastic-slice", "version": version},
    }


def modelopt_config_entry(hf_quant_config: dict[str, Any]) -> dict[str, Any]:
    """config.json's `quantization_config` matching hf_quant_config.json."""
    return {"quant_method": MODELOPT, **hf_quant_config["quantization"], "producer": hf_quant_config["producer"]}


def compressed_tensors_config(
    scheme: str, ignore: list[str], static_inputs: bool, kv_cache: bool, version: str
) -> dict[str, Any]:
    """config.json's `quantization_config` for compressed-tensors."""
    if scheme == "nvfp4":
        fmt = "nvfp4-pack-quantized"
        weights = {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16,
                   "symmetric": True, "dynamic": False, "observer": "minmax"}
        inputs = (
            {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16, "symmetric": True,
             "dynamic": "local", "observer": "minmax"}
            if static_inputs else None
        )
    else:
        fmt = "float-quantized"
        weights = {"num_bits": 8, "type": "float", "strategy": "tensor", "symmetric": True, "dynamic": False,
                   "observer": "minmax"}
        inputs = {"num_bits": 8, "type": "float", "strategy": "tensor", "symmetric": True,
                  "dynamic": not static_inputs, "observer": "minmax" if static_inputs else None}
    return {
        "quant_method": COMPRESSED_TENSORS,
        "format": fmt,
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {"targets": ["Linear"], "weights": weights, "input_activations": inputs, "format": fmt}
        },
        "ignore": ignore,
        "kv_cache_scheme": dict(CT_KV_CACHE_SCHEME) if kv_cache else None,
        "producer": {"name": "elastic-slice", "version": version},
    }
