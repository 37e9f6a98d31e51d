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
    MIN_BLOCK (64 KiB a file: smaller writes cost more in per-block overhead than they save). Used from one thread
    (the executor's); use it as a context manager.
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
                block = mmap.mmap(-1, self.block_size)
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


def _hash_after(previous: Future[None] | None, digest: Any, data: memoryview) -> None:
    """Add a block to a file's sha256 once the file's previous block is in it (that block is being hashed already:
    the pool takes tasks in order)."""
    if previous is not None:
        wait([previous])
    digest.update(data)


class _ShardFile:
    """One shard file, written in aligned blocks of a WritePool, past the page cache (O_DIRECT) where the
    filesystem allows it; the file is opened only while a block is written, so a run holds no descriptor per file.

    Bytes are gathered into page-aligned blocks; the pool's threads hash each full block and write it, so the caller
    only copies. Measured on a 2-core VM (Linux 6.18, ext4), direct 8 MiB writes of 3.7 GB took 2.0-2.8 s
    where buffered 8 MiB writes took 5.1-14 s (and `cp` of the same bytes 2.2-7 s): every buffered write fills newly
    allocated page-cache memory, which that VM's host supplied slowly and unevenly. Filesystems without O_DIRECT get
    buffered writes.
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
        self._block: mmap.mmap | None = None
        self._filled = 0
        self._offset = 0

    def append(self, view: memoryview) -> None:
        """Add bytes at the end of the file.

        The bytes are copied by numpy, which lets go of the GIL while it copies (an mmap slice assignment holds it:
        sampled with py-spy --gil, plain extract held the GIL 48% of the time in that copy, while the reader
        threads waited for it to cut)."""
        source = np.frombuffer(view, np.uint8)
        done = 0
        while done < len(source):
            if self._block is None:
                self._block = self._pool.take()
            block = np.frombuffer(self._block, np.uint8)
            count = min(len(source) - done, len(block) - self._filled)
            block[self._filled : self._filled + count] = source[done : done + count]
            del block  # the block is handed over below: no view of it stays here
            self._filled += count
            done += count
            if self._filled == len(self._block):
                self._submit()

    def _submit(self) -> None:
        while self._tasks and self._tasks[0].done():
            self._tasks.popleft().result()  # a failed write (disk full) stops the run here
        assert self._block is not None
        self._tasks.append(self._pool.store(self, self._block, self._filled, self._offset))
        self._offset += self._filled
        self._block, self._filled = None, 0

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
        if self._filled:
            self._submit()
        while self._tasks:
            self._tasks.popleft().result()
        os.truncate(self._path, self._offset)
        return self.hash.hexdigest()

    def close(self) -> None:
        """Stop without finishing: give the block back and wait for the blocks being written (errors ignored)."""
        if self._block is not None:
            self._pool.give(self._block)
            self._block, self._filled = None, 0
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

    A tensor may arrive in several parts (row chunks); one shard file is written at a time, in blocks of `pool`.
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
        #: sha256 of every finished shard file, by file name
        self.sha256: dict[str, str] = {}
        self._start_op()

    def write(self, op: TensorOp, data: memoryview | bytes | Any) -> None:
        """Append the next bytes of `op`, which must be the tensor the plan expects now."""
        if self._next >= len(self._ops) or op.out_name != self._ops[self._next].out_name:
            raise RunFailure(f"internal error: {op.out_name} arrived out of plan order.")
        view = memoryview(data).cast("B")
        if len(view) > self._remaining:
            raise RunFailure(f"internal error: {op.out_name} got {len(view)} bytes, {self._remaining} were left.")
        self._write(view)
        self._remaining -= len(view)
        if self._remaining == 0:
            self._next += 1
            self._start_op()

    def _write(self, view: memoryview) -> None:
        assert self._file is not None
        self._file.append(view)

    def _start_op(self) -> None:
        """Open the shard of the next op with bytes, finishing shards (and empty tensors) on the way."""
        while self._next < len(self._ops):
            op = self._ops[self._next]
            if op.shard != self._shard:
                self._open(op.shard)
            if op.nbytes:
                self._remaining = op.nbytes
                return
            self._next += 1
        self._finish_shard()

    def _open(self, shard: str) -> None:
        self._finish_shard()
        self._file = _ShardFile(self._folder / shard, self._pool)
        self._shard = shard
        self._write(memoryview(safetensors_header(self._by_shard[shard])))

    def _finish_shard(self) -> None:
        if self._file is not None:
            self.sha256[self._shard] = self._file.finish()
            self._file = None

    def close(self) -> None:
        """Finish the last shard; every planned byte must have been written."""
        if self._next < len(self._ops):
            self.abort()
            raise RunFailure(f"internal error: the run ended before tensor {self._ops[self._next].out_name} was written.")
        self._finish_shard()

    def abort(self) -> None:
        """Close without finishing (the staged folder is removed by its owner)."""
        if self._file is not None:
            self._file.close()
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
