"""The gemma3n family: budget rules, KV-sharing refusals, child configs, towers, and exactness against the parent's
masked forward in transformers."""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from conftest import run_cli
from elastic_slice import api
from elastic_slice.arch import get_architecture
from elastic_slice.arch.gemma3n import BoundGemma3n
from elastic_slice.arch.gemma3n_fixture import TINY_BUDGETS, TINY_TEXT_CONFIG, build_tiny_gemma3n
from elastic_slice.arch.gemma3n_torch import apply_masked_forward
from elastic_slice.errors import InputError
from elastic_slice.nesting import BudgetError

TOKENS = torch.tensor([[5, 17, 99, 4, 250, 31, 7, 77, 123, 9, 41, 42, 43, 200, 8, 15, 16, 23, 42, 300, 11, 12]])


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gemma3n(tmp_path_factory.mktemp("gemma3n") / "parent")


def _bound(parent: Path) -> BoundGemma3n:
    config = json.loads((parent / "config.json").read_text())
    bound = get_architecture("gemma3n_text").bind(config)
    assert isinstance(bound, BoundGemma3n)
    return bound


def test_layer_skip_renumbers_every_per_layer_field(parent: Path) -> None:
    bound = _bound(parent)
    sizes = bound.resolve("E2-skip", TINY_BUDGETS["E2-skip"])
    assert sizes == {"intermediate_size": 64, "layers": [0, 1, 3, 4, 5, 8, 9]}
    assert bound.resolve("E3-ffn", TINY_BUDGETS["E3-ffn"])["intermediate_size"] == TINY_BUDGETS["E3-ffn"]["intermediate_size"]
    mixed = bound.resolve("b", {"layers": [0, 1, 2, 3, 4, 5], "intermediate_size": [64] * 5 + [32] + [None] * 4})
    assert mixed["intermediate_size"] == [64] * 5 + [32] + [None] * 4
    child = bound.child_config(sizes)
    assert child["num_hidden_layers"] == 7
    assert child["intermediate_size"] == [64] * 7
    assert child["layer_types"] == (["sliding_attention"] * 3 + ["full_attention"]) + ["sliding_attention"] * 2 + [
        "full_attention"
    ]
    assert child["activation_sparsity_pattern"] == [0.95, 0.95, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert child["num_kv_shared_layers"] == 2  # parent layers 8 and 9
    embed = bound.cut("model.embed_tokens_per_layer.weight", (288, 80), sizes, "active")
    assert embed is not None and embed.selection == (((0, 288),), ((0, 16), (24, 48), (64, 80)))
    projection = bound.cut("model.per_layer_model_projection.weight", (80, 64), sizes, "active")
    assert projection is not None and projection.selection == (((0, 16), (24, 48), (64, 80)), ((0, 64),))
    gate = bound.cut("model.layers.8.mlp.gate_proj.weight", (128, 64), sizes, "active")
    assert gate is not None and gate.out_name == "model.layers.5.mlp.gate_proj.weight"
    assert gate.selection == (((0, 64),), ((0, 64),))
    assert bound.cut("model.layers.2.mlp.up_proj.weight", (128, 64), sizes, "active") is None
    # a KV-sharing layer's key/value weights are never read by transformers: not written
    assert bound.cut("model.layers.8.self_attn.k_proj.weight", (32, 64), sizes, "active") is None
    assert bound.cut("model.layers.5.self_attn.k_proj.weight", (32, 64), sizes, "active") is not None


@pytest.mark.parametrize(("layers", "producer"), [([0, 1, 2, 3, 4, 6, 7, 8, 9], 5), ([0, 1, 2, 3, 5, 9], 4)])
def test_skipping_a_kv_producer_is_refused(parent: Path, layers: list[int], producer: int) -> None:
    with pytest.raises(BudgetError, match=f"reuses the keys and values of layer {producer} \\(KV sharing\\)"):
        _bound(parent).resolve("b", {"layers": layers})


def test_skipping_every_sharing_layer_turns_sharing_off(parent: Path) -> None:
    bound = _bound(parent)
    child = bound.child_config(bound.resolve("b", {"layers": [0, 1, 2, 3, 4, 5]}))
    assert child["num_kv_shared_layers"] == 0 and child["num_hidden_layers"] == 6


@pytest.mark.parametrize(("requested", "message"), [
    ({"hidden_size": 32}, "unknown axis; gemma3n_text axes are intermediate_size, layers"),
    ({"intermediate_size": 256}, "layer 0 needs an integer from 1 to the parent's 128, not 256"),
    ({"intermediate_size": [64] * 9}, "needs 10 entries"),
    ({"intermediate_size": [64] * 9 + [True]}, "layer 9 needs an integer"),
    ({"layers": [0, 0, 1]}, "sorted, unique"),
    ({"layers": [0, 1, 2, 3, 4, 5], "intermediate_size": [64] * 6 + ["x"] * 4}, "layer 6 is skipped"),
    ({"layers": [0, 1, 2, 3, 4, 5], "intermediate_size": [64] * 6 + [-5] * 4},
     "layer 6 is skipped: its entry must be null, not -5"),
    ({"layers": [0, 1, 2, 3, 4, 5], "intermediate_size": [64] * 7 + [None] * 3},
     "layer 6 is skipped: its entry must be null, not 64"),
])
def test_bad_budgets_are_named(parent: Path, requested: dict[str, Any], message: str) -> None:
    with pytest.raises(BudgetError, match="budget 'b'") as caught:
        _bound(parent).resolve("b", requested)
    assert message in str(caught.value)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("intermediate_size", [128] * 9, "'intermediate_size' has 9 entries"),
    ("num_kv_shared_layers", 10, "'num_kv_shared_layers' must be an integer from 0 to 9"),
    ("layer_types", ["sliding_attention"] * 9 + ["chunked"], "'layer_types' may hold only"),
    ("activation_sparsity_pattern", [1.5] * 10, "'activation_sparsity_pattern' must hold numbers"),
    ("num_hidden_layers", 10**9, "at most 1024"),
    ("layer_types", ["full_attention"] * 6 + ["sliding_attention"] * 4, "no earlier layer of its type"),
    ("altup_active_idx", 7, "'altup_active_idx' must be an integer from 0 to 3, not 7"),
    ("altup_active_idx", 4, "'altup_active_idx' must be an integer from 0 to 3"),
    ("altup_active_idx", -1, "'altup_active_idx' must be an integer from 0 to 3"),
    ("altup_active_idx", True, "'altup_active_idx' must be an integer from 0 to 3"),
    ("altup_active_idx", "0", "'altup_active_idx' must be an integer from 0 to 3"),
])
def test_bad_configs_name_the_field(parent: Path, field: str, value: Any, message: str) -> None:
    config = json.loads((parent / "config.json").read_text())
    config[field] = value
    with pytest.raises(InputError, match="config.json") as caught:
        get_architecture("gemma3n_text").bind(config)
    assert message in str(caught.value)


