"""Extracted folders are standalone Hugging Face models: they load with plain transformers and generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import add_budgets, load_tensors, run_cli
from elastic_slice import api


@pytest.mark.slow
@pytest.mark.parametrize("budget", ["30B", "23B", "12B"])
def test_budget_loads_and_generates(tiny_parent: Path, tmp_path: Path, budget: str) -> None:
    out = tmp_path / budget
    result = api.extract(tiny_parent, budget.lower(), out)
    assert result.budget == budget
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "The quick brown fox"}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )
    generated = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 6
    sizes = result.sizes
    assert model.config.hidden_size == sizes["hidden_size"]
    assert model.config.n_routed_experts == sizes["n_routed_experts"]
    assert sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for n, b in model.named_buffers() if "e_score_correction_bias" in n
    ) == result.params_total


def test_output_folder_layout(tiny_parent: Path, tmp_path: Path) -> None:
    out = tmp_path / "12b"
    result = api.extract(tiny_parent, "12B", out, max_shard_size="300KB", command="elastic-slice extract x")
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "README.md", "chat_template.jinja", "config.json", "elastic_slice_manifest.json", "generation_config.json",
        "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
        "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors",
        "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
    ]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    tensors = load_tensors(out)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert index["metadata"]["total_parameters"] == result.params_total
    assert set(index["weight_map"]) == set(tensors)
    for name, shard in index["weight_map"].items():
        with safe_open(str(out / shard), "pt") as handle:
            assert name in handle.keys()
    config = json.loads((out / "config.json").read_text())
    assert "nesting_index" not in config
    assert config["hidden_size"] == 96 and config["mamba_num_heads"] == 8
    card = (out / "README.md").read_text()
    assert "budget `12B`" in card and f"{result.params_total:,}" in card and "elastic-slice extract tiny" in card  # the checkpoint as named: its folder
    assert "base_model" not in card  # a local parent: the Hub would read its folder name as a repo id
    assert "No weights were retrained or changed: every value kept is the parent's, as it stored it." in card


def test_single_shard_has_no_index(tiny_parent: Path, tmp_path: Path) -> None:
    result = api.extract(tiny_parent, "12B", tmp_path / "one")
    assert result.shards == ["model.safetensors"]
    assert not (tmp_path / "one" / "model.safetensors.index.json").exists()


@pytest.mark.slow
def test_depth_cut_renumbers_layers(axis_parents: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "shallow"
    api.extract(axis_parents["active"], "layers", out)
    config = json.loads((out / "config.json").read_text())
    assert config["layers_block_type"] == ["linear_attention", "full_attention", "mlp", "moe", "linear_attention"]
    names = load_tensors(out)
    assert max(int(n.split(".")[2]) for n in names if n.startswith("backbone.layers.")) == 4
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 5


@pytest.mark.slow
def test_hybrid_override_pattern_configs_are_cut_too(tiny_parent: Path, tmp_path: Path) -> None:
    """Hub configs of NVIDIA's releases spell the layers as `hybrid_override_pattern`."""
    parent = tmp_path / "legacy"
    parent.mkdir()
    for path in tiny_parent.iterdir():
        (parent / path.name).write_bytes(path.read_bytes())
    config = json.loads((parent / "config.json").read_text())
    config.pop("layers_block_type")
    config["hybrid_override_pattern"] = "ME*-ME*M"
    config["num_hidden_layers"] = 8
    (parent / "config.json").write_text(json.dumps(config))
    add_budgets(parent, short={"layers": [0, 1, 2, 3, 4, 5]})
    api.extract(parent, "short", tmp_path / "out")
    child = json.loads((tmp_path / "out" / "config.json").read_text())
    assert child["hybrid_override_pattern"] == "ME*-ME" and child["num_hidden_layers"] == 6
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.layers_block_type == ["linear_attention", "moe", "full_attention", "mlp", "linear_attention", "moe"]


def test_output_is_deterministic(tiny_parent: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        api.extract(tiny_parent, "23B", tmp_path / name, max_shard_size="500KB", command="same")
    for path in (tmp_path / "a").iterdir():
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name


def test_cli_extract_summary_and_json(tiny_parent: Path, tmp_path: Path) -> None:
    result = run_cli("extract", tiny_parent, "--size", "12B", "--out", tmp_path / "o")
    assert result.code == 0, result.stderr
    assert "budget 12B" in result.stdout and "GB/s" in result.stdout
    as_json = run_cli("extract", tiny_parent, "--size", "12B", "--out", tmp_path / "j", "--json")
    data = as_json.json()
    assert data["budget"] == "12B" and data["tensors"] == len(load_tensors(tmp_path / "j"))
    assert torch.equal(load_tensors(tmp_path / "o")["lm_head.weight"], load_tensors(tmp_path / "j")["lm_head.weight"])


def test_index_inside_config(tmp_path: Path) -> None:
    from elastic_slice.arch.nemotron_h_fixture import build_tiny_elastic

    parent = build_tiny_elastic(tmp_path / "p", index_in_config=True, with_tokenizer=False)
    assert not (parent / "nesting_index.json").exists()
    report = api.inspect(parent)
    assert [b.name for b in report.budgets] == ["30B", "23B", "12B"]
    assert report.index_source.endswith("config.json['nesting_index']")
    api.extract(parent, "12B", tmp_path / "c")
    assert "nesting_index" not in json.loads((tmp_path / "c" / "config.json").read_text())
