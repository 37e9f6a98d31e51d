"""Open a checkpoint folder: its config, its safetensors shards and a reader of their byte ranges."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, RunFailure
from .safetensors_header import ShardHeader, TensorInfo, read_shard_header
from .untrusted_json import load_json_object

CONFIG_FILE = "config.json"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
SINGLE_WEIGHTS_FILE = "model.safetensors"
HF_QUANT_CONFIG = "hf_quant_config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


@dataclass(frozen=True)
class HubOrigin:
    """Where a checkpoint opened by Hub repo id comes from, and which of its weight shards are not downloaded."""

    repo_id: str
    commit: str
    #: the repo id and revision as the user named them, for messages
    where: str
    #: weight shard sizes in bytes on the Hub (what downloading them costs)
    file_sizes: dict[str, int]
    #: weight shards whose headers were read over HTTP but whose bytes are not in the local cache
    missing: frozenset[str]


@dataclass
class Checkpoint:
    """A parent checkpoint: config, shard headers and every tensor in on-disk order (shard, then offset)."""

    root: Path
    config: dict[str, Any]
    shards: tuple[ShardHeader, ...]
    tensors: dict[str, TensorInfo]
    hub: HubOrigin | None = None

    @property
    def trusted_root(self) -> Path:
        """The folder that links inside the checkpoint may point into (see `trusted_root`)."""
        return trusted_root(self.root)

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))

    @property
    def total_bytes(self) -> int:
        return sum(info.nbytes for info in self.tensors.values())

    def dtype_bytes(self) -> dict[str, int]:
        """Tensor bytes per safetensors dtype code."""
        totals: dict[str, int] = {}
        for info in self.tensors.values():
            totals[info.dtype] = totals.get(info.dtype, 0) + info.nbytes
        return dict(sorted(totals.items(), key=lambda item: -item[1]))

    def quantization(self) -> str:
        """The checkpoint's quantization as its files declare it ("none" when unquantized)."""
        modelopt = self.hf_quant_config()
        if modelopt is not None:
            algo = (modelopt.get("quantization") or {}).get("quant_algo")
            return f"modelopt {algo}" if algo else "modelopt"
        config = self.config.get("quantization_config")
        if isinstance(config, dict):
            method = config.get("quant_method") or config.get("format") or "unknown"
            algo = config.get("quant_algo")
            return f"{method} {algo}" if algo else str(method)
        return "none"

    def hf_quant_config(self) -> dict[str, Any] | None:
        """hf_quant_config.json (ModelOpt's declaration), its fields checked, or None when absent."""
        document = self.read_json(HF_QUANT_CONFIG)
        if document is None:
            return None
        where = str(self.root / HF_QUANT_CONFIG)
        for name in ("quantization", "producer"):
            if not isinstance(document.get(name, {}), dict):
                raise InputError(f"{where}: {name!r} must be an object, not {document[name]!r}.")
        check_quantization_block(document.get("quantization") or {}, where)
        return document

    def read_json(self, name: str) -> dict[str, Any] | None:
        """A JSON object file at the checkpoint root, or None when absent."""
        path = self.root / name
        return load_json_object(path, str(path)) if path.is_file() else None


def open_checkpoint(source: str | Path) -> Checkpoint:
    """Open a local checkpoint folder, checking its config and every shard header."""
    root = Path(source)
    if not root.exists():
        raise InputError(f"checkpoint {str(source)!r} does not exist; give a folder holding config.json and *.safetensors.")
    if not root.is_dir():
        raise InputError(f"checkpoint {str(source)!r} is a file; give the folder that holds config.json.")
    config = read_config(root)
    shard_files = _shard_files(root)
    shards = [read_shard_header(_inside(root, name), str(root / name)) for name in shard_files]
    return assemble_checkpoint(root, config, shard_files, shards)


def read_config(root: Path) -> dict[str, Any]:
    """A checkpoint's config.json, which must name a `model_type`."""
    config_path = root / CONFIG_FILE
    if not config_path.is_file():
        raise InputError(f"{config_path} is missing; a checkpoint folder needs a Hugging Face config.json.")
    config = load_json_object(config_path, str(config_path))
    if not isinstance(config.get("model_type"), str):
        raise InputError(f"{config_path} has no string `model_type`; it is not a Hugging Face model config.")
    _check_generic_fields(config, config_path)
    return config


#: Hugging Face config fields every architecture may read, with the JSON types they must have when present
_GENERIC_FIELDS: dict[str, tuple[type, ...]] = {
    "architectures": (list,),
    "tie_word_embeddings": (bool,),
    "_name_or_path": (str,),
    "dtype": (str,),
    "torch_dtype": (str,),
    "quantization_config": (dict,),
}


