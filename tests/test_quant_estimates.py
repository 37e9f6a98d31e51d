"""inspect's per-budget FP8/NVFP4 byte estimates against what `extract --quantize` really writes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors import safe_open

from conftest import add_budgets, run_cli
from elastic_slice import api
from elastic_slice.arch.gemma3n_fixture import build_tiny_gemma3n
from elastic_slice.quant.schemes import SCALAR_BYTES


@pytest.fixture(scope="module")
def gemma3n_parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gemma3n(tmp_path_factory.mktemp("gemma3n") / "parent")


def _tensors(folder: Path) -> dict[str, int]:
    """Name -> bytes of every tensor the folder's safetensors files hold."""
    sizes: dict[str, int] = {}
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as handle:
            sizes.update({name: handle.get_tensor(name).nbytes for name in handle.keys()})  # noqa: SIM118
    return sizes


@pytest.mark.parametrize("scheme", ["nvfp4", "fp8"])
@pytest.mark.parametrize(("family", "budget"), [("gemma3n", "E2-skip"), ("nemotron", "12B")])
def test_estimate_matches_a_plain_quantized_extract(
    family: str, budget: str, scheme: str, gemma3n_parent: Path, tiny_parent: Path, tmp_path: Path
) -> None:
    parent = gemma3n_parent if family == "gemma3n" else tiny_parent
    estimate = next(b for b in api.inspect(parent).budgets if b.name == budget).bytes[scheme]
    out = tmp_path / "child"
    result = run_cli("extract", str(parent), "--size", budget, "--quantize", scheme,
                     "--quant-format", "compressed-tensors", "--out", str(out))
    assert result.code == 0, result.stderr
    tensors = _tensors(out)
    # the estimate is of a calibrated output (ModelOpt's default), which adds one fp32 input scale per quantized
    # weight to what uncalibrated compressed-tensors stores
    quantized = sum(name.endswith(".weight_scale") for name in tensors)
    assert quantized > 0
    assert estimate == sum(tensors.values()) + SCALAR_BYTES * quantized


def test_inspect_names_the_quantizations_extract_refuses(tiny_parent: Path, tmp_path: Path) -> None:
    """A quantized parent, and a per-layer budget, cannot be quantized by extract in any format: inspect says so with
    extract's own sentence instead of showing a size for an output that cannot be made."""
    assert all(not b.quantize_refused for b in api.inspect(tiny_parent).budgets)
    nested = tmp_path / "nested"
    assert run_cli("quantize", str(tiny_parent), "--quantize", "fp8", "--quant-format", "compressed-tensors",
                   "--out", str(nested)).code == 0
    report = api.inspect(nested)
    assert report.budgets and all(
        {scheme: set(formats) for scheme, formats in b.quantize_refused.items()}
        == {"fp8": {"modelopt", "compressed-tensors"}, "nvfp4": {"modelopt", "compressed-tensors"}}
        for b in report.budgets
    )
    refused = run_cli("extract", str(nested), "--size", "12B", "--quantize", "nvfp4", "--out", str(tmp_path / "x"))
    assert refused.code == 2
    reason = report.budgets[-1].quantize_refused["nvfp4"]["modelopt"]
    assert reason in " ".join(refused.stderr.split()), refused.stderr
    shown = run_cli("inspect", str(nested))
    assert shown.code == 0 and shown.stdout.count("refused") == 7, shown.stdout  # 6 cells and one line
    assert "--quantize fp8/nvfp4 refused for '30B', '23B', '12B': the parent is already FP8" in shown.stdout


def test_inspect_refuses_quantizing_a_per_layer_budget(axis_parents: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "parent"
    shutil.copytree(axis_parents["active"], folder)
    add_budgets(folder, hetero={"n_routed_experts": [None, 12, None, None, None, 8, None, None]})
    budgets = {b.name: b for b in api.inspect(folder).budgets}
    assert set(budgets["hetero"].quantize_refused) == {"fp8", "nvfp4"}
    assert "per-layer sizes" in budgets["hetero"].quantize_refused["fp8"]["compressed-tensors"]
    assert not any(b.quantize_refused for name, b in budgets.items() if name != "hetero")


def test_inspect_names_the_format_a_family_cannot_calibrate_for(gemma3n_parent: Path, tmp_path: Path) -> None:
    """Gemma 3n has no calibration: the default ModelOpt format is refused, compressed-tensors is not, so sizes stay
    and one line names the refused format."""
    report = api.inspect(gemma3n_parent)
    assert report.budgets and all(set(b.quantize_refused) == {"fp8", "nvfp4"} for b in report.budgets)
    assert all(set(formats) == {"modelopt"} for b in report.budgets for formats in b.quantize_refused.values())
    shown = run_cli("inspect", str(gemma3n_parent))
    assert shown.code == 0 and "│ refused" not in shown.stdout and "refused │" not in shown.stdout
    text = " ".join(shown.stdout.split())
    assert "--quantize fp8/nvfp4 --quant-format modelopt refused for" in text
    assert "cannot calibrate model_type 'gemma3n_text' yet" in text
    refused = run_cli("extract", str(gemma3n_parent), "--size", "E2-skip", "--quantize", "fp8",
                      "--out", str(tmp_path / "x"))
    assert refused.code == 2 and "cannot calibrate model_type 'gemma3n_text' yet" in refused.stderr