def test_claims_checked_against_tensors(parent: Path) -> None:
    bound = _bound(parent)
    shapes = {f"model.layers.{i}.input_layernorm.weight": (64,) for i in range(9)}
    with pytest.raises(InputError, match="'num_hidden_layers' is 10, but the checkpoint's tensors hold 9 layers"):
        bound.check_claims(shapes)


def _parent_shapes(parent: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(parent / "model.safetensors"), "pt") as handle:
        return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118


HUGE = 100_000_000_000


@pytest.mark.parametrize(("field", "value"), [
    ("altup_num_inputs", HUGE),
    ("altup_num_inputs", 5),
    ("num_hidden_layers", 1000),
    ("laurel_rank", HUGE),
    ("hidden_size_per_layer_input", HUGE),
    ("hidden_size", HUGE),
    ("vocab_size", HUGE),
    ("vocab_size_per_layer_input", HUGE),
    ("head_dim", HUGE),
    ("num_attention_heads", HUGE),
    ("num_key_value_heads", HUGE),
    ("intermediate_size", [128] * 9 + [HUGE]),
    ("intermediate_size", HUGE),
])
def test_huge_counts_are_checked_against_the_tensors(parent: Path, field: str, value: Any) -> None:
    """Every count that sizes a loop or a tensor is compared with the tensors before anything is built from it."""
    config = json.loads((parent / "config.json").read_text())
    config[field] = value
    if field == "num_hidden_layers":
        config.update(intermediate_size=128, layer_types=None, activation_sparsity_pattern=0.0)
    bound = get_architecture("gemma3n_text").bind(config)
    with pytest.raises(InputError, match=f"config.json field '{field}'"):
        bound.check_claims(_parent_shapes(parent))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("num_hidden_layers", HUGE, "at most 1024"),
    ("num_kv_shared_layers", HUGE, "'num_kv_shared_layers' must be an integer from 0 to 9"),
])
def test_huge_counts_refused_when_bound(parent: Path, field: str, value: Any, message: str) -> None:
    config = json.loads((parent / "config.json").read_text())
    config[field] = value
    with pytest.raises(InputError, match=message):
        get_architecture("gemma3n_text").bind(config)


