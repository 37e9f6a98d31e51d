"""`inspect` shows every budget; `extract --dry-run` prints the plan and writes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import add_budgets, load_tensors, run_cli
from elastic_slice import api


def test_inspect_table(tiny_parent: Path) -> None:
    result = run_cli("inspect", tiny_parent)
    assert result.code == 0, result.stderr
    for text in ("nemotron_h", "30B (parent)", "23B", "12B", "total params", "active params", "size nvfp4",
                 "mamba_num_heads", "BF16", "3 / 117"):
        assert text in result.stdout, text


def test_inspect_json_matches_extracted_children(tiny_parent: Path, tmp_path: Path) -> None:
    data = run_cli("inspect", tiny_parent, "--json").json()
    assert data["model_type"] == "nemotron_h" and data["shards"] == 3 and data["problems"] == []
    assert data["quantization"] == "none" and data["dtype"] == "BF16"
    budgets = {b["name"]: b for b in data["budgets"]}
    assert budgets["30B"]["is_parent"] and not budgets["12B"]["is_parent"]
    assert budgets["12B"]["sizes"]["hidden_size"] == 96
    parent_bytes = sum(t.numel() * t.element_size() for t in load_tensors(tiny_parent).values())
    assert budgets["30B"]["bytes"]["bf16"] == parent_bytes == data["total_bytes"]
    for name, budget in budgets.items():
        result = api.extract(tiny_parent, name, tmp_path / name)
        assert budget["params_total"] == result.params_total
        assert budget["bytes"]["bf16"] == result.bytes
        assert budget["bytes"]["nvfp4"] < budget["bytes"]["fp8"] < budget["bytes"]["bf16"]
    # the parameter ratios mirror the release's 30B : 23B : 12B
    assert 0.72 < budgets["23B"]["params_total"] / budgets["30B"]["params_total"] < 0.82
    assert 0.35 < budgets["12B"]["params_total"] / budgets["30B"]["params_total"] < 0.45
    assert budgets["12B"]["params_active"] < budgets["12B"]["params_total"]


def test_inspect_reports_problems_with_exit_code(tiny_parent: Path, tmp_path: Path) -> None:
    parent = tmp_path / "p"
    shutil.copytree(tiny_parent, parent)
    add_budgets(parent, bad={"mamba_num_heads": 6})
    result = run_cli("inspect", parent, "--json")
    assert result.code == 2
    data = result.json()
    assert [b["name"] for b in data["budgets"]] == ["30B", "23B", "12B"]
    assert len(data["problems"]) == 1 and "'bad'" in data["problems"][0] and "n_groups" in data["problems"][0]
    (parent / "nesting_index.json").unlink()
    human = run_cli("inspect", parent)
    assert human.code == 2 and "problem:" in human.stdout and "no nesting index" in human.stdout


def test_dry_run_prints_plan_and_writes_nothing(tiny_parent: Path, tmp_path: Path) -> None:
    out = tmp_path / "never"
    result = run_cli("extract", tiny_parent, "--size", "12B", "--out", out, "--dry-run")
    assert result.code == 0, result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert "backbone.layers.0.mixer.in_proj.weight" in result.stdout and "nothing written" in result.stdout
    plan = run_cli("extract", tiny_parent, "--size", "12B", "--dry-run", "--json").json()
    assert plan["budget"] == "12B" and plan["shards"] == ["model.safetensors"]
    by_name = {t["out_name"]: t for t in plan["tensors"]}
    in_proj = by_name["backbone.layers.0.mixer.in_proj.weight"]
    # z and x: 2 of 4 heads (16 channels each) in each of 4 groups; B and C whole; dt: 2 heads per group
    assert in_proj["selection"][0][:2] == [[0, 32], [64, 96]]
    assert in_proj["selection"][1] == [[0, 96]]
    assert in_proj["out_shape"] == [128 + 128 + 128 + 8, 96]
    assert "backbone.layers.1.mixer.experts.12.up_proj.weight" not in by_name
    assert plan["out_bytes"] == sum(
        t["out_shape"][0] * (t["out_shape"][1] if len(t["out_shape"]) > 1 else 1)
        * (t["out_shape"][2] if len(t["out_shape"]) > 2 else 1) * 2
        for t in plan["tensors"]
    )
