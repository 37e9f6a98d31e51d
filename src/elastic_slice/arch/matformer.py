"""MatFormer slicing tables (the `google/gemma3n-slicing-configs` format) read as nesting-index budgets.

The table is a CSV file with the columns `name`, `# Layers`, `# Effective Params (B)`, `MMLU PT accuracy`,
`FFN Hidden Dims` (a list such as `[2_048 * 4, 2_048 * 8, ...]`, one entry per kept layer) and `Layers Skipped`
(a list of parent layer indices, or `null`). Only `name`, `FFN Hidden Dims` and `Layers Skipped` are needed;
`# Layers`, when present, must agree with them. Every cell is untrusted: the file, its rows, cells and lists are
capped, and every error names the row and column.

Row names become budget names (`budget_name`): "Main model" is the parent; a leading "Config for ", "official "
and a trailing " Model" are dropped; each run of characters a budget name may not hold (anything but
A-Z a-z 0-9 . _ -) becomes one "-", and leading or trailing "." / "-" are removed. So "Config for official E2B
Model" -> `E2B`, "Config for E2.54B (layer-level)" -> `E2.54B-layer-level`, and "Small" stays `Small`.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..nesting import MAX_BUDGETS, check_budget_name
from .base import BoundArchitecture
from .gemma3n import BoundGemma3n

NAME, LAYERS, FFN, SKIPPED = "name", "# Layers", "FFN Hidden Dims", "Layers Skipped"
#: the largest table read (the published one is about 10 KiB)
MAX_BYTES = 1 << 20
#: the most entries one list cell may hold, and the largest width one entry may give
MAX_ENTRIES = 1024
MAX_WIDTH = 1 << 24
PARENT_ROW = "main model"
#: one factor of a width: ASCII digits in groups joined by `_` (its digits are counted before int())
_TERM = re.compile(r"[0-9]+(?:_[0-9]+)*")
#: the most digits a factor may have (MAX_WIDTH has 8)
MAX_DIGITS = 9
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9._-]+")
_NULLS = ("", "null", "none", "[]")


@dataclass(frozen=True)
class Row:
    """One table row: its line in the file, its name, the FFN width of each kept layer and the skipped layers."""

    line: int
    name: str
    ffn: list[int]
    skipped: list[int]
    layers: int | None


def budget_name(row_name: str) -> str:
    """The budget name of a table row's name (not for the parent row), as the module docstring describes."""
    name = row_name.strip()
    name = re.sub(r"^config for\s+", "", name, flags=re.IGNORECASE)
    name = re.sub(r"^official\s+", "", name, flags=re.IGNORECASE)
    name = re.sub(r"\s+model$", "", name, flags=re.IGNORECASE)
    return _NOT_ALLOWED.sub("-", name).strip(".-")[:64].rstrip(".-")


def read_table(path: Path) -> list[Row]:
    """The rows of a slicing-configs CSV file, each checked for shape (not yet against a parent)."""
    where = f"--from-matformer-csv {path}"
    if path.is_dir():
        raise InputError(f"{where} is a directory; give the slicing table's CSV file.")
    if not path.is_file():
        raise InputError(f"{where}: no such file.")
    if path.stat().st_size > MAX_BYTES:
        raise InputError(f"{where} is {path.stat().st_size} bytes; a slicing table is at most {MAX_BYTES}.")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{where} is not UTF-8 text.") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in (NAME, FFN, SKIPPED) if c not in columns]
    if missing:
        raise InputError(f"{where} has no column {missing[0]!r}; its columns are {columns}.")
    repeated = next((c for c in columns if columns.count(c) > 1), None)
    if repeated is not None:
        raise InputError(f"{where} names column {repeated!r} twice in its header; each column must be named once.")
    reader.fieldnames = columns
    rows: list[Row] = []
    try:
        for record in reader:
            if len(rows) >= MAX_BUDGETS:
                raise InputError(f"{where} has more than {MAX_BUDGETS} rows.")
            if None in record:
                raise InputError(f"{where} line {reader.line_num}: more cells than columns.")
            rows.append(_row(record, reader.line_num, where))
    except csv.Error as exc:
        raise InputError(f"{where} line {reader.line_num}: not valid CSV ({exc}).") from None
    if not rows:
        raise InputError(f"{where} has no rows.")
    return rows


