"""Write a child model folder: streamed safetensors shards, the HF index, config and copied files (into the staging
folder `destination` provides)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import mmap
import os
import queue
import shutil
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import CONFIG_FILE, PICKLE_SUFFIXES, WEIGHTS_INDEX_FILE, Checkpoint
from .errors import RunFailure
from .nesting import INDEX_FILE
from .plan import Plan, TensorOp

CARD_FILE = "README.md"
#: bytes per write of a shard (at most and at least), the blocks all shard files of a run share, and how many of
#: them may be in flight beyond one per file
DIRECT_BLOCK = 8 * 2**20
MIN_BLOCK = 64 * 1024
POOL_BYTES = 32 * 2**20
IN_FLIGHT = 3
#: threads hashing blocks: the blocks of one file are hashed in order, those of several files side by side
HASH_THREADS = 2
#: direct writes start and end on multiples of this (the largest logical block size in common use)
DIRECT_ALIGN = 4096
MANIFEST_FILE = "elastic_slice_manifest.json"
#: an empty file in every staging folder while it is written: only folders holding it are ever cleaned up as
#: abandoned stagings (it is removed just before the folder is moved into place, and never listed in a manifest)
STAGING_MARKER = ".elastic-slice-staging"
#: bytes set aside for the model card, and for the manifest (plus some per file it lists)
_CARD_ALLOWANCE = 64 * 2**10
_MANIFEST_ALLOWANCE = 16 * 2**10
_MANIFEST_PER_FILE = 512
#: parent files that the child never inherits as they are: weights, indexes and files the writer makes itself
_NOT_COPIED = {CONFIG_FILE, WEIGHTS_INDEX_FILE, INDEX_FILE, CARD_FILE, MANIFEST_FILE, "hf_quant_config.json"}
_NOT_COPIED_SUFFIXES = (".safetensors", ".gguf", *PICKLE_SUFFIXES)


def safetensors_header(ops: list[TensorOp]) -> bytes:
    """The header of a shard holding `ops` in order, padded with spaces to a multiple of 8 bytes."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for op in ops:
        header[op.out_name] = {
            "dtype": op.out_dtype,
            "shape": list(op.out_shape),
            "data_offsets": [offset, offset + op.nbytes],
        }
        offset += op.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


class WritePool:
    """The blocks and threads that every shard file of a run shares, so that memory and threads do not grow with the
    number of budgets one pass writes: page-aligned blocks of about POOL_BYTES in all, HASH_THREADS threads hashing
    full blocks (for the manifest's sha256) while another writes them.

    Every file being written holds one block, which it fills and hands over to be hashed and written, taking a free
    one (waiting for a write when none is free). Blocks are DIRECT_BLOCK bytes for up to a few files and smaller for
    many, so that the blocks of `writers` files and a few in flight fit in POOL_BYTES; past 500 files they stay at
    MIN_BLOCK (64 KiB a file: smaller writes cost more in per-block overhead than they save). Cuts that reader
    threads write in place hold the blocks they are reserved in until committed, so a run holds at most the bytes
    of the cuts in flight (the executor's bound) and one block per file more. Used from one thread (the
    executor's); use it as a context manager.
    """

    def __init__(self, writers: int = 1) -> None:
        share = POOL_BYTES // (writers + IN_FLIGHT) // DIRECT_ALIGN * DIRECT_ALIGN
        self.block_size = min(DIRECT_BLOCK, max(MIN_BLOCK, share))
        #: blocks made only when none is free, up to this many (or more, should every block be held by a file)
        self.limit = max(writers + IN_FLIGHT, POOL_BYTES // self.block_size)
        self.made = 0
        self._held = 0
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self._hasher = ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="elastic-slice-hash")
        self._storer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="elastic-slice-write")

    def __enter__(self) -> WritePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def take(self) -> mmap.mmap:
        """A free block, made if the limit allows (or if none is being written), else the next one written."""
        try:
            block = self._free.get_nowait()
        except queue.Empty:
            if self.made < self.limit or self._held == self.made:
                self.made += 1
                block = _new_block(self.block_size)
            else:
                block = self._free.get()
        self._held += 1
        return block

    def give(self, block: mmap.mmap) -> None:
        """Return a block that was taken and not stored."""
        self._held -= 1
        self._free.put(block)

    def store(self, file: _ShardFile, block: mmap.mmap, length: int, offset: int) -> Future[None]:
        """Hash the first `length` bytes of a block of `file` and write them at `offset`, in the background; the
        block is free again afterwards."""
        self._held -= 1
        with memoryview(block) as view:
            hashed = self._hasher.submit(_hash_after, file.hashed, file.hash, view[:length])
        file.hashed = hashed
        return self._storer.submit(self._store, file, block, length, offset, hashed)

    def _store(self, file: _ShardFile, block: mmap.mmap, length: int, offset: int, hashed: Future[None]) -> None:
        try:
            file.write_block(block, length, offset)
        finally:
            wait([hashed])
            self._free.put(block)  # even after a failed write: the file's next block reports the failure

    def close(self) -> None:
        """Wait for the blocks being written, then end the threads."""
        self._storer.shutdown()
        self._hasher.shutdown()


