"""The slicing plan: plain data saying, for every output tensor, where it comes from and how it is cut.

Everything clever happens here; the executor only reads, cuts, converts and writes what the plan says.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .arch import BoundArchitecture, ParamCounts, TensorCut
from .checkpoint import Checkpoint
from .dtypes import CASTABLE_FLOATS, CONFIG_DTYPE_NAMES, itemsize
from .errors import InputError
from .nesting import Budget
from .quant.output import QuantSummary, output_quantization, summarize
from .quant.planning import (
    Dequant,
    ParentQuantization,
    QuantPart,
    QuantRequest,
    StoredPart,
    kv_scale_ops,
    parent_quantization,
    renamed_like,
    stored_selection,
)
from .safetensors_header import TensorInfo
from .selection import Selection, length

SINGLE_SHARD_FILE = "model.safetensors"
DEFAULT_MAX_SHARD_SIZE = "5GB"


class PaddedQuantizeError(InputError):
    """A budget with zero-padded per-layer sizes was planned with quantization, which this version cannot do."""

    def __init__(self, budget: str) -> None:
        super().__init__(
            f"budget {budget!r} has per-layer sizes, which --quantize cannot combine with in this version; "
            "extract it unquantized."
        )
        self.budget = budget


@dataclass(frozen=True)
class TensorOp:
    """One output tensor: its source tensor, the index ranges kept per dimension, and its output form."""

    source: str
    #: the source tensor's dtype (the card says when the output casts it)
    source_dtype: str
    source_shape: tuple[int, ...]
    selection: Selection
    out_name: str
    out_dtype: str
    out_shape: tuple[int, ...]
    scale: float | None
    shard: str
    #: set when this op is one stored part of a weight quantized during the run
    quant: QuantPart | None = None
    #: set when this op dequantizes a quantized parent's weight (its source is the stored weight)
    dequant: Dequant | None = None
    #: the cut is zero-padded to out_shape (per-layer budgets); the padding holds pad_value
    pad_value: float | None = None

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.out_shape:
            count *= dim
        return count * itemsize(self.out_dtype)


@dataclass(frozen=True)
class Plan:
    """Everything needed to write one child model."""

    parent: str
    budget: Budget
    child_config: dict[str, Any]
    ops: tuple[TensorOp, ...]
    shards: tuple[str, ...]
    params: ParamCounts
    #: extra JSON files of the output (hf_quant_config.json), by file name
    extra_files: dict[str, Any] = field(default_factory=dict)
    #: logical (unpacked) shape of every weight of the child, quantized ones included
    dense_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: how the child's weights are quantized (for the model card); None when they are not
    quantization: QuantSummary | None = None

    @property
    def out_bytes(self) -> int:
        return sum(op.nbytes for op in self.ops)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {op.out_name: op.out_shape for op in self.ops}

    def to_json(self) -> dict[str, Any]:
        return {
            "parent": self.parent,
            "budget": self.budget.name,
            "sizes": self.budget.sizes,
            "norm_semantics": self.budget.norm_semantics,
            "warning": self.budget.warning,
            "params": asdict(self.params),
            "out_bytes": self.out_bytes,
            "shards": list(self.shards),
            "tensors": [
                {
                    "out_name": op.out_name,
                    "source": op.source,
                    "selection": [[list(r) for r in ranges] for ranges in op.selection],
                    "out_shape": list(op.out_shape),
                    "out_dtype": op.out_dtype,
                    "scale": op.scale,
                    "quant": None if op.quant is None else op.quant.part,
                    "shard": op.shard,
                }
                for op in self.ops
            ],
        }


def build_plan(
    checkpoint: Checkpoint,
    arch: BoundArchitecture,
    budget: Budget,
    dtype: str | None = None,
    max_shard_size: int = 5 * 10**9,
    quantize: QuantRequest | None = None,
    version: str = "",
) -> Plan:
    """Plan a child: cut every parent tensor by the architecture's rules, in the parent's on-disk order."""
    parent_quant = parent_quantization(checkpoint.config, checkpoint.hf_quant_config(), checkpoint.tensors)
    if parent_quant is not None and quantize is not None:
        raise InputError(
            f"the parent is already {parent_quant.scheme.name.upper()} ({parent_quant.fmt.name}); --quantize applies to "
            "unquantized parents: slice it as it is, or add --dtype bf16 to dequantize."
        )
    dequantize = parent_quant is not None and dtype is not None
    stored = parent_quant.stored if parent_quant is not None else {}
    present = set(checkpoint.tensors) | {part.dense_name for part in stored.values()}
    missing = [name for name in arch.required_tensors() if name not in present]
    if missing:
        raise InputError(
            f"{checkpoint.root} lacks tensor {missing[0]!r} that its config.json requires"
            + (f" (and {len(missing) - 1} more)." if len(missing) > 1 else ".")
        )
    ops: list[TensorOp] = []
    for info in checkpoint.tensors.values():
        part = stored.get(info.name)
        if part is not None and dequantize:
            assert parent_quant is not None and dtype is not None
            ops.extend(_dequantized_op(arch, budget, info, part, parent_quant, dtype))
            continue
        if part is not None:
            ops.extend(_stored_op(arch, budget, info, part))
            continue
        cut = arch.cut(info.name, info.shape, budget.sizes, budget.norm_semantics)
        if cut is None:
            continue
        if cut.pad_to is not None and quantize is not None:
            raise PaddedQuantizeError(budget.name)
        kv_ops = [_op(info, cut.selection, name, "F32", out_shape=shape, quant=part)
                  for name, shape, part in (kv_scale_ops(info, cut, quantize) if quantize is not None else [])]
        if quantize is not None and quantize.applies(arch.module_kind(info.name), info.name, cut.out_name):
            ops.extend(_quantized_ops(info, cut, quantize, budget))
            ops.extend(kv_ops)
            continue
        out_dtype = info.dtype
        if dtype is not None and info.dtype in CASTABLE_FLOATS and not cut.keep_dtype:
            out_dtype = dtype
        ops.append(_op(info, cut.selection, cut.out_name, out_dtype, cut.scale, out_shape=cut.pad_to,
                       pad_value=cut.pad_value if cut.pad_to is not None else None))
        ops.extend(kv_ops)
    if quantize is not None and not any(op.quant is not None for op in ops):
        raise InputError(
            f"--quantize {quantize.scheme.name}: the recipe and --exclude leave no weight of budget {budget.name!r} "
            "to quantize; exclude fewer modules or extract it unquantized."
        )
    placed, shards = assign_shards(ops, max_shard_size)
    child_config = arch.child_config(budget.sizes)
    if dtype is not None:
        _set_config_dtype(child_config, dtype)
    if dequantize:
        child_config.pop("quantization_config", None)
        extra_files: dict[str, Any] = {}
    else:
        extra_files = output_quantization(checkpoint, arch, child_config, budget, placed, parent_quant, quantize, version)
    dense_shapes = {
        op.out_name: op.out_shape for op in placed if op.quant is None and (op.source not in stored or op.dequant)
    }
    dense_shapes.update(_dense_shapes_of_quantized(placed, stored, arch, budget))
    return Plan(
        parent=str(checkpoint.root),
        budget=budget,
        child_config=child_config,
        ops=tuple(placed),
        shards=tuple(shards),
        params=arch.count_parameters(dense_shapes, child_config),
        extra_files=extra_files,
        dense_shapes=dense_shapes,
        quantization=None if dequantize else summarize(arch, placed, parent_quant, quantize, child_config),
    )


def _op(info: TensorInfo, selection: Selection, out_name: str, out_dtype: str, scale: float | None = None,
        out_shape: tuple[int, ...] | None = None, quant: QuantPart | None = None,
        dequant: Dequant | None = None, pad_value: float | None = None) -> TensorOp:
    return TensorOp(
        source=info.name,
        source_dtype=info.dtype,
        source_shape=info.shape,
        selection=selection,
        out_name=out_name,
        out_dtype=out_dtype,
        out_shape=out_shape if out_shape is not None else tuple(length(ranges) for ranges in selection),
        scale=scale,
        shard="",
        quant=quant,
        dequant=dequant,
        pad_value=pad_value,
    )


def _quantized_ops(info: TensorInfo, cut: TensorCut, request: QuantRequest, budget: Budget) -> list[TensorOp]:
    rows, cols = length(cut.selection[0]), length(cut.selection[1])
    request.scheme.check_input_cut(cut.selection[1], info.shape[1], info.name, budget.name)
    module = cut.out_name.removesuffix("weight")
    amax = None if request.input_amax is None else request.input_amax.get(info.name.removesuffix(".weight"))
    if request.input_amax is not None and amax is None:
        raise InputError(f"calibration recorded no activations for {info.name.removesuffix('.weight')!r}.")
    return [
        _op(info, cut.selection, module + spec.suffix, spec.dtype, out_shape=spec.shape,
            quant=QuantPart(request.scheme, request.fmt, spec.part, amax))
        for spec in request.fmt.parts(request.scheme, rows, cols, with_input_scale=amax is not None)
    ]


def _stored_op(arch: BoundArchitecture, budget: Budget, info: TensorInfo,
               part: StoredPart) -> list[TensorOp]:
    cut = arch.cut(part.dense_name, part.dense_shape, budget.sizes, budget.norm_semantics)
    if cut is None:
        return []
    if cut.pad_to is not None:
        raise InputError(f"budget {budget.name!r} has per-layer sizes, which quantized parents cannot take yet.")
    selection = stored_selection(part, cut.selection, info.shape, info.name, budget.name)
    return [_op(info, selection, renamed_like(info.name, part.dense_name, cut.out_name), info.dtype)]


def _dequantized_op(arch: BoundArchitecture, budget: Budget, info: TensorInfo,
                    part: StoredPart, parent: ParentQuantization, dtype: str) -> list[TensorOp]:
    """A quantized parent's weight, dequantized and cut like the dense weight; its scales feed it and vanish."""
    if part.part != "weight":
        return []
    cut = arch.cut(part.dense_name, part.dense_shape, budget.sizes, budget.norm_semantics)
    if cut is None:
        return []
    if cut.pad_to is not None:
        raise InputError(
            f"budget {budget.name!r} has per-layer sizes, which a quantized parent cannot be sliced into yet, "
            "dequantized or not; slice it from the unquantized parent."
        )
    module = part.dense_name.removesuffix("weight")
    scales = {other.part: name for name, other in parent.stored.items() if name.startswith(module)
              and other.dense_name == part.dense_name}
    dequant = Dequant(parent.scheme, parent.fmt, scales)
    return [_op(info, cut.selection, cut.out_name, dtype, dequant=dequant)]


