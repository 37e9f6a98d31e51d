"""Quantized outputs as users meet them: NVIDIA's recipe by default, KV-cache scales, the default calibration, the
model card, transformers' observed behaviour (pinned), and `verify` on every quantized output kind."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from conftest import load_tensors, run_cli
from elastic_slice import api
from elastic_slice.api import QuantOptions
from elastic_slice.arch import architecture_of, get_architecture
from elastic_slice.arch.nemotron_h_fixture import TinySpec, build_tiny_elastic
from elastic_slice.card import model_card
from elastic_slice.checkpoint import open_checkpoint
from elastic_slice.errors import InputError
from elastic_slice.quant import calibrate, nvfp4
from elastic_slice.quant.calibrate import calibration_texts

pytestmark = pytest.mark.slow  # calibration and models in transformers, a subprocess

#: nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-NVFP4 (docs/quantization.md cites the source)
NANO_PATTERN = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"
NANO_EXCLUDES = ["lm_head"] + [
    name
    for mamba, attention in ((4, 5), (11, 12), (18, 19), (25, 26), (32, 33), (41, 42))
    for name in (
        [f"backbone.layers.{mamba}.mixer.{p}" for p in ("in_proj", "out_proj")]
        + [f"backbone.layers.{attention}.mixer.{p}_proj" for p in "qkvo"]
    )
] + [
    f"backbone.layers.{layer}.mixer.conv1d"
    for layer in (0, 2, 4, 7, 9, 11, 14, 16, 18, 21, 23, 25, 28, 30, 32, 35, 37, 39, 41, 44, 46, 48, 50)
]
KINDS = [("fp8", "modelopt"), ("nvfp4", "modelopt"), ("fp8", "compressed-tensors"), ("nvfp4", "compressed-tensors")]


def _front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


# ----- NVIDIA's recipe ------------------------------------------------------------------------------------------
def _nano_config() -> dict:
    """The example's config with the Nano's layer pattern (the recipe depends on the pattern alone)."""
    config = json.loads((Path(__file__).resolve().parent.parent / "examples" / "tiny-elastic" / "config.json").read_text())
    del config["layers_block_type"]
    return {**config, "hybrid_override_pattern": NANO_PATTERN}


def test_recipe_reproduces_the_nano_release_list() -> None:
    exclusions = get_architecture("nemotron_h").bind(_nano_config()).recipe_exclusions()
    assert exclusions == NANO_EXCLUDES and len(exclusions) == 60


@pytest.fixture(scope="module")
def nano_shaped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 52-layer parent with the Nano's layer pattern (tiny widths)."""
    spec = TinySpec(pattern=NANO_PATTERN, hidden_size=32, mamba_num_heads=4, mamba_head_dim=8, n_groups=2,
                    ssm_state_size=8, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                    n_routed_experts=4, moe_intermediate_size=16, moe_shared_expert_intermediate_size=16,
                    intermediate_size=16)
    return build_tiny_elastic(tmp_path_factory.mktemp("nano") / "nano", spec=spec, budgets={"30B": {}})


def test_52_layer_output_writes_the_release_exclusions(nano_shaped: Path, tmp_path: Path) -> None:
    api.extract(nano_shaped, "30B", tmp_path / "o", quantize=QuantOptions("nvfp4"))
    hf = json.loads((tmp_path / "o" / "hf_quant_config.json").read_text())
    assert hf["quantization"]["exclude_modules"] == NANO_EXCLUDES
    assert hf["producer"] == {"name": "modelopt", "version": "0.29.0"}
    assert hf["quantization"]["quant_algo"] == "NVFP4" and hf["quantization"]["kv_cache_quant_algo"] is None
    tensors = load_tensors(tmp_path / "o")
    assert tensors["backbone.layers.4.mixer.in_proj.weight"].dtype == torch.bfloat16  # before attention layer 5
    assert tensors["backbone.layers.2.mixer.in_proj.weight"].dtype == torch.uint8  # before a MoE layer
    assert tensors["backbone.layers.5.mixer.q_proj.weight"].dtype == torch.bfloat16
    assert tensors["backbone.layers.1.mixer.experts.0.up_proj.weight"].dtype == torch.uint8
    assert tensors["backbone.layers.1.mixer.gate.weight"].dtype != torch.uint8


