"""Every child tensor equals the parent tensor indexed by the spec's rule, computed independently here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import NemotronHConfig

from conftest import AXIS_BUDGETS, load_tensors
from elastic_slice import api
from reference import expected_child_tensors


def _check(parent: Path, budget: str, sizes: dict, norm: str, out: Path, dtype: str | None = None) -> None:
    api.extract(parent, budget, out, dtype=dtype)
    cfg = NemotronHConfig.from_pretrained(parent)
    expected = expected_child_tensors(load_tensors(parent), cfg, sizes, norm)
    actual = load_tensors(out)
    assert sorted(actual) == sorted(expected), "missing or extra tensors"
    for name, tensor in expected.items():
        if dtype is not None and tensor.dtype != actual[name].dtype:
            tensor = tensor.to(actual[name].dtype)
        assert actual[name].dtype == tensor.dtype, name
        assert torch.equal(actual[name], tensor), name


@pytest.mark.parametrize("budget", ["30B", "23B", "12B"])
def test_release_budgets_tensor_exact(tiny_parent: Path, tmp_path: Path, budget: str) -> None:
    sizes = json.loads((tiny_parent / "nesting_index.json").read_text())["budgets"][budget]
    _check(tiny_parent, budget, sizes, "active", tmp_path / budget)


@pytest.mark.parametrize("norm", ["active", "full"])
@pytest.mark.parametrize("budget", list(AXIS_BUDGETS))
def test_axis_budgets_tensor_exact(axis_parents: dict[str, Path], tmp_path: Path, budget: str, norm: str) -> None:
    _check(axis_parents[norm], budget, AXIS_BUDGETS[budget], norm, tmp_path / budget)


def test_dtype_conversion(tiny_parent: Path, tmp_path: Path) -> None:
    api.extract(tiny_parent, "12B", tmp_path / "fp32", dtype="fp32")
    api.extract(tiny_parent, "12B", tmp_path / "bf16")
    fp32, bf16 = load_tensors(tmp_path / "fp32"), load_tensors(tmp_path / "bf16")
    for name, tensor in fp32.items():
        if ".gate." in name:  # router tensors keep the parent's dtype: transformers runs them in fp32 anyway
            assert tensor.dtype == bf16[name].dtype, name
        else:
            assert tensor.dtype == torch.float32, name
        assert torch.equal(tensor.float(), bf16[name].float()), name
    assert json.loads((tmp_path / "fp32" / "config.json").read_text())["dtype"] == "float32"
