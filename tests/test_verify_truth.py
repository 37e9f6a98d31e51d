"""`verify` tells the truth: a check is reported as passed only when it found no problem; a quantized output's
declared exclusions must agree with its stored tensors; a slice of a quantized parent compared with the wrong parent
ends in one sentence."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import run_cli
from elastic_slice import api
from elastic_slice.api import QuantOptions
from elastic_slice.errors import InputError
from elastic_slice.manifest import MANIFEST_FILE
from test_quant_outputs import KINDS, _flip

EXPERT = "backbone.layers.1.mixer.experts.2.down_proj"


def _rehash(folder: Path) -> None:
    """Make the manifest's sizes and sha256 match the folder's files again (a tampering that hides itself)."""
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    for name, entry in manifest["files"].items():
        data = (folder / name).read_bytes()
        entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config["quantization_config"])
    (folder / "config.json").write_text(json.dumps(config))
    _rehash(folder)


def _ok_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("ok")]


@pytest.fixture(scope="module")
def quantized_parent(tiny_parent: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qp")
    api.quantize(tiny_parent, root / "p", QuantOptions("nvfp4", "compressed-tensors"))
    api.extract(root / "p", "12B", root / "c")
    return {"parent": root / "p", "child": root / "c"}


@pytest.fixture(scope="module")
def made(tiny_parent: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("made")
    outputs = {}
    for scheme, fmt in KINDS:
        outputs[f"{scheme}-{fmt}"] = root / f"{scheme}-{fmt}"
        api.extract(tiny_parent, "12B", outputs[f"{scheme}-{fmt}"], quantize=QuantOptions(scheme, fmt))
    return outputs


# ----- A: no "ok" for a check that failed ---------------------------------------------------------------------------
def test_a_hidden_flipped_byte_fails_without_an_ok_line(quantized_parent: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "c"
    shutil.copytree(quantized_parent["child"], folder)
    _flip(folder, f"{EXPERT}.weight_packed", offset=5)
    _rehash(folder)
    result = run_cli("verify", folder, "--parent", quantized_parent["parent"])
    assert result.code == 1
    assert f"tensor '{EXPERT}.weight_packed' differs from the parent's slice" in result.stdout
    assert not any("byte for byte" in line for line in _ok_lines(result.stdout)), result.stdout
    assert any("against the manifest" in line for line in _ok_lines(result.stdout))  # the rehash made it true


def test_a_sha256_mismatch_has_no_ok_line_for_the_manifest(quantized_parent: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "c"
    shutil.copytree(quantized_parent["child"], folder)
    _flip(folder, f"{EXPERT}.weight_packed", offset=5)
    result = run_cli("verify", folder)
    assert result.code == 1 and "does not match its sha256" in result.stdout
    assert not any("against the manifest" in line for line in _ok_lines(result.stdout)), result.stdout


def test_a_folder_listed_as_a_file_is_not_a_file(quantized_parent: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "c"
    shutil.copytree(quantized_parent["child"], folder)
    (folder / "README.md").unlink()
    (folder / "README.md").mkdir()
    report = api.verify(folder)
    assert "'README.md' is listed in the manifest as a file but is not a file." in report.problems
    assert not any("missing" in problem for problem in report.problems)
    assert not any("against the manifest" in check for check in report.checks)


def test_a_passing_verify_lists_every_check(quantized_parent: dict[str, Path]) -> None:
    report = api.verify(quantized_parent["child"], parent=quantized_parent["parent"])
    assert report.ok, report.problems
    assert [c for c in report.checks if "against the manifest" in c or "byte for byte" in c or "exclusions" in c]
    assert len(report.checks) == 6 and any("config.json against budget 12B" in c for c in report.checks)
    assert any("files copied from the parent" in c for c in report.checks)


# ----- B: the declared quantization agrees with the stored tensors -------------------------------------------------
@pytest.mark.parametrize("kind", [f"{s}-{f}" for s, f in KINDS])
def test_b_good_outputs_pass_the_declaration_check(made: dict[str, Path], kind: str) -> None:
    report = api.verify(made[kind])
    assert report.ok, report.problems
    assert any("exclusions agree with the stored tensors" in check for check in report.checks)


def test_b_good_slices_of_quantized_parents_pass(quantized_parent: dict[str, Path]) -> None:
    for folder in quantized_parent.values():
        report = api.verify(folder)
        assert report.ok, report.problems


@pytest.mark.parametrize("kind", ["fp8-compressed-tensors", "nvfp4-compressed-tensors"])
def test_b_ignore_everything_is_caught(made: dict[str, Path], tmp_path: Path, kind: str) -> None:
    folder = tmp_path / kind
    shutil.copytree(made[kind], folder)
    _edit_config(folder, lambda q: q.update(ignore=["re:.*$"]))
    report = api.verify(folder)
    assert not report.ok
    assert f"module '{EXPERT}' is stored quantized but the quantization config excludes it: an engine would read " \
        "it as unquantized." in report.problems
    assert report.problems[-1].startswith("module ")  # named modules only; the manifest check passed
    assert not any("exclusions agree" in check for check in report.checks)


@pytest.mark.parametrize("kind", ["fp8-compressed-tensors", "nvfp4-compressed-tensors"])
def test_b_an_ignore_list_missing_a_bf16_module_is_caught(made: dict[str, Path], tmp_path: Path, kind: str) -> None:
    folder = tmp_path / kind
    shutil.copytree(made[kind], folder)
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    dropped = next(entry for entry in config["ignore"] if "lm_head" in entry)
    _edit_config(folder, lambda q: q["ignore"].remove(dropped))
    report = api.verify(folder)
    expected = ("module 'lm_head' is stored unquantized but the quantization config does not exclude it: an engine "
                "would read it as quantized.")
    assert report.problems == [expected]


@pytest.mark.parametrize("kind", ["fp8-modelopt", "nvfp4-modelopt"])
def test_b_modelopt_globs_are_matched_like_vllm(made: dict[str, Path], tmp_path: Path, kind: str) -> None:
    folder = tmp_path / kind
    shutil.copytree(made[kind], folder)
    hf = json.loads((folder / "hf_quant_config.json").read_text())
    hf["quantization"]["exclude_modules"].append("*.experts.[0-3].*")
    (folder / "hf_quant_config.json").write_text(json.dumps(hf))
    _rehash(folder)
    problems = api.verify(folder).problems
    assert f"module '{EXPERT}' is stored quantized but the quantization config excludes it: an engine would read " \
        "it as unquantized." in problems
    assert not any(re.search(r"experts\.[4-9]", problem) for problem in problems)


# ----- D: a slice of a quantized parent compared with the unquantized one -----------------------------------------
def test_d_wrong_parent_is_one_sentence(quantized_parent: dict[str, Path], tiny_parent: Path) -> None:
    with pytest.raises(InputError, match=r"^this output was cut from a quantized parent .*; verify it against that "
                                         r"parent \(--parent QUANTIZED_PARENT\)"):
        api.verify(quantized_parent["child"], parent=tiny_parent)
    result = run_cli("verify", quantized_parent["child"], "--parent", tiny_parent)
    assert result.code == 2 and "cut from a quantized parent" in result.stderr + result.stdout
    assert "problem" not in result.stdout


# ----- the quantization declaration against the budget's re-plan ---------------------------------------------------
def test_a_changed_weight_strategy_fails_verify_against_the_parent(
    made: dict[str, Path], tiny_parent: Path, tmp_path: Path
) -> None:
    """A declaration edit that transformers then cannot load (per-channel scales declared, per-tensor stored) is
    found by comparing the quantization config with the budget's re-plan, with the manifest rewritten to hide it."""
    folder = tmp_path / "fp8-ct"
    shutil.copytree(made["fp8-compressed-tensors"], folder)
    _edit_config(folder, lambda q: q["config_groups"]["group_0"]["weights"].update(strategy="channel"))
    report = api.verify(folder, parent=tiny_parent)
    assert any(p.startswith("config.json field 'quantization_config.config_groups.group_0.weights.strategy' is")
               for p in report.problems), report.problems