def _row(record: dict[str, Any], line: int, where: str) -> Row:
    name = (record.get(NAME) or "").strip()
    if not name:
        raise InputError(f"{where} line {line}, column {NAME!r}: empty.")
    place = f"{where} line {line} ({name!r})"
    ffn = [_width(item, f"{place}, column {FFN!r}") for item in _list(record.get(FFN), f"{place}, column {FFN!r}")]
    if not ffn:
        raise InputError(f"{place}, column {FFN!r}: the list is empty.")
    skipped_cell = f"{place}, column {SKIPPED!r}"
    skipped = [_index(item, skipped_cell) for item in _list(record.get(SKIPPED), skipped_cell)]
    if len(set(skipped)) != len(skipped):
        raise InputError(f"{skipped_cell}: a layer is listed twice.")
    layers = None
    count = (record.get(LAYERS) or "").strip()
    if count:
        layers = _index(count, f"{place}, column {LAYERS!r}")
        if layers != len(ffn):
            raise InputError(f"{place}: column {LAYERS!r} says {layers}, but {FFN!r} lists {len(ffn)} widths.")
    return Row(line=line, name=name, ffn=ffn, skipped=sorted(skipped), layers=layers)


def _list(cell: str | None, where: str) -> list[str]:
    """The items of a list cell `[a, b, ...]`; an empty cell, `null`, `None` or `[]` is the empty list."""
    text = (cell or "").strip()
    if text.lower() in _NULLS:
        return []
    if not (text.startswith("[") and text.endswith("]")):
        raise InputError(f"{where}: expected a list like [1, 2] or null, not {_shown(text)}.")
    items = [item.strip() for item in text[1:-1].split(",")]
    if len(items) > MAX_ENTRIES:
        raise InputError(f"{where}: the list has {len(items)} entries; at most {MAX_ENTRIES} are read.")
    return items


def _width(item: str, where: str) -> int:
    """An FFN width written as an integer or a product of integers, with `_` between digit groups: `2_048 * 4`."""
    value = 1
    for term in item.split("*"):
        term = term.strip()
        if _TERM.fullmatch(term) is None:
            raise InputError(f"{where}: {_shown(item)} is not an integer or a product like 2_048 * 4.")
        significant = term.replace("_", "").lstrip("0")
        if len(significant) > MAX_DIGITS:
            raise InputError(f"{where}: {_shown(item)} is larger than {MAX_WIDTH}.")
        value *= int(significant or "0")
        if value > MAX_WIDTH:
            raise InputError(f"{where}: {_shown(item)} is larger than {MAX_WIDTH}.")
    if value <= 0:
        raise InputError(f"{where}: {_shown(item)} is not a positive width.")
    return value


def _index(item: str, where: str) -> int:
    text = item.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 6:
        raise InputError(f"{where}: {_shown(text)} is not a layer index or count.")
    return int(text)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def parent_widths(arch: BoundArchitecture) -> list[int]:
    """The per-layer FFN widths of a Gemma 3n parent; any other family is refused."""
    if not isinstance(arch, BoundGemma3n):
        raise InputError(
            f"--from-matformer-csv needs a Gemma 3n parent (model_type gemma3n or gemma3n_text), not {arch.model_type!r}."
        )
    return list(arch.shape.ffn)


def table_budgets(rows: list[Row], parent_name: str, parent_ffn: list[int]) -> tuple[dict[str, Any], dict[str, str]]:
    """Nesting-index budgets from the rows, checked against the parent's per-layer FFN widths, and the mapping
    row name -> budget name. The parent budget (`parent_name`) is the "Main model" row, or added when absent."""
    check_budget_name(parent_name, "--parent-name")
    n = len(parent_ffn)
    budgets: dict[str, Any] = {}
    names: dict[str, str] = {}
    taken: dict[str, Row] = {}
    for row in rows:
        is_parent = row.name.strip().lower() == PARENT_ROW
        name = parent_name if is_parent else budget_name(row.name)
        where = f"row {row.name!r} (line {row.line})"
        check_budget_name(name, where)
        if name.lower() in taken:
            raise InputError(f"{where} and row {taken[name.lower()].name!r} both become budget {name!r}.")
        taken[name.lower()] = row
        names[row.name] = name
        if row.skipped and row.skipped[-1] >= n:
            raise InputError(f"{where}, column {SKIPPED!r}: layer {row.skipped[-1]} is not one of the parent's {n}.")
        kept = [i for i in range(n) if i not in set(row.skipped)]
        if len(row.ffn) != len(kept):
            raise InputError(
                f"{where}, column {FFN!r}: {len(row.ffn)} widths for {len(kept)} kept layers ({n} parent layers, "
                f"{len(row.skipped)} skipped); give one width per kept layer."
            )
        widths: list[int | None] = [None] * n
        for layer, width in zip(kept, row.ffn, strict=True):
            widths[layer] = width
        budget: dict[str, Any] = {}
        if row.skipped:
            budget["layers"] = kept
        if any(widths[i] != parent_ffn[i] for i in kept):
            budget["intermediate_size"] = row.ffn[0] if len(set(row.ffn)) == 1 else widths
        if is_parent and budget:
            raise InputError(f"{where} is the main model, but its sizes differ from the parent's config.json.")
        budgets[name] = budget
    if parent_name.lower() not in taken:
        budgets = {parent_name: {}, **budgets}
    return budgets, names


__all__ = ["Row", "budget_name", "parent_widths", "read_table", "table_budgets"]
