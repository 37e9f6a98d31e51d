"""The slicing plan: plain data saying, for every output tensor, where it comes from and how it is cut.

Everything clever happens here; the executor only reads, cuts, converts and writes what the plan says.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .arch import Architecture, ParamCounts
from .checkpoint import Checkpoint
from .dtypes import CASTABLE_FLOATS, CONFIG_DTYPE_NAMES, itemsize
from .errors import InputError
from .nesting import Budget
from .selection import Selection, length

SINGLE_SHARD_FILE = "model.safetensors"
DEFAULT_MAX_SHARD_SIZE = "5GB"


@dataclass(frozen=True)
class TensorOp:
    """One output tensor: its source tensor, the index ranges kept per dimension, and its output form."""

    source: str
    source_file: str
    source_dtype: str
    source_shape: tuple[int, ...]
    selection: Selection
    out_name: str
    out_dtype: str
    out_shape: tuple[int, ...]
    scale: float | None
    shard: str

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
                    "shard": op.shard,
                }
                for op in self.ops
            ],
        }


def build_plan(
    checkpoint: Checkpoint,
    arch: Architecture,
    budget: Budget,
    dtype: str | None = None,
    max_shard_size: int = 5 * 10**9,
) -> Plan:
    """Plan a child: cut every parent tensor by the architecture's rules, in the parent's on-disk order."""
    missing = [name for name in arch.required_tensors(checkpoint.config) if name not in checkpoint.tensors]
    if missing:
        raise InputError(
            f"{checkpoint.root} lacks tensor {missing[0]!r} that its config.json requires"
            + (f" (and {len(missing) - 1} more)." if len(missing) > 1 else ".")
        )
    drafts: list[tuple[TensorOp, int]] = []
    for info in checkpoint.tensors.values():
        cut = arch.cut(info.name, info.shape, checkpoint.config, budget.sizes, budget.norm_semantics)
        if cut is None:
            continue
        out_dtype = info.dtype
        if dtype is not None and info.dtype in CASTABLE_FLOATS and not cut.keep_dtype:
            out_dtype = dtype
        op = TensorOp(
            source=info.name,
            source_file=info.file,
            source_dtype=info.dtype,
            source_shape=info.shape,
            selection=cut.selection,
            out_name=cut.out_name,
            out_dtype=out_dtype,
            out_shape=tuple(length(ranges) for ranges in cut.selection),
            scale=cut.scale,
            shard="",
        )
        drafts.append((op, op.nbytes))
    ops, shards = assign_shards([op for op, _ in drafts], max_shard_size)
    child_config = arch.child_config(checkpoint.config, budget.sizes)
    if dtype is not None:
        _set_config_dtype(child_config, dtype)
    return Plan(
        parent=str(checkpoint.root),
        budget=budget,
        child_config=child_config,
        ops=tuple(ops),
        shards=tuple(shards),
        params=arch.count_parameters({op.out_name: op.out_shape for op in ops}, child_config),
    )


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
    placed = [replace(op, shard=name) for name, group in zip(names, groups) for op in group]
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


def describe_source(path: str | Path) -> str:
    """A short name for a checkpoint path, for cards and messages."""
    return Path(path).name or str(path)
