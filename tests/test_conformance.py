"""The checks every registered architecture passes, on its own tiny parent (its family's FixtureBuilder).

A new family registered in `elastic_slice.arch.REGISTRY` gets these for free: every budget of its fixture plans and
is listed by `inspect --json`; every budget's output loads in plain transformers with no missing, unexpected or
mismatched weights; where the family has a masked forward, the child's logits equal the masked parent's; and FP8
quantization (compressed-tensors, uncalibrated: no calibration capability needed) gives outputs that verify.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from conftest import run_cli
from elastic_slice import api
from elastic_slice.arch import REGISTRY, get_architecture
from elastic_slice.checkpoint import open_checkpoint

TOKENS = torch.tensor([[5, 17, 99, 4, 250, 31, 7, 77, 123, 9, 41, 42, 43, 200, 8, 15, 16, 23, 42, 300, 11, 12]])


class Parent:
    """A family's tiny parent and the budgets its fixture wrote."""

    def __init__(self, model_type: str, root: Path, budgets: dict[str, dict[str, Any]]) -> None:
        self.model_type, self.root, self.budgets = model_type, root, budgets

    @property
    def parent_budget(self) -> str:
        return str(json.loads((self.root / "nesting_index.json").read_text())["parent"])


def _one_per_fixture() -> list[str]:
    """A model_type per fixture: a family registered under several model_types (gemma3n, gemma3n_text) shares one
    fixture, which builds a parent of one of them."""
    first: dict[int, str] = {}
    for model_type, family in sorted(REGISTRY.items()):
        first.setdefault(id(family.fixture), model_type)
    return sorted(first.values())


@pytest.fixture(scope="module", params=_one_per_fixture())
def parent(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Parent:
    fixture = REGISTRY[request.param].fixture
    root = tmp_path_factory.mktemp(f"conformance-{request.param}") / "parent"
    budgets = fixture.build(root, seed=0)
    model_type = open_checkpoint(root).model_type
    assert REGISTRY[model_type].fixture is fixture, model_type
    return Parent(model_type, root, budgets)


@pytest.fixture(scope="module")
def children(parent: Parent, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every budget of the fixture extracted (bf16, as stored)."""
    root = tmp_path_factory.mktemp(f"children-{parent.model_type}")
    return {budget: api.extract(parent.root, budget, root / budget).out for budget in parent.budgets}


def _logits(folder: Path, masked: dict[str, Any] | None = None, norm: str = "active") -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if masked is not None:
        forward = get_architecture(model.config.model_type).bind(model.config.to_dict()).masked_forward
        assert forward is not None
        forward.apply(model, masked, norm)
    vocab = model.config.get_text_config().vocab_size
    with torch.no_grad():
        return model(TOKENS % vocab, use_cache=False).logits


def test_fixture_writes_a_parent_of_the_family(parent: Parent) -> None:
    checkpoint = open_checkpoint(parent.root)
    assert checkpoint.model_type == parent.model_type
    assert parent.parent_budget in parent.budgets and len(parent.budgets) >= 2


def test_every_budget_plans_and_the_parent_budget_is_the_identity(parent: Parent) -> None:
    plans = api.plan_extract_many(parent.root, ["*"])
    assert sorted(plan.budget.name for plan in plans) == sorted(parent.budgets)
    tensors = open_checkpoint(parent.root).tensors
    for plan in plans:
        names = [op.out_name for op in plan.ops]
        assert len(names) == len(set(names)), plan.budget.name
        assert 0 < plan.params.active <= plan.params.total, plan.budget.name
        if plan.budget.is_parent:
            assert {op.out_name: op.out_shape for op in plan.ops} == {n: i.shape for n, i in tensors.items()}
        else:
            assert plan.params.total < sum(i.numel for i in tensors.values()), plan.budget.name


def test_inspect_json_lists_every_budget(parent: Parent) -> None:
    result = run_cli("inspect", parent.root, "--json")
    assert result.code == 0, result.stderr
    report = result.json()
    assert not report["problems"], report["problems"]
    assert sorted(budget["name"] for budget in report["budgets"]) == sorted(parent.budgets)


@pytest.mark.slow
def test_every_budget_loads_in_transformers_with_exactly_its_weights(parent: Parent, children: dict[str, Path]) -> None:
    for budget, folder in children.items():
        model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
        assert model.config.model_type == parent.model_type
        assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), (budget, info)


@pytest.mark.slow
def test_children_equal_the_masked_parent(parent: Parent, children: dict[str, Path]) -> None:
    bound = get_architecture(parent.model_type).bind(open_checkpoint(parent.root).config)
    if bound.masked_forward is None:
        pytest.skip(f"{parent.model_type} has no masked forward")
    index = json.loads((parent.root / "nesting_index.json").read_text())
    unmasked = _logits(parent.root)
    for budget, folder in children.items():
        sizes = api.plan_extract(parent.root, budget).budget.sizes
        reference = _logits(parent.root, sizes, index["norm_semantics"])
        diff = (_logits(folder) - reference).abs().max().item()
        assert diff < 1e-4, f"{parent.model_type} {budget}: max abs diff {diff}"
        if budget != parent.parent_budget:  # the comparison has teeth: the budget changes the function
            assert (unmasked - reference).abs().max().item() > 1e-3, budget


@pytest.mark.slow
def test_fp8_quantized_budgets_verify(parent: Parent, tmp_path: Path) -> None:
    options = api.QuantOptions("fp8", fmt="compressed-tensors")
    for budget in parent.budgets:
        out = tmp_path / budget
        api.extract(parent.root, budget, out, quantize=options)
        report = api.verify(out, parent=parent.root, size=budget)
        assert report.ok, (budget, report.problems)
        config = json.loads((out / "config.json").read_text())
        assert config["quantization_config"]["quant_method"] == "compressed-tensors"
        # not vacuous: linear weights are stored in FP8, and verify re-quantized and bounded each of them
        with safe_open(out / "model.safetensors", "pt") as handle:
            stored = [handle.get_slice(name).get_dtype() for name in handle.keys()]
        assert stored.count("F8_E4M3") >= 2, (budget, stored)
        assert any("quantized weights dequantized within the FP8 bound" in check for check in report.checks)