def _check_generic_fields(config: dict[str, Any], config_path: Path) -> None:
    for name, types in _GENERIC_FIELDS.items():
        value = config.get(name)
        if value is not None and not isinstance(value, types):
            raise InputError(
                f"{config_path} field {name!r} must be {_JSON_TYPE_NAMES[types[0]]}, not {value!r}."
            )
    architectures = config.get("architectures") or []
    if not all(isinstance(name, str) for name in architectures):
        raise InputError(f"{config_path} field 'architectures' must be a list of class names (strings).")
    if isinstance(config.get("quantization_config"), dict):
        check_quantization_block(config["quantization_config"], f"{config_path} field 'quantization_config'")


#: fields of a quantization declaration (config.json's `quantization_config`, hf_quant_config.json's
#: `quantization`) that elastic-slice reads, with the JSON types they must have when present
_QUANTIZATION_FIELDS: dict[str, type] = {
    "quant_method": str, "quant_algo": str, "format": str, "kv_cache_quant_algo": str,
    "exclude_modules": list, "ignore": list,
}


def check_quantization_block(block: dict[str, Any], where: str) -> None:
    """Refuse a quantization declaration whose fields elastic-slice reads have the wrong JSON types."""
    for name, kind in _QUANTIZATION_FIELDS.items():
        value = block.get(name)
        if value is not None and not isinstance(value, kind):
            raise InputError(f"{where}: {name!r} must be {_JSON_TYPE_NAMES[kind]}, not {value!r}.")
        if kind is list and value is not None and not all(isinstance(item, str) for item in value):
            raise InputError(f"{where}: {name!r} must be a list of module names (strings).")


_JSON_TYPE_NAMES = {list: "a list", bool: "true or false", str: "a string", dict: "an object"}


def assemble_checkpoint(
    root: Path, config: dict[str, Any], shard_files: list[str], shards: list[ShardHeader], hub: HubOrigin | None = None
) -> Checkpoint:
    """A Checkpoint from checked shard headers: tensor names unique across shards, agreeing with the weights index."""
    tensors: dict[str, TensorInfo] = {}
    for name, shard in zip(shard_files, shards, strict=True):
        for info in shard.tensors:
            if info.name in tensors:
                raise InputError(f"tensor {info.name!r} appears in both {tensors[info.name].file} and {name}.")
            tensors[info.name] = TensorInfo(info.name, name, info.dtype, info.shape, info.begin, info.end)
    _check_index_agrees(root, shard_files, tensors)
    return Checkpoint(root=root, config=config, shards=tuple(shards), tensors=tensors, hub=hub)


def weight_map_files(root: Path) -> list[str]:
    """The shard files a folder's weights index names, sorted ([] without an index)."""
    index_path = root / WEIGHTS_INDEX_FILE
    if not index_path.is_file():
        return []
    return sorted(dict.fromkeys(_weight_map(index_path).values()))


def _weight_map(index_path: Path) -> dict[str, str]:
    """The `weight_map` of a weights index: tensor name -> shard file, each a plain file name of the folder."""
    weight_map = load_json_object(index_path, str(index_path), unique_keys=True).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise InputError(f"{index_path} has no valid `weight_map` object of tensor name -> shard file.")
    for name in dict.fromkeys(weight_map.values()):
        if not is_plain_file_name(name):
            raise InputError(
                f"shard name {name!r} in {index_path} escapes the checkpoint folder or is not a plain file name."
            )
    return weight_map


def is_plain_file_name(name: str) -> bool:
    """A single path component naming a file inside its folder: no separator, NUL, `.`/`..`, or empty name."""
    return bool(name) and name not in (".", "..") and not any(char in name for char in "/\\\0")


def _shard_files(root: Path) -> list[str]:
    files = weight_map_files(root)
    if files:
        for name in files:
            _inside(root, name)
        return files
    if (root / SINGLE_WEIGHTS_FILE).is_file():
        return [SINGLE_WEIGHTS_FILE]
    found = sorted(p.name for p in root.glob("*.safetensors"))
    if found:
        return found
    pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise InputError(
            f"{root} holds only pickled weights ({', '.join(pickles[:3])}); elastic-slice never unpickles: "
            "convert them to safetensors first."
        )
    raise InputError(f"{root} holds no *.safetensors weights.")


def trusted_root(root: Path) -> Path:
    """Where a checkpoint's links may point: the folder itself, or, for a Hugging Face cache snapshot
    (`models--org--name/snapshots/<commit>`), the repo's cache folder, whose `blobs/` hold the files."""
    resolved = root.resolve()
    if resolved.parent.name == "snapshots" and resolved.parent.parent.name.startswith(("models--", "datasets--")):
        return resolved.parent.parent
    return resolved


