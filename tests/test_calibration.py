"""Layer-by-layer calibration equals a whole-model calibration in transformers on the same text, and so do the
quantized outputs made from it; it reports each layer and reads one layer's weights at a time."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import load_tensors
from elastic_slice import api
from elastic_slice.api import QuantOptions
from elastic_slice.arch import architecture_of, get_architecture
from elastic_slice.arch.nemotron_h_fixture import TinySpec, build_tiny_elastic
from elastic_slice.arch.nemotron_h_torch import calibration_hooks
from elastic_slice.checkpoint import ShardFiles, open_checkpoint
from elastic_slice.errors import InputError
from elastic_slice.quant.calibrate import MAX_TOKENS, calibrate, calibration_texts, fill_unrouted_experts

RELATIVE = 1e-5


def whole_model_amax(parent: Path, texts: list[str]) -> dict[str, float]:
    """The reference: the whole parent loaded in fp32 by transformers, every text run through it with the hooks."""
    model = AutoModelForCausalLM.from_pretrained(parent, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(parent)
    amax: dict[str, float] = {}

    def record(name: str, tensor: Any) -> None:
        if tensor.numel():
            amax[name] = max(amax.get(name, 0.0), float(tensor.abs().amax()))

    handles = calibration_hooks(model, record)
    with torch.no_grad():
        for text in texts:
            model(tokenizer(text, return_tensors="pt", truncation=True, max_length=MAX_TOKENS)["input_ids"],
                  use_cache=False)
    for handle in handles:
        handle.remove()
    return fill_unrouted_experts(amax, get_architecture("nemotron_h").bind(model.config.to_dict()))


def assert_close(streamed: dict[str, float], reference: dict[str, float]) -> None:
    assert streamed.keys() == reference.keys()
    for name, value in reference.items():
        assert math.isclose(streamed[name], value, rel_tol=RELATIVE), (name, streamed[name], value)


@pytest.fixture(scope="module")
def deep_parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every layer kind, dense MLP included, twice; few experts so that some are never routed to."""
    spec = TinySpec(pattern="ME*-MEM*E-", n_routed_experts=16)
    return build_tiny_elastic(tmp_path_factory.mktemp("calib") / "deep", spec=spec, budgets={"30B": {}})


@pytest.mark.parametrize("source", ["default", "file"])
def test_layerwise_scales_equal_the_whole_model(tiny_parent: Path, tmp_path: Path, source: str) -> None:
    if source == "file":
        path = tmp_path / "notes.txt"
        path.write_text("A short line.\n\n" + "word " * 2000 + "\n\nThe last paragraph, on its own.")
        source = str(path)
    texts = calibration_texts(source)
    streamed = calibrate(open_checkpoint(tiny_parent), architecture_of(open_checkpoint(tiny_parent)), texts)
    assert_close(streamed, whole_model_amax(tiny_parent, texts))
    assert any(name.endswith(":output") for name in streamed) and "lm_head" in streamed


def test_layerwise_on_every_layer_kind_reports_each_layer(deep_parent: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = calibration_texts("default")
    checkpoint = open_checkpoint(deep_parent)
    read: list[str] = []
    read_tensor = ShardFiles.read_tensor

    def recording(self: ShardFiles, name: str) -> Any:
        read.append(name)
        return read_tensor(self, name)

    monkeypatch.setattr(ShardFiles, "read_tensor", recording)
    layers: list[tuple[int, int]] = []
    streamed = calibrate(checkpoint, architecture_of(checkpoint), texts, on_layer=lambda *done: layers.append(done))
    assert layers == [(done, 10) for done in range(1, 11)]
    assert "backbone.embeddings.weight" not in read and "lm_head.weight" not in read  # rows only / not needed
    order = [int(name.split(".")[2]) for name in read if name.startswith("backbone.layers.")]
    assert order == sorted(order) and set(order) == set(range(10))  # each layer's weights once, in order
    assert len(read) == len(set(read))
    monkeypatch.undo()
    assert_close(streamed, whole_model_amax(deep_parent, texts))


def test_quantized_outputs_equal_the_whole_model_calibration(tiny_parent: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Every budget's quantized tensors from layer-by-layer scales equal those from the whole model's."""
    for kind in ("fp8", "nvfp4"):
        api.extract_many(tiny_parent, ["30B", "23B", "12B"], tmp_path / f"{kind}-streamed",
                         quantize=QuantOptions(kind, kv_cache="fp8"))
    monkeypatch.setattr(api, "calibrate", lambda checkpoint, arch, texts, *rest: whole_model_amax(
        checkpoint.root, texts))
    for kind in ("fp8", "nvfp4"):
        api.extract_many(tiny_parent, ["30B", "23B", "12B"], tmp_path / f"{kind}-whole",
                         quantize=QuantOptions(kind, kv_cache="fp8"))
        for budget in ("30B", "23B", "12B"):
            streamed = load_tensors(tmp_path / f"{kind}-streamed" / budget)
            whole = load_tensors(tmp_path / f"{kind}-whole" / budget)
            assert streamed.keys() == whole.keys()
            for name, tensor in whole.items():
                if tensor.dtype == torch.float32 and tensor.numel() == 1:  # calibrated scales
                    torch.testing.assert_close(streamed[name], tensor, rtol=RELATIVE, atol=0)
                else:
                    assert torch.equal(streamed[name].view(torch.uint8), tensor.view(torch.uint8)), name


def test_progress_callback_stays_out_of_manifests() -> None:
    options = QuantOptions("nvfp4", on_layer=lambda done, total: None)
    assert "on_layer" not in options.to_json() and QuantOptions(**options.to_json()) == options
    with pytest.raises(InputError, match="options.quantize"):
        api._manifest_quantization({**options.to_json(), "on_layer": "print"})
