"""Whether an output's declared quantization (its config's exclusions) agrees with how its tensors are stored.

Engines decide per linear module from the config, not from the tensors: a module the config calls quantized but the
folder stores in bf16 (or the reverse) fails to load or computes garbage. Matching follows the engines: ModelOpt
`exclude_modules` entries are fnmatch globs (vLLM), compressed-tensors `ignore` entries are exact names or `re:`
patterns tried with `re.match` (compressed-tensors' `match_name`); both are tried against the module's checkpoint name
and its serving name (the architecture's `serving_name`: the root module dropped, which engines rename).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .formats import WEIGHT, Format
from .planning import ParentQuantization

if TYPE_CHECKING:
    from ..arch import BoundArchitecture

#: module kinds engines never quantize whatever the config says (embeddings, router gates)
NEVER_QUANTIZED_KINDS = ("embedding", "router")


def declared_excluded(names: tuple[str, ...], entries: list[str], fmt: Format) -> bool:
    """Whether an engine reading `entries` keeps a module unquantized (`names`: its checkpoint and serving names)."""
    return any(fmt.excludes(entry, name) for entry in entries for name in names)


def declaration_mismatches(
    arch: BoundArchitecture, tensors: dict[str, Any], quantization: ParentQuantization, entries: list[str]
) -> list[str]:
    """One sentence per linear module whose declared and stored quantization disagree."""
    stored = {part.dense_name.removesuffix(".weight") for part in quantization.stored.values() if part.part == WEIGHT}
    problems = []
    for name, info in sorted(tensors.items()):
        module = name.removesuffix(".weight")
        if (module in stored or not name.endswith(".weight") or len(info.shape) != 2
                or arch.module_kind(name) in NEVER_QUANTIZED_KINDS):
            continue
        if not declared_excluded((module, arch.serving_name(module)), entries, quantization.fmt):
            problems.append(f"module {module!r} is stored unquantized but the quantization config does not exclude "
                            "it: an engine would read it as quantized.")
    for module in sorted(stored):
        if declared_excluded((module, arch.serving_name(module)), entries, quantization.fmt):
            problems.append(f"module {module!r} is stored quantized but the quantization config excludes it: an "
                            "engine would read it as unquantized.")
    return problems
