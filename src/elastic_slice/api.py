"""The Python API: `inspect`, `plan_extract` and `extract`, returning dataclasses. The CLI is a thin layer on top."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .arch import get_architecture
from .card import model_card
from .checkpoint import Checkpoint, open_checkpoint
from .dtypes import parse_user_dtype
from .errors import ElasticSliceError
from .execute import execute
from .nesting import Budget, NestingIndex, find_index, resolve_budget
from .plan import DEFAULT_MAX_SHARD_SIZE, Plan, TensorOp, build_plan, parse_size
from .quant.schemes import footprint
from .writer import (
    CARD_FILE,
    ShardWriter,
    check_free_space,
    copy_companion_files,
    staged_folder,
    write_json,
    write_weights_index,
)


@dataclass
class BudgetReport:
    """One budget as `inspect` shows it."""

    name: str
    is_parent: bool
    sizes: dict[str, Any]
    params_total: int
    params_active: int
    bytes: dict[str, int]
    tensors: int


@dataclass
class InspectReport:
    """A checkpoint, its nesting index and every budget, with any problems found."""

    checkpoint: str
    model_type: str
    architectures: list[str]
    dtype: str
    dtype_bytes: dict[str, int]
    quantization: str
    shards: int
    tensors: int
    total_bytes: int
    index_source: str | None
    parent_budget: str | None
    norm_semantics: str | None
    budgets: list[BudgetReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExtractResult:
    """What `extract` wrote."""

    out: str
    budget: str
    sizes: dict[str, Any]
    params_total: int
    params_active: int
    tensors: int
    bytes: int
    shards: list[str]
    seconds: float
    gb_per_s: float
    copied_files: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _version() -> str:
    from . import __version__

    return __version__


def inspect(checkpoint: str | Path, index: str | Path | None = None) -> InspectReport:
    """Read a checkpoint and its nesting index and describe every budget; problems are listed, not raised."""
    ckpt = open_checkpoint(checkpoint)
    dtype_bytes = ckpt.dtype_bytes()
    report = InspectReport(
        checkpoint=str(ckpt.root),
        model_type=ckpt.model_type,
        architectures=list(ckpt.config.get("architectures") or []),
        dtype=next(iter(dtype_bytes), "none"),
        dtype_bytes=dtype_bytes,
        quantization=ckpt.quantization(),
        shards=len(ckpt.shards),
        tensors=len(ckpt.tensors),
        total_bytes=ckpt.total_bytes,
        index_source=None,
        parent_budget=None,
        norm_semantics=None,
    )
    try:
        arch = get_architecture(ckpt.model_type)
        nesting = find_index(ckpt, Path(index) if index is not None else None)
    except ElasticSliceError as exc:
        report.problems.append(str(exc))
        return report
    report.index_source, report.parent_budget, report.norm_semantics = (
        nesting.source, nesting.parent, nesting.norm_semantics,
    )
    for name in nesting.budgets:
        try:
            plan = build_plan(ckpt, arch, resolve_budget(nesting, name, ckpt.config, arch))
        except ElasticSliceError as exc:
            report.problems.append(str(exc))
            continue
        report.budgets.append(
            BudgetReport(
                name=name,
                is_parent=plan.budget.is_parent,
                sizes=plan.budget.sizes,
                params_total=plan.params.total,
                params_active=plan.params.active,
                bytes=footprint((op.out_name, arch.module_kind(op.out_name), op.out_shape) for op in plan.ops),
                tensors=len(plan.ops),
            )
        )
    return report


def _prepare(
    checkpoint: str | Path, size: str, index: str | Path | None, dtype: str | None, max_shard_size: str | int
) -> tuple[Checkpoint, NestingIndex, Budget, Plan]:
    ckpt = open_checkpoint(checkpoint)
    arch = get_architecture(ckpt.model_type)
    nesting = find_index(ckpt, Path(index) if index is not None else None)
    budget = resolve_budget(nesting, size, ckpt.config, arch)
    out_dtype = parse_user_dtype(dtype) if dtype is not None else None
    plan = build_plan(ckpt, arch, budget, out_dtype, parse_size(str(max_shard_size)))
    return ckpt, nesting, budget, plan


def plan_extract(
    checkpoint: str | Path,
    size: str,
    index: str | Path | None = None,
    dtype: str | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
) -> Plan:
    """The plan `extract` would run, without writing anything (what --dry-run prints)."""
    return _prepare(checkpoint, size, index, dtype, max_shard_size)[3]


def extract(
    checkpoint: str | Path,
    size: str,
    out: str | Path,
    index: str | Path | None = None,
    dtype: str | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    command: str | None = None,
    on_tensor: Callable[[TensorOp], None] | None = None,
) -> ExtractResult:
    """Cut budget `size` out of `checkpoint` into a standalone Hugging Face folder at `out`."""
    ckpt, _, budget, plan = _prepare(checkpoint, size, index, dtype, max_shard_size)
    arch = get_architecture(ckpt.model_type)
    out_path = Path(out)
    check_free_space(out_path.absolute().parent, plan.out_bytes)
    started = time.perf_counter()
    with staged_folder(out_path, overwrite) as staging:
        execute(plan, ckpt, ShardWriter(staging, plan), on_tensor)
        write_weights_index(staging, plan)
        write_json(staging / "config.json", plan.child_config)
        copied = copy_companion_files(ckpt, staging)
        parent_name = ckpt.config.get("_name_or_path") or ckpt.root.name
        card = model_card(plan, str(parent_name), arch.parent_sizes(ckpt.config), command, _version())
        (staging / CARD_FILE).write_text(card, encoding="utf-8")
    seconds = time.perf_counter() - started
    return ExtractResult(
        out=str(out_path),
        budget=budget.name,
        sizes=budget.sizes,
        params_total=plan.params.total,
        params_active=plan.params.active,
        tensors=len(plan.ops),
        bytes=plan.out_bytes,
        shards=list(plan.shards),
        seconds=round(seconds, 4),
        gb_per_s=round(plan.out_bytes / seconds / 1e9, 4) if seconds > 0 else 0.0,
        copied_files=copied,
    )
