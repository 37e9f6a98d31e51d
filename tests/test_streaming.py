"""The streaming executor: chunked reads, threads and one pass for many budgets give the same bytes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import add_budgets, run_cli
from elastic_slice import api
from elastic_slice import execute as execute_module
from elastic_slice import writer as writer_module
from elastic_slice.budgets import ALL_BUDGETS
from elastic_slice.checkpoint import open_checkpoint
from elastic_slice.errors import RunFailure
from elastic_slice.execute import Target, execute
from elastic_slice.manifest import sha256_file
from elastic_slice.quant import kernels
from elastic_slice.writer import ShardWriter, WritePool


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_tiny_chunks_and_threads_give_identical_bytes(tiny_parent: Path, tmp_path: Path) -> None:
    reference = tmp_path / "ref"
    api.extract(tiny_parent, "12B", reference, max_shard_size="400KB")
    plan = api.plan_extract(tiny_parent, "12B", max_shard_size="400KB")
    for workers, chunk in ((1, 64), (4, 1000), (3, 7)):
        folder = tmp_path / f"w{workers}-c{chunk}"
        folder.mkdir()
        with WritePool() as pool:
            writer = ShardWriter(folder, plan, pool)
            execute(open_checkpoint(tiny_parent), [Target(plan, writer)], workers=workers, chunk_bytes=chunk,
                    inflight_bytes=chunk * 3)
        for shard in plan.shards:
            assert (folder / shard).read_bytes() == (reference / shard).read_bytes(), (workers, chunk, shard)
            assert writer.sha256[shard] == sha256_file(folder / shard)


class _CopiedSink:
    """A shard writer seen without `reserve`: the executor copies every cut into it, as for verify's sinks."""

    def __init__(self, writer: ShardWriter) -> None:
        self.write, self.close = writer.write, writer.close


