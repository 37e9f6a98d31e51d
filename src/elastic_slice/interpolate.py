"""Any-size budgets: sizes between two trained budgets, axis by axis, for a parameter target.

Every integer axis moves from the smaller budget's size towards the larger one's by the same fraction, rounded
down to a multiple that keeps the structural rules (heads per group, 64-aligned matrix dimensions, or 16 when 64
does not divide both neighbours' sizes); the fraction is bisected until the total parameter count meets the
target. Layers are the larger budget's. Such a budget was not trained as a nested budget: callers warn.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import InputError

_NOMINAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMBT])\s*$", re.IGNORECASE)
_SCALE = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}
#: axes counted in units of a group (heads kept group by group) rather than aligned like matrix dimensions
_GROUPED = {"mamba_num_heads": "n_groups", "num_attention_heads": "num_key_value_heads"}


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


def _alignment(low: int, high: int) -> int:
    for step in (64, 32, 16, 8, 4, 2):
        if low % step == 0 and high % step == 0:
            return step
    return 1


def sizes_at(low: dict[str, Any], high: dict[str, Any], fraction: float, config: dict[str, Any]) -> dict[str, Any]:
    """Axis sizes a `fraction` of the way from `low` to `high`, rounded to sizes that keep every rule."""
    sizes: dict[str, Any] = {}
    for axis, small in low.items():
        large = high[axis]
        if axis == "layers" or small == large:
            sizes[axis] = large
            continue
        if axis in _GROUPED:
            unit = int(config[_GROUPED[axis]]) if axis == "mamba_num_heads" else int(high["num_key_value_heads"])
        elif axis in ("num_key_value_heads", "n_routed_experts"):
            unit = 1
        else:
            unit = _alignment(small, large)
        value = small + fraction * (large - small)
        sizes[axis] = max(small, int(math.floor(value / unit + 1e-9)) * unit)
    return sizes


def interpolate(
    budgets: dict[str, dict[str, Any]],
    params_of: Callable[[dict[str, Any]], int],
    config: dict[str, Any],
    target: float,
) -> Interpolated:
    """Sizes between the two budgets whose parameter counts bracket `target`, meeting it from below."""
    counted = sorted(((params_of(sizes), name) for name, sizes in budgets.items()))
    for (low_params, low), (high_params, high) in zip(counted, counted[1:]):
        if low_params < target < high_params:
            break
    else:
        raise InputError(
            f"a target of {target:,.0f} parameters is not strictly between two budgets "
            f"({', '.join(f'{n} {p:,}' for p, n in counted)}); pick one of them or a target in between."
        )
    best: tuple[float, dict[str, Any], int] | None = None
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        sizes = sizes_at(budgets[low], budgets[high], mid, config)
        count = params_of(sizes)
        if count <= target:
            lo = mid
            if low_params < count:
                best = (mid, sizes, count)
        else:
            hi = mid
    if best is None:
        raise InputError(
            f"no size strictly between budgets {low!r} and {high!r} keeps every alignment rule below "
            f"{target:,.0f} parameters; choose a larger target."
        )
    return Interpolated(sizes=best[1], lower=low, upper=high, params=best[2])
