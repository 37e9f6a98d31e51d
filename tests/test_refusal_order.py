"""Refusals that need no calibration come before calibration is announced or run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import add_budgets, run_cli

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
