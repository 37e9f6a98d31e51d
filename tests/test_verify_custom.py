"""`verify --parent` of an output made with `extract --set` rebuilds its custom budget from the manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli
from elastic_slice import api
from elastic_slice.arch.gemma3n_fixture import build_tiny_gemma3n
from elastic_slice.manifest import MANIFEST_FILE


@pytest.fixture(scope="module")
def gemma3n_parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gemma3n(tmp_path_factory.mktemp("gemma3n") / "parent")


def _flip_a_byte(folder: Path) -> None:
    shard = folder / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1000] ^= 0x40
    shard.write_bytes(bytes(data))


CASES = [
    ("nemotron", ["--size", "12B", "--set", "hidden_size=64"], "12B-custom"),
    ("nemotron", ["--set", "mamba_num_heads=4"], "custom"),
    ("gemma3n", ["--size", "E3-ffn", "--set", "layers=0-5", "--set", "intermediate_size=[64,64,64,64,64,32,null,null,null,null]"],
     "E3-ffn-custom"),
]


@pytest.mark.parametrize(("family", "args", "budget"), CASES)
def test_set_output_verifies_and_a_flipped_byte_fails(
    family: str, args: list[str], budget: str, tiny_parent: Path, gemma3n_parent: Path, tmp_path: Path
) -> None:
    parent = tiny_parent if family == "nemotron" else gemma3n_parent
    out = tmp_path / "child"
    made = run_cli("extract", str(parent), *args, "--out", str(out))
    assert made.code == 0, made.stderr
    assert json.loads((out / MANIFEST_FILE).read_text())["budget"]["name"] == budget
    verified = run_cli("verify", str(out), "--parent", str(parent))
    assert verified.code == 0, verified.stdout + verified.stderr
    assert f"budget {budget}" in verified.stdout
    _flip_a_byte(out)
    report = api.verify(out, parent=parent)
    assert any("differs from the parent's slice" in p for p in report.problems), report.problems
    assert run_cli("verify", str(out), "--parent", str(parent)).code == 1


@pytest.mark.parametrize(("edit", "message"), [
    ({"options.set": {"hidden_size": True}}, "(options.set): it must map axis names to integers"),
    ({"options.set": {"hidden_size": "64"}}, "(options.set): it must map axis names to integers"),
    ({"options.set": [64]}, "(options.set): it must map axis names to integers"),
    ({"options.set": {"layers": [0, -5]}}, "budget '12B-custom'"),
    ({"options.set": {"hidden_size": 10**9}}, "budget '12B-custom'"),
    ({"budget.name": "12B"}, "budget '12B' from the --set sizes the output's manifest records (options.set): a budget "
                             "made with --set is named NAME-custom or custom"),
])
def test_hostile_recorded_sizes_are_input_errors(
    edit: dict[str, Any], message: str, tiny_parent: Path, tmp_path: Path
) -> None:
    out = tmp_path / "child"
    api.extract(tiny_parent, "12B", out, overrides={"hidden_size": 64})
    path = out / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    for dotted, value in edit.items():
        section, key = dotted.split(".")
        manifest[section][key] = value
    path.write_text(json.dumps(manifest))
    result = run_cli("verify", str(out), "--parent", str(tiny_parent))
    assert result.code == 2, result.stdout + result.stderr
    text = " ".join(result.stderr.split())
    assert message in text and "the output's manifest records" in text, text
    assert text.endswith("verify without --parent, or give --size NAME."), text
