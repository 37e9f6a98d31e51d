"""The executor: stream plans from the parent's shards into their writers, reading each source tensor once.

Work is split into row chunks of at most `chunk_bytes` of the parent tensor, so memory stays bounded by the
chunks in flight whatever a tensor's size. Reader threads map each chunk (no copy), cut it with numpy and, only
for ops that change values, convert it (`transform`, torch); the calling thread writes the results in plan order.
Several plans (budgets) of one parent share every read.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .checkpoint import Checkpoint, ShardFiles
from .dtypes import itemsize
from .plan import Plan, TensorOp
from .safetensors_header import TensorInfo
from .selection import Ranges
from .writer import ShardWriter

DEFAULT_CHUNK_BYTES = 64 * 2**20
DEFAULT_INFLIGHT_BYTES = 256 * 2**20
#: stored elements are copied as unsigned integers of their width: a cut moves bytes, never values
_ELEMENT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


@dataclass(frozen=True)
class Target:
    """One budget being written: its plan and the writer of its folder."""

    plan: Plan
    writer: ShardWriter


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
        needed = _union(tuple({r for _, op in consumers for r in op.selection[0]}))
        rows_per_chunk = max(1, chunk_bytes // max(1, math.prod(info.shape[1:]) * itemsize(info.dtype)))
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
    """Reused output buffers of `size` bytes, handed out and taken back by the writing thread only.

    Fresh allocations cost page faults and zeroing by the kernel on every chunk (13% of a run's samples under perf).
    A buffer's untouched tail costs no memory, so small cuts take pooled buffers too.
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


def changes_values(op: TensorOp, info: TensorInfo) -> bool:
    """Whether an op does more than move bytes (cast, scale, pad, quantize, dequantize): such ops need torch."""
    return bool(
        op.quant or op.dequant or op.pad_value is not None or op.scale is not None or op.out_dtype != info.dtype
    )


def _copy_in_place(op: TensorOp, info: TensorInfo, chunk: _Chunk) -> int:
    """Bytes of the cut this op takes from a chunk, when it is a column cut copied into a pooled buffer (else 0)."""
    if changes_values(op, info) or not info.shape:
        return 0
    rows = sum(max(0, min(b, chunk.stop) - max(a, chunk.start)) for a, b in op.selection[0])
    if all(r == ((0, size),) for r, size in zip(op.selection[1:], info.shape[1:])):
        return 0  # row cuts only: written straight from the mapped chunk
    inner = math.prod(sum(b - a for a, b in ranges) for ranges in op.selection[1:])
    return rows * inner * itemsize(info.dtype)


def _cut_into(rows: np.ndarray, selection: tuple[Ranges, ...], buffer: np.ndarray) -> np.ndarray:
    """Copy the selected blocks of `rows` into `buffer`, laid out as the cut tensor."""
    shape = tuple(sum(b - a for a, b in ranges) for ranges in selection)
    dest = buffer[: math.prod(shape) * rows.itemsize].view(rows.dtype).reshape(shape)
    for block in itertools.product(*(_with_offsets(ranges) for ranges in selection)):
        source = tuple(slice(a, b) for (a, b), _ in block)
        target = tuple(slice(o, o + b - a) for (a, b), o in block)
        dest[target] = rows[source]
    return dest


def _with_offsets(ranges: Ranges) -> list[tuple[tuple[int, int], int]]:
    offset, out = 0, []
    for start, stop in ranges:
        out.append(((start, stop), offset))
        offset += stop - start
    return out


def _process(
    files: ShardFiles, chunk: _Chunk, outputs: dict[int, np.ndarray]
) -> list[tuple[int, TensorOp, np.ndarray]]:
    """Map one chunk and cut it for each consumer (into `outputs[position]` for column cuts)."""
    info = chunk.info
    mapped = files.map(info, chunk.start * chunk.row_bytes, chunk.nbytes)
    rows = np.frombuffer(mapped, dtype=_ELEMENT[itemsize(info.dtype)])
    rows = rows.reshape(chunk.stop - chunk.start, *info.shape[1:]) if info.shape else rows.reshape(())
    results = []
    quantized: dict[int, Any] = {}
    for position, (index, op) in enumerate(chunk.consumers):
        pieces = tuple(
            (max(start, chunk.start) - chunk.start, min(stop, chunk.stop) - chunk.start)
            for start, stop in (op.selection[0] if info.shape else ())
            if max(start, chunk.start) < min(stop, chunk.stop)
        )
        if changes_values(op, info):
            from .transform import transformed  # torch, only for plans that need it

            whole = not info.shape or (chunk.start, chunk.stop) == (0, info.shape[0])
            selection = op.selection if whole else (pieces, *op.selection[1:])
            results.append((index, op, transformed(rows, info.dtype, op, selection, files, quantized, index)))
        elif info.shape and not pieces:
            continue
        elif position in outputs:
            results.append((index, op, _cut_into(rows, (pieces, *op.selection[1:]), outputs[position])))
        elif not info.shape:
            results.append((index, op, rows))
        else:
            # row cuts only: each piece is a view of the mapped chunk, written without another copy
            results.extend((index, op, rows[start:stop]) for start, stop in pieces)
    return results


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
    pending: deque[tuple[int, list[np.ndarray], Future[list[tuple[int, TensorOp, np.ndarray]]]]] = deque()
    pending_bytes = 0
    with ShardFiles(checkpoint) as files, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:

        def drain_one() -> None:
            nonlocal pending_bytes
            cost, held, future = pending.popleft()
            pending_bytes -= cost
            for index, op, data in future.result():
                targets[index].writer.write(op, data)
                if on_bytes is not None:
                    on_bytes(data.nbytes)
            for buffer in held:
                buffers.give(buffer)

        try:
            for chunk in _chunks(checkpoint, targets, chunk_bytes):
                copies = {
                    position: size
                    for position, (_, op) in enumerate(chunk.consumers)
                    if (size := _copy_in_place(op, chunk.info, chunk))
                }
                cost = chunk.nbytes + sum(copies.values())
                while pending and (pending_bytes + cost > inflight_bytes or len(pending) > 2 * workers):
                    drain_one()
                outputs = {position: buffers.take(size) for position, size in copies.items()}
                future = pool.submit(_process, files, chunk, outputs)
                pending.append((cost, list(outputs.values()), future))
                pending_bytes += cost
            while pending:
                drain_one()
        finally:
            for _, _, future in pending:
                future.cancel()
    for target in targets:
        target.writer.close()
