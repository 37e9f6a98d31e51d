"""Presets: a known release without a nesting index is recognised by its config fingerprint, never by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli
from elastic_slice import api
from elastic_slice.preset import PRESETS_ENV


@pytest.fixture
def bare_parent(tiny_parent: Path, tmp_path: Path) -> Path:
    parent = tmp_path / "downloaded"
    shutil.copytree(tiny_parent, parent)
    (parent / "nesting_index.json").unlink()
    return parent


def _write_preset(folder: Path, tiny_parent: Path, **changes: object) -> None:
    folder.mkdir(exist_ok=True)
    preset = {
        "release": "tiny test release",
        "source": "tests/test_presets.py (the fixture's own sizes)",
        "architecture": "nemotron_h",
        "fingerprint": {"hidden_size": 128, "vocab_size": 320, "n_routed_experts": 16, "mamba_num_heads": 16},
        "index": json.loads((tiny_parent / "nesting_index.json").read_text()),
        **changes,
    }
    (folder / "tiny.json").write_text(json.dumps(preset))


def test_matching_preset_is_used_and_named(bare_parent: Path, tiny_parent: Path, tmp_path: Path, monkeypatch) -> None:
    assert api.inspect(bare_parent).problems  # no index, no preset yet
    _write_preset(tmp_path / "presets", tiny_parent)
    monkeypatch.setenv(PRESETS_ENV, str(tmp_path / "presets"))
    report = api.inspect(bare_parent)
    assert report.problems == [] and "preset" in report.index_source and "tiny test release" in report.index_source
    assert "sizes from tests/test_presets.py" in report.index_source
    assert run_cli("extract", bare_parent, "--size", "12B", "--out", tmp_path / "o").code == 0


def test_fingerprint_not_name_decides(bare_parent: Path, tiny_parent: Path, tmp_path: Path, monkeypatch) -> None:
    _write_preset(tmp_path / "presets", tiny_parent, fingerprint={"hidden_size": 2688})
    monkeypatch.setenv(PRESETS_ENV, str(tmp_path / "presets"))
    result = run_cli("extract", bare_parent, "--size", "12B", "--out", tmp_path / "o")
    assert result.code == 2 and "no preset matches" in result.stderr


def test_preset_without_source_is_refused(bare_parent: Path, tiny_parent: Path, tmp_path: Path, monkeypatch) -> None:
    _write_preset(tmp_path / "presets", tiny_parent, source="")
    monkeypatch.setenv(PRESETS_ENV, str(tmp_path / "presets"))
    result = run_cli("inspect", bare_parent)
    assert result.code == 2 and "names no published source" in result.stdout + result.stderr


def test_package_ships_no_invented_presets() -> None:
    from importlib import resources

    shipped = [e.name for e in resources.files("elastic_slice.presets").iterdir() if e.name.endswith(".json")]
    for name in shipped:
        data = json.loads(resources.files("elastic_slice.presets").joinpath(name).read_text())
        assert data["source"], name
