"""`verify` passes a fresh output and catches a flipped byte, a removed tensor, an edited config, an extra file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import save_file

from conftest import load_tensors, run_cli
from elastic_slice import api


@pytest.fixture
def child(tiny_parent: Path, tmp_path: Path) -> Path:
    out = tmp_path / "child"
    api.extract(tiny_parent, "12B", out)
    return out


@pytest.mark.slow
def test_fresh_output_verifies(child: Path, tiny_parent: Path) -> None:
    result = run_cli("verify", child, "--parent", tiny_parent, "--numerics", "--json")
    assert result.code == 0, result.stdout + result.stderr
    report = result.json()
    assert report["ok"] and report["problems"] == []
    assert any("byte for byte" in c for c in report["checks"])
    assert any("max abs diff" in c for c in report["checks"])


def test_flipped_byte(child: Path, tiny_parent: Path) -> None:
    shard = child / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1000] ^= 0x40
    shard.write_bytes(bytes(data))
    alone = api.verify(child)
    assert not alone.ok and any("sha256" in p and "model.safetensors" in p for p in alone.problems)
    with_parent = api.verify(child, parent=tiny_parent)
    assert any("differs from the parent's slice" in p for p in with_parent.problems)
    assert run_cli("verify", child).code == 1


def test_removed_tensor(child: Path, tiny_parent: Path) -> None:
    tensors = load_tensors(child)
    removed = "backbone.layers.2.mixer.o_proj.weight"
    del tensors[removed]
    save_file(tensors, str(child / "model.safetensors"), metadata={"format": "pt"})
    report = api.verify(child, parent=tiny_parent)
    assert any(removed in p and "missing" in p for p in report.problems), report.problems
    assert any("lacks tensor" in p and removed in p for p in report.problems), report.problems


def test_edited_config(child: Path) -> None:
    config = json.loads((child / "config.json").read_text())
    config["hidden_size"] = 112
    (child / "config.json").write_text(json.dumps(config))
    report = api.verify(child)
    assert any(p.startswith("'config.json' ") and "manifest" in p for p in report.problems)
    assert any("config.json implies" in p for p in report.problems)


def test_extra_file_and_missing_manifest(child: Path) -> None:
    (child / "notes.txt").write_text("hi")
    assert any("'notes.txt' is not listed" in p for p in api.verify(child).problems)
    (child / "elastic_slice_manifest.json").unlink()
    result = run_cli("verify", child)
    assert result.code == 1 and "elastic_slice_manifest.json is missing" in " ".join(result.stdout.split())


def test_verify_usage_errors(child: Path, tmp_path: Path) -> None:
    assert run_cli("verify", tmp_path / "nope").code == 2
    assert run_cli("verify", child, "--numerics").code == 2


def _edit_config_and_manifest(folder: Path, edit: Any) -> None:
    """Edit config.json and record the edit in the manifest, as someone hiding a change would."""
    import hashlib

    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    manifest_path = folder / "elastic_slice_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    data = (folder / "config.json").read_bytes()
    manifest["files"]["config.json"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest_path.write_text(json.dumps(manifest, indent=2))


@pytest.mark.parametrize(("field", "value"), [
    ("layer_norm_epsilon", 0.5),  # no tensor shows it
    ("mtp_layers_block_type", None),  # removed field
    ("num_experts_per_tok", 3),
    ("mamba_dt_min", 50.0),  # a legacy alias transformers maps onto time_step_min: an added key
])
def test_config_field_no_tensor_shows_is_checked_against_the_parent(
    child: Path, tiny_parent: Path, field: str, value: Any
) -> None:
    _edit_config_and_manifest(child, lambda config: config.pop(field) if value is None else config.update({field: value}))
    assert api.verify(child).ok  # the manifest was rewritten to hide the edit
    report = api.verify(child, parent=tiny_parent)
    assert any(p.startswith(f"config.json field {field!r} is ") and "budget '12B'" in p for p in report.problems), (
        report.problems
    )
    assert not any("config.json against budget" in c for c in report.checks)


def test_numerics_draws_tokens_from_the_text_models_vocabulary() -> None:
    """A multimodal config keeps vocab_size in text_config; verify --numerics must not fall back to 2 tokens."""
    from elastic_slice.errors import InputError
    from elastic_slice.verify import _vocab_size

    assert _vocab_size({"vocab_size": 300}) == 300
    assert _vocab_size({"text_config": {"vocab_size": 262400}}) == 262400
    with pytest.raises(InputError, match="vocab_size"):
        _vocab_size({"text_config": {}})


@pytest.mark.parametrize(("name", "change"), [
    ("generation_config.json", lambda text: text.replace("}", ', "temperature": 9.0}', 1)),
    ("chat_template.jinja", lambda text: text + "{{ 'injected' }}"),
    ("tokenizer_config.json", None),  # removed
])
def test_files_copied_from_the_parent_are_compared_with_it(child: Path, tiny_parent: Path, name: str, change: Any) -> None:
    """Tokenizer, chat template and generation config come from the parent: an edit hidden from the manifest (or a
    removal) fails verify --parent."""
    import hashlib

    path = child / name
    manifest_path = child / "elastic_slice_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if change is None:
        path.unlink()
        del manifest["files"][name]
    else:
        path.write_text(change(path.read_text()))
        data = path.read_bytes()
        manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest_path.write_text(json.dumps(manifest))
    assert api.verify(child).ok
    report = api.verify(child, parent=tiny_parent)
    wanted = "is missing from the output" if change is None else "differs from the parent's"
    assert any(p.startswith(f"{name!r} ") and wanted in p for p in report.problems), report.problems


@pytest.mark.slow
def test_numerics_reports_a_model_transformers_cannot_import(
    child: Path, tiny_parent: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A multimodal output whose towers need packages that are not installed (timm) is one problem, not a traceback."""
    import transformers

    def missing_package(*args: Any, **kwargs: Any) -> Any:
        raise ImportError("this model requires the timm library")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", missing_package)
    report = api.verify(child, parent=tiny_parent, numerics=True)
    assert any("could not load" in p and "timm" in p for p in report.problems), report.problems


def test_output_cut_with_another_index_file(tiny_parent: Path, tmp_path: Path) -> None:
    """verify re-derives the budget from the parent's own index unless told otherwise: when that is not the index the
    output was cut with, it says so in one problem naming the axis and the file, instead of listing every tensor."""
    document = json.loads((tiny_parent / "nesting_index.json").read_text())
    document["budgets"]["12B"]["hidden_size"] -= 16
    other = tmp_path / "other-index.json"
    other.write_text(json.dumps(document))
    out = tmp_path / "child"
    api.extract(tiny_parent, "12B", out, index=other)
    report = api.verify(out, parent=tiny_parent)
    assert not report.ok and len(report.problems) == 1, report.problems
    assert "'hidden_size'" in report.problems[0] and "'other-index.json'" in report.problems[0]
    assert api.verify(out, parent=tiny_parent, index=other).ok
