"""One JSON loader for every file elastic-slice reads: bounded, strict, and every refusal a clear InputError.

Limits (see the README's reliability section): at most `MAX_DEPTH` nested arrays/objects, integers of at most
`MAX_INT_DIGITS` digits, number literals of at most `MAX_NUMBER_CHARS` characters, no NaN or Infinity (nor floats
that overflow to it), valid UTF-8 without a byte-order mark, strings without unpaired surrogates, and files of at most
`MAX_FILE_BYTES` (safetensors headers have their own 100 MB cap). Duplicate keys are refused in documents that
name tensors, files or budgets (`unique_keys=True`: safetensors headers, weights indexes, nesting indexes,
manifests); configs follow transformers, where the last one wins.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from .errors import InputError

MAX_DEPTH = 64
MAX_INT_DIGITS = 30
MAX_NUMBER_CHARS = 64
MAX_FILE_BYTES = 64 * 2**20

_CONTAINERS = (dict, list)
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


class _Refused(Exception):
    """Raised inside the decoder's hooks; turned into an InputError naming the file."""


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {len(text.lstrip('-'))} digits (the limit is {MAX_INT_DIGITS})")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Refused(f"a number literal of {len(text)} characters (the limit is {MAX_NUMBER_CHARS})")
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:20]} (too large for a float)")
    return value


def _parse_constant(name: str) -> Any:
    raise _Refused(f"{name}, which JSON does not allow")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Refused(f"the key {key!r} twice in one object")
        result[key] = value
    return result


def parse_json(raw: bytes | str, label: str, unique_keys: bool = False) -> Any:
    """Decode a JSON document read from `label` (a file name for messages) within the limits above."""
    if isinstance(raw, bytes):
        if raw.startswith(b"\xef\xbb\xbf"):
            raise InputError(f"{label} starts with a UTF-8 byte-order mark; save it as plain UTF-8 JSON.")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{label} is not UTF-8 text (invalid byte at offset {exc.start}).") from None
    else:
        text = raw
    try:
        value = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
            object_pairs_hook=_unique_pairs if unique_keys else None,
        )
    except _Refused as exc:
        raise InputError(f"{label} holds {exc}; it is corrupt or hostile.") from None
    except RecursionError:
        raise _too_deep(label) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{label} is not valid JSON ({exc}).") from None
    _check_depth(value, label)
    if _ESCAPED_SURROGATE.search(text) is not None:
        _check_strings(value, label)
    return value


def _too_deep(label: str) -> InputError:
    return InputError(f"{label} nests arrays or objects more than {MAX_DEPTH} deep; it is corrupt or hostile.")


def _check_depth(value: Any, label: str) -> None:
    """At most MAX_DEPTH nested arrays and objects (the decoder alone allows about a thousand)."""
    stack: list[tuple[Any, int]] = [(value, 1)] if type(value) in _CONTAINERS else []
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _too_deep(label)
        children = item.values() if type(item) is dict else item
        stack.extend([(child, depth + 1) for child in children if type(child) in _CONTAINERS])


def _check_strings(value: Any, label: str) -> None:
    """Every key and string encodes as UTF-8: no unpaired surrogate escape such as "\\ud800"."""
    stack = [value]
    while stack:
        item = stack.pop()
        texts: list[Any] = [item] if isinstance(item, str) else list(item) if isinstance(item, dict) else []
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise InputError(
                    f"{label} holds a string with an unpaired UTF-16 surrogate escape; it is corrupt or hostile."
                ) from None
        if isinstance(item, (dict, list)):
            stack.extend(item.values() if isinstance(item, dict) else item)


def load_json_file(path: Path, label: str | None = None, unique_keys: bool = False, max_bytes: int = MAX_FILE_BYTES) -> Any:
    """A JSON file's value, read within `max_bytes` and the limits above; `label` names it in messages."""
    label = label or str(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(max_bytes + 1)
    except OSError as exc:
        raise InputError(f"cannot read {label}: {exc.strerror or exc}.") from None
    if len(raw) > max_bytes:
        raise InputError(f"{label} is larger than {max_bytes // 2**20} MiB; it is not a file elastic-slice reads.")
    return parse_json(raw, label, unique_keys)


def load_json_object(path: Path, label: str | None = None, unique_keys: bool = False) -> dict[str, Any]:
    """`load_json_file` for a file that must hold a JSON object."""
    data = load_json_file(path, label, unique_keys)
    if not isinstance(data, dict):
        raise InputError(f"{label or path} must hold a JSON object, not {_json_type(data)}.")
    return data


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
