"""Per-layer (heterogeneous) budgets: zero-padded exactly where possible, refused where not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import add_budgets, load_tensors, run_cli
from elastic_slice import api
from elastic_slice.arch.nemotron_h_torch import apply_masked_forward

# pattern ME*-ME*M: MoE layers 1 and 5, the dense MLP layer 3
PER_LAYER = {
    "hidden_size": 96,
    "n_routed_experts": [None, 12, None, None, None, 8, None, None],
    "moe_intermediate_size": [None, 48, None, None, None, 16, None, None],
    "moe_shared_expert_intermediate_size": [None, 64, None, None, None, 128, None, None],
    "intermediate_size": [None, None, None, 96, None, None, None, None],
}
TOKENS = torch.tensor([[5, 17, 99, 4, 250, 31, 7, 77, 123, 9, 41, 42, 43, 200, 8, 15, 16, 23, 42, 300]])


@pytest.fixture
def parent(axis_parents: dict[str, Path], tmp_path: Path) -> Path:
    folder = tmp_path / "parent"
    shutil.copytree(axis_parents["active"], folder)
    per_layer_mamba = {"mamba_num_heads": [8, None, None, None, 12, None, None, 16]}
    add_budgets(folder, hetero=PER_LAYER, **{"mamba-per-layer": per_layer_mamba})
    return folder


@pytest.mark.slow
def test_per_layer_budget_is_exact(parent: Path, tmp_path: Path) -> None:
    out = tmp_path / "child"
    api.extract(parent, "hetero", out)
    config = json.loads((out / "config.json").read_text())
    assert config["n_routed_experts"] == 12 and config["moe_intermediate_size"] == 48
    assert config["moe_shared_expert_intermediate_size"] == 128 and config["intermediate_size"] == 96
    card = (out / "README.md").read_text()
    assert "| `n_routed_experts` | 16 | per layer 8-12 (zero-padded to 12) |" in card, card
    assert "| `intermediate_size` | 192 | 96 per layer |" in card, card
    tensors = load_tensors(out)
    # layer 5 keeps 8 experts of 16 channels: the rest is zero, and its padded experts are never routed
    assert torch.count_nonzero(tensors["backbone.layers.5.mixer.experts.3.up_proj.weight"][16:]) == 0
    assert torch.count_nonzero(tensors["backbone.layers.5.mixer.experts.9.up_proj.weight"]) == 0
    assert (tensors["backbone.layers.5.mixer.gate.e_score_correction_bias"][8:] < -1e29).all()
    child = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    reference = AutoModelForCausalLM.from_pretrained(parent, dtype=torch.float32).eval()
    apply_masked_forward(reference, PER_LAYER, "active")
    with torch.no_grad():
        diff = (child(TOKENS, use_cache=False).logits - reference(TOKENS, use_cache=False).logits).abs().max().item()
    assert diff < 1e-4, diff


def test_non_paddable_per_layer_budget_is_refused(parent: Path, tmp_path: Path) -> None:
    result = run_cli("extract", parent, "--size", "mamba-per-layer", "--out", tmp_path / "o")
    assert result.code == 2 and "'mamba_num_heads'" in result.stderr and "cannot be represented exactly" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "value, words",
    [
        ([None, 12], ("8 entries",)),
        ([12, 12, None, None, None, 8, None, None], ("layer 0 is a Mamba layer",)),
        ([None, 1, None, None, None, 8, None, None], ("layer 1 needs an integer from 2 to 16",)),
    ],
)
def test_per_layer_rules(parent: Path, tmp_path: Path, value: list, words: tuple[str, ...]) -> None:
    add_budgets(parent, bad={"n_routed_experts": value})
    result = run_cli("extract", parent, "--size", "bad", "--out", tmp_path / "o")
    assert result.code == 2
    for word in words:
        assert word in result.stderr
