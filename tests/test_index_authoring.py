"""Authoring a nesting index from children's configs, and ad-hoc `--set` budgets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli
from elastic_slice import api


def _shards(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.glob("*.safetensors")}


def test_index_from_child_configs_round_trips(tiny_parent: Path, tmp_path: Path) -> None:
    for budget in ("23B", "12B"):
        api.extract(tiny_parent, budget, tmp_path / budget)
    parent = tmp_path / "parent"
    shutil.copytree(tiny_parent, parent)
    (parent / "nesting_index.json").unlink()
    result = run_cli("index", parent, "--from-config", f"23B={tmp_path / '23B'}",
                     "--from-config", f"12B={tmp_path / '12B' / 'config.json'}", "--parent-name", "30B", "--write-into")
    assert result.code == 0, result.stderr
    derived = json.loads((parent / "nesting_index.json").read_text())
    assert derived["parent"] == "30B" and list(derived["budgets"]) == ["30B", "23B", "12B"]
    for budget in ("23B", "12B"):
        api.extract(parent, budget, tmp_path / f"again-{budget}")
        assert _shards(tmp_path / f"again-{budget}") == _shards(tmp_path / budget), budget
    assert run_cli("index", parent, "--from-config", f"12B={tmp_path / '12B'}", "--write-into").code == 2


def test_index_finds_dropped_layers(axis_parents: dict[str, Path], tmp_path: Path) -> None:
    api.extract(axis_parents["active"], "layers", tmp_path / "shallow")  # keeps 0, 2, 3, 5, 7 of ME*-ME*M
    document = api.derive_index(axis_parents["active"], {"shallow": tmp_path / "shallow"})
    assert document["budgets"]["shallow"] == {"layers": [0, 2, 3, 5, 7]}
    config = json.loads((tmp_path / "shallow" / "config.json").read_text())
    config["layers_block_type"] = ["linear_attention", "moe"]  # ME fits ME*-ME*M in several ways
    (tmp_path / "shallow" / "config.json").write_text(json.dumps(config))
    result = run_cli("index", axis_parents["active"], "--from-config", f"x={tmp_path / 'shallow'}")
    assert result.code == 2 and "several ways" in result.stderr and "'layers'" in result.stderr


def test_set_budget_equals_index_budget(tiny_parent: Path, tmp_path: Path) -> None:
    sizes = json.loads((tiny_parent / "nesting_index.json").read_text())["budgets"]["12B"]
    args = [a for axis, value in sizes.items() for a in ("--set", f"{axis}={value}")]
    result = run_cli("extract", tiny_parent, *args, "--out", tmp_path / "set")
    assert result.code == 0, result.stderr
    api.extract(tiny_parent, "12B", tmp_path / "index")
    assert _shards(tmp_path / "set") == _shards(tmp_path / "index")
    card = (tmp_path / "set" / "README.md").read_text()
    assert "budget `custom`" in card and "not necessarily trained" in card
    manifest = json.loads((tmp_path / "set" / "elastic_slice_manifest.json").read_text())
    assert manifest["options"]["set"] == sizes and manifest["budget"]["name"] == "custom"


def test_set_on_top_of_a_budget_and_without_index(tiny_parent: Path, tmp_path: Path) -> None:
    result = run_cli("extract", tiny_parent, "--size", "12B", "--set", "hidden_size=80", "--out", tmp_path / "a", "--json")
    assert result.code == 0, result.stderr
    data = result.json()
    assert data["budget"] == "12B-custom" and data["sizes"]["hidden_size"] == 80
    assert data["sizes"]["mamba_num_heads"] == 8
    parent = tmp_path / "no-index"
    shutil.copytree(tiny_parent, parent)
    (parent / "nesting_index.json").unlink()
    assert run_cli("extract", parent, "--set", "n_routed_experts=8", "--out", tmp_path / "b").code == 0


@pytest.mark.parametrize(
    "args, words",
    [
        (["--set", "hidden_size"], ("axis=value",)),
        (["--set", "hidden_size=big"], ("integer",)),
        (["--set", "hidden=64"], ("'hidden'", "unknown axis")),
        (["--set", "mamba_num_heads=6"], ("'mamba_num_heads'", "n_groups")),
        (["--all", "--set", "hidden_size=64"], ("one budget",)),
    ],
)
def test_set_errors(tiny_parent: Path, tmp_path: Path, args: list[str], words: tuple[str, ...]) -> None:
    result = run_cli("extract", tiny_parent, *args, "--out", tmp_path / "o")
    assert result.code == 2, result.stderr
    for word in words:
        assert word in result.stderr
    assert not (tmp_path / "o").exists()
