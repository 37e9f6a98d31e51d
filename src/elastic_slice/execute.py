"""The executor: stream plans from the parent's shards into their writers, reading each source tensor once.

Work is split into row chunks of at most `chunk_bytes` of the parent tensor, so memory stays bounded by the
chunks in flight whatever a tensor's size. Reader threads read (pread), cut and convert chunks ahead; the calling
thread writes them in plan order. Several plans (budgets) of one parent share every read.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from .checkpoint import Checkpoint, ShardFiles
from .dtypes import itemsize, torch_dtype
from .plan import Plan, TensorOp
from .quant.apply import quantize_parts
from .safetensors_header import TensorInfo
from .selection import Ranges
from .writer import ShardWriter

DEFAULT_CHUNK_BYTES = 64 * 2**20
DEFAULT_INFLIGHT_BYTES = 256 * 2**20


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


def convert(tensor: torch.Tensor, op: TensorOp) -> torch.Tensor:
    """Apply an op's scale (in fp32) and output dtype to a freshly read slice."""
    if op.scale is not None:
        tensor = tensor.to(torch.float32) * op.scale
    return tensor.to(torch_dtype(op.out_dtype))


def _select(tensor: torch.Tensor, ranges_per_dim: tuple[Ranges, ...], first_dim: int) -> torch.Tensor:
    """Keep the given ranges of dimensions first_dim, first_dim+1, ... of `tensor`."""
    for offset, ranges in enumerate(ranges_per_dim):
        dim = first_dim + offset
        if ranges == ((0, tensor.shape[dim]),):
            continue
        parts = [tensor.narrow(dim, start, stop - start) for start, stop in ranges]
        tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)
    return tensor


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
        if any(op.quant is not None for _, op in consumers):
            # quantized outputs need the parent's whole tensor: their scales come from it
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


def _process(files: ShardFiles, chunk: _Chunk) -> list[tuple[int, TensorOp, torch.Tensor]]:
    """Read one chunk and cut it for each consumer."""
    info = chunk.info
    raw = files.read(info, chunk.start * chunk.row_bytes, chunk.start * chunk.row_bytes + chunk.nbytes)
    rows = torch.frombuffer(raw, dtype=torch.uint8).view(torch_dtype(info.dtype))
    if not info.shape:
        rows = rows.reshape(())
    else:
        rows = rows.reshape(chunk.stop - chunk.start, *info.shape[1:])
    results = []
    quantized: dict[int, dict[str, torch.Tensor]] = {}
    for index, op in chunk.consumers:
        if op.quant is not None:
            if index not in quantized:
                child = _select(rows, op.selection, 0)
                quantized[index] = quantize_parts(rows, child, op.quant)
            results.append((index, op, quantized[index][op.quant.part].contiguous()))
            continue
        if not info.shape:
            results.append((index, op, convert(rows.clone(), op)))
            continue
        pieces = [
            (max(start, chunk.start) - chunk.start, min(stop, chunk.stop) - chunk.start)
            for start, stop in op.selection[0]
            if max(start, chunk.start) < min(stop, chunk.stop)
        ]
        if not pieces:
            continue
        inner_full = all(r == ((0, size),) for r, size in zip(op.selection[1:], info.shape[1:]))
        if inner_full and op.scale is None and op.out_dtype == info.dtype:
            # row cuts only: each piece is a view of the read buffer, written without another copy
            results.extend((index, op, rows[start:stop]) for start, stop in pieces)
            continue
        kept = _select(rows, (tuple(pieces),), 0)
        kept = _select(kept, op.selection[1:], 1)
        results.append((index, op, convert(kept, op).contiguous()))
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
    pending: deque[tuple[_Chunk, Future[list[tuple[int, TensorOp, torch.Tensor]]]]] = deque()
    pending_bytes = 0
    with ShardFiles(checkpoint) as files, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:

        def drain_one() -> None:
            nonlocal pending_bytes
            chunk, future = pending.popleft()
            pending_bytes -= chunk.nbytes
            for index, op, tensor in future.result():
                data = tensor.reshape(-1).view(torch.uint8).numpy()
                targets[index].writer.write(op, data)
                if on_bytes is not None:
                    on_bytes(data.nbytes)

        try:
            for chunk in _chunks(checkpoint, targets, chunk_bytes):
                while pending and (pending_bytes + chunk.nbytes > inflight_bytes or len(pending) > 4 * workers):
                    drain_one()
                pending.append((chunk, pool.submit(_process, files, chunk)))
                pending_bytes += chunk.nbytes
            while pending:
                drain_one()
        finally:
            for _, future in pending:
                future.cancel()
    for target in targets:
        target.writer.close()
