"""The committed example checkpoint is what the example script builds, and the README's main command works on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import load_tensors, run_cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tiny-elastic"


@pytest.mark.slow
def test_example_script_rebuilds_the_committed_checkpoint(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_tiny_elastic.py"), str(tmp_path / "t")], check=True)
    committed, rebuilt = load_tensors(EXAMPLE), load_tensors(tmp_path / "t")
    assert sorted(committed) == sorted(rebuilt)
    assert all(torch.equal(committed[name], rebuilt[name]) for name in committed)
    assert (EXAMPLE / "nesting_index.json").read_text() == (tmp_path / "t" / "nesting_index.json").read_text()
    configs = [json.loads((folder / "config.json").read_text()) for folder in (EXAMPLE, tmp_path / "t")]
    for config in configs:
        config.pop("transformers_version", None)
    assert configs[0] == configs[1]


def test_readme_main_command(tmp_path: Path) -> None:
    result = run_cli("extract", EXAMPLE, "--size", "12B", "--out", tmp_path / "tiny-12b")
    assert result.code == 0, result.stderr
    assert (tmp_path / "tiny-12b" / "model.safetensors").exists()