def _new_block(size: int) -> mmap.mmap:
    """Page-aligned private memory for a block, asked for transparent huge pages.

    mmap's default (a shared anonymous mapping) never gets huge pages; hashing blocks of 4 KiB pages cost far more
    CPU on the VM measured (TLB misses are two-level page walks there): 30B + 23B + 12B in one pass, user CPU
    9.7-10.0 s with shared blocks, 9.2-9.3 s private, 7.7-8.0 s private with huge pages."""
    block = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux only
        try:
            block.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # a kernel without transparent huge pages (EINVAL): 4 KiB pages, slower but the same bytes
            pass
    return block


def _hash_after(previous: Future[None] | None, digest: Any, data: memoryview) -> None:
    """Add a block to a file's sha256 once the file's previous block is in it (that block is being hashed already:
    the pool takes tasks in order)."""
    if previous is not None:
        wait([previous])
    digest.update(data)


class Span:
    """Bytes of a shard file set aside before they arrive (`ShardWriter.reserve`): views of the pool's blocks, in
    file order, that a reader thread fills in place; the writer hashes and writes them once the span is committed."""

    def __init__(self, file: _ShardFile, parts: list[tuple[_Block, np.ndarray]]) -> None:
        self.file = file
        self.blocks = [block for block, _ in parts]
        self._parts = [part for _, part in parts]
        self.nbytes = sum(len(part) for part in self._parts)

    def views(self, offset: int, nbytes: int) -> list[np.ndarray]:
        """The span's bytes [offset, offset + nbytes), as views of one block or (across a block's end) of several."""
        views = []
        for part in self._parts:
            if nbytes and offset < len(part):
                views.append(part[offset : offset + nbytes])
                nbytes -= len(views[-1])
            offset = max(0, offset - len(part))
        return views

    def fill(self, offset: int, data: np.ndarray) -> None:
        """Copy bytes into the span from `offset` on."""
        done = 0
        for view in self.views(offset, len(data)):
            view[:] = data[done : done + len(view)]
            done += len(view)


@dataclass(eq=False)
class _Block:
    """A pool block of one file: where it starts in the file, how many of its bytes are reserved, and how many
    spans holding some of them are not committed yet (it is hashed and written when none is and it is full)."""

    memory: mmap.mmap
    offset: int
    reserved: int = 0
    pending: int = 0