def _inside(root: Path, name: str) -> Path:
    """The path of shard `name`, refused when it escapes the checkpoint folder or is missing."""
    if not is_plain_file_name(name):
        raise InputError(f"shard name {name!r} in {root / WEIGHTS_INDEX_FILE} escapes the checkpoint folder.")
    resolved = (root / name).resolve()
    if not resolved.is_relative_to(trusted_root(root)):
        raise InputError(f"shard {name!r} in {root} is a link that points outside the checkpoint folder.")
    if not resolved.is_file():
        raise InputError(f"shard {name!r} listed by {root / WEIGHTS_INDEX_FILE} is missing.")
    return resolved


def _check_index_agrees(root: Path, shard_files: list[str], tensors: dict[str, TensorInfo]) -> None:
    index_path = root / WEIGHTS_INDEX_FILE
    if not index_path.is_file():
        return
    weight_map = _weight_map(index_path)
    for name, file in weight_map.items():
        info = tensors.get(name)
        if info is None:
            raise InputError(f"{index_path} lists tensor {name!r} in {file}, but no shard holds it.")
        if info.file != file:
            raise InputError(f"{index_path} puts tensor {name!r} in {file}, but it is in {info.file}.")
    extra = [name for name in tensors if name not in weight_map]
    if extra:
        raise InputError(f"tensor {extra[0]!r} in {tensors[extra[0]].file} is missing from {index_path}.")


class ShardFiles:
    """Byte ranges of the parent's shards, one descriptor per shard; safe to share between threads.

    Every read is a positioned read (preadv) into the caller's buffer, never a memory map: a shard that another
    process shortens during the run then gives a short read, reported as a RunFailure, where touching a mapped page
    past the new end would kill the process with SIGBUS (even a private copy populated in advance: truncating a
    file unmaps its copied pages too). A shard replaced by a rename keeps being read from the file opened at the
    start, and one that grows is read up to the offsets its header gave; both runs succeed with the old bytes.
    """

    def __init__(self, checkpoint: Checkpoint) -> None:
        self._checkpoint = checkpoint
        self._fds: dict[str, int] = {}
        self._data_start = {shard.file: shard.data_start for shard in checkpoint.shards}

    def __enter__(self) -> ShardFiles:
        missing = self._checkpoint.hub.missing if self._checkpoint.hub is not None else frozenset()
        for shard in self._checkpoint.shards:
            if Path(shard.file).name not in missing:
                self._fds[shard.file] = os.open(shard.file, os.O_RDONLY)
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _locate(self, info: TensorInfo, start: int) -> tuple[int, int]:
        """The descriptor and file offset of a tensor's data byte `start`."""
        label = str(self._checkpoint.root / info.file)
        return self._fds[label], self._data_start[label] + info.begin + start

    def _ended_early(self, info: TensorInfo) -> RunFailure:
        path = self._checkpoint.root / info.file
        return RunFailure(f"{path} ended early while reading tensor {info.name!r}; was it changed during the run?")

    def read_into(self, info: TensorInfo, start: int, buffer: memoryview) -> None:
        """Fill `buffer` with a tensor's data bytes from `start` on."""
        fd, offset = self._locate(info, start)
        done = 0
        while done < len(buffer):
            count = os.preadv(fd, [buffer[done:]], offset + done)
            if count == 0:
                raise self._ended_early(info)
            done += count

    def prefetch(self, info: TensorInfo, start: int, size: int) -> None:
        """Ask the kernel to read a tensor's bytes [start, start + size) ahead (a cold page cache), without waiting."""
        if hasattr(os, "posix_fadvise"):  # not on macOS
            fd, offset = self._locate(info, start)
            os.posix_fadvise(fd, offset, size, os.POSIX_FADV_WILLNEED)

    def read(self, info: TensorInfo, start: int, stop: int) -> bytearray:
        """Bytes [start, stop) of a tensor's data, in a new buffer."""
        buffer = bytearray(stop - start)
        self.read_into(info, start, memoryview(buffer))
        return buffer

    def read_tensor(self, name: str) -> Any:
        """A whole (small) tensor by name, as a torch tensor."""
        import torch

        from .dtypes import torch_dtype

        info = self._checkpoint.tensors[name]
        raw = self.read(info, 0, info.nbytes)
        return torch.frombuffer(raw, dtype=torch.uint8).view(torch_dtype(info.dtype)).reshape(info.shape)
