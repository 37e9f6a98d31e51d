"""Refusals that need no calibration come before calibration is announced or run, in the words of the command."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import add_budgets, run_cli, tree_hash

PER_LAYER_MOE = {"moe_intermediate_size": [None, 48, None, None, None, 16, None, None]}  # MoE layers 1 and 5


@pytest.fixture
def per_layer_parent(axis_parents: dict[str, Path], tmp_path: Path) -> Path:
    folder = Path(shutil.copytree(axis_parents["active"], tmp_path / "parent"))
    add_budgets(folder, **{"moe-per-layer": PER_LAYER_MOE})
    return folder


def test_nothing_to_quantize_refused_before_calibrating(tiny_parent: Path, tmp_path: Path) -> None:
    result = run_cli("extract", str(tiny_parent), "--size", "12B", "--quantize", "fp8", "--exclude", "*",
                     "--out", str(tmp_path / "child"))
    assert result.code == 2, result.stderr
    assert "leave no weight of budget '12B' to quantize" in result.stderr
    assert "calibrating" not in result.stderr
    assert not (tmp_path / "child").exists()


def test_per_layer_budget_with_quantize_refused_before_calibrating(per_layer_parent: Path, tmp_path: Path) -> None:
    result = run_cli("extract", str(per_layer_parent), "--size", "moe-per-layer", "--quantize", "fp8",
                     "--out", str(tmp_path / "child"))
    assert result.code == 2, result.stderr
    assert "has per-layer sizes" in result.stderr
    assert "calibrating" not in result.stderr


def test_quantize_names_the_per_layer_budget_in_its_own_terms(per_layer_parent: Path, tmp_path: Path) -> None:
    before = tree_hash(per_layer_parent)
    result = run_cli("quantize", str(per_layer_parent), "--quantize", "fp8", "--quant-format", "compressed-tensors",
                     "--out", str(tmp_path / "quantized"))
    assert result.code == 2, result.stderr
    assert "budget 'moe-per-layer' of the nesting index has per-layer sizes" in result.stderr
    assert "--index" in result.stderr and "extract it unquantized" not in result.stderr
    assert not (tmp_path / "quantized").exists()
    assert tree_hash(per_layer_parent) == before
