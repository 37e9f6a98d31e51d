"""Fuzzing: random mutations of safetensors headers and nesting indexes never crash with a traceback."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elastic_slice.arch import get_architecture
from elastic_slice.errors import InputError
from elastic_slice.nesting import parse_index, resolve_budget
from elastic_slice.safetensors_header import read_shard_header

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tiny-elastic"
SHARD = (EXAMPLE / "model-00003-of-00003.safetensors").read_bytes()
CONFIG = json.loads((EXAMPLE / "config.json").read_text())
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=8), st.integers(0, 4096))
def test_mutated_headers_fail_cleanly(tmp_path_factory, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(SHARD)
    for position, value in flips:
        data[position % len(data)] = value
    path = tmp_path_factory.mktemp("fuzz") / "shard.safetensors"
    path.write_bytes(bytes(data[: len(data) - cut]))
    try:
        read_shard_header(path, "shard.safetensors")
    except InputError as exc:
        assert "shard.safetensors" in str(exc)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
axes = st.sampled_from(list(get_architecture("nemotron_h").axes) + ["bogus"])
budgets = st.dictionaries(st.sampled_from(["30B", "23B", "12B", "x"]), st.dictionaries(axes, json_values, max_size=4),
                          min_size=1, max_size=3)


@SETTINGS
@given(
    budgets,
    st.sampled_from(["30B", "12B", "x", 7]),
    st.sampled_from(["active", "full", "other"]),
    st.sampled_from([1, 2, "1"]),
)
def test_random_indexes_fail_cleanly(budget_map: dict, parent: object, norm: str, version: object) -> None:
    document = {"format": "elastic-nesting-index", "version": version, "architecture": "nemotron_h",
                "parent": parent, "norm_semantics": norm, "budgets": budget_map}
    arch = get_architecture("nemotron_h")
    try:
        index = parse_index(document, "fuzz.json")
        for name in index.budgets:
            resolve_budget(index, name, CONFIG, arch)
    except InputError:
        pass


@SETTINGS
@given(json_values)
def test_arbitrary_json_is_refused_cleanly(value: object) -> None:
    try:
        parse_index(value, "fuzz.json")
    except InputError:
        pass
