"""Nested quantized checkpoints: slicing a quantized parent equals quantizing the slice with the parent's scales."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import add_budgets, load_tensors, run_cli
from elastic_slice import api
from elastic_slice.api import QuantOptions
from elastic_slice.quant import fp8, nvfp4

FORMATS = [("nvfp4", "modelopt"), ("fp8", "modelopt"), ("nvfp4", "compressed-tensors"), ("fp8", "compressed-tensors")]
#: ModelOpt parents calibrate in transformers: slow
PARENT_FORMATS = [pytest.param(f, id="-".join(f), marks=[pytest.mark.slow] * (f[1] == "modelopt")) for f in FORMATS]


def _options(scheme: str, fmt: str) -> QuantOptions:
    return QuantOptions(scheme, fmt, calibration="default" if fmt == "modelopt" else None)


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1).view(torch.uint8)


@pytest.fixture(scope="module", params=PARENT_FORMATS)
def quantized_parent(request: pytest.FixtureRequest, tiny_parent: Path, tmp_path_factory: pytest.TempPathFactory):
    scheme, fmt = request.param
    out = tmp_path_factory.mktemp("quantized") / f"{scheme}-{fmt}"
    api.quantize(tiny_parent, out, _options(scheme, fmt))
    return scheme, fmt, out


@pytest.mark.parametrize("budget", ["30B", "23B", "12B"])
def test_slice_of_quantized_parent_equals_quantized_slice(quantized_parent, tiny_parent: Path, tmp_path: Path,
                                                          budget: str) -> None:
    scheme, fmt, parent = quantized_parent
    api.extract(parent, budget, tmp_path / "sliced")
    api.extract(tiny_parent, budget, tmp_path / "direct", quantize=_options(scheme, fmt))
    sliced, direct = load_tensors(tmp_path / "sliced"), load_tensors(tmp_path / "direct")
    assert sorted(sliced) == sorted(direct)
    for name in sliced:
        assert sliced[name].dtype == direct[name].dtype and sliced[name].shape == direct[name].shape, name
        assert torch.equal(_bytes(sliced[name]), _bytes(direct[name])), name
    for name in ("hf_quant_config.json", "config.json"):
        if (tmp_path / "direct" / name).exists():
            a = json.loads((tmp_path / "sliced" / name).read_text())
            b = json.loads((tmp_path / "direct" / name).read_text())
            assert a.get("quantization_config", a) == b.get("quantization_config", b), name


def test_quantized_child_equals_independent_quantization(tiny_parent: Path, tmp_path: Path) -> None:
    """The expert weights of the NVFP4 12B child, recomputed here from the parent tensor with the kernels alone."""
    api.extract(tiny_parent, "12B", tmp_path / "q", quantize=QuantOptions("nvfp4", "compressed-tensors"))
    api.extract(tiny_parent, "30B", tmp_path / "p")
    parent, child = load_tensors(tmp_path / "p"), load_tensors(tmp_path / "q")
    name = "backbone.layers.1.mixer.experts.3.down_proj"
    full = parent[name + ".weight"]
    kept = full[:96, :32]
    g = nvfp4.global_scale(full)  # the parent's scale, not the slice's
    scales = nvfp4.block_scales(kept, g)
    assert torch.equal(child[name + ".weight_global_scale"], g)
    assert torch.equal(_bytes(child[name + ".weight_scale"]), _bytes(scales))
    assert torch.equal(child[name + ".weight_packed"], nvfp4.quantize(kept, scales, g))
    card = (tmp_path / "q" / "README.md").read_text()
    assert "\n- nvfp4\n" in card and "Quantization: compressed-tensors nvfp4-pack-quantized" in card
    assert "Quantization: none" in (tmp_path / "p" / "README.md").read_text()


@pytest.mark.slow
def test_modelopt_layout_and_config(tiny_parent: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    api.extract(tiny_parent, "12B", out, quantize=QuantOptions("nvfp4", "modelopt", calibration="default"))
    tensors = load_tensors(out)
    prefix = "backbone.layers.0.mixer.in_proj"
    assert tensors[prefix + ".weight"].dtype == torch.uint8 and tensors[prefix + ".weight"].shape == (392, 48)
    assert tensors[prefix + ".weight_scale"].dtype == torch.float8_e4m3fn and tensors[prefix + ".weight_scale"].shape == (392, 6)
    assert tensors[prefix + ".weight_scale_2"].shape == () and tensors[prefix + ".input_scale"].shape == ()
    assert "backbone.layers.2.mixer.q_proj.weight" in tensors  # attention stays bf16 for NVFP4
    assert tensors["backbone.layers.2.mixer.q_proj.weight"].dtype == torch.bfloat16
    parent = load_tensors(tiny_parent)["backbone.layers.0.mixer.in_proj.weight"]
    assert torch.allclose(tensors[prefix + ".weight_scale_2"], parent.float().abs().amax() / (6 * 448))
    hf = json.loads((out / "hf_quant_config.json").read_text())["quantization"]
    assert hf["quant_algo"] == "NVFP4" and hf["group_size"] == 16 and hf["kv_cache_quant_algo"] is None
    assert "backbone.layers.2.mixer.q_proj" in hf["exclude_modules"] and "lm_head" in hf["exclude_modules"]
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "modelopt" and config["quant_algo"] == "NVFP4"


def test_exclusions_are_renumbered_after_depth_cuts(axis_parents: dict[str, Path], tmp_path: Path) -> None:
    parent = tmp_path / "qp"
    # the axis parent has no tokenizer: write the calibration-free compressed-tensors format, then ModelOpt via copy
    api.quantize(axis_parents["active"], parent, QuantOptions("nvfp4", "compressed-tensors"))
    api.extract(parent, "layers", tmp_path / "shallow")  # keeps layers 0, 2, 3, 5, 7
    ignore = json.loads((tmp_path / "shallow" / "config.json").read_text())["quantization_config"]["ignore"]
    assert r"re:.*layers\.1\.mixer\.q_proj$" in ignore  # parent layer 2 (attention) is child layer 1
    assert not any(r"layers\.6\." in entry for entry in ignore)  # parent layer 6 was dropped


def test_nvfp4_block_alignment_errors(tiny_parent: Path, tmp_path: Path) -> None:
    parent = tmp_path / "p"
    shutil.copytree(tiny_parent, parent)
    add_budgets(parent, odd={"moe_intermediate_size": 40})
    result = run_cli("quantize", parent, "--quantize", "nvfp4", "--quant-format", "compressed-tensors", "--out", tmp_path / "q")
    assert result.code == 2 and "budget 'odd'" in result.stderr and "multiple of 16" in result.stderr
    assert "down_proj" in result.stderr and not (tmp_path / "q").exists()
    # FP8 has no blocks: the same index quantizes, and slicing the NVFP4 parent of the other budgets still works
    assert run_cli("quantize", parent, "--quantize", "fp8", "--quant-format", "compressed-tensors", "--out",
                   tmp_path / "q8").code == 0


@pytest.mark.parametrize(
    "args, words",
    [
        (["--quantize", "nvfp4", "--recipe", "aggressive"], ("--recipe 'aggressive'", "nvidia or broad")),
        (["--quantize", "nvfp4", "--kv-cache", "int8"], ("--kv-cache 'int8'", "fp8")),
        (["--kv-cache", "fp8"], ("only with --quantize",)),
        (["--quantize", "int3", "--quant-format", "compressed-tensors"], ("'int3'", "fp8 or nvfp4")),
        (["--quantize", "fp8", "--quant-format", "gguf"], ("'gguf'",)),
        (["--calibration", "default"], ("only with --quantize",)),
        (["--quantize", "fp8", "--quant-format", "compressed-tensors", "--calibration", "/nope"], ("/nope",)),
    ],
)
def test_quantize_usage_errors(tiny_parent: Path, tmp_path: Path, args: list[str], words: tuple[str, ...]) -> None:
    result = run_cli("extract", tiny_parent, "--size", "12B", "--out", tmp_path / "o", *args)
    assert result.code == 2, result.stderr
    for word in words:
        assert word in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_dtype_dequantizes_a_quantized_parent(quantized_parent, tmp_path: Path) -> None:
    scheme, fmt, parent = quantized_parent
    api.extract(parent, "12B", tmp_path / "dense", dtype="bf16")
    api.extract(parent, "12B", tmp_path / "quantized")
    dense, quantized = load_tensors(tmp_path / "dense"), load_tensors(tmp_path / "quantized")
    assert not (tmp_path / "dense" / "hf_quant_config.json").exists()
    assert "quantization_config" not in json.loads((tmp_path / "dense" / "config.json").read_text())
    checked = 0
    for name, tensor in dense.items():
        module = name.removesuffix(".weight")
        if f"{module}.weight_scale" not in quantized:
            continue
        if scheme == "nvfp4":
            packed = quantized[f"{module}.weight" if fmt == "modelopt" else f"{module}.weight_packed"]
            second = quantized[f"{module}.weight_scale_2" if fmt == "modelopt" else f"{module}.weight_global_scale"]
            g = 1.0 / second.reshape(1) if fmt == "modelopt" else second
            expected = nvfp4.dequantize(packed, quantized[f"{module}.weight_scale"], g, torch.bfloat16)
        else:
            expected = fp8.dequantize(quantized[name], quantized[f"{module}.weight_scale"], torch.bfloat16)
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, expected), name
        checked += 1
    assert checked > 30
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path / "dense", output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    again = run_cli("extract", parent, "--size", "12B", "--out", tmp_path / "o", "--quantize", "fp8",
                    "--quant-format", "compressed-tensors")
    assert again.code == 2 and "already" in again.stderr


@pytest.mark.slow
def test_compressed_tensors_output_in_transformers(tiny_parent: Path, tmp_path: Path, capsys) -> None:
    """A real client: transformers (with compressed-tensors) loads the FP8 and NVFP4 children on CPU.

    transformers 5 fuses NemotronH's routed experts into 3-D parameters that compressed-tensors does not quantize,
    so per-expert quantized tensors cannot load there: the experts stay bf16 in this check (`--exclude`). Even so,
    with an NVFP4 config transformers 5.24 does not merge the bf16 per-expert tensors into its fused parameters
    and reports them missing: that bug is asserted below (so that a fix shows), the NVFP4 tensors that do load are
    compared bit for bit, and every quantized tensor, experts included, is checked by dequantization in
    test_every_quantized_tensor_round_trips.
    """
    api.extract(tiny_parent, "12B", tmp_path / "bf16")
    tokens = torch.randint(0, 320, (1, 24), generator=torch.Generator().manual_seed(0))
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
    with torch.no_grad():
        expected = reference(tokens).logits.float()
    for scheme in ("fp8", "nvfp4"):
        out = tmp_path / scheme
        api.extract(tiny_parent, "12B", out, quantize=QuantOptions(scheme, "compressed-tensors", ("*.experts.*",)))
        model, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16, output_loading_info=True)
        stored = load_tensors(out)
        packed_name = "weight_packed" if scheme == "nvfp4" else "weight"
        loaded = getattr(model.model.layers[0].mixer.in_proj, packed_name)
        assert torch.equal(_bytes(loaded), _bytes(stored[f"backbone.layers.0.mixer.in_proj.{packed_name}"]))
        assert not info["unexpected_keys"] and not info["mismatched_keys"], info
        if scheme == "nvfp4":
            assert info["missing_keys"] == {
                f"model.layers.{layer}.mixer.experts.{proj}" for layer in (1, 5) for proj in ("up_proj", "down_proj")
            }
            continue
        assert not info["missing_keys"], info
        with torch.no_grad():
            logits = model(tokens).logits.float()
        diff = (logits - expected).abs()
        with capsys.disabled():
            print(f"\n[{scheme} compressed-tensors in transformers vs bf16 child] max abs diff "
                  f"{diff.max().item():.4f}, mean {diff.mean().item():.4f} (mean |logit| {expected.abs().mean().item():.4f})")
        assert torch.isfinite(logits).all()
        assert diff.mean().item() < 0.25 * expected.abs().mean().item()


@pytest.mark.parametrize("scheme", ["fp8", "nvfp4"])
def test_every_quantized_tensor_round_trips(tiny_parent: Path, tmp_path: Path, scheme: str) -> None:
    api.extract(tiny_parent, "12B", tmp_path / "bf16")
    api.extract(tiny_parent, "12B", tmp_path / "q", quantize=QuantOptions(scheme, "compressed-tensors"))
    dense, quantized = load_tensors(tmp_path / "bf16"), load_tensors(tmp_path / "q")
    checked = 0
    for name, weight in dense.items():
        module = name.removesuffix(".weight")
        if f"{module}.weight_scale" not in quantized:
            assert torch.equal(quantized[name], weight), name
            continue
        if scheme == "nvfp4":
            g = quantized[f"{module}.weight_global_scale"]
            scales = quantized[f"{module}.weight_scale"]
            restored = nvfp4.dequantize(quantized[f"{module}.weight_packed"], scales, g, torch.float32)
            step = (scales.float() / g).repeat_interleave(16, dim=1)
        else:
            scale = quantized[f"{module}.weight_scale"]
            restored = fp8.dequantize(quantized[f"{module}.weight"], scale, torch.float32)
            step = torch.maximum(weight.float().abs() * 2**-4, scale * 2**-10)
        assert ((restored - weight.float()).abs() <= step + 1e-12).all(), name
        checked += 1
    assert checked > 50