def test_inspect_refuses_a_huge_altup_claim_quickly(parent: Path, tmp_path: Path) -> None:
    hostile = Path(shutil.copytree(parent, tmp_path / "hostile"))
    config = json.loads((parent / "config.json").read_text())
    config["altup_num_inputs"] = HUGE
    (hostile / "config.json").write_text(json.dumps(config))
    started = time.monotonic()
    result = run_cli("inspect", str(hostile))
    assert result.code == 2, result.stderr
    assert "config.json field 'altup_num_inputs' is 100000000000, but the checkpoint holds 3" in result.stdout + result.stderr
    assert time.monotonic() - started < 30  # the old code built 10^11 names (17 GB) before any check


def test_set_takes_null_for_a_skipped_layer(parent: Path, tmp_path: Path) -> None:
    widths = "[64,64,64,64,64,32,null,null,null,null]"
    result = run_cli("extract", str(parent), "--set", "layers=0-5", "--set", f"intermediate_size={widths}",
                     "--out", str(tmp_path / "child"))
    assert result.code == 0, result.stderr
    config = json.loads((tmp_path / "child" / "config.json").read_text())
    assert config["num_hidden_layers"] == 6 and config["intermediate_size"] == [64] * 5 + [32]
    refused = run_cli("extract", str(parent), "--set", "layers=0-5", "--set", f"intermediate_size={widths[:-5]}-5]",
                      "--out", str(tmp_path / "refused"))
    assert refused.code == 2 and "layer 9 is skipped: its entry must be null, not -5" in refused.stderr


def test_full_norm_refusal_names_the_budget_cut_and_the_reason(parent: Path, tmp_path: Path) -> None:
    full = Path(shutil.copytree(parent, tmp_path / "full"))
    index = json.loads((full / "nesting_index.json").read_text())
    index["norm_semantics"] = "full"
    index["budgets"]["dense-only"] = {"intermediate_size": [128] * 3 + [64] * 7}  # narrows only non-sparse layers
    (full / "nesting_index.json").write_text(json.dumps(index))
    shown = run_cli("inspect", str(full))
    assert shown.code == 2
    output = shown.stdout + shown.stderr
    assert "narrows the feed-forward channels of sparse layers 0 (64 of 128), 1 (96 of 128):" in output  # E3-ffn
    assert "sparse layers 0 (64 of 128), 1 (64 of 128):" in output  # E2-skip (layer 2 skipped)
    assert "no norm over those channels to fold" in output and "correct_output_scale" not in output
    assert "budget 'E3-ffn': " in " ".join(output.split()) and "budget 'E2-skip': " in " ".join(output.split())
    refused = run_cli("extract", str(full), "--size", "E3-ffn", "--out", str(tmp_path / "refused"))
    assert refused.code == 2 and refused.stderr.startswith("error: budget 'E3-ffn': norm_semantics \"full\"")
    assert not (tmp_path / "refused").exists()
    dense = run_cli("extract", str(full), "--size", "dense-only", "--out", str(tmp_path / "dense"))
    assert dense.code == 0, dense.stderr