def test_exclude_adds_globs_as_written_and_broad_recipe(nano_shaped: Path, tmp_path: Path) -> None:
    api.extract(nano_shaped, "30B", tmp_path / "x", quantize=QuantOptions(
        "nvfp4", "compressed-tensors", exclude=("*.experts*",)))
    ignore = json.loads((tmp_path / "x" / "config.json").read_text())["quantization_config"]["ignore"]
    assert ignore[-1] == r"re:.*\.experts.*$" and len(ignore) == len(NANO_EXCLUDES) + 1  # one entry, not 23 x 8
    assert load_tensors(tmp_path / "x")["backbone.layers.1.mixer.experts.0.up_proj.weight"].dtype == torch.bfloat16
    api.extract(nano_shaped, "30B", tmp_path / "b", quantize=QuantOptions("fp8", "compressed-tensors", recipe="broad"))
    tensors = load_tensors(tmp_path / "b")
    assert tensors["backbone.layers.4.mixer.in_proj.weight"].dtype == torch.float8_e4m3fn
    assert tensors["backbone.layers.5.mixer.q_proj.weight"].dtype == torch.float8_e4m3fn


# ----- KV cache -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["modelopt", "compressed-tensors"])
def test_kv_cache_scales(tiny_parent: Path, tmp_path: Path, fmt: str) -> None:
    api.quantize(tiny_parent, tmp_path / "p", QuantOptions("nvfp4", fmt, kv_cache="fp8"))
    api.extract(tmp_path / "p", "12B", tmp_path / "c")  # sliced from the nested parent: scales travel with it
    for folder in (tmp_path / "p", tmp_path / "c"):
        tensors = load_tensors(folder)
        config = json.loads((folder / "config.json").read_text())["quantization_config"]
        for layer in (2, 6):  # the attention layers
            if fmt == "modelopt":
                k, v = (tensors[f"backbone.layers.{layer}.mixer.{x}_proj.{x}_scale"] for x in "kv")
                assert k.shape == () and config["kv_cache_quant_algo"] == "FP8"
            else:
                k, v = (tensors[f"backbone.layers.{layer}.mixer.{x}_scale"] for x in "kv")
                assert k.shape == (1,) and config["kv_cache_scheme"]["num_bits"] == 8
            assert k.dtype == torch.float32 and 0 < k.item() < 1 and 0 < v.item() < 1
    if fmt == "modelopt":
        assert json.loads((tmp_path / "c" / "hf_quant_config.json").read_text())["quantization"][
            "kv_cache_quant_algo"] == "FP8"
    assert api.verify(tmp_path / "c", parent=tmp_path / "p").ok


# ----- default calibration, dependencies -----------------------------------------------------------------------
def test_extract_nvfp4_needs_no_other_flag_and_is_quiet(tiny_parent: Path, tmp_path: Path) -> None:
    result = run_cli("extract", tiny_parent, "--size", "12B", "--quantize", "nvfp4", "--out", tmp_path / "o")
    assert result.code == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "built-in sample text" in lines[0] and "--calibration FILE" in lines[0], lines
    card = (tmp_path / "o" / "README.md").read_text()
    assert "Activation scales: calibrated on the built-in sample text" in card


def test_calibration_dependencies_are_core(monkeypatch: pytest.MonkeyPatch, tiny_parent: Path) -> None:
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    core = pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert '"transformers>=5"' in core and '"pyyaml>=6"' in core
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were missing
    with pytest.raises(InputError) as error:
        calibrate.calibrate(open_checkpoint(tiny_parent), architecture_of(open_checkpoint(tiny_parent)),
                            calibration_texts("default"))
    assert "pip install elastic-slice" in str(error.value)


