"""Shared fixtures: tiny elastic parents built with transformers' NemotronH classes, and a CLI runner."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from elastic_slice.arch.nemotron_h_fixture import TINY_BUDGETS, TinySpec, build_tiny_elastic
from elastic_slice.cli import main

#: one budget per elastic axis alone, and one with every axis together (pattern ME*-ME*M)
AXIS_BUDGETS: dict[str, dict[str, Any]] = {
    "30B": TINY_BUDGETS["30B"],
    "hidden": {"hidden_size": 96},
    "mamba": {"mamba_num_heads": 8},
    "heads": {"num_attention_heads": 4},
    "kv": {"num_key_value_heads": 1},
    "experts": {"n_routed_experts": 12},
    "moe_ffn": {"moe_intermediate_size": 32},
    "shared_ffn": {"moe_shared_expert_intermediate_size": 64},
    "dense_ffn": {"intermediate_size": 96},
    "layers": {"layers": [0, 2, 3, 5, 7]},
    "all": {
        "hidden_size": 80, "mamba_num_heads": 8, "num_attention_heads": 2, "num_key_value_heads": 1,
        "n_routed_experts": 10, "moe_intermediate_size": 32, "moe_shared_expert_intermediate_size": 64,
        "intermediate_size": 96, "layers": [0, 1, 2, 3, 5, 6, 7],
    },
}


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_cli(*args: str) -> CliResult:
    """Run the console entry point in-process, as a user would from the shell."""
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["elastic-slice", *map(str, args)]
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = argv
    return CliResult(code, out.getvalue(), err.getvalue())


def tree_hash(root: Path) -> dict[str, str]:
    """Every path under `root` (hidden ones too) -> what it is: a file's sha256 (size and times for huge sparse
    files), a link's target, or a folder."""
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = "link " + os.readlink(path)
            elif path.is_dir():
                found[key] = "dir"
            elif path.stat().st_size > 2**26:  # a sparse file of gigabytes: its size and change time
                found[key] = f"{path.stat().st_size} {path.stat().st_mtime_ns} {path.stat().st_ctime_ns}"
            else:
                found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def add_budgets(parent: Path, **budgets: Any) -> None:
    """Add budgets (name -> axis sizes) to the nesting_index.json of a parent folder."""
    path = parent / "nesting_index.json"
    index = json.loads(path.read_text())
    index["budgets"].update(budgets)
    path.write_text(json.dumps(index))


def load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder, by name."""
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            for name in handle.keys():
                tensors[name] = handle.get_tensor(name)
    return tensors


@pytest.fixture(scope="session")
def tiny_parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release-like miniature: bf16, three shards, budgets 30B/23B/12B in nesting_index.json."""
    return build_tiny_elastic(tmp_path_factory.mktemp("parents") / "tiny", max_shard_size="1MB")


@pytest.fixture(scope="session")
def axis_parents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fp32 parents with one budget per axis, for norm_semantics "active" and "full" (epsilon 1e-12)."""
    root = tmp_path_factory.mktemp("axis-parents")
    return {
        norm: build_tiny_elastic(
            root / norm,
            spec=TinySpec(layer_norm_epsilon=1e-12),
            budgets=AXIS_BUDGETS,
            norm_semantics=norm,
            dtype="float32",
            seed=1,
            with_tokenizer=False,
        )
        for norm in ("active", "full")
    }
