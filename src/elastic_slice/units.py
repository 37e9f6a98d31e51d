"""Human-readable counts and byte sizes for tables, summaries and model cards."""

from __future__ import annotations


def human_count(count: int) -> str:
    """12345678 -> '12.35M' (decimal units, as parameter counts are quoted)."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(count)


def human_bytes(count: int) -> str:
    """58900000000 -> '58.90 GB' (decimal units, as Hugging Face quotes sizes)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count} B"