# ----- model cards ----------------------------------------------------------------------------------------------
def test_card_names_the_checkpoint_as_given_and_no_local_paths(tiny_parent: Path, tmp_path: Path) -> None:
    out = tmp_path / "deep" / "dir" / "out"
    calibration = tmp_path / "private" / "notes.txt"
    calibration.parent.mkdir()
    calibration.write_text("Some text to calibrate on.\n\nAnother paragraph.")
    assert run_cli("extract", tiny_parent.absolute(), "--size", "12B", "--quantize", "fp8", "--calibration",
                   calibration, "--out", out).code == 0
    card = (out / "README.md").read_text()
    command = card.split("```bash\n", 1)[1].split("\n", 1)[0]
    assert command == "elastic-slice extract tiny --size 12B --quantize fp8 --calibration notes.txt --out out"
    assert str(tmp_path) not in card and "calibrated on the text file notes.txt" in card


@pytest.mark.parametrize("scheme, fmt, library", [
    (None, None, "transformers"), ("fp8", "modelopt", "vllm"), ("nvfp4", "modelopt", "vllm"),
    ("fp8", "compressed-tensors", "transformers"), ("nvfp4", "compressed-tensors", "vllm"),
])
def test_card_metadata_and_engines(tiny_parent: Path, tmp_path: Path, scheme, fmt, library: str) -> None:
    quant = QuantOptions(scheme, fmt) if scheme else None
    api.extract(tiny_parent, "12B", tmp_path / "o", quantize=quant)
    card = (tmp_path / "o" / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["library_name"] == library and "base_model" not in meta  # a local parent
    if scheme is None:
        assert "loads with plain `transformers`" in card and "## Quantization" not in card
        return
    assert scheme in meta["tags"] and fmt in meta["tags"] and "loads with plain" not in card
    assert "documented by the engine, not checked by elastic-slice" in card and "transformers 5.24.0" in card
    if fmt == "modelopt":
        assert "| SGLang |" in card and "| TensorRT-LLM |" in card
        assert ("**wrong outputs**" if scheme == "fp8" else "**fails to load**") in card


def test_card_front_matter_cannot_be_injected(tiny_parent: Path) -> None:
    plan = api.plan_extract(tiny_parent, "12B")
    sizes = get_architecture("nemotron_h").bind(json.loads((tiny_parent / "config.json").read_text())).parent_sizes()
    evil = "evil\nlibrary_name: pwned\ntags: [x]"
    card = model_card(plan, evil, sizes, None, "0", hub_repo=evil)
    meta = _front_matter(card)
    assert meta["library_name"] == "transformers" and meta["base_model"] == "evil\nlibrary_name: pwned\ntags: [x]"
    assert meta["tags"][0] == "elastic-slice"


# ----- transformers, as observed (a change here means the cards and docs need revisiting) -----------------------
@pytest.fixture(scope="module")
def outputs(tiny_parent: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("outputs")
    made = {"bf16": root / "bf16"}
    api.extract(tiny_parent, "12B", made["bf16"])
    for scheme, fmt in KINDS:
        made[f"{scheme}-{fmt}"] = root / f"{scheme}-{fmt}"
        api.extract(tiny_parent, "12B", made[f"{scheme}-{fmt}"], quantize=QuantOptions(scheme, fmt))
    return made


def test_transformers_loads_modelopt_fp8_as_raw_codes(outputs: dict[str, Path]) -> None:
    model, info = AutoModelForCausalLM.from_pretrained(outputs["fp8-modelopt"], output_loading_info=True)
    stored = load_tensors(outputs["fp8-modelopt"])
    assert not info["missing_keys"] and not info["mismatched_keys"]
    scales = {key for key in stored if key.endswith(("weight_scale", "input_scale"))}
    assert len(info["unexpected_keys"]) == len(scales) > 0
    assert all(key.endswith(("weight_scale", "input_scale")) for key in info["unexpected_keys"])
    loaded = model.model.layers[0].mixer.in_proj.weight
    codes = stored["backbone.layers.0.mixer.in_proj.weight"]
    assert torch.equal(loaded.float(), codes.float())  # the FP8 codes, never multiplied by their scale


def test_transformers_cannot_load_modelopt_nvfp4(outputs: dict[str, Path]) -> None:
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForCausalLM.from_pretrained(outputs["nvfp4-modelopt"])


def test_transformers_scales_compressed_tensors_nvfp4_experts_by_their_global_scale(outputs: dict[str, Path]) -> None:
    folder = outputs["nvfp4-compressed-tensors"]
    model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    stored = load_tensors(folder)
    prefix = "backbone.layers.1.mixer.experts.3.up_proj"
    g = stored[prefix + ".weight_global_scale"]
    ours = nvfp4.dequantize(stored[prefix + ".weight_packed"], stored[prefix + ".weight_scale"], g, torch.float32)
    theirs = model.model.layers[1].mixer.experts.up_proj[3].float()
    assert g.item() > 100 and torch.allclose(theirs, ours * g, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("scheme, options, dropped", [
    ("fp8", {}, set()),
    ("fp8", {"calibration": "default"}, {"input_scale"}),
    ("fp8", {"kv_cache": "fp8"}, {"input_scale", "k_scale", "v_scale"}),
    ("nvfp4", {"kv_cache": "fp8"}, {"input_global_scale", "k_scale", "v_scale"}),
])
def test_transformers_drops_routed_expert_activation_and_kv_cache_scales(
    tiny_parent: Path, tmp_path: Path, scheme: str, options: dict, dropped: set[str]
) -> None:
    """compressed-tensors outputs with static activation scales or KV-cache scales: transformers reports the routed
    experts' activation scales and the KV-cache scales as unexpected (and does not load them); the card says so."""
    out = tmp_path / "o"
    api.extract(tiny_parent, "12B", out, quantize=QuantOptions(scheme, "compressed-tensors", **options))
    model, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    unexpected = info["unexpected_keys"]
    assert {key.rsplit(".", 1)[1] for key in unexpected} == dropped
    stored = load_tensors(out)
    routed_inputs = [k for k in stored if re.search(r"\.mixer\.experts\.\d+\..*\.input", k)]
    kv = [k for k in stored if k.endswith(("k_scale", "v_scale"))]
    assert len(unexpected) == len(routed_inputs) + len(kv)
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3, 4]])).logits).all()
    card = (out / "README.md").read_text()
    if dropped:
        assert "as unexpected keys and does not load them" in card and "no missing or unexpected" not in card
        assert ("`k_scale`, `v_scale`" in card) == ("k_scale" in dropped)
        assert "loads with no warning" not in card
    else:
        assert "loads with no missing or unexpected weights and runs (checked)" in card


