"""Killed, interrupted or out-of-space runs leave no --out, and a rerun succeeds."""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from elastic_slice import api
from elastic_slice.arch.nemotron_h_fixture import TinySpec, build_tiny_elastic

pytestmark = pytest.mark.slow  # signals to subprocesses

ROOT = Path(__file__).resolve().parent.parent
MEDIUM = TinySpec(
    vocab_size=4096, hidden_size=1024, mamba_num_heads=32, mamba_head_dim=32, n_groups=4, num_attention_heads=16,
    num_key_value_heads=4, head_dim=64, n_routed_experts=16, moe_intermediate_size=1024,
    moe_shared_expert_intermediate_size=2048, intermediate_size=2048,
)


@pytest.fixture(scope="module")
def medium_parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 170 MB in bf16, so that an extraction runs long enough to be interrupted mid-write."""
    budgets = {"30B": {"hidden_size": 1024}, "12B": {"hidden_size": 768, "n_routed_experts": 12}}
    return build_tiny_elastic(
        tmp_path_factory.mktemp("medium") / "parent", spec=MEDIUM, budgets=budgets, with_tokenizer=False
    )


def _command(parent: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "elastic_slice", "extract", str(parent), "--size", "30B", "--out", str(out)]


def _staging(out: Path) -> list[Path]:
    return [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial-")]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_signal_mid_write_leaves_no_output(medium_parent: Path, tmp_path: Path, signum: int) -> None:
    out = tmp_path / "out"
    for _ in range(5):  # a run that completes within the random delay was not interrupted: run it again
        process = subprocess.Popen(_command(medium_parent, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not _staging(out) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        assert process.poll() is None, "the run finished before it could be interrupted"
        time.sleep(random.uniform(0, 0.05))
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
        if process.returncode != 0:
            break
        shutil.rmtree(out)
    assert process.returncode != 0, "every run finished before the signal reached it"
    assert not out.exists()
    if signum == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
    else:
        assert process.returncode == 130, stderr.decode()
        assert b"interrupted" in stderr and b"Traceback" not in stderr
        assert _staging(out) == []
    rerun = subprocess.run(_command(medium_parent, out), capture_output=True)
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert _staging(out) == []  # a killed run's staging folder is cleaned up by the next run
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # and its lock file
    assert api.verify(out, parent=medium_parent).ok


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))


def test_full_disk_leaves_no_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "elastic_slice", "extract", str(ROOT / "examples" / "tiny-elastic"),
         "--size", "12B", "--out", str(out)],
        capture_output=True, preexec_fn=_limit_file_size, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert "writing the output failed" in stderr and "File too large" in stderr and "Traceback" not in stderr
    assert not out.exists() and _staging(out) == []


@pytest.mark.parametrize("sizes", [["--size", "12B"], ["--all"]])
def test_a_failed_run_removes_the_folders_it_created(tmp_path: Path, sizes: list[str]) -> None:
    """--out under folders that do not exist yet: a run that fails removes every folder it made (the lock file it
    keeps in the innermost one goes first), for one budget and for --all's container."""
    out = tmp_path / "new" / "deeper" / "out"
    result = subprocess.run(
        [sys.executable, "-m", "elastic_slice", "extract", str(ROOT / "examples" / "tiny-elastic"), *sizes,
         "--out", str(out)],
        capture_output=True, preexec_fn=_limit_file_size, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 1, result.stderr.decode()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.08])
def test_shard_shortened_by_another_process_mid_run_is_a_clear_error(
    medium_parent: Path, tmp_path: Path, delay: float
) -> None:
    """Reads never touch memory past what a shard still holds (a mapped read there would be SIGBUS, exit 135)."""
    parent = tmp_path / "parent"
    shutil.copytree(medium_parent, parent)
    out = tmp_path / "out"
    process = subprocess.Popen(_command(parent, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not _staging(out) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(delay)
    assert process.poll() is None, "the run finished before its parent could be shortened"
    for shard in parent.glob("*.safetensors"):
        os.truncate(shard, 4096)  # chunks already being read lose their bytes too
    _, stderr = process.communicate(timeout=60)
    message = stderr.decode()
    assert process.returncode == 1, message
    assert "ended early while reading tensor" in message and "was it changed during the run?" in message
    assert "Traceback" not in message
    assert not out.exists() and _staging(out) == []


def test_a_sigterm_after_the_command_ended_is_ignored() -> None:
    """A SIGTERM while the interpreter shuts down after a finished command would otherwise print a KeyboardInterrupt
    from threading's shutdown over a run whose outputs are complete."""
    from elastic_slice import cli

    cli._command_ended.clear()
    with pytest.raises(KeyboardInterrupt):
        cli._raise_interrupt(signal.SIGTERM, None)
    assert run_cli("--version").code == 0  # main() marks the command ended when it returns
    cli._raise_interrupt(signal.SIGTERM, None)