class _ShardFile:
    """One shard file, written in aligned blocks of a WritePool, past the page cache (O_DIRECT) where the
    filesystem allows it; the file is opened only while a block is written, so a run holds no descriptor per file.

    Bytes are reserved in page-aligned blocks, filled (by the caller, or in place by reader threads) and committed;
    the pool's threads hash each full block, in file order, and write it. Measured on a 2-core VM (Linux 6.18, ext4),
    direct 8 MiB writes of 3.7 GB took 2.0-2.8 s where buffered 8 MiB writes took 5.1-14 s (and `cp` of the same
    bytes 2.2-7 s): every buffered write fills newly allocated page-cache memory, which that VM's host supplied
    slowly and unevenly. Filesystems without O_DIRECT get buffered writes.
    """

    def __init__(self, path: Path, pool: WritePool) -> None:
        self._path = path
        fd, self.direct = _open_for_writing(path)
        os.close(fd)
        self._pool = pool
        self.hash = hashlib.sha256()
        #: the hashing of the file's last block handed over: the next one waits for it
        self.hashed: Future[None] | None = None
        self._tasks: deque[Future[None]] = deque()
        #: blocks reserved and not handed over yet, in file order; the last one may have room left
        self._blocks: deque[_Block] = deque()
        self._end = 0
        self.open_spans = 0

    def reserve(self, nbytes: int) -> Span:
        """Set aside the next `nbytes` bytes of the file."""
        parts = []
        while nbytes:
            if not self._blocks or self._blocks[-1].reserved == self._pool.block_size:
                self._blocks.append(_Block(self._pool.take(), self._end))
            block = self._blocks[-1]
            count = min(nbytes, self._pool.block_size - block.reserved)
            parts.append((block, np.frombuffer(block.memory, np.uint8, count, block.reserved)))
            block.reserved += count
            block.pending += 1
            self._end += count
            nbytes -= count
        self.open_spans += 1
        return Span(self, parts)

    def commit(self, span: Span) -> None:
        """Mark a span's bytes as filled; hand over the blocks that are then complete."""
        for block in span.blocks:
            block.pending -= 1
        self.open_spans -= 1
        self._hand_over(last=False)

    def append(self, view: memoryview) -> None:
        """Add bytes at the end of the file.

        The bytes are copied by numpy, which lets go of the GIL while it copies (an mmap slice assignment holds it:
        sampled with py-spy --gil, plain extract held the GIL 48% of the time in that copy, while the reader
        threads waited for it to cut)."""
        span = self.reserve(len(view))
        span.fill(0, np.frombuffer(view, np.uint8))
        self.commit(span)

    def _hand_over(self, last: bool) -> None:
        """Hash and write the leading blocks that are full (or, at the `last`, filled) and have no open span."""
        while self._blocks and not self._blocks[0].pending:
            block = self._blocks[0]
            if block.reserved < self._pool.block_size and not last:
                return
            while self._tasks and self._tasks[0].done():
                self._tasks.popleft().result()  # a failed write (disk full) stops the run here
            self._blocks.popleft()
            self._tasks.append(self._pool.store(self, block.memory, block.reserved, block.offset))

    def write_block(self, block: mmap.mmap, length: int, offset: int) -> None:
        """Write a block's first `length` bytes at `offset` (run by the pool's writing thread)."""
        with memoryview(block) as view:
            # a direct write covers whole aligned blocks: the last one is padded and the file cut back after
            padded = -(-length // DIRECT_ALIGN) * DIRECT_ALIGN
            view[length:padded] = bytes(padded - length)
            fd = os.open(self._path, os.O_WRONLY | (os.O_DIRECT if self.direct else 0))
            try:
                written = 0
                while written < (stop := padded if self.direct else length):
                    try:
                        written += os.pwrite(fd, view[written:stop], offset + written)
                    except OSError as exc:
                        if not self.direct or exc.errno != errno.EINVAL:
                            raise
                        self._stop_direct_writes(fd)  # e.g. a file size limit cuts the write to an unaligned length
                    if self.direct and written % DIRECT_ALIGN:
                        self._stop_direct_writes(fd)  # a short write (a nearly full disk): the rest goes buffered
            finally:
                os.close(fd)

    def _stop_direct_writes(self, fd: int) -> None:
        """Write the rest of the file buffered, which takes any length and reports the real error (EFBIG, ENOSPC)."""
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        self.direct = False

    def finish(self) -> str:
        """Write what is left, wait for every block; the file's sha256."""
        assert not self.open_spans, "every reserved span is committed before its file is finished"
        self._hand_over(last=True)
        while self._tasks:
            self._tasks.popleft().result()
        os.truncate(self._path, self._end)
        return self.hash.hexdigest()

    def close(self) -> None:
        """Stop without finishing: give the blocks not handed over back and wait for those being written (errors
        ignored)."""
        while self._blocks:
            self._pool.give(self._blocks.popleft().memory)
        wait(self._tasks)
        self._tasks.clear()


def _open_for_writing(path: Path) -> tuple[int, bool]:
    """A new file's descriptor, opened for direct writes when the filesystem supports them, and whether it was."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if hasattr(os, "O_DIRECT"):
        try:
            return os.open(path, flags | os.O_DIRECT, 0o666), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: this filesystem has no direct I/O (tmpfs, some FUSE)
                raise
    return os.open(path, flags, 0o666), False


class ShardWriter:
    """Streams tensor bytes into the planned shard files, strictly in plan order, hashing as it writes.

    A tensor may arrive in several parts (row chunks), either as data (`write`) or filled in place: `reserve` sets
    the next bytes aside in the writer's blocks (in plan order) for a reader thread to fill, `commit` marks them
    filled. Shard files are written in blocks of `pool`; a file is finished once all of its bytes are committed.
    """

    def __init__(self, folder: Path, plan: Plan, pool: WritePool) -> None:
        self._folder = folder
        self._pool = pool
        self._ops = plan.ops
        self._by_shard: dict[str, list[TensorOp]] = {}
        for op in plan.ops:
            self._by_shard.setdefault(op.shard, []).append(op)
        self._next = 0
        self._remaining = 0
        self._file: _ShardFile | None = None
        self._shard = ""
        #: files whose every byte is reserved, waiting for their last spans to be committed, by name
        self._closing: dict[str, _ShardFile] = {}
        #: sha256 of every finished shard file, by file name
        self.sha256: dict[str, str] = {}
        self._start_op()

    def write(self, op: TensorOp, data: memoryview | bytes | Any) -> None:
        """Append the next bytes of `op`, which must be the tensor the plan expects now."""
        view = memoryview(data).cast("B")
        file = self._advance(op, len(view))
        file.append(view)
        self._finish_closed()

    def reserve(self, op: TensorOp, nbytes: int) -> Span:
        """Set aside the next `nbytes` bytes of `op` (the tensor the plan expects now), to be filled and committed."""
        span = self._advance(op, nbytes).reserve(nbytes)
        self._finish_closed()
        return span

    def commit(self, span: Span) -> None:
        """The bytes of a reserved span are filled: they may be hashed and written."""
        span.file.commit(span)
        self._finish_closed()

    def _advance(self, op: TensorOp, nbytes: int) -> _ShardFile:
        """Take `nbytes` more of `op` (checked against the plan); the file they go to."""
        if self._next >= len(self._ops) or op.out_name != self._ops[self._next].out_name:
            raise RunFailure(f"internal error: {op.out_name} arrived out of plan order.")
        if nbytes > self._remaining:
            raise RunFailure(f"internal error: {op.out_name} got {nbytes} bytes, {self._remaining} were left.")
        file = self._file
        assert file is not None
        self._remaining -= nbytes
        if self._remaining == 0:
            self._next += 1
            self._start_op()
        return file

    def _start_op(self) -> None:
        """Open the shard of the next op with bytes, closing shards (and skipping empty tensors) on the way."""
        while self._next < len(self._ops):
            op = self._ops[self._next]
            if op.shard != self._shard:
                self._open(op.shard)
            if op.nbytes:
                self._remaining = op.nbytes
                return
            self._next += 1
        self._close_shard()

    def _open(self, shard: str) -> None:
        self._close_shard()
        self._file = _ShardFile(self._folder / shard, self._pool)
        self._shard = shard
        self._file.append(memoryview(safetensors_header(self._by_shard[shard])))

    def _close_shard(self) -> None:
        if self._file is not None:
            self._closing[self._shard] = self._file
            self._file = None

    def _finish_closed(self) -> None:
        """Finish the closed shard files whose spans are all committed."""
        for shard, file in list(self._closing.items()):
            if not file.open_spans:
                del self._closing[shard]
                self.sha256[shard] = file.finish()

    def close(self) -> None:
        """Finish the last shard; every planned byte must have been written."""
        self._finish_closed()
        if self._next < len(self._ops) or self._closing:
            self.abort()
            name = self._ops[min(self._next, len(self._ops) - 1)].out_name
            raise RunFailure(f"internal error: the run ended before tensor {name} was written.")

    def abort(self) -> None:
        """Close without finishing (the staged folder is removed by its owner)."""
        for file in [*self._closing.values(), *([self._file] if self._file is not None else [])]:
            file.close()
        self._closing.clear()
        self._file = None


def _weights_index(plan: Plan) -> dict[str, Any] | None:
    """model.safetensors.index.json as Hugging Face writes it, for sharded outputs only."""
    if len(plan.shards) < 2:
        return None
    return {
        "metadata": {"total_parameters": plan.params.total, "total_size": plan.out_bytes},
        "weight_map": {op.out_name: op.shard for op in sorted(plan.ops, key=lambda op: op.out_name)},
    }


def write_weights_index(folder: Path, plan: Plan) -> None:
    index = _weights_index(plan)
    if index is not None:
        write_json(folder / WEIGHTS_INDEX_FILE, index)


def _json_text(data: Any, sort_keys: bool = True) -> str:
    return json.dumps(data, indent=2, sort_keys=sort_keys) + "\n"


def write_json(path: Path, data: Any, sort_keys: bool = True) -> None:
    path.write_text(_json_text(data, sort_keys), encoding="utf-8")


def output_bytes(plan: Plan, copied: list[Path], extra_json: list[Any]) -> int:
    """Disk bytes the output folder of `plan` takes, each file rounded up to whole 4 KiB blocks: the shards
    (headers and data), config and weights index, `extra_json` documents, the `copied` companion files (their full
    length, sparse or not), and an allowance for the model card and the manifest."""
    by_shard: dict[str, list[TensorOp]] = {}
    for op in plan.ops:
        by_shard.setdefault(op.shard, []).append(op)
    sizes = [len(safetensors_header(ops)) + sum(op.nbytes for op in ops) for ops in by_shard.values()]
    documents = [plan.child_config, _weights_index(plan), *plan.extra_files.values(), *extra_json]
    sizes += [len(_json_text(document).encode()) for document in documents if document is not None]
    sizes += [path.stat().st_size for path in copied]
    files = len(sizes) + 2
    sizes += [_CARD_ALLOWANCE, _MANIFEST_ALLOWANCE + _MANIFEST_PER_FILE * (files + len(copied))]
    return sum(-(-size // DIRECT_ALIGN) * DIRECT_ALIGN for size in sizes)


def companion_files(checkpoint: Checkpoint) -> list[tuple[str, Path]]:
    """Tokenizer, generation config, chat template and custom-code files to copy, by name, with the file each is
    read from; never weights, never links out of the checkpoint."""
    files = []
    root = checkpoint.trusted_root
    for path in sorted(checkpoint.root.iterdir()):
        if path.name.startswith(".") or path.name in _NOT_COPIED or path.name.endswith(_NOT_COPIED_SUFFIXES):
            continue
        resolved = path.resolve()
        if resolved.is_file() and resolved.is_relative_to(root):
            files.append((path.name, resolved))
    return files


def copy_companion_files(checkpoint: Checkpoint, folder: Path) -> list[str]:
    """Copy the `companion_files` into `folder`; their names."""
    copied = companion_files(checkpoint)
    for name, source in copied:
        shutil.copyfile(source, folder / name)
    return [name for name, _ in copied]