# ----- what the card says was done ------------------------------------------------------------------------------
def test_card_says_only_what_was_done(tiny_parent: Path, tmp_path: Path) -> None:
    api.extract(tiny_parent, "12B", tmp_path / "fp32", dtype="fp32")
    assert "No weights were retrained or changed except for dtype conversion." in (tmp_path / "fp32" / "README.md").read_text()
    api.extract(tiny_parent, "12B", tmp_path / "q", quantize=QuantOptions("fp8", "compressed-tensors"))
    assert "changed except for FP8 quantization." in (tmp_path / "q" / "README.md").read_text()
    api.quantize(tiny_parent, tmp_path / "p", QuantOptions("nvfp4", "modelopt"))
    api.extract(tmp_path / "p", "12B", tmp_path / "c")
    card = (tmp_path / "c" / "README.md").read_text()
    entries = json.loads((tmp_path / "c" / "hf_quant_config.json").read_text())["quantization"]["exclude_modules"]
    assert "No weights were retrained or changed: every value kept is the parent's, as it stored it." in card
    assert "nothing was quantized again" in card and "dtype conversion" not in card
    assert f"Sliced from a quantized parent (NVFP4, ModelOpt (`hf_quant_config.json`) format; {len(entries)} " \
        "exclusion entries" in card


