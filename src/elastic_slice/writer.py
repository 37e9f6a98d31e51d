"""Write a child model folder: streamed safetensors shards, the HF index, config, copied files, staged atomically."""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .checkpoint import CONFIG_FILE, PICKLE_SUFFIXES, WEIGHTS_INDEX_FILE, Checkpoint
from .errors import InputError, RunFailure
from .nesting import INDEX_FILE
from .plan import Plan, TensorOp

CARD_FILE = "README.md"
#: bytes per write() call: measured on a 2-core VM (Linux 6.18), writing 2 GB to the page cache typically took
#: 0.7-0.8 s in 128-256 KiB calls, 4.7 s in 1 MiB calls and 9-10 s in 64 MiB calls (the VM had rare slow outliers
#: at every size)
WRITE_BLOCK = 256 * 2**10
#: bytes of a shard hashed per step, read back from the page cache
_HASH_WINDOW = 64 * 2**20
MANIFEST_FILE = "elastic_slice_manifest.json"
#: parent files that the child never inherits as they are: weights, indexes and files the writer makes itself
_NOT_COPIED = {CONFIG_FILE, WEIGHTS_INDEX_FILE, INDEX_FILE, CARD_FILE, MANIFEST_FILE, "hf_quant_config.json"}
_NOT_COPIED_SUFFIXES = (".safetensors", ".gguf", *PICKLE_SUFFIXES)


@contextmanager
def staged_folder(out: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary folder beside `out` that becomes `out` only when the block finishes without error."""
    out = out.absolute()
    if out.exists() and not overwrite:
        raise InputError(f"--out {out} already exists; choose another path or pass --overwrite to replace it.")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder path.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_stagings(out)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
        staging.chmod(0o777 & ~_umask())
    except OSError as exc:
        raise InputError(f"cannot create a folder beside --out {out}: {exc.strerror or exc}.") from exc
    try:
        yield staging
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _remove_abandoned_stagings(out: Path) -> None:
    """Delete staging folders for `out` left by runs that were killed (SIGKILL, power loss): their process is gone."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.partial-(\d+)-")
    for sibling in out.parent.iterdir():
        match = pattern.match(sibling.name)
        if match and sibling.is_dir() and not _process_alive(int(match.group(1))):
            shutil.rmtree(sibling, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace(staging: Path, out: Path) -> None:
    if not out.exists():
        os.rename(staging, out)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, retired / "old")
    os.rename(staging, out)
    shutil.rmtree(retired, ignore_errors=True)


def check_free_space(folder: Path, needed: int) -> None:
    """Fail before writing when the disk under `folder` cannot hold `needed` bytes."""
    probe = folder.absolute()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise RunFailure(
            f"not enough disk space under {probe}: the output needs {needed / 1e9:.2f} GB, {free / 1e9:.2f} GB is free."
        )


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


class _FileHasher:
    """The sha256 of a file while it is being written, read back from the page cache in a thread of its own.

    Hashing what is already written, rather than the buffers on their way to the file, leaves the writer free to
    reuse its buffers at once and keeps the (sequential) hash busy on the second core the whole run.
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._hash = hashlib.sha256()
        self._thread = ThreadPoolExecutor(max_workers=1)
        self._queued = 0
        self._tasks: list[Future[None]] = []

    def written(self, size: int, final: bool = False) -> None:
        """The file now holds `size` bytes: hash the next window of them (all of them when `final`)."""
        if size - self._queued >= _HASH_WINDOW or (final and size > self._queued):
            self._tasks.append(self._thread.submit(self._update, self._queued, size))
            self._queued = size

    def _update(self, start: int, stop: int) -> None:
        skip = start % mmap.ALLOCATIONGRANULARITY
        with mmap.mmap(self._fd, skip + stop - start, access=mmap.ACCESS_READ, offset=start - skip) as mapped:
            with memoryview(mapped) as view:
                self._hash.update(view[skip:])

    def hexdigest(self) -> str:
        """Wait for every queued window; the file's sha256."""
        for task in self._tasks:
            task.result()
        self.close()
        return self._hash.hexdigest()

    def close(self) -> None:
        self._thread.shutdown(cancel_futures=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ShardWriter:
    """Streams tensor bytes into the planned shard files, strictly in plan order, hashing as it writes.

    A tensor may arrive in several parts (row chunks); one shard file is open at a time.
    """

    def __init__(self, folder: Path, plan: Plan) -> None:
        self._folder = folder
        self._ops = plan.ops
        self._by_shard: dict[str, list[TensorOp]] = {}
        for op in plan.ops:
            self._by_shard.setdefault(op.shard, []).append(op)
        self._next = 0
        self._remaining = 0
        self._file: IO[bytes] | None = None
        self._hasher: _FileHasher | None = None
        self._size = 0
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
        assert self._file is not None and self._hasher is not None
        done = 0
        while done < len(view):
            done += self._file.write(view[done : done + WRITE_BLOCK]) or 0
        self._size += len(view)
        self._hasher.written(self._size)

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
        path = self._folder / shard
        self._file = path.open("wb", buffering=0)
        self._hasher = _FileHasher(path)
        self._size = 0
        self._shard = shard
        self._write(memoryview(safetensors_header(self._by_shard[shard])))

    def _finish_shard(self) -> None:
        if self._file is not None and self._hasher is not None:
            self._file.close()
            self._file = None
            self._hasher.written(self._size, final=True)
            self.sha256[self._shard] = self._hasher.hexdigest()
            self._hasher = None

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
        if self._hasher is not None:
            self._hasher.close()
            self._hasher = None


def write_weights_index(folder: Path, plan: Plan) -> None:
    """model.safetensors.index.json as Hugging Face writes it, for sharded outputs only."""
    if len(plan.shards) < 2:
        return
    index = {
        "metadata": {"total_parameters": plan.params.total, "total_size": plan.out_bytes},
        "weight_map": {op.out_name: op.shard for op in sorted(plan.ops, key=lambda op: op.out_name)},
    }
    write_json(folder / WEIGHTS_INDEX_FILE, index)


def write_json(path: Path, data: Any, sort_keys: bool = True) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=sort_keys) + "\n", encoding="utf-8")


def copy_companion_files(checkpoint: Checkpoint, folder: Path) -> list[str]:
    """Copy tokenizer, generation config, chat template and custom-code files; never weights, never links out."""
    copied = []
    root = checkpoint.trusted_root
    for path in sorted(checkpoint.root.iterdir()):
        if path.name.startswith(".") or path.name in _NOT_COPIED or path.name.endswith(_NOT_COPIED_SUFFIXES):
            continue
        resolved = path.resolve()
        if not resolved.is_file() or not resolved.is_relative_to(root):
            continue
        shutil.copyfile(resolved, folder / path.name)
        copied.append(path.name)
    return copied
