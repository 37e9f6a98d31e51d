"""The executor: stream plans from the parent's shards into their writers, reading each source tensor once.

Work is split into row chunks, so memory stays bounded by the chunks in flight whatever a tensor's size or the
number of budgets: a chunk's rows, with every budget's cut of them, take at most `chunk_bytes` (or one row for
every budget, when a single row is bigger). Reader threads read each chunk with positioned reads (never a memory
map: a shard shortened by another process is a clean error, never SIGBUS), cut it with numpy and, only for ops
that change values, convert it (the compiled quantization kernels where quant/kernels.py says they apply, else
`transform`, torch); the calling thread writes the results in plan order. In runs that only move bytes, each plain
cut is read and cut straight into the shard writer's blocks instead: the calling thread reserves its bytes there
when it hands the chunk out (in plan order) and commits them in order, so no output byte is copied twice. Several
plans (budgets) of one parent share every read.
"""

from __future__ import annotations

import gc
import itertools
import math
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .checkpoint import Checkpoint, ShardFiles
from .dtypes import itemsize
from .plan import Plan, TensorOp
from .quant import kernels
from .quant.formats import KV_SCALE
from .safetensors_header import TensorInfo
from .selection import Ranges
from .writer import Span

#: a chunk's buffer and the buffers in flight: each buffer is first touched once (page faults and zeroing, 8-18% of a
#: run's samples under perf with 64 MiB chunks and 256 MiB in flight); 16/64 MiB ran as fast or faster, warm and cold
DEFAULT_CHUNK_BYTES = 16 * 2**20
DEFAULT_INFLIGHT_BYTES = 64 * 2**20
#: source bytes the kernel is asked to read ahead of the chunk being handed out: with a cold page cache, 30B + 23B +
#: 12B in one pass took 7.8-10.6 s with this window against 8.6-10.5 s reading each chunk's bytes only when a reader
#: took it (3 alternating rounds at load 3.7-4.3); a 1 GiB window measured no better
READAHEAD_BYTES = 256 * 2**20
#: rows read at a time for a column cut: the read lands in the CPU cache and the cut copies it from there
PIECE_BYTES = 256 * 1024
#: stored elements are copied as unsigned integers of their width: a cut moves bytes, never values
_ELEMENT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


class TensorSink(Protocol):
    """Where a target's tensors go, in plan order: a shard writer, or verify's comparing and bounding writers."""

    def write(self, op: TensorOp, data: Any) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class ReservingSink(TensorSink, Protocol):
    """A sink whose bytes reader threads write in place (the shard writer): `reserve` sets an op's next bytes aside,
    in plan order, and `commit` hands them over once filled."""

    def reserve(self, op: TensorOp, nbytes: int) -> Span: ...

    def commit(self, span: Span) -> None: ...


#: where a plain cut goes: a buffer of the chunk's, or a span of the writer's blocks
_Destination = np.ndarray | Span
_Results = list[tuple[int, TensorOp, np.ndarray | Span]]


@dataclass(frozen=True)
class Target:
    """One budget being written: its plan and the writer of its folder."""

    plan: Plan
    writer: TensorSink


def changes_values(op: TensorOp, info: TensorInfo) -> bool:
    """Whether an op does more than move bytes (cast, scale, pad, quantize, dequantize): such ops need torch."""
    return bool(
        op.quant or op.dequant or op.pad_value is not None or op.scale is not None or op.out_dtype != info.dtype
    )


def _cuts_rows_only(op: TensorOp, info: TensorInfo) -> bool:
    return all(r == ((0, size),) for r, size in zip(op.selection[1:], info.shape[1:], strict=True))


def _kept_row_bytes(op: TensorOp, info: TensorInfo) -> int:
    """Bytes one kept row of the source takes in this op's cut."""
    return math.prod(sum(b - a for a, b in ranges) for ranges in op.selection[1:]) * itemsize(info.dtype)


def _pieces(ranges: Ranges, start: int, stop: int) -> Ranges:
    """The parts of `ranges` inside rows [start, stop), relative to `start`."""
    return tuple(
        (max(a, start) - start, min(b, stop) - start) for a, b in ranges if max(a, start) < min(b, stop)
    )


