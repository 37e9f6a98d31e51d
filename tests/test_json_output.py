"""Every --json output is one JSON document on stdout, valid against its documented schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from conftest import run_cli
from elastic_slice import api
from elastic_slice.schemas import SCHEMAS


def _valid(kind: str, text: str) -> object:
    document = json.loads(text)  # exactly one document: json.loads refuses trailing text
    jsonschema.validate(document, SCHEMAS[kind])
    return document


def test_every_command_json(tiny_parent: Path, tmp_path: Path) -> None:
    runs = {
        "inspect": ["inspect", tiny_parent, "--json"],
        "plan": ["extract", tiny_parent, "--size", "12B", "--dry-run", "--json"],
        "extract": ["extract", tiny_parent, "--size", "12B", "--out", tmp_path / "one", "--json"],
        "quantize": ["quantize", tiny_parent, "--quantize", "fp8", "--quant-format", "compressed-tensors",
                     "--out", tmp_path / "q", "--json"],
        "verify": ["verify", tmp_path / "one", "--parent", tiny_parent, "--json"],
        "index": ["index", tiny_parent, "--from-config", f"12B={tmp_path / 'one'}"],
        "index_json": ["index", tiny_parent, "--from-config", f"12B={tmp_path / 'one'}", "--json"],
    }
    for kind, args in runs.items():
        result = run_cli(*args)
        assert result.code == 0, (kind, result.stderr)
        _valid(kind, result.stdout)
    many = run_cli("extract", tiny_parent, "--size", "23B", "--size", "12B", "--out", tmp_path / "many", "--json")
    assert len(_valid("extract", many.stdout)) == 2
    plans = run_cli("extract", tiny_parent, "--all", "--dry-run", "--json")
    assert len(_valid("plan", plans.stdout)) == 3
    written = run_cli("index", tiny_parent, "--from-config", f"12B={tmp_path / 'one'}", "--out", tmp_path / "i.json",
                      "--json")
    document = _valid("index_json", written.stdout)
    assert document["written"] == [str(tmp_path / "i.json")]
    assert json.loads((tmp_path / "i.json").read_text()) == document["index"]


def test_api_and_cli_agree(tiny_parent: Path, tmp_path: Path) -> None:
    assert json.loads(run_cli("inspect", tiny_parent, "--json").stdout) == api.inspect(tiny_parent).to_json()
    cli = json.loads(run_cli("extract", tiny_parent, "--size", "12B", "--dry-run", "--json").stdout)
    assert cli == json.loads(json.dumps(api.plan_extract(tiny_parent, "12B").to_json()))


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_schemas_are_valid(kind: str) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMAS[kind])


def test_documented_schemas_are_the_ones_in_code() -> None:
    """docs/json-output.md shows every schema exactly as elastic_slice.schemas defines it."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "json-output.md").read_text()
    for name, schema in SCHEMAS.items():
        assert json.dumps(schema, indent=2) in doc, name
