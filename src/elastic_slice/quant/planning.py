"""Quantization in the plan: which dense weights to quantize on extract, and how a quantized parent's stored
tensors (packed weights, block scales, scalars) map back to the dense weights the architecture rules cut."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..arch.base import LINEAR_KINDS
from ..errors import InputError
from ..selection import Selection
from .formats import FORMATS, GLOBAL_SCALE, INPUT_SCALE, KV_SCALE, TENSOR_SCALE, WEIGHT, Format
from .schemes import NVIDIA, SCHEMES, Scheme

if TYPE_CHECKING:
    from ..arch import BoundArchitecture
    from ..checkpoint import Checkpoint


@dataclass(frozen=True)
class QuantRequest:
    """Quantize the output: scheme, on-disk format, recipe, extra exclusions, calibrated amax per module.

    `recipe_modules` are the parent's modules the recipe keeps unquantized (NVIDIA's release list, in its order);
    `exclude` are the user's globs; `kv_amax` holds the key/value projections' output amax for FP8 KV-cache scales;
    `calibration` says what calibration ran on (for the model card), None when it did not run."""

    scheme: Scheme
    fmt: Format
    exclude: tuple[str, ...] = ()
    input_amax: dict[str, float] | None = None
    recipe: str = NVIDIA
    recipe_modules: tuple[str, ...] = ()
    kv_amax: dict[str, float] | None = None
    calibration: str | None = None

    def applies(self, kind: str, name: str, out_name: str) -> bool:
        if self.recipe == NVIDIA:
            wanted = name.endswith(".weight") and kind in LINEAR_KINDS
            if not wanted or name.removesuffix(".weight") in self.recipe_modules:
                return False
        elif not self.scheme.quantizes(kind, name):
            return False
        return not self.excluded_by_user(name, out_name)

    def excluded_by_user(self, name: str, out_name: str) -> bool:
        """Whether one of the user's --exclude globs matches the module (parent or child name)."""
        modules = (name.removesuffix(".weight"), out_name.removesuffix(".weight"))
        return any(fnmatch.fnmatchcase(m, pattern) for m in modules for pattern in self.exclude)


@dataclass(frozen=True)
class QuantPart:
    """Marks a plan op as one stored part of a weight quantized during the run (parent scales, nested)."""

    scheme: Scheme
    fmt: Format
    part: str
    #: the calibrated input amax (for a KV_SCALE part: the key or value projection's output amax)
    input_amax: float | None = None


@dataclass(frozen=True)
class Dequant:
    """Marks a plan op that dequantizes a quantized parent's weight: its scheme, format and scale tensors."""

    scheme: Scheme
    fmt: Format
    scales: dict[str, str]


@dataclass(frozen=True)
class StoredPart:
    """A tensor of an already-quantized parent: the dense weight it belongs to, and which part it is."""

    dense_name: str
    dense_shape: tuple[int, ...]
    scheme: Scheme
    part: str


@dataclass(frozen=True)
class ParentQuantization:
    """How a quantized parent stores its quantized modules."""

    scheme: Scheme
    fmt: Format
    stored: dict[str, StoredPart]


def parent_quantization(config: dict[str, Any], hf_quant_config: dict[str, Any] | None,
                        tensors: dict[str, Any]) -> ParentQuantization | None:
    """Recognise a ModelOpt or compressed-tensors FP8/NVFP4 parent from its config files and tensor names."""
    found = next(
        ((fmt, algo) for fmt in FORMATS.values() if (algo := fmt.scheme_of(config, hf_quant_config)) is not None),
        None,
    )
    qconfig = config.get("quantization_config")
    if found is None and isinstance(qconfig, dict):
        # slicing as if unquantized would carry a declaration that no longer describes the tensors
        raise InputError(
            f"config.json declares quantization method {qconfig.get('quant_method')!r}; elastic-slice slices "
            f"unquantized parents and {' or '.join(FORMATS)} {'/'.join(s.upper() for s in SCHEMES)} ones."
        )
    if found is None:
        return None
    fmt, algo = found
    scheme = SCHEMES.get(algo)
    if scheme is None:
        raise InputError(
            f"the parent is quantized as {algo or 'an unknown scheme'!r} ({fmt.name}); elastic-slice slices "
            f"{' and '.join(s.upper() for s in SCHEMES)}."
        )
    suffixes = fmt.part_of_suffix(scheme)
    weight_suffix, scale_suffix = fmt.suffix(scheme, WEIGHT), fmt.suffix(scheme, scheme.scale_part)
    stored: dict[str, StoredPart] = {}
    for name in tensors:
        if not name.endswith("." + scale_suffix):
            continue
        module = name[: -len(scale_suffix) - 1]
        weight = tensors.get(f"{module}.{weight_suffix}")
        if weight is None or len(weight.shape) != 2:
            raise InputError(f"quantized module {module!r} has {scale_suffix} but no 2-D {weight_suffix} tensor.")
        dense = scheme.dense_shape(*weight.shape)
        for suffix, part in suffixes.items():
            if f"{module}.{suffix}" in tensors:
                stored[f"{module}.{suffix}"] = StoredPart(f"{module}.weight", dense, scheme, part)
    stored.update(_kv_scales(tensors, stored, scheme))
    return ParentQuantization(scheme=scheme, fmt=fmt, stored=stored)


