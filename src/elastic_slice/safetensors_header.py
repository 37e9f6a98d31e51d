"""Read and check a safetensors header without trusting it: every lie is a clear error, never a crash."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .dtypes import SAFETENSORS_DTYPES, itemsize
from .errors import InputError
from .untrusted_json import parse_json

#: the safetensors library refuses headers above 100 MB; so do we, before allocating anything
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its shard file, dtype code, shape and byte range inside the data section."""

    name: str
    file: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class ShardHeader:
    """The parsed header of one safetensors file."""

    file: str
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str]
    data_start: int


def read_shard_header(path: Path, file_label: str) -> ShardHeader:
    """Parse and validate the header of the safetensors file at `path` (named `file_label` in messages)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise InputError(f"{file_label} is not a safetensors file: it is only {size} bytes long.")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES:
                raise InputError(
                    f"{file_label} declares a {header_len}-byte safetensors header (limit {MAX_HEADER_BYTES}); "
                    "the file is corrupt or hostile."
                )
            if 8 + header_len > size:
                raise InputError(f"{file_label} is truncated: its header runs past the end of the file.")
            raw = handle.read(header_len)
    except OSError as exc:
        raise InputError(f"cannot read {file_label}: {exc.strerror or exc}.") from exc
    header = parse_json(raw, f"{file_label} (its safetensors header)", unique_keys=True)
    if not isinstance(header, dict):
        raise InputError(f"{file_label} has a safetensors header that is not a JSON object.")
    metadata = header.pop("__metadata__", None) or {}
    return header_from_entries(file_label, header, metadata, size - 8 - header_len, data_start=8 + header_len)


def header_from_entries(
    file_label: str, entries: dict[str, Any], metadata: object, data_size: int, data_start: int = 0
) -> ShardHeader:
    """A checked ShardHeader from a header's tensor entries (name -> dtype, shape, data_offsets), whether read
    from a local file or from the Hub, where `data_size` bounds the data section."""
    if not isinstance(metadata, dict):
        raise InputError(f"{file_label} has a `__metadata__` entry that is not a JSON object.")
    tensors = [_tensor_info(file_label, name, entry, data_size) for name, entry in entries.items()]
    tensors.sort(key=lambda info: info.begin)
    previous: TensorInfo | None = None
    for info in tensors:
        if previous is not None and info.begin < previous.end:
            raise InputError(
                f"{file_label}: tensors {previous.name!r} and {info.name!r} overlap in the data section."
            )
        previous = info
    return ShardHeader(file=file_label, tensors=tuple(tensors), metadata=metadata, data_start=data_start)


def _tensor_info(file_label: str, name: str, entry: object, data_size: int) -> TensorInfo:
    where = f"{file_label}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise InputError(f"{where} has a header entry that is not a JSON object.")
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPES:
        raise InputError(f"{where} has unsupported dtype {dtype!r}.")
    if not isinstance(shape, list) or not all(_is_count(dim) for dim in shape):
        raise InputError(f"{where} has an invalid shape {shape!r}; expected a list of non-negative integers.")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(value) for value in offsets)
        or offsets[0] > offsets[1]
    ):
        raise InputError(f"{where} has invalid data_offsets {offsets!r}.")
    begin, end = offsets
    expected = math.prod(shape) * itemsize(dtype)
    if end - begin != expected:
        raise InputError(
            f"{where} occupies {end - begin} bytes but dtype {dtype} and shape {shape} need {expected}."
        )
    if end > data_size:
        raise InputError(f"{where} ends at byte {end} but the file holds only {data_size} data bytes (truncated?).")
    return TensorInfo(name=name, file=file_label, dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