def test_card_shows_config_values_literally(tiny_parent: Path) -> None:
    plan = api.plan_extract(tiny_parent, "12B")
    plan.child_config["torch_dtype"] = "bf16\x1b[2J\r"
    plan.child_config["model_type"] = "nemotron_h\x07"
    sizes = get_architecture("nemotron_h").bind(json.loads((tiny_parent / "config.json").read_text())).parent_sizes()
    card = model_card(plan, "tiny\x1b]0;x\x07", sizes, None, "0")
    assert "(dtype bf16\\x1b[2J\\r)" in card and "`nemotron_h\\x07`" in card
    assert not any(ord(char) < 32 and char != "\n" for char in card.split("---", 2)[2])


# ----- verify ---------------------------------------------------------------------------------------------------
def _flip(folder: Path, tensor: str, offset: int, mask: int = 0x24) -> None:
    """Flip bits of one byte of a stored tensor."""
    shard = folder / "model.safetensors"
    data = bytearray(shard.read_bytes())
    size = struct.unpack("<Q", data[:8])[0]
    start = json.loads(data[8:8 + size])[tensor]["data_offsets"][0]
    data[8 + size + start + offset] ^= mask
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", [f"{s}-{f}" for s, f in KINDS])
def test_verify_passes_every_quantized_output(outputs: dict[str, Path], tiny_parent: Path, kind: str) -> None:
    result = run_cli("verify", outputs[kind], "--parent", tiny_parent, "--numerics", "--json")
    assert result.code == 0, result.stdout + result.stderr
    checks = " ".join(result.json()["checks"])
    assert "dequantized within the" in checks and "dequantized by elastic-slice" in checks
    assert result.stderr == ""


@pytest.mark.parametrize("scheme, fmt", KINDS)
def test_verify_passes_slices_of_quantized_parents(tiny_parent: Path, tmp_path: Path, scheme: str, fmt: str) -> None:
    api.quantize(tiny_parent, tmp_path / "p", QuantOptions(scheme, fmt))
    api.extract(tmp_path / "p", "23B", tmp_path / "c")
    report = api.verify(tmp_path / "c", parent=tmp_path / "p", numerics=True)
    assert report.ok, report.problems


@pytest.mark.parametrize("kind, part", [
    ("nvfp4-modelopt", "weight"), ("nvfp4-modelopt", "weight_scale"),
    ("nvfp4-compressed-tensors", "weight_packed"), ("nvfp4-compressed-tensors", "weight_scale"),
    ("fp8-modelopt", "weight"),
])
def test_verify_catches_a_flipped_byte(outputs: dict[str, Path], tiny_parent: Path, tmp_path: Path,
                                       kind: str, part: str) -> None:
    folder = tmp_path / kind
    shutil.copytree(outputs[kind], folder)
    module = "backbone.layers.1.mixer.experts.2.down_proj"
    _flip(folder, f"{module}.{part}", offset=5)
    report = api.verify(folder, parent=tiny_parent)
    assert f"tensor '{module}.{part}' differs from the parent's slice for budget '12B'." in report.problems
    assert any("sha256" in problem for problem in report.problems)


def test_verify_catches_a_bad_calibrated_scale(outputs: dict[str, Path], tiny_parent: Path, tmp_path: Path) -> None:
    folder = tmp_path / "o"
    shutil.copytree(outputs["nvfp4-modelopt"], folder)
    _flip(folder, "backbone.layers.0.mixer.in_proj.input_scale", offset=3, mask=0x80)  # a negative scale
    report = api.verify(folder, parent=tiny_parent)
    assert "calibrated scale 'backbone.layers.0.mixer.in_proj.input_scale' is not one finite, positive number." \
        in report.problems


