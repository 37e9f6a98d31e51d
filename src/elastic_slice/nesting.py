"""The nesting index (format `elastic-nesting-index`, version 1): find it, check its shape, resolve budgets.

The format is specified in the project's docs (docs/nesting-index.md). Axis names, defaults and structural rules
belong to each architecture (`elastic_slice.arch`); this module owns everything architecture-neutral.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputError
from .preset import match_preset
from .untrusted_json import load_json_file

if TYPE_CHECKING:
    from .arch.base import BoundArchitecture
    from .checkpoint import Checkpoint

INDEX_FORMAT = "elastic-nesting-index"
INDEX_VERSION = 1
INDEX_FILE = "nesting_index.json"
CONFIG_KEY = "nesting_index"
NORM_SEMANTICS = ("active", "full")
#: budget names are folder names (`extract --all`) and appear in model cards: one safe path component
BUDGET_NAME = re.compile(r"(?![.-])[A-Za-z0-9._-]{1,64}")
BUDGET_NAME_RULE = (
    "a budget name is 1 to 64 characters from A-Z a-z 0-9 . _ - and does not start with '.' or '-'"
)
#: the most budgets one index may hold (inspect and --all do work per budget)
MAX_BUDGETS = 256


def check_budget_name(name: object, where: str) -> str:
    """`name` if it is a valid budget name; otherwise an InputError naming it (shown literally) and `where`."""
    if not isinstance(name, str) or BUDGET_NAME.fullmatch(name) is None:
        raise InputError(f"{where} names budget {name!r}, which is not allowed: {BUDGET_NAME_RULE}.")
    return name


class BudgetError(InputError):
    """A budget breaks a rule; the message names the budget, the axis and the rule."""

    def __init__(self, budget: str, axis: str, rule: str) -> None:
        super().__init__(f"budget {budget!r}, axis {axis!r}: {rule}")
        self.budget = budget
        self.axis = axis
        self.rule = rule


@dataclass(frozen=True)
class NestingIndex:
    """A parsed nesting index: budget name -> the axis sizes it names (as written)."""

    architecture: str
    parent: str
    norm_semantics: str
    budgets: dict[str, dict[str, Any]]
    source: str

    def budget_name(self, requested: str) -> str:
        """The index's spelling of a budget name, matched case-insensitively."""
        for name in self.budgets:
            if name.lower() == requested.lower():
                return name
        raise InputError(
            f"budget {requested!r} is not in the nesting index ({self.source}); "
            f"known budgets: {', '.join(self.budgets)}."
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "architecture": self.architecture,
            "parent": self.parent,
            "norm_semantics": self.norm_semantics,
            "budgets": self.budgets,
        }


@dataclass(frozen=True)
class Budget:
    """One resolved budget: every axis of the architecture with its size for this budget."""

    name: str
    sizes: dict[str, Any]
    is_parent: bool
    norm_semantics: str
    requested: dict[str, Any] = field(default_factory=dict)
    #: empty for a budget of the index; otherwise how it was made, and that it was not trained as a nested budget
    warning: str = ""

    def __post_init__(self) -> None:
        check_budget_name(self.name, "the command line")


def axis_summary(axis: str, value: Any) -> str:
    """A budget's size on one axis in a few words: `layers` as a count, a per-layer list as its range."""
    if not isinstance(value, list):
        return str(value)
    if axis == "layers":
        return f"{len(value)} layers"
    sizes = [size for size in value if size is not None]
    if not sizes:
        return "none"
    low, high = min(sizes), max(sizes)
    return f"{low} per layer" if low == high else f"per layer {low}-{high}"


def find_index(checkpoint: Checkpoint, index_path: Path | None = None) -> NestingIndex:
    """Locate the nesting index: --index FILE, nesting_index.json, config.json["nesting_index"], then a preset."""
    if index_path is not None:
        if not index_path.is_file():
            raise InputError(f"--index {index_path} does not exist.")
        return parse_index(_load_json(index_path), str(index_path))
    in_folder = checkpoint.root / INDEX_FILE
    if in_folder.is_file():
        return parse_index(_load_json(in_folder), str(in_folder))
    embedded = checkpoint.config.get(CONFIG_KEY)
    if embedded is not None:
        return parse_index(embedded, f"{checkpoint.root / 'config.json'}[{CONFIG_KEY!r}]")
    preset = match_preset(checkpoint.config)
    if preset is not None:
        return parse_index(preset.index, f"preset {preset.file} ({preset.release}; sizes from {preset.source})")
    raise InputError(
        f"no nesting index found for {checkpoint.root}: looked for --index FILE, {in_folder}, "
        f"and the key {CONFIG_KEY!r} in config.json, and no preset matches; add one of them, or author one with "
        "`elastic-slice index` (see docs/nesting-index.md)."
    )


def _load_json(path: Path) -> Any:
    return load_json_file(path, f"nesting index {path}", unique_keys=True)


