"""On-disk formats of quantized modules as objects, one class per format (as compressed-tensors registers them): tensor
name suffixes, scalar shapes, scale conventions, how a parent's config declares the format and its exclusions, and
the config blocks serving engines read. Adding a format is one subclass and one entry in FORMATS.

- ModelOpt (NVIDIA Model Optimizer's Hugging Face export; read by vLLM, SGLang, TensorRT-LLM):
  `weight`, `weight_scale`, `weight_scale_2` (NVFP4), `input_scale`; scalars are 0-d fp32;
  `hf_quant_config.json` plus `quantization_config` with `quant_method: modelopt` in config.json.
- compressed-tensors (llm-compressor's format; read by vLLM and transformers): FP8 `float-quantized` (`weight`,
  `weight_scale`, `input_scale`), NVFP4 `nvfp4-pack-quantized` (`weight_packed`, `weight_scale`,
  `weight_global_scale` = 448*6/amax, `input_global_scale`); scalars have shape [1].
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import numpy as np

from ..checkpoint import HF_QUANT_CONFIG

if TYPE_CHECKING:
    import torch

    from .schemes import Scheme

#: the stored parts of a quantized module
WEIGHT, BLOCK_SCALE, GLOBAL_SCALE, TENSOR_SCALE, INPUT_SCALE, KV_SCALE = (
    "weight", "block_scale", "global_scale", "tensor_scale", "input_scale", "kv_scale"
)


@dataclass(frozen=True)
class PartSpec:
    """One stored tensor of a quantized linear weight."""

    part: str
    suffix: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Format:
    """An on-disk format of quantized modules; subclasses read and write its config blocks."""

    name: str
    #: how model cards name it
    title: str
    #: (scheme name, part) -> the tensor name suffix of that part, in the order the parts are written
    suffixes: Mapping[tuple[str, str], str]
    #: the shape of a stored scalar (ModelOpt: 0-d; compressed-tensors: [1])
    scalar_shape: tuple[int, ...]
    #: NVFP4 global and activation scales stored as the reciprocal of the step (compressed-tensors), or the step
    inverts_global_scales: bool
    #: engines need static (calibrated) activation scales in this format
    needs_input_scales: bool
    #: schemes whose outputs transformers loads and runs correctly in this format (checked; see the model card)
    transformers_runs: frozenset[str]
    #: schemes transformers also runs correctly when the model has no routed experts (checked on gemma3n)
    transformers_runs_without_experts: frozenset[str]

    def suffix(self, scheme: Scheme, part: str) -> str:
        return self.suffixes[(scheme.name, part)]

    def part_of_suffix(self, scheme: Scheme) -> dict[str, str]:
        """Tensor name suffix -> part, for a module stored in `scheme`."""
        return {suffix: part for (name, part), suffix in self.suffixes.items() if name == scheme.name}

    def parts(self, scheme: Scheme, out_features: int, in_features: int, with_input_scale: bool) -> list[PartSpec]:
        """The tensors a quantized [out, in] weight is stored as, in the order they are written."""
        specs = [
            PartSpec(shape.part, self.suffix(scheme, shape.part), shape.dtype,
                     shape.shape if shape.shape is not None else self.scalar_shape)
            for shape in scheme.stored_shapes(out_features, in_features)
        ]
        if with_input_scale:
            specs.append(PartSpec(INPUT_SCALE, self.suffix(scheme, INPUT_SCALE), "F32", self.scalar_shape))
        return specs

    def scalar(self, value: torch.Tensor | float) -> torch.Tensor:
        """A stored fp32 scalar."""
        import torch

        return torch.as_tensor(value, dtype=torch.float32).reshape(()).reshape(self.scalar_shape)

    def scalar_array(self, value: float | np.floating[Any]) -> np.ndarray:
        """`scalar` as a numpy array (the compiled kernels' path, without torch)."""
        return np.full(self.scalar_shape, value, dtype=np.float32)

    def kv_scale_name(self, projection: str, which: str) -> str:
        """The name of the FP8 KV-cache scale of key or value (`which`: k or v) projection module `projection`."""
        raise NotImplementedError

    def scheme_of(self, config: Mapping[str, Any], hf_quant_config: Mapping[str, Any] | None) -> str | None:
        """The scheme name a parent declares in this format ("" when it names none); None when it is not in it."""
        raise NotImplementedError

    def declared_exclusions(self, config: Mapping[str, Any], hf_quant_config: Mapping[str, Any] | None) -> list[str]:
        """The exclusion entries an engine reads."""
        raise NotImplementedError

    def excludes(self, entry: str, module: str) -> bool:
        """Whether an engine reading exclusion `entry` keeps `module` unquantized."""
        raise NotImplementedError

    def write_config(self, child_config: dict[str, Any], scheme: Scheme, modules: list[str], globs: list[str],
                     serving_name: Callable[[str], str], static_inputs: bool, kv_cache: bool,
                     version: str) -> dict[str, Any]:
        """Set `quantization_config` in the child's config; return the extra files (name -> JSON) to write.
        `modules` are unquantized modules named in full, `globs` the user's --exclude globs."""
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class ModelOpt(Format):
    """NVIDIA Model Optimizer's Hugging Face export: `hf_quant_config.json` and exclusions as fnmatch globs."""

    def kv_scale_name(self, projection: str, which: str) -> str:
        return f"{projection}.{which}_scale"

    def scheme_of(self, config: Mapping[str, Any], hf_quant_config: Mapping[str, Any] | None) -> str | None:
        qconfig = config.get("quantization_config")
        if hf_quant_config is not None:
            return str((hf_quant_config.get("quantization") or {}).get("quant_algo", "")).lower()
        if isinstance(qconfig, dict) and qconfig.get("quant_method") == self.name:
            return str(qconfig.get("quant_algo", "")).lower()
        return None

    def declared_exclusions(self, config: Mapping[str, Any], hf_quant_config: Mapping[str, Any] | None) -> list[str]:
        block = hf_quant_config.get("quantization") if hf_quant_config is not None else \
            config.get("quantization_config")
        entries = (block or {}).get("exclude_modules") if isinstance(block, dict) else None
        return [str(entry) for entry in entries] if isinstance(entries, list) else []

    def excludes(self, entry: str, module: str) -> bool:
        return fnmatchcase(module, entry)

    def write_config(self, child_config: dict[str, Any], scheme: Scheme, modules: list[str], globs: list[str],
                     serving_name: Callable[[str], str], static_inputs: bool, kv_cache: bool,
                     version: str) -> dict[str, Any]:
        hf = modelopt_quantization(scheme, modules + globs, kv_cache, version)
        child_config["quantization_config"] = modelopt_config_entry(hf)
        return {HF_QUANT_CONFIG: hf}


@dataclass(frozen=True, eq=False)
class CompressedTensors(Format):
    """llm-compressor's format: `quantization_config` alone, exclusions as names or `re:` patterns."""

    #: scheme name -> compressed-tensors' `format` name
    formats: Mapping[str, str]

    def kv_scale_name(self, projection: str, which: str) -> str:
        return f"{projection.rsplit('.', 1)[0]}.{which}_scale"  # on the attention module

    def scheme_of(self, config: Mapping[str, Any], hf_quant_config: Mapping[str, Any] | None) -> str | None:
        qconfig = config.get("quantization_config")
        if not isinstance(qconfig, dict) or qconfig.get("quant_method") != self.name:
            return None
        return {fmt: scheme for scheme, fmt in self.formats.items()}.get(str(qconfig.get("format")), "")

    def declared_exclusions(self, config: Mapping[str, Any], hf_quant_config: Mapping[str, Any] | None) -> list[str]:
        entries = (config.get("quantization_config") or {}).get("ignore")
        return [str(entry) for entry in entries] if isinstance(entries, list) else []

    def excludes(self, entry: str, module: str) -> bool:
        return _regex_match(entry, module) if entry.startswith("re:") else entry == module

    def write_config(self, child_config: dict[str, Any], scheme: Scheme, modules: list[str], globs: list[str],
                     serving_name: Callable[[str], str], static_inputs: bool, kv_cache: bool,
                     version: str) -> dict[str, Any]:
        ignore = [f"re:.*{re.escape(serving_name(name))}$" for name in modules] + [
            glob_regex(glob if glob.startswith("*") else serving_name(glob)) for glob in globs
        ]
        child_config["quantization_config"] = compressed_tensors_config(
            scheme, self.formats[scheme.name], ignore, static_inputs, kv_cache, version
        )
        return {}


MODELOPT = ModelOpt(
    "modelopt", "ModelOpt (`hf_quant_config.json`)",
    suffixes={
        ("nvfp4", WEIGHT): "weight", ("nvfp4", BLOCK_SCALE): "weight_scale", ("nvfp4", GLOBAL_SCALE): "weight_scale_2",
        ("nvfp4", INPUT_SCALE): "input_scale",
        ("fp8", WEIGHT): "weight", ("fp8", TENSOR_SCALE): "weight_scale", ("fp8", INPUT_SCALE): "input_scale",
    },
    scalar_shape=(), inverts_global_scales=False, needs_input_scales=True, transformers_runs=frozenset(),
    transformers_runs_without_experts=frozenset(),
)
COMPRESSED_TENSORS = CompressedTensors(
    "compressed-tensors", "compressed-tensors",
    suffixes={
        ("nvfp4", WEIGHT): "weight_packed", ("nvfp4", BLOCK_SCALE): "weight_scale",
        ("nvfp4", GLOBAL_SCALE): "weight_global_scale", ("nvfp4", INPUT_SCALE): "input_global_scale",
        ("fp8", WEIGHT): "weight", ("fp8", TENSOR_SCALE): "weight_scale", ("fp8", INPUT_SCALE): "input_scale",
    },
    scalar_shape=(1,), inverts_global_scales=True, needs_input_scales=False, transformers_runs=frozenset({"fp8"}),
    transformers_runs_without_experts=frozenset({"fp8", "nvfp4"}),
    formats={"nvfp4": "nvfp4-pack-quantized", "fp8": "float-quantized"},
)
#: every format, by name, in the order a parent's config files are recognised (ModelOpt's file first)
FORMATS: dict[str, Format] = {fmt.name: fmt for fmt in (MODELOPT, COMPRESSED_TENSORS)}


def _regex_match(entry: str, name: str) -> bool:
    try:
        return re.match(entry.removeprefix("re:"), name) is not None
    except re.error:
        return False


def glob_regex(glob: str) -> str:
    """A --exclude glob as a compressed-tensors `re:` pattern matching the same modules under any prefix (callers
    give it the glob's serving name, its root module dropped, so that it matches under any root name).

    `*` and `?` become `.*` and `.`; a character class `[0-3]` / `[!0-3]` stays a class (`[0-3]` / `[^0-3]`), as
    fnmatch reads it; everything else is literal."""
    pattern = "".join(_glob_pieces(glob))
    return f"re:{'' if pattern.startswith('.*') else '.*'}{pattern}$"


def _glob_pieces(glob: str) -> Iterator[str]:
    """The regular-expression pieces of a glob, read as `fnmatch` reads it."""
    index = 0
    while index < len(glob):
        char = glob[index]
        index += 1
        if char == "*":
            yield ".*"
        elif char == "?":
            yield "."
        elif char == "[" and (end := _class_end(glob, index)) > 0:
            members = glob[index:end]
            negate = members.startswith("!")
            members = members[1:] if negate else members
            yield "[" + ("^" if negate else "") + members.replace("\\", "\\\\").replace("^", "\\^") + "]"
            index = end + 1
        else:
            yield re.escape(char)


def _class_end(glob: str, start: int) -> int:
    """Where the character class opened just before `start` closes (fnmatch's rule: a `]` right after `[` or `[!`
    is a member), or -1 when it does not (the `[` is then a literal)."""
    index = start + (glob[start : start + 1] == "!")
    index += glob[index : index + 1] == "]"
    end = glob.find("]", index)
    return end


#: the producer block engines check: vLLM maps config `producer.name == "modelopt"` to its ModelOpt methods and
#: TensorRT-LLM refuses any other name; the version is that of the export format reproduced (the Nemotron 3 Nano
#: NVFP4 release's). The tool that wrote the folder is named beside it, under WRITTEN_BY.
MODELOPT_PRODUCER = {"name": "modelopt", "version": "0.29.0"}
WRITTEN_BY = "written_by"
#: FP8 (E4M3) per-tensor static KV-cache scales, as compressed-tensors and vLLM spell them
CT_KV_CACHE_SCHEME = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}


