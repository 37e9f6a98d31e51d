"""A parent shard changed by another process during a run: shortened, it ends the run with one clear sentence and
no output at any point of the run; grown or replaced by a rename, the run reads the bytes it planned from."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import add_budgets
from elastic_slice import api
from elastic_slice import execute as execute_module
from elastic_slice.checkpoint import ShardFiles, open_checkpoint
from elastic_slice.errors import RunFailure
from elastic_slice.safetensors_header import TensorInfo

#: one budget per read path of the executor: column cuts read in pieces, rows read straight into the output,
#: and whole chunks read for a cast
READ_PATHS: dict[str, dict[str, Any]] = {
    "columns": {"size": "12B"},
    "rows": {"size": "rows"},
    "cast": {"size": "12B", "dtype": "fp32"},
}


@pytest.fixture
def parent(tiny_parent: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "parent"
    shutil.copytree(tiny_parent, copy)
    add_budgets(copy, rows={"n_routed_experts": 12, "layers": [0, 1, 2, 3, 4, 5]})
    return copy


def _on_read(monkeypatch: pytest.MonkeyPatch, action: Callable[[int, Path], None]) -> list[int]:
    """Call `action(read number, shard path)` before every read of a shard; returns the list of reads done."""
    real = ShardFiles.read_into
    reads: list[int] = []
    lock = threading.Lock()

    def read_into(self: ShardFiles, info: TensorInfo, start: int, buffer: memoryview) -> None:
        with lock:
            reads.append(len(reads))
            action(reads[-1], self._checkpoint.root / info.file)
        real(self, info, start, buffer)

    monkeypatch.setattr(ShardFiles, "read_into", read_into)
    return reads


def _no_staging_left(folder: Path) -> None:
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []
    assert [t.name for t in threading.enumerate() if t.name.startswith("elastic-slice-")] == []


@pytest.mark.parametrize("path", sorted(READ_PATHS))
def test_shard_shortened_at_any_point_of_the_run_is_a_clear_error(
    parent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    options = dict(READ_PATHS[path])
    size = options.pop("size")
    monkeypatch.setattr(execute_module, "PIECE_BYTES", 1)  # column cuts read row by row: many reads per tensor
    reads = _on_read(monkeypatch, lambda number, shard: None)
    api.extract(parent, size, tmp_path / "reference", **options)
    total = len(reads)
    assert total > 20, total
    headers = {Path(s.file).name: s.data_start for s in open_checkpoint(parent).shards}
    original = {name: (parent / name).read_bytes() for name in headers}
    # before the first read, after the first, mid-run (between chunks and inside tensors), at the last read
    for point in sorted({0, 1, total // 3, total // 2, 2 * total // 3, total - 1}):
        for name, data in original.items():
            (parent / name).write_bytes(data)
        out = tmp_path / "runs" / f"{path}-{point}"
        out.parent.mkdir(exist_ok=True)

        def shorten(number: int, shard: Path, point: int = point) -> None:
            if number == point:
                os.truncate(shard, headers[shard.name])  # only the header is left

        _on_read(monkeypatch, shorten)
        with pytest.raises(RunFailure, match=r"ended early while reading tensor '.+'; was it changed during the run\?"):
            api.extract(parent, size, out, **options)
        assert not out.exists()
        _no_staging_left(out.parent)


def test_shard_grown_or_replaced_during_the_run_gives_the_planned_bytes(
    parent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads go through descriptors opened at the start at the offsets of the headers read then: bytes appended
    are never read, and a shard renamed over keeps being read from the file that was opened."""
    api.extract(parent, "12B", tmp_path / "reference")
    shard = sorted(parent.glob("*.safetensors"))[0]

    def grow(number: int, path: Path) -> None:
        if number == 2 and path == shard:
            with path.open("ab") as handle:
                handle.write(b"\xff" * 4096)

    _on_read(monkeypatch, grow)
    api.extract(parent, "12B", tmp_path / "grown")

    def replace(number: int, path: Path) -> None:
        if number == 2 and path == shard:
            other = path.with_suffix(".new")
            other.write_bytes(b"\0" * 64)  # not even a safetensors file
            os.replace(other, path)

    _on_read(monkeypatch, replace)
    api.extract(parent, "12B", tmp_path / "replaced")
    reference = sorted((tmp_path / "reference").glob("*.safetensors"))
    for folder in ("grown", "replaced"):
        assert [p.read_bytes() for p in sorted((tmp_path / folder).glob("*.safetensors"))] == [
            p.read_bytes() for p in reference
        ], folder