@dataclass(frozen=True)
class _Chunk:
    """Rows [start, stop) of one source tensor, and the ops (one per target) that need some of them."""

    info: TensorInfo
    start: int
    stop: int
    consumers: tuple[tuple[int, TensorOp], ...]

    @property
    def row_bytes(self) -> int:
        return math.prod(self.info.shape[1:]) * itemsize(self.info.dtype)

    @property
    def nbytes(self) -> int:
        return (self.stop - self.start) * self.row_bytes if self.info.shape else itemsize(self.info.dtype)

    @cached_property
    def reads_whole(self) -> bool:
        """Whether the chunk's rows are read into memory as a whole (for a scalar or an op that changes values);
        otherwise each plain cut is read into its own output, or cut from cache-sized pieces."""
        return not self.info.shape or any(changes_values(op, self.info) for _, op in self.consumers)

    def cut_bytes(self, op: TensorOp) -> int:
        """Bytes of a plain op's cut of these rows."""
        if not self.info.shape:
            return op.nbytes
        rows = sum(b - a for a, b in _pieces(op.selection[0], self.start, self.stop))
        return rows * _kept_row_bytes(op, self.info)

    def output_bytes(self, op: TensorOp) -> int:
        """Bytes of the buffer a plain op's cut of these rows is written into (0 when it needs none)."""
        info = self.info
        if changes_values(op, info) or not info.shape or (self.reads_whole and _cuts_rows_only(op, info)):
            return 0
        return self.cut_bytes(op)

    @property
    def buffer_bytes(self) -> int:
        """Bytes of buffer the chunk takes while in flight: its rows when read whole, and every plain cut."""
        outputs = sum(self.output_bytes(op) for _, op in self.consumers)
        return (self.nbytes if self.reads_whole else 0) + outputs


