"""Depth elasticity shared by the families: which parent layers a child kept, read off per-layer kinds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..nesting import BudgetError


def check_layers(budget: str, value: Any, parent_layers: int) -> list[int]:
    """A budget's `layers`: a non-empty, sorted list of unique parent layer indices (checked before it is used)."""
    if isinstance(value, list) and len(value) > parent_layers:
        raise BudgetError(budget, "layers", f"lists {len(value)} layers; the parent has {parent_layers}")
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in value)
    ):
        raise BudgetError(budget, "layers", "must be a non-empty list of parent layer indices")
    if any(b <= a for a, b in zip(value, value[1:], strict=False)) or value[0] < 0 or value[-1] >= parent_layers:
        raise BudgetError(budget, "layers", f"indices must be sorted, unique and in 0..{parent_layers - 1}")
    return list(value)


def kept_layers(parent: Sequence[Any], child: Sequence[Any]) -> tuple[int, list[int]]:
    """In how many ways the child's layer kinds fit the parent's as a subsequence (0, 1, or 2 for several), and the
    kept parent layers when the fit is unique ([] otherwise)."""
    n, m = len(parent), len(child)
    # ways[i][j]: how many ways child[j:] fits into parent[i:], counted up to 2
    ways = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n, -1, -1):
        ways[i][m] = 1
        for j in range(m - 1, -1, -1):
            if i < n:
                take = ways[i + 1][j + 1] if parent[i] == child[j] else 0
                ways[i][j] = min(2, ways[i + 1][j] + take)
    if ways[0][0] != 1:
        return ways[0][0], []
    kept, j = [], 0
    for i in range(n):
        if j < m and parent[i] == child[j] and ways[i + 1][j + 1] == 1:
            kept.append(i)
            j += 1
    return 1, kept