def parse_index(data: Any, source: str) -> NestingIndex:
    """Check the architecture-neutral shape of an index document."""
    if not isinstance(data, dict):
        raise InputError(f"nesting index {source} must be a JSON object.")
    if data.get("format") != INDEX_FORMAT:
        raise InputError(f"nesting index {source} has format {data.get('format')!r}; expected {INDEX_FORMAT!r}.")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InputError(f"nesting index {source} has version {version!r}; expected the integer {INDEX_VERSION}.")
    if version > INDEX_VERSION:
        raise InputError(
            f"nesting index {source} is version {version}; this elastic-slice reads version {INDEX_VERSION}: upgrade it."
        )
    architecture = data.get("architecture")
    if not isinstance(architecture, str) or not architecture:
        raise InputError(f"nesting index {source} has no string `architecture` (for example \"nemotron_h\").")
    norm = data.get("norm_semantics", "active")
    if norm not in NORM_SEMANTICS:
        raise InputError(f"nesting index {source} has norm_semantics {norm!r}; expected \"active\" or \"full\".")
    budgets = data.get("budgets")
    if not isinstance(budgets, dict) or not budgets:
        raise InputError(f"nesting index {source} needs a non-empty `budgets` object of name -> axis sizes.")
    if len(budgets) > MAX_BUDGETS:
        raise InputError(f"nesting index {source} has {len(budgets)} budgets; at most {MAX_BUDGETS} are supported.")
    lowered: dict[str, str] = {}
    for name, axes in budgets.items():
        check_budget_name(name, f"nesting index {source}")
        if name.lower() in lowered:
            raise InputError(
                f"nesting index {source} has budgets {lowered[name.lower()]!r} and {name!r}, "
                "which differ only in case."
            )
        lowered[name.lower()] = name
        if not isinstance(axes, dict):
            raise InputError(f"nesting index {source}: budget {name!r} must be an object of axis -> size.")
    parent = data.get("parent")
    if not isinstance(parent, str) or parent not in budgets:
        raise InputError(f"nesting index {source} has parent {parent!r}, which is not one of its budgets.")
    return NestingIndex(
        architecture=architecture, parent=parent, norm_semantics=norm, budgets=dict(budgets), source=source
    )


def resolve_budget(index: NestingIndex, name: str, arch: BoundArchitecture) -> Budget:
    """Every axis size of one budget, checked against the parent's config and the architecture's rules."""
    name = index.budget_name(name)
    if index.architecture != arch.model_type:
        raise InputError(
            f"nesting index {index.source} is for architecture {index.architecture!r}, "
            f"but the checkpoint's config.json says model_type {arch.model_type!r}."
        )
    _check_parent_budget(index, arch)
    requested = index.budgets[name]
    sizes = arch.resolve(name, requested)
    return Budget(
        name=name, sizes=sizes, is_parent=name == index.parent, norm_semantics=index.norm_semantics,
        requested=requested,
    )


def _check_parent_budget(index: NestingIndex, arch: BoundArchitecture) -> None:
    """The parent budget must equal config.json on every axis it names, whichever budget is asked for."""
    parent_sizes = arch.parent_sizes()
    for axis, value in index.budgets[index.parent].items():
        if axis in parent_sizes and value != parent_sizes[axis]:
            raise BudgetError(
                index.parent, axis,
                f"the parent budget must equal config.json ({parent_sizes[axis]!r}), not {value!r}",
            )


def custom_budget(
    index: NestingIndex | None, base: str | None, overrides: dict[str, Any], arch: BoundArchitecture
) -> Budget:
    """An ad-hoc budget: a base budget of the index (or the parent) with some axes set on the command line."""
    requested: dict[str, Any] = {}
    if base is not None:
        if index is None:
            raise InputError(f"--size {base} needs a nesting index; without one, give every axis with --set.")
        requested.update(index.budgets[index.budget_name(base)])
        base = index.budget_name(base)
    if index is not None:
        _check_parent_budget(index, arch)
    requested.update(overrides)
    name = f"{base}-custom" if base is not None else "custom"
    set_axes = ", ".join(f"{axis}={json.dumps(value)}" for axis, value in overrides.items())
    return Budget(
        name=name,
        sizes=arch.resolve(name, requested),
        is_parent=False,
        norm_semantics=index.norm_semantics if index is not None else "active",
        requested=requested,
        warning=f"budget {name!r} was set on the command line ({set_axes}); it was not necessarily trained as a "
        "nested budget of the parent, so check its quality before use.",
    )


def parse_set(values: list[str]) -> dict[str, Any]:
    """`--set axis=value` pairs: an integer, or a list of integers as a user types it (for `layers`): `0,1,2`,
    `[0, 1, 2]`, and inclusive ranges such as `0-3,5`; `null` in a list stands for a skipped layer's entry."""
    overrides: dict[str, Any] = {}
    for item in values:
        axis, sep, value = item.partition("=")
        if not sep or not axis.strip():
            raise InputError(f"--set {item!r} must look like axis=value, for example --set hidden_size=2048.")
        listed = value.strip()
        bracketed = listed.startswith("[") and listed.endswith("]")
        if bracketed:
            listed = listed[1:-1]
        try:
            numbers = [number for part in listed.split(",") for number in _integers(part.strip())]
        except ValueError:
            raise InputError(
                f"--set {item!r}: the value must be an integer or a list of integers such as 0,1,2, [0, 1, 2] or "
                "0-3,5 (null for a skipped layer's entry)."
            ) from None
        is_list = bracketed or "," in listed or "-" in listed.lstrip("-") or axis.strip() == "layers"
        overrides[axis.strip()] = numbers if is_list else numbers[0]
    return overrides


#: the longest range `--set` expands (far more layers than any model has)
_MAX_RANGE = 1 << 16


def _integers(part: str) -> list[int | None]:
    """One item of a `--set` list: an integer, `null`, or an inclusive ascending range `first-last`."""
    if part == "null":
        return [None]
    first, dash, last = part.partition("-")
    if not dash or not first:  # an integer (a leading "-": negative)
        return [int(part)]
    start, stop = int(first), int(last)
    if stop < start:
        raise ValueError(part)
    if stop - start >= _MAX_RANGE:
        raise InputError(f"--set range {part!r} has more than {_MAX_RANGE} entries; no model has that many layers.")
    return list(range(start, stop + 1))
