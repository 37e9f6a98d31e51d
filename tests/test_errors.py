"""User mistakes end in one clear sentence, exit code 2, and nothing written at --out."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import run_cli


def _set_index(budgets: dict | None = None, **top: object) -> Callable[[Path], None]:
    def edit(parent: Path) -> None:
        path = parent / "nesting_index.json"
        index = json.loads(path.read_text())
        index["budgets"].update(budgets or {})
        index.update(top)
        path.write_text(json.dumps(index))

    return edit


def _set_config(**fields: object) -> Callable[[Path], None]:
    def edit(parent: Path) -> None:
        config = json.loads((parent / "config.json").read_text())
        config.update(fields)
        (parent / "config.json").write_text(json.dumps(config))

    return edit


def _remove_index(parent: Path) -> None:
    (parent / "nesting_index.json").unlink()


# (case id, how to break the parent, budget asked for, words the message must contain)
CASES: list[tuple[str, Callable[[Path], None] | None, str, tuple[str, ...]]] = [
    ("unknown budget", None, "7B", ("'7B'", "known budgets: 30B, 23B, 12B")),
    ("missing index", _remove_index, "12B", ("no nesting index", "--index", "nesting_index.json", "config.json")),
    ("axis larger than parent", _set_index({"big": {"hidden_size": 4096}}), "big",
     ("'big'", "'hidden_size'", "larger than the parent's 128")),
    ("mamba heads not multiple of groups", _set_index({"odd": {"mamba_num_heads": 10}}), "odd",
     ("'odd'", "'mamba_num_heads'", "not a multiple of n_groups (4)")),
    ("unknown axis", _set_index({"u": {"hidden": 64}}), "u", ("'u'", "'hidden'", "unknown axis")),
    ("negative size", _set_index({"neg": {"moe_intermediate_size": -32}}), "neg",
     ("'neg'", "'moe_intermediate_size'", "positive integer")),
    ("boolean size", _set_index({"b": {"n_routed_experts": True}}), "b", ("'n_routed_experts'", "positive integer")),
    ("too few experts for top-k", _set_index({"e": {"n_routed_experts": 1}}), "e",
     ("'n_routed_experts'", "num_experts_per_tok (2)")),
    ("too many heads per kv group", _set_index({"q": {"num_key_value_heads": 1, "num_attention_heads": 8}}), "q",
     ("'num_attention_heads'", "more than the parent's 4")),
    ("heads not multiple of kv", _set_index({"q": {"num_attention_heads": 5}}), "q",
     ("'num_attention_heads'", "not a multiple of num_key_value_heads")),
    ("per-layer list on a non-paddable axis", _set_index({"h": {"hidden_size": [96] * 8}}), "h",
     ("'h'", "'hidden_size'", "per-layer sizes cannot be represented exactly")),
    ("unsorted layers", _set_index({"l": {"layers": [3, 1]}}), "l", ("'layers'", "sorted")),
    ("layer out of range", _set_index({"l": {"layers": [0, 8]}}), "l", ("'layers'", "0..7")),
    ("parent budget disagrees", _set_index({"30B": {"hidden_size": 120}}), "12B",
     ("'30B'", "'hidden_size'", "parent budget must equal config.json")),
    ("unknown format", _set_index(format="other"), "12B", ("format 'other'", "elastic-nesting-index")),
    ("newer version", _set_index(version=2), "12B", ("version 2", "upgrade")),
    ("wrong architecture", _set_index(architecture="llama"), "12B", ("'llama'", "nemotron_h")),
    ("bad norm semantics", _set_index(norm_semantics="half"), "12B", ("norm_semantics 'half'",)),
    ("parent not a budget", _set_index(parent="40B"), "12B", ("parent '40B'",)),
    ("config mismatches tensors", _set_config(ssm_state_size=32), "12B",
     ("tensor 'backbone.layers.0.mixer.", "config.json implies")),
    ("config with wrong types", _set_config(hidden_size="128"), "12B", ("'hidden_size'", "positive integer")),
    ("config mamba heads vs groups", _set_config(n_groups=3), "12B", ("mamba_num_heads (16)", "n_groups (3)")),
    ("unsupported model_type", _set_config(model_type="llama"), "12B", ("'llama'", "not supported")),
]


@pytest.fixture
def broken_parent(tiny_parent: Path, tmp_path: Path) -> Path:
    parent = tmp_path / "parent"
    shutil.copytree(tiny_parent, parent)
    return parent


def _assert_clean_failure(result, out: Path, words: tuple[str, ...]) -> None:
    assert result.code == 2, (result.code, result.stderr)
    assert "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert message.startswith("error:"), message
    for word in words:
        assert word in message, (word, message)
    assert not out.exists()
    assert not any(p.name.startswith(f".{out.name}.") for p in out.parent.iterdir())


@pytest.mark.parametrize("case, edit, budget, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_sentence(broken_parent: Path, tmp_path: Path, case, edit, budget, words) -> None:
    if edit is not None:
        edit(broken_parent)
    out = tmp_path / "out"
    _assert_clean_failure(run_cli("extract", broken_parent, "--size", budget, "--out", out), out, words)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--dtype", "int4"], ("--dtype 'int4'", "bf16, fp16, fp32")),
        (["--max-shard-size", "lots"], ("'lots'", "5GB")),
    ],
)
def test_bad_options(tiny_parent: Path, tmp_path: Path, args: list[str], words: tuple[str, ...]) -> None:
    out = tmp_path / "out"
    _assert_clean_failure(run_cli("extract", tiny_parent, "--size", "12B", "--out", out, *args), out, words)


def test_missing_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _assert_clean_failure(run_cli("extract", tmp_path / "nope", "--size", "12B", "--out", out), out, ("does not exist",))


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    _assert_clean_failure(run_cli("extract", tmp_path / "empty", "--size", "12B", "--out", out), out, ("config.json",))


def test_existing_out_is_refused(tiny_parent: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli("extract", tiny_parent, "--size", "12B", "--out", out)
    assert result.code == 2 and "already exists" in result.stderr and "--overwrite" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"
    refused = run_cli("extract", tiny_parent, "--size", "12B", "--out", out, "--overwrite")  # not an earlier output
    assert refused.code == 2 and "'keep.txt'" in refused.stderr and (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert run_cli("extract", tiny_parent, "--size", "12B", "--out", out, "--overwrite").code == 0  # empty
    assert (out / "config.json").exists()


def test_usage_error_exit_code(tiny_parent: Path) -> None:
    result = run_cli("extract", tiny_parent)
    assert result.code == 2 and "--size" in result.stderr


def test_pickled_weights_are_refused(tmp_path: Path) -> None:
    parent = tmp_path / "pickled"
    parent.mkdir()
    (parent / "config.json").write_text(json.dumps({"model_type": "nemotron_h"}))
    (parent / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    out = tmp_path / "out"
    _assert_clean_failure(run_cli("extract", parent, "--size", "12B", "--out", out), out, ("never unpickles",))
