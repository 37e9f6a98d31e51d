"""Fuzzing: random documents are either accepted (and then valid) or refused with InputError, never another
exception; documents built to be invalid are always refused."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elastic_slice.arch import get_architecture
from elastic_slice.errors import InputError
from elastic_slice.nesting import BUDGET_NAME, MAX_BUDGETS, NestingIndex, check_budget_name, parse_index, resolve_budget
from elastic_slice.safetensors_header import read_shard_header
from elastic_slice.untrusted_json import MAX_DEPTH, MAX_INT_DIGITS, parse_json

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tiny-elastic"
SHARD = (EXAMPLE / "model-00003-of-00003.safetensors").read_bytes()
CONFIG = json.loads((EXAMPLE / "config.json").read_text())
INDEX = json.loads((EXAMPLE / "nesting_index.json").read_text())
ARCH = get_architecture("nemotron_h").bind(CONFIG)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _write_shard(path: Path, header: bytes, data: bytes) -> None:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


(_LENGTH,) = struct.unpack("<Q", SHARD[:8])
HEADER: dict[str, Any] = json.loads(SHARD[8 : 8 + _LENGTH])
DATA = SHARD[8 + _LENGTH :]
TENSORS = sorted(name for name in HEADER if name != "__metadata__")


# ----- safetensors headers ----------------------------------------------------------------------------------------
@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=8), st.integers(0, 4096))
def test_mutated_headers_parse_or_fail_cleanly(tmp_path_factory, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(SHARD)
    for position, value in flips:
        data[position % len(data)] = value
    path = tmp_path_factory.mktemp("fuzz") / "shard.safetensors"
    path.write_bytes(bytes(data[: len(data) - cut]))
    try:
        header = read_shard_header(path, "shard.safetensors")
    except InputError as exc:
        assert "shard.safetensors" in str(exc)
        return
    size = path.stat().st_size - header.data_start
    ranges = sorted((info.begin, info.end) for info in header.tensors)
    assert all(0 <= begin <= end <= size for begin, end in ranges)
    assert all(a_end <= b_begin for (_, a_end), (b_begin, _) in zip(ranges, ranges[1:], strict=False))


#: edits that make a valid header invalid: (what, function of (entry) -> None)
BAD_ENTRY_EDITS = {
    "dtype unknown": lambda e: e.update(dtype="Q7"),
    "dtype not a string": lambda e: e.update(dtype=7),
    "shape not a list": lambda e: e.update(shape=4),
    "negative dim": lambda e: e.update(shape=[-1] + e["shape"][1:]),
    "bool dim": lambda e: e.update(shape=[True] * len(e["shape"])),
    "float dim": lambda e: e.update(shape=[float(d) for d in e["shape"]]),
    "offsets reversed": lambda e: e.update(data_offsets=e["data_offsets"][::-1]),
    "offsets past the end": lambda e: e.update(data_offsets=[len(DATA), len(DATA) + e["data_offsets"][1] - e["data_offsets"][0]]),
    "offsets one short": lambda e: e.update(data_offsets=[e["data_offsets"][0], e["data_offsets"][1] - 1]),
    "three offsets": lambda e: e.update(data_offsets=e["data_offsets"] + [0]),
    "entry not an object": lambda e: e.clear(),
}


@SETTINGS
@given(st.sampled_from(TENSORS), st.sampled_from(sorted(BAD_ENTRY_EDITS)))
def test_invalid_headers_are_refused(tmp_path_factory, tensor: str, edit: str) -> None:
    header = json.loads(json.dumps(HEADER))
    if edit == "entry not an object":
        header[tensor] = [1, 2]
    else:
        BAD_ENTRY_EDITS[edit](header[tensor])
    path = tmp_path_factory.mktemp("fuzz") / "shard.safetensors"
    _write_shard(path, json.dumps(header).encode(), DATA)
    with pytest.raises(InputError, match="shard.safetensors"):
        read_shard_header(path, "shard.safetensors")


# ----- JSON itself ------------------------------------------------------------------------------------------------
@SETTINGS
@given(st.binary(max_size=64) | st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_arbitrary_bytes_parse_or_fail_cleanly(raw: bytes) -> None:
    try:
        value = parse_json(raw, "fuzz.json")
    except InputError as exc:
        assert "fuzz.json" in str(exc)
        return
    assert json.loads(json.dumps(value)) == value  # what is accepted is plain, finite JSON


@SETTINGS
@given(
    st.one_of(
        st.integers(MAX_DEPTH + 1, 3000).map(lambda depth: "[" * depth + "]" * depth),
        st.integers(MAX_DEPTH + 1, 3000).map(lambda depth: '{"a":' * depth + "1" + "}" * depth),
        st.integers(MAX_INT_DIGITS + 1, 6000).map(lambda digits: "[" + "7" * digits + "]"),
        st.sampled_from(["NaN", "[Infinity]", '{"a": -Infinity}', "1e400", "-1e999", '"\\udfff"', '{"\\ud800": 1}']),
    )
)
def test_documents_past_the_limits_are_refused(text: str) -> None:
    with pytest.raises(InputError, match="fuzz.json"):
        parse_json(text, "fuzz.json")


# ----- budget names -----------------------------------------------------------------------------------------------
@SETTINGS
@given(st.text(max_size=80) | st.from_regex(BUDGET_NAME, fullmatch=True))
def test_budget_names_are_single_safe_path_components(name: str) -> None:
    try:
        check_budget_name(name, "fuzz.json")
    except InputError as exc:
        assert "fuzz.json" in str(exc) and "not allowed" in str(exc)
        return
    assert Path(name).name == name and name not in (".", "..") and not name.startswith(("-", "."))
    assert name.isascii() and name.isprintable() and " " not in name and 1 <= len(name) <= 64


# ----- nesting indexes --------------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
axes = st.sampled_from(list(ARCH.axes) + ["bogus"])
budgets = st.dictionaries(st.sampled_from(["30B", "23B", "12B", "x", "../x", ""]),
                          st.dictionaries(axes, json_values, max_size=4), min_size=1, max_size=3)


def _parse_and_resolve(document: object) -> NestingIndex:
    index = parse_index(document, "fuzz.json")
    for name in index.budgets:
        resolve_budget(index, name, ARCH)
    return index


@SETTINGS
@given(
    budgets,
    st.sampled_from(["30B", "12B", "x", 7]),
    st.sampled_from(["active", "full", "other"]),
    st.sampled_from([1, 2, "1"]),
)
def test_random_indexes_are_valid_or_refused(budget_map: dict, parent: object, norm: str, version: object) -> None:
    document = {"format": "elastic-nesting-index", "version": version, "architecture": "nemotron_h",
                "parent": parent, "norm_semantics": norm, "budgets": budget_map}
    try:
        index = _parse_and_resolve(document)
    except InputError:
        return
    assert version == 1 and norm in ("active", "full") and index.parent in index.budgets
    assert all(BUDGET_NAME.fullmatch(name) for name in index.budgets) and len(index.budgets) <= MAX_BUDGETS


def _valid_index() -> dict[str, Any]:
    return json.loads(json.dumps(INDEX))


def _set_budget(name: str, axes: dict[str, Any]) -> Any:
    return lambda doc: doc["budgets"].update({name: axes})


#: edits that make the example's valid index invalid
BAD_INDEX_EDITS: dict[str, Any] = {
    "format": lambda doc: doc.update(format="nesting-index"),
    "version 0": lambda doc: doc.update(version=0),
    "version true": lambda doc: doc.update(version=True),
    "version string": lambda doc: doc.update(version="1"),
    "version 2": lambda doc: doc.update(version=2),
    "no architecture": lambda doc: doc.pop("architecture"),
    "other architecture": lambda doc: doc.update(architecture="llama"),
    "norm": lambda doc: doc.update(norm_semantics="rms"),
    "budgets empty": lambda doc: doc.update(budgets={}),
    "budgets a list": lambda doc: doc.update(budgets=[]),
    "parent missing": lambda doc: doc.update(parent="99B"),
    "parent differs from config": lambda doc: doc["budgets"]["30B"].update(hidden_size=64),
    "budget not an object": _set_budget("9B", [96]),
    "zero size": _set_budget("9B", {"hidden_size": 0}),
    "bool size": _set_budget("9B", {"hidden_size": True}),
    "float size": _set_budget("9B", {"hidden_size": 96.0}),
    "string size": _set_budget("9B", {"hidden_size": "96"}),
    "larger than parent": _set_budget("9B", {"hidden_size": 4096}),
    "unknown axis": _set_budget("9B", {"[/bold]x": 1}),
    "all-null per-layer": _set_budget("9B", {"n_routed_experts": [None] * 8}),
    "per-layer wrong length": _set_budget("9B", {"n_routed_experts": [8] * 3}),
    "layers unsorted": _set_budget("9B", {"layers": [2, 1]}),
    "layers too many": _set_budget("9B", {"layers": list(range(9))}),
    "case twins": _set_budget("12b", {"hidden_size": 96}),
    "too many budgets": lambda doc: doc["budgets"].update({f"b{i}": {} for i in range(MAX_BUDGETS)}),
}


@SETTINGS
@given(st.sampled_from(sorted(BAD_INDEX_EDITS)), st.text(max_size=20).filter(lambda n: not BUDGET_NAME.fullmatch(n)))
def test_invalid_indexes_are_refused(edit: str, bad_name: str) -> None:
    document = _valid_index()
    BAD_INDEX_EDITS[edit](document)
    with pytest.raises(InputError):
        _parse_and_resolve(document)
    named = _valid_index()
    named["budgets"][bad_name] = {"hidden_size": 96}
    with pytest.raises(InputError, match="not allowed"):
        _parse_and_resolve(named)


@SETTINGS
@given(json_values)
def test_arbitrary_json_is_valid_or_refused(value: object) -> None:
    try:
        index = _parse_and_resolve(value)
    except InputError:
        return
    assert isinstance(value, dict) and index.parent in index.budgets