def _chunks(checkpoint: Checkpoint, targets: list[Target], chunk_bytes: int) -> Iterator[_Chunk]:
    """Row chunks of every needed source tensor, in the parent's order, each read once for all targets."""
    by_source: list[dict[str, list[TensorOp]]] = []
    for target in targets:
        ops: dict[str, list[TensorOp]] = {}
        for op in target.plan.ops:
            ops.setdefault(op.source, []).append(op)
        by_source.append(ops)
    for info in checkpoint.tensors.values():
        consumers = tuple((i, op) for i, ops in enumerate(by_source) for op in ops.get(info.name, ()))
        if not consumers:
            continue
        if not info.shape:
            yield _Chunk(info, 0, 1, consumers)
            continue
        if any(op.quant is not None or op.dequant is not None or op.pad_value is not None for _, op in consumers):
            # quantizing needs the parent's whole tensor (its scales come from it); so does dequantizing
            yield _Chunk(info, 0, info.shape[0], consumers)
            continue
        whole = _Chunk(info, 0, info.shape[0], consumers)
        row_cost = (whole.row_bytes if whole.reads_whole else 0) + sum(
            _kept_row_bytes(op, info) for _, op in consumers if whole.output_bytes(op)
        )
        rows_per_chunk = max(1, chunk_bytes // max(1, row_cost))
        needed = _union(tuple({r for _, op in consumers for r in op.selection[0]}))
        for start, stop in needed:
            for first in range(start, stop, rows_per_chunk):
                yield _Chunk(info, first, min(stop, first + rows_per_chunk), consumers)


def _union(ranges: Ranges) -> Ranges:
    """Overlapping or touching ranges joined (ranges of several budgets overlap)."""
    joined: list[tuple[int, int]] = []
    for start, stop in sorted(ranges):
        if joined and start <= joined[-1][1]:
            joined[-1] = (joined[-1][0], max(stop, joined[-1][1]))
        else:
            joined.append((start, stop))
    return tuple(joined)


class _BufferPool:
    """Reused chunk buffers of `size` bytes (a chunk's rows and cuts), handed out and taken back by the writing
    thread only; a chunk needing more gets a buffer of its own.

    Fresh allocations cost page faults and zeroing by the kernel on every chunk (13% of a run's samples under perf).
    A buffer's untouched tail costs no memory, so small chunks take pooled buffers too.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[np.ndarray] = []

    def take(self, nbytes: int) -> np.ndarray:
        if nbytes > self.size:
            return np.empty(nbytes, np.uint8)
        return self._free.pop() if self._free else np.empty(self.size, np.uint8)

    def give(self, buffer: np.ndarray) -> None:
        if len(buffer) == self.size:
            self._free.append(buffer)


def _cut_into(rows: np.ndarray, selection: tuple[Ranges, ...], dest: np.ndarray) -> None:
    """Copy the selected blocks of `rows` into `dest`, laid out as the cut tensor."""
    for block in itertools.product(*(_with_offsets(ranges) for ranges in selection)):
        source = tuple(slice(a, b) for (a, b), _ in block)
        target = tuple(slice(o, o + b - a) for (a, b), o in block)
        dest[target] = rows[source]


def _with_offsets(ranges: Ranges) -> list[tuple[tuple[int, int], int]]:
    offset, out = 0, []
    for start, stop in ranges:
        out.append(((start, stop), offset))
        offset += stop - start
    return out


_scratch = threading.local()


def _scratch_buffer(nbytes: int) -> np.ndarray:
    """A buffer of this reader thread's, reused for every piece it reads (so it stays in the CPU cache)."""
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or len(buffer) < nbytes:
        buffer = _scratch.buffer = np.empty(max(nbytes, PIECE_BYTES), np.uint8)
    return buffer[:nbytes]


def _as_rows(raw: np.ndarray, info: TensorInfo, count: int) -> np.ndarray:
    """Raw bytes of `count` rows of a tensor as an array of stored elements (a scalar when it has no shape)."""
    elements = raw.view(_ELEMENT[itemsize(info.dtype)])
    return elements.reshape(count, *info.shape[1:]) if info.shape else elements.reshape(())


def _cut_piece(rows: np.ndarray, op: TensorOp, here: Ranges, dest: _Destination, filled: int, count: int) -> None:
    """Cut one piece's rows `here` into rows [filled, filled + count) of `dest`."""
    selection = (here, *op.selection[1:])
    if isinstance(dest, np.ndarray):
        _cut_into(rows, selection, dest[filled : filled + count])
        return
    shape = (count, *(sum(b - a for a, b in ranges) for ranges in op.selection[1:]))
    row_bytes = math.prod(shape[1:]) * rows.itemsize
    views = dest.views(filled * row_bytes, count * row_bytes)
    # in place, unless the rows cross the end of a block of the writer's (then through a small array)
    target = views[0].view(rows.dtype).reshape(shape) if len(views) == 1 else np.empty(shape, rows.dtype)
    _cut_into(rows, selection, target)
    if len(views) > 1:
        dest.fill(filled * row_bytes, target.reshape(-1).view(np.uint8))


def _cut_in_pieces(files: ShardFiles, chunk: _Chunk, cuts: list[tuple[TensorOp, _Destination]]) -> None:
    """Column cuts of a chunk: rows are read a cache-sized piece at a time and each piece cut into every output."""
    info = chunk.info
    step = max(1, PIECE_BYTES // max(1, chunk.row_bytes))
    filled = [0] * len(cuts)
    for first in range(chunk.start, chunk.stop, step):
        last = min(chunk.stop, first + step)
        pieces = [_pieces(op.selection[0], first, last) for op, _ in cuts]
        if not any(pieces):
            continue
        raw = _scratch_buffer((last - first) * chunk.row_bytes)
        files.read_into(info, first * chunk.row_bytes, raw.data)
        rows = _as_rows(raw, info, last - first)
        for k, ((op, dest), here) in enumerate(zip(cuts, pieces, strict=True)):
            count = sum(b - a for a, b in here)
            _cut_piece(rows, op, here, dest, filled[k], count)
            filled[k] += count


def _read_rows(files: ShardFiles, chunk: _Chunk, pieces: Ranges, dest: _Destination) -> None:
    """A row cut of a chunk: the kept rows (`pieces`, relative to the chunk) read straight into `dest`."""
    written = 0
    for a, b in pieces:
        start = (chunk.start + a) * chunk.row_bytes
        size = (b - a) * chunk.row_bytes
        for view in [dest[written : written + size]] if isinstance(dest, np.ndarray) else dest.views(written, size):
            files.read_into(chunk.info, start, view.data)
            start += len(view)
        written += size


def _reserve(chunk: _Chunk, sinks: list[ReservingSink]) -> dict[int, Span]:
    """Spans of the writers' blocks for every cut of a chunk, by the consumer's position (in plan order)."""
    spans = {}
    for position, (index, op) in enumerate(chunk.consumers):
        if nbytes := chunk.cut_bytes(op):
            spans[position] = sinks[index].reserve(op, nbytes)
    return spans


def _process(
    files: ShardFiles, chunk: _Chunk, buffer: np.ndarray, loader: _TorchLoader | None, spans: dict[int, Span] | None
) -> _Results:
    """Read one chunk and cut it for each consumer, into `buffer` (`chunk.buffer_bytes` long) or, given `spans`, in
    place into the writers' blocks; the ops that change values wait for `loader`."""
    info = chunk.info
    free = 0

    def carve(nbytes: int) -> np.ndarray:
        nonlocal free
        free += nbytes
        return buffer[free - nbytes : free]

    rows = None
    if chunk.reads_whole:
        raw = carve(chunk.nbytes)
        files.read_into(info, chunk.start * chunk.row_bytes, raw.data)
        rows = _as_rows(raw, info, chunk.stop - chunk.start)
    results: list[_Results] = []
    column_cuts: list[tuple[TensorOp, _Destination]] = []
    quantized: dict[int, Any] = {}
    for position, (index, op) in enumerate(chunk.consumers):
        pieces = _pieces(op.selection[0], chunk.start, chunk.stop) if info.shape else ()
        if rows is not None and changes_values(op, info):
            whole = not info.shape or (chunk.start, chunk.stop) == (0, info.shape[0])
            selection = op.selection if whole else (pieces, *op.selection[1:])
            if kernels.computes(op):
                results.append([(index, op, _compiled_quantization(rows, op, selection, quantized, index))])
                continue
            assert loader is not None
            loader.ready()
            from .transform import transformed  # torch, only for plans that need it

            results.append([(index, op, transformed(rows, info.dtype, op, selection, files, quantized, index))])
        elif spans is not None and position in spans:
            span = spans[position]
            if not info.shape:
                span.fill(0, raw)
            elif _cuts_rows_only(op, info):
                _read_rows(files, chunk, pieces, span)
            else:
                column_cuts.append((op, span))
            results.append([(index, op, span)])
        elif rows is not None and not info.shape:
            results.append([(index, op, rows)])
        elif not pieces:
            continue
        elif rows is not None and _cuts_rows_only(op, info):
            results.append([(index, op, rows[a:b]) for a, b in pieces])  # views of the rows read, no copy
        else:
            kept = tuple(sum(b - a for a, b in ranges) for ranges in op.selection[1:])
            raw = carve(chunk.output_bytes(op))
            dest = raw.view(_ELEMENT[itemsize(info.dtype)]).reshape(sum(b - a for a, b in pieces), *kept)
            if rows is not None:
                _cut_into(rows, (pieces, *op.selection[1:]), dest)
            elif _cuts_rows_only(op, info):
                _read_rows(files, chunk, pieces, raw)
            else:
                column_cuts.append((op, dest))
            results.append([(index, op, dest)])
    if column_cuts:
        _cut_in_pieces(files, chunk, column_cuts)
    return [result for group in results for result in group]


def _compiled_quantization(
    rows: np.ndarray, op: TensorOp, selection: tuple[Ranges, ...], quantized: dict[int, Any], target: int
) -> np.ndarray:
    """`transform.transformed` of an op the compiled kernels compute, without torch: a KV-cache scale, or a part of
    the quantized cut of the parent's whole bf16 tensor `rows` (every part of one target's weight computed once)."""
    spec = op.quant
    assert spec is not None
    if spec.part == KV_SCALE:
        return kernels.kv_scale(spec)
    if target not in quantized:
        if all(len(ranges) == 1 for ranges in selection):  # a view (copied by the kernels only if not contiguous)
            child = rows[tuple(slice(start, stop) for ((start, stop),) in selection)]
        else:
            child = np.empty(tuple(sum(b - a for a, b in ranges) for ranges in selection), rows.dtype)
            _cut_into(rows, selection, child)
        quantized[target] = spec.scheme.quantize_bf16(rows, child, spec.fmt, spec.input_amax)
    part: np.ndarray = quantized[target][spec.part]
    return part.reshape(-1).view(np.uint8)


class _TorchLoader:
    """Torch for the ops that change values, imported in the background (about 1 s of one core) while the first
    chunks are read and cut, and set to run each op on its caller's thread while several readers transform chunks
    side by side: torch's own threads (OpenMP) would only compete with the readers, hashing and writing for the
    cores (on 2 shared cores one NVFP4 expert took 25-420 ms with 2 torch threads, 10.5 ms with 1). The objects
    existing once torch is imported are frozen for the garbage collector (`gc.freeze`) until the run ends: every
    tensor made while quantizing triggers collections, and full ones otherwise walk all of torch's objects (6% of
    `extract --quantize fp8`'s CPU samples under perf; frozen, 0.3-0.4 s less CPU in 3 of 3 paired runs). `close`
    restores the thread count and unfreezes."""

    def __init__(self, one_thread: bool) -> None:
        self._saved: int | None = None
        self._frozen = False
        self._error: BaseException | None = None
        self._loader = threading.Thread(target=self._load, args=(one_thread,), name="elastic-slice-torch")
        self._loader.start()

    def _load(self, one_thread: bool) -> None:
        try:
            import torch

            from . import transform  # noqa: F401  (its imports: the quantization kernels)
        except BaseException as exc:  # raised by `ready`, in the thread that needs torch
            self._error = exc
            return
        gc.freeze()
        self._frozen = True
        if one_thread:
            self._saved = torch.get_num_threads()
            torch.set_num_threads(1)

    def ready(self) -> None:
        """Wait until torch is loaded and set."""
        self._loader.join()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._loader.join()
        if self._frozen:
            gc.unfreeze()
        if self._saved is not None:
            import torch

            torch.set_num_threads(self._saved)


class _ReadAhead:
    """Asks the kernel to read the parent's bytes of the chunks ahead (READAHEAD_BYTES beyond the chunk being
    handed out), without waiting: with a cold page cache the disk then reads while the chunks before are cut,
    hashed and written, instead of each reader waiting for its own chunk's reads."""

    def __init__(self, files: ShardFiles, chunks: list[_Chunk], window: int) -> None:
        self._files = files
        self._ahead = iter(chunks)
        self._window = window
        self._asked = 0
        self._handed_out = 0

    def advance(self, chunk: _Chunk) -> None:
        """`chunk` is being handed out: keep the window ahead of it asked for."""
        self._handed_out += chunk.nbytes
        while self._asked < self._handed_out + self._window and (ahead := next(self._ahead, None)) is not None:
            self._files.prefetch(ahead.info, ahead.start * ahead.row_bytes, ahead.nbytes)
            self._asked += ahead.nbytes


def _changes_values(checkpoint: Checkpoint, targets: list[Target]) -> bool:
    """Whether some op of the run changes values (its results are written as they come, not in place)."""
    return any(changes_values(op, checkpoint.tensors[op.source]) for target in targets for op in target.plan.ops)


def _needs_torch(checkpoint: Checkpoint, targets: list[Target]) -> bool:
    """Whether some op changes values in a way the compiled kernels do not compute."""
    return any(
        changes_values(op, checkpoint.tensors[op.source]) and not kernels.computes(op)
        for target in targets for op in target.plan.ops
    )


def execute(
    checkpoint: Checkpoint,
    targets: list[Target],
    workers: int = 2,
    on_bytes: Callable[[int], None] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    inflight_bytes: int = DEFAULT_INFLIGHT_BYTES,
) -> None:
    """Write every target's plan; each source chunk is read once, cut for every target, written in order."""
    buffers = _BufferPool(chunk_bytes)
    pending: deque[tuple[int, np.ndarray, Future[_Results]]] = deque()
    pending_bytes = 0
    loader = _TorchLoader(one_thread=workers > 1) if _needs_torch(checkpoint, targets) else None
    # plain cuts go straight into the writers' blocks (one copy of every output byte fewer) when every writer can
    # take them so; a run that changes values writes its results in order as they come
    sinks = [target.writer for target in targets if isinstance(target.writer, ReservingSink)]
    direct = len(sinks) == len(targets) and not _changes_values(checkpoint, targets)
    with ShardFiles(checkpoint) as files, ThreadPoolExecutor(max(1, workers), "elastic-slice-read") as pool:

        def drain_one() -> None:
            nonlocal pending_bytes
            cost, buffer, future = pending.popleft()
            pending_bytes -= cost
            for index, op, data in future.result():
                if isinstance(data, Span):
                    sinks[index].commit(data)
                else:
                    targets[index].writer.write(op, data)
                if on_bytes is not None:
                    on_bytes(data.nbytes)
            buffers.give(buffer)

        try:
            chunks = list(_chunks(checkpoint, targets, chunk_bytes))
            read_ahead = _ReadAhead(files, chunks, READAHEAD_BYTES)
            for chunk in chunks:
                read_ahead.advance(chunk)
                cost = chunk.buffer_bytes
                while pending and (pending_bytes + cost > inflight_bytes or len(pending) > 2 * workers):
                    drain_one()
                spans = _reserve(chunk, sinks) if direct else None
                buffer = buffers.take(chunk.nbytes if chunk.reads_whole else 0) if direct else buffers.take(cost)
                pending.append((cost, buffer, pool.submit(_process, files, chunk, buffer, loader, spans)))
                pending_bytes += cost
            while pending:
                drain_one()
        finally:
            for _, _, future in pending:
                future.cancel()
            if loader is not None:
                loader.close()
    for target in targets:
        target.writer.close()
