"""Any-size budgets: sizes between two trained budgets, axis by axis, for a parameter target.

Starting from the smaller budget, axes grow one step at a time towards the larger budget's sizes, always taking
the step that adds the fewest parameters, in steps that keep the family's structural rules (its
`interpolation_steps` and `grow`: for Nemotron-H whole groups of heads, 64-aligned matrix dimensions, or the largest
power of two that divides both neighbours' sizes). The path does not depend on the target, so the parameter count
is monotone in it; the walk stops before the step that would pass the target.
Layers are the larger budget's. Such a budget was not trained as a nested budget: callers warn.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import InputError

if TYPE_CHECKING:
    from .arch import BoundArchitecture

_NOMINAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMBT])\s*$", re.IGNORECASE)
_SCALE = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


def nominal(name: str) -> float | None:
    """'18B' -> 18e9; None when the name is not a size."""
    match = _NOMINAL.match(name)
    return float(match.group(1)) * _SCALE[match.group(2).upper()] if match else None


@dataclass(frozen=True)
class Interpolated:
    sizes: dict[str, Any]
    lower: str
    upper: str
    params: int


def require_any_size(arch: BoundArchitecture) -> None:
    """Refuse, in the family's own words and before any plan is built, a family without any-size budgets: it raises
    from `interpolation_steps` whatever the budgets are."""
    parent = arch.parent_sizes()
    arch.interpolation_steps(parent, parent)


def interpolate(
    budgets: dict[str, dict[str, Any]],
    params_of: Callable[[dict[str, Any]], int],
    arch: BoundArchitecture,
    target: float,
) -> Interpolated:
    """Sizes between the two budgets whose parameter counts bracket `target`, meeting it from below."""
    counted = sorted(((params_of(sizes), name) for name, sizes in budgets.items()))
    bracket = next(
        ((lower, upper) for lower, upper in zip(counted, counted[1:], strict=False) if lower[0] < target < upper[0]),
        None,
    )
    if bracket is None:
        raise InputError(
            f"a target of {target:,.0f} parameters is not strictly between two budgets' counts "
            f"({', '.join(f'{n} {p:,}' for p, n in counted)}); pick one of them or a target in between."
        )
    (low_params, low), (high_params, high) = bracket
    sizes = dict(budgets[low])
    sizes["layers"] = budgets[high]["layers"]
    steps = arch.interpolation_steps(budgets[low], budgets[high])
    count = params_of(sizes)
    while True:
        options = []
        for axis, step in steps.items():
            if sizes[axis] + step <= budgets[high][axis]:
                trial = arch.grow(sizes, axis, step, budgets[high])
                options.append((params_of(trial), axis, trial))
        options = [option for option in options if option[0] <= target]
        if not options:
            break
        count, _, sizes = min(options, key=lambda option: (option[0], option[1]))
    if not low_params < count < high_params:
        raise InputError(
            f"no size strictly between budgets {low!r} and {high!r} keeps every alignment rule below "
            f"{target:,.0f} parameters; choose a larger target."
        )
    return Interpolated(sizes=sizes, lower=low, upper=high, params=count)