def test_sizes_read_back_from_a_child_config(parent: Path) -> None:
    bound = _bound(parent)
    ffn = bound.child_config(bound.resolve("E3-ffn", TINY_BUDGETS["E3-ffn"]))
    assert bound.sizes_from_child_config(ffn, "E3-ffn") == TINY_BUDGETS["E3-ffn"]
    skip = bound.child_config(bound.resolve("E2-skip", TINY_BUDGETS["E2-skip"]))
    with pytest.raises(BudgetError, match="fit in several ways"):  # sliding layers 0-3 are interchangeable
        bound.sizes_from_child_config(skip, "E2-skip")


@pytest.mark.parametrize(("args", "message"), [
    (("--size", "5e5"), "budget '5e5' is not in the nesting index"),
    (("--size", "3B"), "budget '3B' is not in the nesting index"),
    (("--target-params", "3e5"), "any-size budgets"),
    (("--active-params", "3e5"), "any-size budgets"),
])
def test_any_size_budgets_refused(parent: Path, tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = run_cli("extract", str(parent), *args, "--out", str(tmp_path / "child"))
    assert result.code == 2
    assert message in result.stderr and "are unsupported for the gemma3n family" in result.stderr
    assert "in between" not in result.stderr and not (tmp_path / "child").exists()


def _multimodal(parent: Path, out: Path) -> Path:
    """The tiny parent laid out as a Gemma3nForConditionalGeneration checkpoint, with stand-in tower tensors."""
    out.mkdir()
    with safe_open(parent / "model.safetensors", "pt") as handle:
        tensors = {name.replace("model.", "model.language_model.", 1): handle.get_tensor(name) for name in handle.keys()}
    generator = torch.Generator().manual_seed(1)
    tensors["model.vision_tower.timm_model.conv_stem.conv.weight"] = torch.randn(8, 3, 3, 3, generator=generator)
    tensors["model.audio_tower.conformer.0.ffw_layer_start.ffw_layer_1.weight"] = torch.randn(16, 8, generator=generator)
    tensors["model.embed_vision.embedding_projection.weight"] = torch.randn(64, 8, generator=generator)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    text = json.loads((parent / "config.json").read_text())
    config = {"model_type": "gemma3n", "architectures": ["Gemma3nForConditionalGeneration"], "text_config": text,
              "vision_config": {"model_type": "gemma3n_vision"}, "audio_config": {"model_type": "gemma3n_audio"}}
    (out / "config.json").write_text(json.dumps(config))
    index = json.loads((parent / "nesting_index.json").read_text())
    (out / "nesting_index.json").write_text(json.dumps({**index, "architecture": "gemma3n"}))
    return out


def test_multimodal_towers_are_copied_unchanged(parent: Path, tmp_path: Path) -> None:
    source = _multimodal(parent, tmp_path / "mm")
    out = tmp_path / "child"
    api.extract(source, "E2-skip", out)
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["num_hidden_layers"] == 7 and config["vision_config"] == {"model_type": "gemma3n_vision"}
    with safe_open(source / "model.safetensors", "pt") as before, safe_open(out / "model.safetensors", "pt") as after:
        names = set(after.keys())
        for name in before.keys():
            if name.startswith(("model.vision_tower.", "model.audio_tower.", "model.embed_vision.")):
                assert torch.equal(before.get_tensor(name), after.get_tensor(name))
        assert "model.language_model.layers.6.mlp.down_proj.weight" in names
        assert "model.language_model.layers.7.mlp.down_proj.weight" not in names
        assert after.get_tensor("model.language_model.layers.5.mlp.down_proj.weight").shape == (64, 64)
    card = " ".join((out / "README.md").read_text().split())
    assert "loading this layout in transformers was not checked" in card  # the tests load the text-only layout
    from elastic_slice.api import QuantOptions

    quantized = tmp_path / "fp8"
    api.extract(source, "E2-skip", quantized, quantize=QuantOptions("fp8", "compressed-tensors"))
    card = " ".join((quantized / "README.md").read_text().split())
    assert "(checked on the text-only layout, not this one)" in card and "runs (checked)" not in card


# ----- transformers: the child loads cleanly and equals the masked parent -----------------------------------------
def _logits(folder: Path, sizes: dict[str, Any] | None = None) -> torch.Tensor:
    model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    if sizes is None:
        assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    else:
        apply_masked_forward(model, sizes, "active")
    with torch.no_grad():
        return model.eval()(TOKENS, use_cache=False).logits


@pytest.mark.slow
@pytest.mark.parametrize("budget", ["E3-ffn", "E2-skip"])
def test_child_matches_masked_parent(parent: Path, tmp_path: Path, budget: str) -> None:
    api.extract(parent, budget, tmp_path / budget)
    config = json.loads((tmp_path / budget / "config.json").read_text())
    assert config["model_type"] == "gemma3n_text"
    child = _logits(tmp_path / budget)
    reference = _logits(parent, copy.deepcopy(TINY_BUDGETS[budget]))
    diff = (child - reference).abs().max().item()
    assert diff < 1e-4, f"{budget}: max abs diff {diff}"
    # the comparison has teeth: the budget really changes the function
    assert (_logits(parent, {}) - reference).abs().max().item() > 1e-2


@pytest.mark.slow
def test_sparsity_statistics_are_over_kept_channels(parent: Path, tmp_path: Path) -> None:
    """Cutting only sparse layer 0: the reference with statistics over all 128 channels (zeros included) differs
    from the child, the one over the kept 64 matches it."""
    sizes = {"intermediate_size": [64] + [128] * 9}
    index = tmp_path / "index.json"
    document = json.loads((parent / "nesting_index.json").read_text())
    document["budgets"]["sparse0"] = sizes
    index.write_text(json.dumps(document))
    api.extract(parent, "sparse0", tmp_path / "child", index=index)
    child = _logits(tmp_path / "child")
    assert (child - _logits(parent, sizes)).abs().max().item() < 1e-4
    zeroed = AutoModelForCausalLM.from_pretrained(parent, dtype=torch.float32).eval()
    with torch.no_grad():
        mlp = zeroed.model.layers[0].mlp
        mlp.gate_proj.weight[64:] = 0
        mlp.up_proj.weight[64:] = 0
        full_width = zeroed(TOKENS, use_cache=False).logits
    assert (child - full_width).abs().max().item() > 1e-3


def test_parent_budget_keeps_config(parent: Path) -> None:
    bound = _bound(parent)
    assert bound.parent_sizes() == {"intermediate_size": 128, "layers": list(range(10))}
    child = bound.child_config(bound.resolve("E4", {}))
    assert child["intermediate_size"] == TINY_TEXT_CONFIG["intermediate_size"]


def test_e4b_preset_matches_by_fingerprint_and_gives_the_published_e2b() -> None:
    """transformers' Gemma3nTextConfig defaults are E4B's shape: the preset matches it, every budget resolves, and
    E2B's child config is the official E2B's shape (30 layers, 8192 channels, 10 KV-sharing layers)."""
    from transformers import Gemma3nTextConfig

    from elastic_slice.nesting import parse_index
    from elastic_slice.preset import match_preset

    text = Gemma3nTextConfig().to_dict()
    config = {"model_type": "gemma3n", "text_config": text}
    preset = match_preset(config)
    assert preset is not None and "google/gemma3n-slicing-configs" in preset.source
    index = parse_index(preset.index, preset.file)
    assert len(index.budgets) == 16  # the table's 16 rows, Main model as the parent E4B
    assert {"E2.98B-layer-level", "E2.98B-block-level"} <= set(index.budgets)
    bound = get_architecture("gemma3n").bind(config)
    for name, requested in index.budgets.items():
        bound.resolve(name, requested)
    e2b = bound.child_config(bound.resolve("E2B", index.budgets["E2B"]))["text_config"]
    assert e2b["num_hidden_layers"] == 30 and e2b["intermediate_size"] == [8192] * 30
    assert e2b["num_kv_shared_layers"] == 10 and e2b["activation_sparsity_pattern"][:11] == [0.95] * 10 + [0.0]
    assert match_preset({"model_type": "gemma3n", "text_config": {**text, "num_hidden_layers": 30}}) is None


#: budget -> (our total, our active, the table's `# Effective Params (B)`), measured on the real E4B text shapes
#: (transformers' Gemma3nTextConfig defaults: vocab 262,400, per-layer vocab 262,144, 35 layers, built on meta)
E4B_COUNTS = {
    "E4B": (6_835_235_568, 4_486_425_328, 3.98),
    "E2B": (4_435_182_688, 2_421_916_768, 1.91),
    "E1.96B-layer-level": (4_485_514_336, 2_472_248_416, 1.96),
    "E2.54B-layer-level": (5_375_617_776, 3_026_807_536, 2.54),
    "E2.98B-layer-level": (5_828_602_608, 3_479_792_368, 2.98),
    "E3.79B-layer-level": (6_633_908_976, 4_285_098_736, 3.79),
    "E2.49B-block-level": (5_325_286_128, 2_976_475_888, 2.49),
    "E3.79B-block-level": (6_583_577_328, 4_234_767_088, 3.74),
}
#: the token embedding (tied to lm_head): 262,400 x 2,048
E4B_TOKEN_EMBEDDING = 537_395_200


def test_active_leaves_out_the_per_layer_table_and_the_towers() -> None:
    bound = get_architecture("gemma3n").bind({"model_type": "gemma3n", "text_config": TINY_TEXT_CONFIG})
    shapes = {
        "model.language_model.embed_tokens_per_layer.weight": (288, 80),
        "model.language_model.embed_tokens.weight": (320, 64),
        "model.vision_tower.timm_model.conv_stem.weight": (3, 5),
        "model.embed_audio.embedding.weight": (7, 64),
    }
    counts = bound.count_parameters(shapes, {})
    assert (counts.total, counts.active) == (288 * 80 + 320 * 64 + 15 + 7 * 64, 320 * 64)


def test_e4b_parameter_counts_against_the_published_effective_params() -> None:
    """Active = the text decoder without the per-layer embedding table. Google's column also leaves out the token
    embedding, and then lies 0.025-0.051B above our count, more than its 2-decimal rounding explains (documented in
    docs/gemma3n.md): the bound is that measured gap, not a rounding tolerance."""
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

    from elastic_slice.nesting import parse_index
    from elastic_slice.preset import match_preset

    text = Gemma3nTextConfig()
    with torch.device("meta"):
        model = Gemma3nForCausalLM(text)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert math.prod(shapes["model.embed_tokens.weight"]) == E4B_TOKEN_EMBEDDING
    bound = get_architecture("gemma3n_text").bind({**text.to_dict(), "model_type": "gemma3n_text"})
    bound.check_claims(shapes)
    preset = match_preset({"model_type": "gemma3n", "text_config": text.to_dict()})
    assert preset is not None
    index = parse_index(preset.index, preset.file)
    for name, (total, active, effective) in E4B_COUNTS.items():
        sizes = bound.resolve(name, index.budgets[name])
        cuts = [bound.cut(n, shape, sizes, "active") for n, shape in shapes.items()]
        child = {c.out_name: tuple(sum(b - a for a, b in r) for r in c.selection) for c in cuts if c is not None}
        counts = bound.count_parameters(child, bound.child_config(sizes))
        assert (counts.total, counts.active) == (total, active), name
        assert counts.total - counts.active == 262_144 * 256 * len(sizes["layers"])  # the per-layer table
        gap = effective - (active - E4B_TOKEN_EMBEDDING) / 1e9
        assert 0.02 < gap < 0.055, (name, gap)


def test_e4b_preset_does_not_match_its_own_children() -> None:
    """A 35-layer child with E2.54B's widths has E4B's other fingerprint fields: the FFN widths tell it apart."""
    from transformers import Gemma3nTextConfig

    from elastic_slice.nesting import parse_index
    from elastic_slice.preset import match_preset

    text = Gemma3nTextConfig().to_dict()
    preset = match_preset({"model_type": "gemma3n", "text_config": text})
    assert preset is not None
    bound = get_architecture("gemma3n").bind({"model_type": "gemma3n", "text_config": text})
    index = parse_index(preset.index, preset.file)
    for name, requested in index.budgets.items():
        child = bound.child_config(bound.resolve(name, requested))
        assert (match_preset(child) is None) == (name != "E4B"), name
    e254b = bound.child_config(bound.resolve("E2.54B-layer-level", index.budgets["E2.54B-layer-level"]))
    assert e254b["text_config"]["num_hidden_layers"] == 35 and match_preset(e254b) is None


@pytest.mark.slow
@pytest.mark.parametrize(("scheme", "code_dtype"), [("fp8", "F8_E4M3"), ("nvfp4", "U8")])
def test_compressed_tensors_output_quantizes_attention_and_mlp_only_and_runs_in_transformers(
    parent: Path, tmp_path: Path, scheme: str, code_dtype: str
) -> None:
    """Only the attention and MLP projections are quantized; transformers (with compressed-tensors) loads the output
    with no missing or unexpected weights and computes what the project's own dequantized weights compute, so the
    card may name transformers (gemma3n has no routed experts, the part transformers gets wrong for NVFP4)."""
    from elastic_slice.api import QuantOptions
    from elastic_slice.checkpoint import open_checkpoint
    from elastic_slice.verify import dequantized_copy

    out = tmp_path / scheme
    api.extract(parent, "E2-skip", out, quantize=QuantOptions(scheme, "compressed-tensors"))
    with safe_open(out / "model.safetensors", "pt") as handle:
        dtypes = {name: str(handle.get_slice(name).get_dtype()) for name in handle.keys()}
    quantized = {name.rsplit(".", 2)[-2] for name, dtype in dtypes.items() if dtype == code_dtype}
    mlp = {"gate_proj", "up_proj", "down_proj"}  # the broad recipe (gemma3n's default): NVFP4 keeps attention bf16
    assert quantized == (mlp if scheme == "nvfp4" else mlp | {"q_proj", "k_proj", "v_proj", "o_proj"})
    ignore = json.loads((out / "config.json").read_text())["quantization_config"]["ignore"]
    assert "re:.*lm_head$" in ignore  # tied to the embedding: never quantized
    assert any("laurel" in entry for entry in ignore) and any("altup" in entry for entry in ignore)
    # NVFP4 (weight-only) runs in bf16 and equals the dequantized weights; FP8 also quantizes activations
    # (dynamic, per tensor), which the weight-only reference leaves out: within verify's FP8 tolerance
    dtype = torch.bfloat16 if scheme == "nvfp4" else torch.float32
    model, info = AutoModelForCausalLM.from_pretrained(out, dtype=dtype, output_loading_info=True)
    assert not any(info.values()), info
    reference = AutoModelForCausalLM.from_pretrained(
        dequantized_copy(open_checkpoint(out), tmp_path / "dequantized"), dtype=dtype
    )
    tokens = torch.randint(0, 200, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, expected = model.eval()(tokens).logits.float(), reference.eval()(tokens).logits.float()
    error = float((logits - expected).abs().max()) / float(expected.abs().max())
    assert error < (1e-3 if scheme == "nvfp4" else 0.5), error
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "routed-expert" not in card and "and runs" in card
    assert "Not quantized: the broad recipe: lm_head and the attention projections" in card or scheme == "fp8"
    assert "the module kinds elastic-slice never quantizes: altup, embedding, laurel" in card
    assert "NVIDIA" not in card
    if scheme == "nvfp4":  # the card's warning: float32 loading fails in transformers 5.24 + compressed-tensors
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        with pytest.raises(RuntimeError, match="same dtype"), torch.no_grad():
            model(tokens)


def test_recipe_defaults_to_broad_and_nvidia_is_refused(parent: Path, tmp_path: Path) -> None:
    """gemma3n has no vendor recipe: the default is broad, and asking for NVIDIA's is an input error."""
    from elastic_slice.api import QuantOptions

    with pytest.raises(InputError, match="has no vendor quantization recipe"):
        api.extract(parent, "E2-skip", tmp_path / "n", quantize=QuantOptions("fp8", "compressed-tensors", recipe="nvidia"))
    assert not (tmp_path / "n").exists()
    plan = api.plan_extract(parent, "E2-skip", quantize=QuantOptions("nvfp4", "compressed-tensors"))
    assert plan.quantization is not None and plan.quantization.recipe == "broad"


def test_calibrated_quantization_is_refused_clearly(
    parent: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from elastic_slice.api import QuantOptions

    with pytest.raises(InputError, match="cannot calibrate model_type 'gemma3n_text' yet"):
        api.extract(parent, "E2-skip", tmp_path / "nvfp4", quantize=QuantOptions("nvfp4"))
    assert not (tmp_path / "nvfp4").exists()
    assert "calibrating" not in capsys.readouterr().err  # refused before calibration is announced


def test_verify_checks_layer_kinds_and_sparsity_no_tensor_shows(parent: Path, tmp_path: Path) -> None:
    """layer_types and activation_sparsity_pattern live only in config.json: verify --parent compares them with the
    budget's config even when the manifest was rewritten to match the edit."""
    import hashlib

    out = tmp_path / "child"
    api.extract(parent, "E2-skip", out)
    config = json.loads((out / "config.json").read_text())
    config["activation_sparsity_pattern"] = [0.0] * len(config["activation_sparsity_pattern"])
    config["layer_types"][0] = "full_attention"
    (out / "config.json").write_text(json.dumps(config))
    manifest = json.loads((out / "elastic_slice_manifest.json").read_text())
    data = (out / "config.json").read_bytes()
    manifest["files"]["config.json"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (out / "elastic_slice_manifest.json").write_text(json.dumps(manifest))
    report = api.verify(out, parent=parent)
    fields = {p.split("'")[1] for p in report.problems if p.startswith("config.json field")}
    assert fields == {"activation_sparsity_pattern", "layer_types"}, report.problems


def test_card_and_inspect_describe_per_layer_widths_without_padding(parent: Path, tmp_path: Path) -> None:
    """gemma3n stores a width per layer (nothing is padded): the card and inspect show the range, not a layer count."""
    from conftest import run_cli

    out = tmp_path / "child"
    api.extract(parent, "E3-ffn", out)
    card = (out / "README.md").read_text()
    assert "| `intermediate_size` | 128 | per layer 32-128 |" in card, card
    assert "zero-padded" not in card
    shown = run_cli("inspect", str(parent)).stdout
    assert "per layer 32-128" in " ".join(shown.split()) and "| 10 layers |" not in shown


def test_extract_refuses_an_out_of_range_altup_active_idx(parent: Path, tmp_path: Path) -> None:
    hostile = Path(shutil.copytree(parent, tmp_path / "hostile"))
    config = json.loads((parent / "config.json").read_text())
    config["altup_active_idx"] = 7
    (hostile / "config.json").write_text(json.dumps(config))
    result = run_cli("extract", str(hostile), "--set", "layers=0-9", "--out", str(tmp_path / "child"))
    assert result.code == 2, result.stderr
    assert "config.json field 'altup_active_idx' must be an integer from 0 to 3" in result.stderr
    assert not (tmp_path / "child").exists()
