"""Write a child model folder: streamed safetensors shards, the HF index, config, copied files, staged atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

from .checkpoint import CONFIG_FILE, PICKLE_SUFFIXES, WEIGHTS_INDEX_FILE, Checkpoint
from .errors import InputError, RunFailure
from .nesting import INDEX_FILE
from .plan import Plan, TensorOp

CARD_FILE = "README.md"
#: parent files that the child never inherits as they are: weights, indexes and files the writer makes itself
_NOT_COPIED = {CONFIG_FILE, WEIGHTS_INDEX_FILE, INDEX_FILE, CARD_FILE, "elastic_slice_manifest.json"}
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
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        staging.chmod(0o777 & ~_umask())
    except OSError as exc:
        raise InputError(f"cannot create a folder beside --out {out}: {exc.strerror or exc}.") from exc
    try:
        yield staging
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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


class ShardWriter:
    """Streams tensors into their planned shard files in plan order; holds one open file at a time."""

    def __init__(self, folder: Path, plan: Plan) -> None:
        self._folder = folder
        self._by_shard: dict[str, list[TensorOp]] = {}
        for op in plan.ops:
            self._by_shard.setdefault(op.shard, []).append(op)
        self._file: IO[bytes] | None = None
        self._shard = ""
        self._remaining = 0

    def write(self, op: TensorOp, tensor: torch.Tensor) -> None:
        if tuple(tensor.shape) != op.out_shape:
            raise RunFailure(f"internal error: {op.out_name} came out as {list(tensor.shape)}, planned {list(op.out_shape)}.")
        if op.shard != self._shard:
            self._open(op.shard)
        assert self._file is not None
        data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
        if data.nbytes != op.nbytes:
            raise RunFailure(f"internal error: {op.out_name} has {data.nbytes} bytes, planned {op.nbytes}.")
        self._file.write(data.data)
        self._remaining -= 1
        if self._remaining == 0:
            self._close()

    def _open(self, shard: str) -> None:
        self._close()
        ops = self._by_shard[shard]
        self._file = (self._folder / shard).open("wb")
        self._file.write(safetensors_header(ops))
        self._shard, self._remaining = shard, len(ops)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        self._close()


def write_weights_index(folder: Path, plan: Plan) -> None:
    """model.safetensors.index.json as Hugging Face writes it, for sharded outputs only."""
    if len(plan.shards) < 2:
        return
    index = {
        "metadata": {"total_parameters": plan.params.total, "total_size": plan.out_bytes},
        "weight_map": {op.out_name: op.shard for op in sorted(plan.ops, key=lambda op: op.out_name)},
    }
    write_json(folder / WEIGHTS_INDEX_FILE, index)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def copy_companion_files(checkpoint: Checkpoint, folder: Path) -> list[str]:
    """Copy tokenizer, generation config, chat template and custom-code files; never weights, never links out."""
    copied = []
    root = checkpoint.root.resolve()
    for path in sorted(checkpoint.root.iterdir()):
        if path.name.startswith(".") or path.name in _NOT_COPIED or path.name.endswith(_NOT_COPIED_SUFFIXES):
            continue
        resolved = path.resolve()
        if not resolved.is_file() or not resolved.is_relative_to(root):
            continue
        shutil.copyfile(resolved, folder / path.name)
        copied.append(path.name)
    return copied