#: FP8 KV-cache scales: ModelOpt puts them on the projections (`k_proj.k_scale`), compressed-tensors on the
#: attention module (`mixer.k_scale`); both belong to the projection's weight, which decides whether a budget keeps them
_KV_SCALE = re.compile(r"^(.*?)\.(?:(k|v)_proj\.)?(k|v)_scale$")


def _kv_scales(tensors: dict[str, Any], stored: dict[str, StoredPart], scheme: Scheme) -> dict[str, StoredPart]:
    found = {}
    for name in tensors:
        match = _KV_SCALE.match(name)
        if match is None or (match.group(2) and match.group(2) != match.group(3)):
            continue
        dense_name = f"{match.group(1)}.{match.group(3)}_proj.weight"
        weight = next((p for p in stored.values() if p.dense_name == dense_name), None)
        shape = weight.dense_shape if weight is not None else getattr(tensors.get(dense_name), "shape", None)
        if shape is None:
            raise InputError(f"KV-cache scale {name!r} has no projection weight {dense_name!r} beside it.")
        found[name] = StoredPart(dense_name, tuple(shape), scheme, KV_SCALE)
    return found


def stored_selection(
    part: StoredPart, dense: Selection, shape: tuple[int, ...], tensor: str, budget: str
) -> Selection:
    """The selection of a stored part, from the selection the rules give its dense weight (scalars are copied)."""
    if part.part in (GLOBAL_SCALE, TENSOR_SCALE, INPUT_SCALE, KV_SCALE):
        return tuple(((0, size),) for size in shape)
    return part.scheme.stored_selection(part.part, dense, tensor, budget)


def renamed_like(name: str, dense_name: str, out_dense_name: str) -> str:
    """A stored part's child name: its dense weight's renaming (a renumbered layer) applied to the part's name."""
    shared = 0
    while shared < min(len(name), len(dense_name)) and name[shared] == dense_name[shared]:
        shared += 1
    shared = name.rfind(".", 0, shared + 1) + 1  # back to a whole dotted component
    tail = dense_name[shared:]
    return out_dense_name[: len(out_dense_name) - len(tail)] + name[shared:]


_KV_PROJECTION = re.compile(r"\.(k|v)_proj\.weight$")


def kv_scale_ops(info: Any, cut: Any, request: QuantRequest) -> list[tuple[str, tuple[int, ...], QuantPart]]:
    """(name, shape, part) of the FP8 KV-cache scale a key or value projection's weight carries, when asked for."""
    match = _KV_PROJECTION.search(info.name)
    if request.kv_amax is None or match is None:
        return []
    amax = request.kv_amax.get(info.name.removesuffix(".weight"))
    if amax is None:
        raise InputError(f"calibration recorded no outputs of {info.name.removesuffix('.weight')!r} for --kv-cache.")
    name = request.fmt.kv_scale_name(cut.out_name.removesuffix(".weight"), match.group(1))
    return [(name, request.fmt.scalar_shape, QuantPart(request.scheme, request.fmt, KV_SCALE, amax))]


_LAYER = re.compile(r"layers\\?\.(\d+)\\?\.")  # also inside escaped regexes (`re:.*layers\.3\.`)


def rename_modules(names: list[str], kept_layers: list[int]) -> list[str]:
    """Module names or patterns of the parent, renumbered for the child; entries of dropped layers vanish."""
    renamed = []
    for name in names:
        match = _LAYER.search(name)
        if match is None:
            renamed.append(name)
            continue
        layer = int(match.group(1))
        if layer in kept_layers:
            renamed.append(name[: match.start(1)] + str(kept_layers.index(layer)) + name[match.end(1):])
    return renamed


def module_quantization(checkpoint: Checkpoint, arch: BoundArchitecture) -> dict[str, str]:
    """How each module kind's weights are stored: the parent's dtype, fp8 or nvfp4."""
    parent = parent_quantization(checkpoint.config, checkpoint.hf_quant_config(), checkpoint.tensors)
    quantized = {p.dense_name for p in parent.stored.values()} if parent is not None else set()
    kinds: dict[str, set[str]] = {}
    for name, info in checkpoint.tensors.items():
        if parent is not None and name in parent.stored:
            if parent.stored[name].part == WEIGHT:
                kinds.setdefault(arch.module_kind(name), set()).add(parent.scheme.name)
        elif name.endswith(".weight") and name not in quantized:
            kinds.setdefault(arch.module_kind(name), set()).add(info.dtype.lower())
    return {kind: "+".join(sorted(found)) for kind, found in sorted(kinds.items())}