def test_cuts_written_in_place_equal_cuts_copied_in_any_block_size(
    tiny_parent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readers cut straight into spans of the writers' blocks, spans crossing block ends included: three budgets in
    one pass give the bytes and sha256 of the copying path, for 4 KiB and 12 KiB blocks and several chunk sizes."""
    plans = api.plan_extract_many(tiny_parent, ["30B", "23B", "12B"], max_shard_size="400KB")
    crossings, real_views = [], writer_module.Span.views

    def views(self: writer_module.Span, offset: int, nbytes: int) -> Any:
        parts = real_views(self, offset, nbytes)
        crossings.append(len(parts) > 1)
        return parts

    monkeypatch.setattr(writer_module.Span, "views", views)

    def run(name: str, in_place: bool, chunk: int) -> dict[str, dict[str, str]]:
        for plan in plans:
            (tmp_path / name / plan.budget.name).mkdir(parents=True)
        with WritePool(len(plans)) as pool:
            writers = [ShardWriter(tmp_path / name / plan.budget.name, plan, pool) for plan in plans]
            targets = [Target(plan, writer if in_place else _CopiedSink(writer))
                       for plan, writer in zip(plans, writers, strict=True)]
            execute(open_checkpoint(tiny_parent), targets, chunk_bytes=chunk, inflight_bytes=4 * chunk)
        return {plan.budget.name: writer.sha256 for plan, writer in zip(plans, writers, strict=True)}

    for block in (writer_module.DIRECT_ALIGN, 3 * writer_module.DIRECT_ALIGN):
        monkeypatch.setattr(writer_module, "DIRECT_BLOCK", block)
        monkeypatch.setattr(writer_module, "MIN_BLOCK", block)
        copied = run(f"copied-{block}", False, 5000)
        for chunk in (777, 2**20):
            crossings.clear()
            assert run(f"in-place-{block}-{chunk}", True, chunk) == copied
            assert any(crossings)
            for plan in plans:
                assert _files(tmp_path / f"in-place-{block}-{chunk}" / plan.budget.name) == _files(
                    tmp_path / f"copied-{block}" / plan.budget.name), (block, chunk, plan.budget.name)


def test_direct_and_buffered_writes_in_any_block_size_give_identical_bytes(
    tiny_parent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = tmp_path / "ref"
    opened: list[bool] = []
    real_open = writer_module._open_for_writing
    monkeypatch.setattr(writer_module, "_open_for_writing", lambda path: (r := real_open(path), opened.append(r[1]))[0])
    api.extract(tiny_parent, "12B", reference, max_shard_size="400KB")
    assert opened and all(opened)  # this filesystem takes direct writes
    monkeypatch.setattr(writer_module, "DIRECT_BLOCK", 3 * writer_module.DIRECT_ALIGN)  # many blocks, a partial last
    api.extract(tiny_parent, "12B", tmp_path / "small-blocks", max_shard_size="400KB")
    real_os_open = os.open

    def no_direct_io(path: object, flags: int, *args: object) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_os_open(path, flags, *args)

    opened.clear()
    monkeypatch.setattr(writer_module.os, "open", no_direct_io)
    api.extract(tiny_parent, "12B", tmp_path / "buffered", max_shard_size="400KB")
    assert opened and not any(opened)
    manifest = json.loads((reference / "elastic_slice_manifest.json").read_text())
    for folder in (tmp_path / "small-blocks", tmp_path / "buffered"):
        for shard in sorted(p.name for p in reference.glob("*.safetensors")):
            assert (folder / shard).read_bytes() == (reference / shard).read_bytes(), (folder.name, shard)
            assert manifest["files"][shard]["sha256"] == sha256_file(folder / shard)


def test_one_pass_equals_separate_runs(tiny_parent: Path, tmp_path: Path) -> None:
    results = api.extract_many(tiny_parent, ["23B", "12B"], tmp_path / "many", command="same")
    assert [Path(r.out).name for r in results] == ["23B", "12B"]
    for budget in ("23B", "12B"):
        api.extract(tiny_parent, budget, tmp_path / f"single-{budget}", command="same")
        many, single = _files(tmp_path / "many" / budget), _files(tmp_path / f"single-{budget}")
        assert many.keys() == single.keys()
        for name in many:
            if name != "elastic_slice_manifest.json":
                assert many[name] == single[name], (budget, name)


def test_cli_all_budgets(tiny_parent: Path, tmp_path: Path) -> None:
    result = run_cli("extract", tiny_parent, "--all", "--out", tmp_path / "all", "--json", "--workers", "3")
    assert result.code == 0, result.stderr
    assert [r["budget"] for r in result.json()] == ["30B", "23B", "12B"]
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["12B", "23B", "30B"]
    both = run_cli("extract", tiny_parent, "--all", "--size", "12B", "--out", tmp_path / "x")
    assert both.code == 2 and "not both" in both.stderr
    twice = run_cli("extract", tiny_parent, "--size", "12B", "--size", "12b", "--out", tmp_path / "y")
    assert twice.code == 2 and "twice" in twice.stderr and not (tmp_path / "y").exists()


def test_manifest_records_parent_budget_options_and_hashes(tiny_parent: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    command = f"elastic-slice extract {tiny_parent} --size 12B --dtype fp32 --out {out}"
    api.extract(tiny_parent, "12B", out, dtype="fp32", command=command)
    manifest = json.loads((out / "elastic_slice_manifest.json").read_text())
    assert manifest["tool"]["name"] == "elastic-slice"
    assert manifest["budget"]["name"] == "12B" and manifest["budget"]["sizes"]["hidden_size"] == 96
    assert manifest["options"]["dtype"] == "fp32"  # the command as published: local folders reduced to names
    assert manifest["command"] == f"elastic-slice extract {tiny_parent.name} --size 12B --dtype fp32 --out m"
    parent = manifest["parent"]["files"]
    assert "header_sha256" in parent["model-00001-of-00003.safetensors"]
    assert parent["config.json"]["sha256"] == sha256_file(tiny_parent / "config.json")
    files = manifest["files"]
    assert sorted(files) == sorted(p.name for p in out.iterdir() if p.name != "elastic_slice_manifest.json")
    for name, entry in files.items():
        assert entry["sha256"] == sha256_file(out / name) and entry["size"] == (out / name).stat().st_size


@pytest.mark.slow
def test_plain_cut_never_imports_torch(tiny_parent: Path, tmp_path: Path) -> None:
    """Torch costs seconds to import; a cut that only moves bytes runs without it (casts and quantizing use it)."""
    script = (
        "import atexit, sys\nfrom elastic_slice import cli\n"
        "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules))\n"
        f"sys.argv = ['elastic-slice', 'extract', {str(tiny_parent)!r}, '--size', '12B', '--out', {str(tmp_path / 'o')!r}]\n"
        "cli.main()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "torch imported: False" in result.stdout


def test_parent_shortened_during_the_run_is_a_clean_error(tiny_parent: Path, tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    shutil.copytree(tiny_parent, parent)
    checkpoint = open_checkpoint(parent)  # headers read, then the shard loses its tail
    for shard in parent.glob("*.safetensors"):
        os.truncate(shard, shard.stat().st_size // 2)
    plan = api.plan_extract(tiny_parent, "12B")
    (tmp_path / "out").mkdir()
    with pytest.raises(RunFailure, match="ended early while reading tensor"), WritePool() as pool:
        execute(checkpoint, [Target(plan, ShardWriter(tmp_path / "out", plan, pool))])


def test_disk_full_after_many_blocks_fails_cleanly(
    tiny_parent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "DIRECT_BLOCK", writer_module.DIRECT_ALIGN)  # every block in flight fails
    real_pwrite, calls = os.pwrite, []

    def disk_fills_up(fd: int, data: object, offset: int) -> int:
        calls.append(offset)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(writer_module.os, "pwrite", disk_fills_up)
    out = tmp_path / "out"
    with pytest.raises(RunFailure, match="No space left on device"):
        api.extract(tiny_parent, "12B", out)
    assert not out.exists() and list(tmp_path.iterdir()) == [] and _run_threads() == []


def _run_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("elastic-slice-"))


def test_many_budgets_share_bounded_blocks_buffers_and_threads(
    tiny_parent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One pass over 41 budgets: the writers' blocks fit in POOL_BYTES, the cuts in flight (which readers write into
    them) and one block more per file, the same few threads as for one budget serve them all, each chunk's buffer stays within chunk_bytes
    (or one row), and the bytes equal separate runs."""
    parent = tmp_path / "parent"
    shutil.copytree(tiny_parent, parent)
    add_budgets(parent, **{f"b{i:02d}": {"hidden_size": 64 + 16 * (i % 4), "mamba_num_heads": 8} for i in range(38)})
    plans = api.plan_extract_many(parent, [ALL_BUDGETS])
    assert len(plans) == 41
    chunk_bytes, inflight_bytes, buffers, threads = 32 * 1024, 128 * 1024, [], []
    real_process, real_commit = execute_module._process, ShardWriter.commit

    def process(files: Any, chunk: Any, buffer: Any, *rest: Any) -> Any:
        buffers.append((chunk.buffer_bytes, chunk.stop - chunk.start))
        return real_process(files, chunk, buffer, *rest)

    def commit(self: ShardWriter, span: Any) -> None:
        threads.append(len(_run_threads()))
        real_commit(self, span)

    monkeypatch.setattr(execute_module, "_process", process)
    monkeypatch.setattr(ShardWriter, "commit", commit)
    with WritePool(len(plans)) as pool:
        targets = []
        for plan in plans:
            (tmp_path / plan.budget.name).mkdir()
            targets.append(Target(plan, ShardWriter(tmp_path / plan.budget.name, plan, pool)))
        execute(open_checkpoint(parent), targets, workers=2, chunk_bytes=chunk_bytes, inflight_bytes=inflight_bytes)
    # a file whose next block is reserved before its last one is committed holds one block more
    assert pool.made * pool.block_size <= writer_module.POOL_BYTES + (len(plans) * pool.block_size + inflight_bytes)
    assert pool.block_size < writer_module.DIRECT_BLOCK  # many small blocks were filled and written
    assert max(threads) <= 2 + writer_module.HASH_THREADS + 1 and _run_threads() == []  # readers, hashing, writing
    assert all(size <= chunk_bytes or rows == 1 for size, rows in buffers)
    assert sum(rows for _, rows in buffers) > len({size for size, _ in buffers})  # tensors were cut in chunks
    for budget in ("12B", "b00", "b37"):
        api.extract(parent, budget, tmp_path / f"single-{budget}")
        for shard in (tmp_path / f"single-{budget}").glob("*.safetensors"):
            assert (tmp_path / budget / shard.name).read_bytes() == shard.read_bytes(), (budget, shard.name)


def test_interrupt_mid_write_releases_the_run(
    tiny_parent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_commit, calls = ShardWriter.commit, []

    def interrupted(self: ShardWriter, span: Any) -> None:
        calls.append(span)
        if len(calls) == 40:
            raise KeyboardInterrupt  # reader threads are filling spans of the writers' blocks meanwhile
        real_commit(self, span)

    monkeypatch.setattr(ShardWriter, "commit", interrupted)
    monkeypatch.setattr(writer_module, "MIN_BLOCK", writer_module.DIRECT_ALIGN)
    monkeypatch.setattr(writer_module, "POOL_BYTES", 4 * writer_module.DIRECT_ALIGN)  # blocks in flight when it stops
    with pytest.raises(KeyboardInterrupt):
        api.extract_many(tiny_parent, ["30B", "23B", "12B"], tmp_path / "out")
    # no budget, no staging folder, and not the container the run created for them
    assert not (tmp_path / "out").exists() and _run_threads() == []


def test_quantizing_run_restores_torch_threads_and_the_collector(tiny_parent: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that quantizes with torch sets it to one thread and freezes the collector while it runs; both are as
    before after it, and no reader or loader thread is left."""
    import gc

    import torch

    monkeypatch.setenv(kernels.KERNELS_ENV, "torch")  # the compiled kernels would not load torch at all
    threads = torch.get_num_threads()
    api.extract(tiny_parent, "12B", tmp_path / "q", quantize=api.QuantOptions("nvfp4", "compressed-tensors"))
    assert torch.get_num_threads() == threads and gc.get_freeze_count() == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("elastic-slice")]


def test_read_ahead_asks_for_every_chunk_once_in_order_a_window_ahead(tiny_parent: Path) -> None:
    plan = api.plan_extract(tiny_parent, "12B")
    chunks = list(execute_module._chunks(open_checkpoint(tiny_parent), [Target(plan, Any)], 4096))
    asked: list[tuple[str, int, int]] = []

    class Files:
        def prefetch(self, info: Any, start: int, size: int) -> None:
            asked.append((info.name, start, size))

    window, handed_out, total = 64 * 1024, 0, sum(chunk.nbytes for chunk in chunks)
    read_ahead = execute_module._ReadAhead(Files(), chunks, window)  # type: ignore[arg-type]
    for chunk in chunks:
        read_ahead.advance(chunk)
        handed_out += chunk.nbytes
        assert min(total, handed_out + window) <= sum(size for *_, size in asked)
        assert sum(size for *_, size in asked[:-1]) < handed_out + window
    assert len(chunks) > 10 and asked == [(c.info.name, c.start * c.row_bytes, c.nbytes) for c in chunks]


def test_a_kernel_without_huge_pages_still_writes(
    tiny_parent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Huge pages for the write blocks are only asked for: a kernel that refuses the advice (EINVAL, as one built
    without transparent huge pages does) gets 4 KiB pages and the same bytes."""
    expected = tmp_path / "expected"
    api.extract(tiny_parent, "12B", expected)
    shim = type("MmapWithoutHugePages", (), {name: getattr(writer_module.mmap, name)
                                             for name in dir(writer_module.mmap) if not name.startswith("__")})
    shim.MADV_HUGEPAGE = 0x7FFF  # advice no kernel knows: madvise fails with EINVAL
    monkeypatch.setattr(writer_module, "mmap", shim)
    with pytest.raises(OSError):
        writer_module.mmap.mmap(-1, 4096, flags=shim.MAP_PRIVATE | shim.MAP_ANONYMOUS).madvise(shim.MADV_HUGEPAGE)
    out = tmp_path / "out"
    api.extract(tiny_parent, "12B", out)
    assert sha256_file(out / "model.safetensors") == sha256_file(expected / "model.safetensors")
