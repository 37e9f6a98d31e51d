"""`elastic_slice_manifest.json`: what an output was made from and with, and the sha256 of every file in it."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .checkpoint import Checkpoint, is_plain_file_name
from .errors import InputError
from .plan import Plan
from .safetensors_header import MAX_HEADER_BYTES
from .untrusted_json import load_json_object
from .writer import MANIFEST_FILE, STAGING_MARKER, write_json

MANIFEST_FORMAT = "elastic-slice-manifest"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _header_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        return hashlib.sha256(handle.read(min(length, MAX_HEADER_BYTES))).hexdigest()


def describe_parent_files(checkpoint: Checkpoint) -> dict[str, Any]:
    """Size and sha256 of the parent's small files; size and header sha256 of its weight shards.

    Hashing whole shards would read the entire parent, which extraction avoids; a shard's header hash pins every
    tensor's name, dtype, shape and offset, and its size the data length.
    """
    weight_files = {Path(shard.file).name for shard in checkpoint.shards}
    files: dict[str, Any] = {}
    for path in sorted(checkpoint.root.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        entry: dict[str, Any] = {"size": path.stat().st_size}
        if path.name in weight_files:
            entry["header_sha256"] = _header_sha256(path)
        else:
            entry["sha256"] = sha256_file(path)
        files[path.name] = entry
    # published with the folder: the parent's folder by name only (a Hub parent by repo id and commit, below)
    described: dict[str, Any] = {"path": checkpoint.root.resolve().name, "files": files}
    if checkpoint.hub is not None:
        described["hub"] = {"repo_id": checkpoint.hub.repo_id, "commit": checkpoint.hub.commit}
    return described


def write_manifest(
    folder: Path,
    plan: Plan,
    shard_sha256: dict[str, str],
    parent_files: dict[str, Any],
    options: dict[str, Any],
    command: str | None,
    version: str,
) -> None:
    """Write the manifest last, covering every other file of the folder."""
    files = {}
    for path in sorted(folder.iterdir()):
        if path.name in (MANIFEST_FILE, STAGING_MARKER):
            continue
        digest = shard_sha256.get(path.name) or sha256_file(path)
        files[path.name] = {"size": path.stat().st_size, "sha256": digest}
    manifest = {
        "format": MANIFEST_FORMAT,
        "tool": {"name": "elastic-slice", "version": version},
        "parent": parent_files,
        "budget": {
            "name": plan.budget.name,
            "sizes": plan.budget.sizes,
            "norm_semantics": plan.budget.norm_semantics,
            "is_parent": plan.budget.is_parent,
        },
        "params": asdict(plan.params),
        "options": options,
        "command": command,
        "files": files,
    }
    write_json(folder / MANIFEST_FILE, manifest)


def read_manifest(path: Path) -> dict[str, Any]:
    """An output's manifest, checked for the shape `verify` relies on: `files` maps plain file names of the folder to
    an integer `size` and a string `sha256`, `budget` is an object with a string `name`, `options` an object."""
    manifest = load_json_object(path, str(path), unique_keys=True)
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise InputError(f"{path} field 'files' must be an object of file name -> size and sha256, not {files!r:.60}.")
    for name, entry in files.items():
        if not is_plain_file_name(name) or name == MANIFEST_FILE:
            raise InputError(f"{path} lists {name!r}, which is not a plain file name inside the folder.")
        size = entry.get("size") if isinstance(entry, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(entry.get("sha256"), str):
            raise InputError(f"{path}: the entry of {name!r} must be an object with an integer `size` and a string `sha256`.")
    budget = manifest.get("budget")
    if not isinstance(budget, dict) or not isinstance(budget.get("name"), str):
        raise InputError(f"{path} field 'budget' must be an object with a string `name`, not {budget!r:.60}.")
    options = manifest.get("options")
    if not isinstance(options, dict) or not all(
        options.get(key) is None or isinstance(options[key], str) for key in ("dtype", "max_shard_size")
    ):
        raise InputError(f"{path} field 'options' must be an object whose `dtype` and `max_shard_size` are strings.")
    return manifest
