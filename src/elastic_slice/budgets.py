"""Which budgets a command means: names of the index, --all, ad-hoc --set sizes, or sizes between two budgets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .arch import BoundArchitecture
from .checkpoint import Checkpoint
from .errors import InputError
from .interpolate import interpolate, nominal, require_any_size
from .nesting import Budget, NestingIndex, custom_budget, find_index, resolve_budget
from .plan import build_plan

#: `sizes` value that selects every budget of the index
ALL_BUDGETS = "*"


@dataclass(frozen=True)
class ParamTarget:
    """An any-size budget by parameter count: `total` parameters, or `active` (per-token) parameters."""

    total: float | None = None
    active: float | None = None

    @property
    def measure(self) -> str:
        return "active" if self.active is not None else "total"

    @property
    def value(self) -> float:
        value = self.active if self.active is not None else self.total
        if value is None or (self.total is not None and self.active is not None):
            raise InputError("give one parameter target: --target-params N or --active-params N.")
        return value


def select_budgets(
    ckpt: Checkpoint,
    arch: BoundArchitecture,
    sizes: list[str],
    index: Path | None,
    overrides: dict[str, Any] | None = None,
    target: ParamTarget | None = None,
) -> tuple[NestingIndex | None, list[Budget]]:
    """The nesting index (None when --set works without one) and the budgets asked for, resolved and checked."""
    if overrides:
        if target is not None:
            raise InputError(
                "give either --set or a parameter target (--target-params / --active-params), not both: --set "
                "fixes the sizes a target would choose."
            )
        return _custom(ckpt, arch, sizes, index, overrides)
    nesting = find_index(ckpt, index)
    if target is not None:
        if sizes:
            raise InputError("give either --size or a parameter target (--target-params / --active-params).")
        require_any_size(arch)
        name = f"{target.value:.0f}-{target.measure}"
        return nesting, [_interpolated(ckpt, arch, nesting, name, target.value, target.measure)]
    if len(sizes) == 1 and sizes[0] != ALL_BUDGETS and not _in_index(nesting, sizes[0]):
        _require_any_size_for(arch, nesting, sizes[0])
        wanted = _target_params(ckpt, arch, nesting, sizes[0])
        return nesting, [_interpolated(ckpt, arch, nesting, sizes[0], wanted, "total")]
    names = list(nesting.budgets) if sizes == [ALL_BUDGETS] else [nesting.budget_name(size) for size in sizes]
    if len(set(names)) != len(names):
        raise InputError(f"budget {next(n for n in names if names.count(n) > 1)!r} is asked for twice.")
    return nesting, [resolve_budget(nesting, name, arch) for name in names]


def _require_any_size_for(arch: BoundArchitecture, nesting: NestingIndex, size: str) -> None:
    """A --size outside the index is an any-size budget: refused, naming the index's budgets, where the family has
    none."""
    try:
        require_any_size(arch)
    except InputError as exc:
        raise InputError(
            f"budget {size!r} is not in the nesting index ({nesting.source}; its budgets: {', '.join(nesting.budgets)})"
            f", and {exc}"
        ) from None


def _in_index(nesting: NestingIndex, name: str) -> bool:
    return any(budget.lower() == name.lower() for budget in nesting.budgets)


def _interpolated(
    ckpt: Checkpoint, arch: BoundArchitecture, nesting: NestingIndex, name: str, target: float, measure: str
) -> Budget:
    """A budget between two trained ones, meeting a total or active parameter target from below."""
    resolved = {budget: resolve_budget(nesting, budget, arch).sizes for budget in nesting.budgets}

    def params_of(sizes: dict[str, Any]) -> int:
        probe = Budget(name=name, sizes=sizes, is_parent=False, norm_semantics=nesting.norm_semantics)
        counts = build_plan(ckpt, arch, probe).params
        return counts.active if measure == "active" else counts.total

    found = interpolate(resolved, params_of, arch, target)
    return Budget(
        name=name,
        sizes=arch.resolve(name, found.sizes),
        is_parent=False,
        norm_semantics=nesting.norm_semantics,
        requested=found.sizes,
        warning=f"budget {name!r} is interpolated between the trained budgets {found.lower!r} and {found.upper!r} "
        f"({found.params:,} {measure} parameters for a target of {target:,.0f}); it was not trained as a nested "
        "budget, so check its quality before use.",
    )


def _target_params(ckpt: Checkpoint, arch: BoundArchitecture, nesting: NestingIndex, size: str) -> float:
    """Parameters for `size`: a plain number is a count; '18B' is placed between the budgets named by sizes."""
    try:
        return float(size)
    except ValueError:
        pass
    wanted = nominal(size)
    named = {name: nominal(name) for name in nesting.budgets}
    if wanted is None or any(value is None for value in named.values()):
        raise InputError(
            f"budget {size!r} is not in the nesting index ({nesting.source}); known budgets: "
            f"{', '.join(nesting.budgets)}. For a size between them, give a parameter count (--size 18e9) or, "
            "when the budgets are named by size, a size such as 18B."
        )
    points = sorted((value, name) for name, value in named.items() if value is not None)
    for (low_value, low), (high_value, high) in zip(points, points[1:], strict=False):
        if low_value < wanted < high_value:
            low_params, high_params = (
                build_plan(ckpt, arch, resolve_budget(nesting, name, arch)).params.total
                for name in (low, high)
            )
            return low_params + (wanted - low_value) / (high_value - low_value) * (high_params - low_params)
    raise InputError(
        f"budget {size!r} is not in the nesting index ({nesting.source}) and not between two of its budgets; "
        f"known budgets: {', '.join(nesting.budgets)}."
    )


def _custom(
    ckpt: Checkpoint, arch: BoundArchitecture, sizes: list[str], index: Path | None, overrides: dict[str, Any]
) -> tuple[NestingIndex | None, list[Budget]]:
    """One ad-hoc budget from --set, on top of --size's budget or of the parent; the index is optional."""
    if len(sizes) > 1 or sizes == [ALL_BUDGETS]:
        raise InputError("--set applies to one budget: give at most one --size with it.")
    try:
        nesting: NestingIndex | None = find_index(ckpt, index)
    except InputError:
        if index is not None:
            raise
        nesting = None
    return nesting, [custom_budget(nesting, sizes[0] if sizes else None, overrides, arch)]
