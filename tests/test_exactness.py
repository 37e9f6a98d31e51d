"""A child's logits equal the parent's masked forward for its budget, axis by axis and all together."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import AXIS_BUDGETS
from elastic_slice import api
from elastic_slice.arch.nemotron_h_torch import apply_masked_forward

pytestmark = pytest.mark.slow  # forward passes in transformers

TOKENS = torch.tensor([[5, 17, 99, 4, 250, 31, 7, 77, 123, 9, 41, 42, 43, 200, 8, 15, 16, 23, 42, 300, 11, 12]])


def _logits(folder: Path, budget_sizes: dict | None = None, norm: str = "active") -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if budget_sizes is not None:
        apply_masked_forward(model, budget_sizes, norm)
    with torch.no_grad():
        return model(TOKENS, use_cache=False).logits


@pytest.mark.parametrize("norm", ["active", "full"])
@pytest.mark.parametrize("budget", [name for name in AXIS_BUDGETS if name != "30B"])
def test_child_matches_masked_parent(axis_parents: dict[str, Path], tmp_path: Path, budget: str, norm: str) -> None:
    parent = axis_parents[norm]
    out = tmp_path / budget
    api.extract(parent, budget, out)
    child = _logits(out)
    reference = _logits(parent, AXIS_BUDGETS[budget], norm)
    unmasked = _logits(parent)
    diff = (child - reference).abs().max().item()
    assert diff < 1e-4, f"{budget}/{norm}: max abs diff {diff}"
    # the comparison has teeth: the budget really changes the function
    assert (unmasked - reference).abs().max().item() > 1e-2


def test_parent_budget_is_identity(axis_parents: dict[str, Path], tmp_path: Path) -> None:
    api.extract(axis_parents["active"], "30B", tmp_path / "p")
    assert torch.equal(_logits(tmp_path / "p"), _logits(axis_parents["active"]))