# ----- the real-engine check script -----------------------------------------------------------------------------
def test_engine_check_dry_run(tmp_path: Path) -> None:
    """Its CPU part (transformers, and elastic-slice's own dequantization) on the committed miniature."""
    root = Path(__file__).parent.parent
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "engine_check.py"), "--dry-run", "--kinds", "bf16,nvfp4-modelopt",
         "--parent", str(root / "examples" / "tiny-elastic"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(root / "src")},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = json.loads((tmp_path / "engine_check.json").read_text())["table"]
    assert table["transformers"]["bf16"]["agreement_with_bf16"] == 1.0
    assert not table["transformers"]["nvfp4-modelopt"]["loaded"]
    assert "ignore_mismatched_sizes" in table["transformers"]["nvfp4-modelopt"]["error"]
    assert table["elastic-slice dequantized, in transformers"]["nvfp4-modelopt"]["loaded"]


def test_inspect_predicts_the_default_quantized_bytes(tiny_parent: Path, tmp_path: Path) -> None:
    """inspect's FP8/NVFP4 columns follow the default recipe: the bytes extract then writes, exactly."""
    predicted = {budget.name: budget.bytes for budget in api.inspect(tiny_parent).budgets}
    for scheme in ("fp8", "nvfp4"):
        written = api.extract(tiny_parent, "23B", tmp_path / scheme, quantize=QuantOptions(scheme))
        assert written.bytes == predicted["23B"][scheme]
    planned = run_cli("extract", tiny_parent, "--size", "23B", "--quantize", "nvfp4", "--dry-run", "--json")
    assert planned.code == 0 and planned.stderr == ""  # planning alone does not calibrate


def test_excluding_every_module_is_refused(tiny_parent: Path, tmp_path: Path) -> None:
    """An output labelled FP8 with nothing quantized is never written: one sentence, exit 2, nothing at --out."""
    result = run_cli("extract", tiny_parent, "--size", "12B", "--quantize", "fp8", "--quant-format",
                     "compressed-tensors", "--exclude", "*", "--out", tmp_path / "none")
    assert result.code == 2 and "leave no weight of budget '12B' to quantize" in " ".join(result.stderr.split())
    assert not (tmp_path / "none").exists()


@pytest.mark.slow
def test_a_budget_without_attention_declares_no_kv_cache(tiny_parent: Path, tmp_path: Path) -> None:
    """--kv-cache fp8 on a budget that keeps no attention layer stores no k/v scale, so it declares none, and verify
    passes it; the same for a slice of a KV-quantized parent."""
    no_attention = "layers=0,1,3,4,5,7"  # pattern ME*-ME*M: attention at 2 and 6
    direct = tmp_path / "direct"
    result = run_cli("extract", tiny_parent, "--set", no_attention, "--quantize", "fp8", "--kv-cache", "fp8",
                     "--out", direct)
    assert result.code == 0, result.stderr
    assert json.loads((direct / "config.json").read_text())["quantization_config"]["kv_cache_quant_algo"] is None
    assert "- KV cache: not quantized" in (direct / "README.md").read_text()
    assert api.verify(direct, parent=tiny_parent).ok
    parent = tmp_path / "kv-parent"
    api.quantize(tiny_parent, parent, QuantOptions("fp8", "compressed-tensors", kv_cache="fp8"))
    sliced = tmp_path / "sliced"
    assert run_cli("extract", parent, "--set", no_attention, "--out", sliced).code == 0
    assert json.loads((sliced / "config.json").read_text())["quantization_config"]["kv_cache_scheme"] is None
    report = api.verify(sliced, parent=parent)
    assert report.ok, report.problems


def test_per_layer_budget_from_a_quantized_parent_is_refused_even_dequantized(
    tiny_parent: Path, tmp_path: Path
) -> None:
    parent = tmp_path / "nvfp4"
    api.quantize(tiny_parent, parent, QuantOptions("nvfp4", "compressed-tensors"))
    out = tmp_path / "out"
    result = run_cli("extract", parent, "--set", "moe_intermediate_size=[null,32,null,null,null,16,null,null]",
                     "--dtype", "bf16", "--out", out)
    assert result.code == 2 and "cannot be sliced into yet, dequantized or not" in " ".join(result.stderr.split())
    assert not out.exists()
