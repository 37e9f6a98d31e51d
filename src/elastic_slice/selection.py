"""Index selections: for each dimension of a tensor, the half-open ranges of indices to keep, in order.

A selection is plain data (tuples of `(start, stop)` pairs), so plans print as JSON and compare in tests.
"""

from __future__ import annotations

Ranges = tuple[tuple[int, int], ...]
Selection = tuple[Ranges, ...]


def full(length: int) -> Ranges:
    """Every index of a dimension of this length."""
    return ((0, length),)


def prefix(length: int) -> Ranges:
    """The first `length` indices."""
    return ((0, length),)


def grouped_prefix(groups: int, group_len: int, keep: int, unit: int = 1, offset: int = 0) -> Ranges:
    """In each of `groups` consecutive groups of `group_len` items, the first `keep` items.

    Each item spans `unit` indices (a head of `head_dim` channels, say); `offset` shifts every range.
    """
    return merge(
        tuple((offset + g * group_len * unit, offset + (g * group_len + keep) * unit) for g in range(groups))
    )


def shift(ranges: Ranges, offset: int) -> Ranges:
    """The same ranges moved by `offset` indices."""
    return tuple((start + offset, stop + offset) for start, stop in ranges)


def merge(ranges: Ranges) -> Ranges:
    """Join touching ranges and drop empty ones, so that contiguous runs are read in one piece."""
    merged: list[tuple[int, int]] = []
    for start, stop in ranges:
        if stop <= start:
            continue
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return tuple(merged)


def concat(*parts: Ranges) -> Ranges:
    """Ranges of several consecutive parts of a fused dimension, merged."""
    return merge(tuple(r for part in parts for r in part))


def length(ranges: Ranges) -> int:
    """How many indices the ranges keep."""
    return sum(stop - start for start, stop in ranges)