def _dense_shapes_of_quantized(ops: list[TensorOp], stored: dict[str, StoredPart], arch: BoundArchitecture,
                               budget: Budget) -> dict[str, tuple[int, ...]]:
    """Logical (dense) shapes of quantized weights, so that parameter counts ignore packing and scales."""
    shapes: dict[str, tuple[int, ...]] = {}
    for op in ops:
        if op.quant is not None and op.quant.part == "weight":
            shapes[op.out_name] = tuple(length(r) for r in op.selection)
        part = stored.get(op.source)
        if part is not None and part.part == "weight" and op.dequant is None:
            cut = arch.cut(part.dense_name, part.dense_shape, budget.sizes, budget.norm_semantics)
            assert cut is not None
            shapes[cut.out_name] = tuple(length(r) for r in cut.selection)
    return shapes


def _set_config_dtype(config: dict[str, Any], dtype: str) -> None:
    name = CONFIG_DTYPE_NAMES[dtype]
    config["dtype"] = name
    if "torch_dtype" in config:
        config["torch_dtype"] = name


def assign_shards(ops: list[TensorOp], max_shard_size: int) -> tuple[list[TensorOp], list[str]]:
    """Split ops into shards the way Hugging Face does: start a new shard when the next tensor would overflow."""
    groups: list[list[TensorOp]] = [[]]
    current = 0
    for op in ops:
        if groups[-1] and current + op.nbytes > max_shard_size:
            groups.append([])
            current = 0
        groups[-1].append(op)
        current += op.nbytes
    count = len(groups)
    names = [SINGLE_SHARD_FILE] if count == 1 else [
        f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)
    ]
    placed = [replace(op, shard=name) for name, group in zip(names, groups, strict=True) for op in group]
    return placed, names


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """Parse a byte size such as 5GB, 500MB, 2GiB or 123456 (Hugging Face's convention: GB = 10^9)."""
    match = _SIZE.match(str(text))
    if match is None:
        raise InputError(f"size {text!r} is not understood; use a number with a unit, such as 5GB, 500MB or 2GiB.")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    size = int(number * _UNITS[unit])
    if size <= 0:
        raise InputError(f"size {text!r} must be larger than zero.")
    return size