def test_a_declared_kv_cache_without_scales_fails_verify(made: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "fp8-mo"
    shutil.copytree(made["fp8-modelopt"], folder)
    _edit_config(folder, lambda q: q.update(kv_cache_quant_algo="FP8"))
    report = api.verify(folder)
    assert any("declares an FP8 KV cache but no k_scale/v_scale tensor is stored" in p for p in report.problems), (
        report.problems
    )


@pytest.mark.slow
def test_a_calibrated_declaration_edit_fails_verify_against_the_parent(tiny_parent: Path, tmp_path: Path) -> None:
    """A calibrated output's static declaration (input activations, KV cache) is compared with the declaration
    calibration implies: declaring weight-only while input scales are stored, or another KV algorithm, fails."""
    folder = tmp_path / "ct"
    api.extract(tiny_parent, "12B", folder, quantize=QuantOptions("fp8", "compressed-tensors", calibration="default",
                                                                   kv_cache="fp8"))
    assert api.verify(folder, parent=tiny_parent).ok
    _edit_config(folder, lambda q: q["config_groups"]["group_0"].update(input_activations=None))
    report = api.verify(folder, parent=tiny_parent)
    assert any("'quantization_config.config_groups.group_0.input_activations' is None" in p
               for p in report.problems), report.problems
    modelopt = tmp_path / "mo"
    api.extract(tiny_parent, "12B", modelopt, quantize=QuantOptions("fp8", kv_cache="fp8"))
    hf = json.loads((modelopt / "hf_quant_config.json").read_text())
    hf["quantization"]["kv_cache_quant_algo"] = "INT8"
    (modelopt / "hf_quant_config.json").write_text(json.dumps(hf))
    _rehash(modelopt)
    report = api.verify(modelopt, parent=tiny_parent)
    assert any(p.startswith("hf_quant_config.json field 'quantization.kv_cache_quant_algo' is 'INT8'")
               for p in report.problems), report.problems
