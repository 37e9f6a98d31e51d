"""Checkpoints by Hub repo id, through huggingface_hub's own cache with HF_HUB_OFFLINE=1 (no network).

The test lays the example checkpoint out as the Hugging Face cache stores a downloaded repo (blobs, a snapshot of
links, refs/main) and runs the CLI in a subprocess, so that huggingface_hub reads its environment as in real use.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the CLI in subprocesses

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tiny-elastic"
REPO = "acme/tiny-elastic"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("hf") / "hub"
    repo = cache / ("models--" + REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for path in sorted(EXAMPLE.iterdir()):
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / path.name)
    return cache


def _cli(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    return subprocess.run([sys.executable, "-m", "elastic_slice", *args], capture_output=True, text=True, env=env)


def test_inspect_and_extract_by_repo_id(hub_cache: Path, tmp_path: Path) -> None:
    report = _cli(hub_cache, "inspect", REPO, "--json")
    assert report.returncode == 0, report.stderr
    assert [b["name"] for b in json.loads(report.stdout)["budgets"]] == ["30B", "23B", "12B"]
    out = tmp_path / "child"
    result = _cli(hub_cache, "extract", REPO, "--size", "12B", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    local = tmp_path / "local"
    assert _cli(hub_cache, "extract", str(EXAMPLE), "--size", "12B", "--out", str(local)).returncode == 0
    assert (out / "model.safetensors").read_bytes() == (local / "model.safetensors").read_bytes()
    assert f"base_model: {REPO}" in (out / "README.md").read_text()
    pinned = _cli(hub_cache, "inspect", REPO, "--revision", COMMIT, "--json")
    assert pinned.returncode == 0, pinned.stderr


def test_missing_repo_and_missing_file_are_clear(hub_cache: Path, tmp_path: Path) -> None:
    absent = _cli(hub_cache, "inspect", "acme/absent")
    assert absent.returncode == 2 and "not in the Hugging Face cache" in absent.stderr and "Traceback" not in absent.stderr
    snapshot = hub_cache / ("models--" + REPO.replace("/", "--")) / "snapshots" / COMMIT
    shard = snapshot / "model-00002-of-00003.safetensors"
    target = os.readlink(shard)
    shard.unlink()
    try:
        result = _cli(hub_cache, "extract", REPO, "--size", "12B", "--out", str(tmp_path / "o"))
        assert result.returncode == 2, result.stderr
        message = " ".join(result.stderr.split())
        assert "model-00002-of-00003.safetensors" in message and "not in the Hugging Face cache" in message
        assert not (tmp_path / "o").exists()
    finally:
        os.symlink(target, shard)
    local = _cli(hub_cache, "inspect", str(EXAMPLE), "--revision", "main")
    assert local.returncode == 2 and "--revision applies to Hub repo ids" in local.stderr