def modelopt_quantization(scheme: Scheme, exclude_modules: list[str], kv_cache: bool, version: str) -> dict[str, Any]:
    """hf_quant_config.json; every key vLLM asks for is present."""
    block: dict[str, Any] = {
        "quant_algo": scheme.name.upper(),
        "kv_cache_quant_algo": "FP8" if kv_cache else None,
        "exclude_modules": exclude_modules,
    }
    if scheme.block_size is not None:
        block["group_size"] = scheme.block_size
    return {
        "producer": dict(MODELOPT_PRODUCER),
        "quantization": block,
        WRITTEN_BY: {"name": "elastic-slice", "version": version},
    }


def modelopt_config_entry(hf_quant_config: dict[str, Any]) -> dict[str, Any]:
    """config.json's `quantization_config` matching hf_quant_config.json."""
    return {"quant_method": MODELOPT.name, **hf_quant_config["quantization"], "producer": hf_quant_config["producer"]}


def compressed_tensors_config(
    scheme: Scheme, fmt: str, ignore: list[str], static_inputs: bool, kv_cache: bool, version: str
) -> dict[str, Any]:
    """config.json's `quantization_config` for compressed-tensors (`fmt`: its format name for `scheme`)."""
    if scheme.block_size is not None:
        group = scheme.block_size
        weights = {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": group,
                   "symmetric": True, "dynamic": False, "observer": "minmax"}
        inputs = (
            {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": group, "symmetric": True,
             "dynamic": "local", "observer": "minmax"}
            if static_inputs else None
        )
    else:
        weights = {"num_bits": 8, "type": "float", "strategy": "tensor", "symmetric": True, "dynamic": False,
                   "observer": "minmax"}
        inputs = {"num_bits": 8, "type": "float", "strategy": "tensor", "symmetric": True,
                  "dynamic": not static_inputs, "observer": "minmax" if static_inputs else None}
    return {
        "quant_method": COMPRESSED_TENSORS.name,
        "format": fmt,
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {"targets": ["Linear"], "weights": weights, "input_activations": inputs, "format": fmt}
        },
        "ignore": ignore,
        "kv_cache_scheme": dict(CT_KV_CACHE_SCHEME) if kv_cache else None,
        "producer": {"name": "elastic-slice", "version": version},
    }
