"""Checkpoints named by Hugging Face Hub repo id, and publishing outputs to the Hub.

Opening a repo id reads only its metadata: config, nesting index, weights index (through the standard cache) and
the safetensors headers (HTTP range requests, `HfApi.get_safetensors_metadata`); weight shards are downloaded by
`fetch`, and only those a plan reads. `HF_TOKEN`, `HF_HOME` / `HF_HUB_CACHE`, `HF_ENDPOINT` and `HF_HUB_OFFLINE`
work as they do for every Hub client; offline, everything comes from the cache. Pickled weights are never fetched.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from .checkpoint import (
    CONFIG_FILE,
    SINGLE_WEIGHTS_FILE,
    WEIGHTS_INDEX_FILE,
    Checkpoint,
    HubOrigin,
    assemble_checkpoint,
    open_checkpoint,
    read_config,
    weight_map_files,
)
from .errors import InputError, RunFailure
from .safetensors_header import ShardHeader, header_from_entries, read_shard_header

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: the files that describe a checkpoint (read by inspect and planning)
METADATA_FILES = [CONFIG_FILE, WEIGHTS_INDEX_FILE, "nesting_index.json", "hf_quant_config.json"]
#: files copied into every output beside the weights: tokenizer, generation config, templates, custom code, card
COMPANION_PATTERNS = ["*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken", "*.py", "tokenizer*", "*.md"]


def is_repo_id(source: str) -> bool:
    """Whether `source` is meant as a Hub repo id (ORG/NAME, not a local path); `check_repo_id` validates it."""
    return bool(_REPO_ID.match(source)) and not Path(source).exists()


def check_repo_id(repo_id: str, option: str = "--push-to-hub", as_given: str | None = None) -> str:
    """`repo_id` if it is a valid Hub ORG/NAME (huggingface_hub's own rules, and no `.` or `..` part); an error
    shows `as_given` (what the user typed) when `repo_id` was derived from it."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    parts = repo_id.split("/")
    try:
        if len(parts) != 2 or any(part in ("", ".", "..") for part in parts):
            raise HFValidationError(repo_id)
        validate_repo_id(repo_id)
    except HFValidationError:
        raise InputError(
            f"{option} {as_given or repo_id!r} is not a Hub repo id: use ORG/NAME of letters, digits, '-', '_' and '.' "
            "(not '.' or '..', no '--' or '..' inside, at most 96 characters)."
        ) from None
    return repo_id


def check_can_push(push_to_hub: str) -> None:
    """Refuse --push-to-hub before any work when the name (its {budget} placeholder filled with a sample budget
    name) is no repo id, or when the Hub client is offline (HF_HUB_OFFLINE), where the upload would fail after
    the whole extract."""
    from huggingface_hub import constants

    check_repo_id(push_to_hub.replace("{budget}", "budget"), as_given=push_to_hub)
    if constants.HF_HUB_OFFLINE:
        raise InputError(
            f"--push-to-hub {push_to_hub!r} needs the Hub, but HF_HUB_OFFLINE is set; unset it or leave out "
            "--push-to-hub."
        )


def cache_folder(repo_id: str) -> Path:
    """The folder of the Hugging Face cache that holds `repo_id` (its snapshots and blobs), links resolved."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    name = repo_folder_name(repo_id=check_repo_id(repo_id, "CKPT"), repo_type="model")
    return (Path(constants.HF_HUB_CACHE) / name).resolve()


def open_source(source: str | Path, revision: str | None = None) -> Checkpoint:
    """A local checkpoint folder, or a Hub repo opened from its metadata alone (see `fetch` for the weights)."""
    text = str(source)
    if not is_repo_id(text):
        if revision is not None:
            raise InputError(f"--revision applies to Hub repo ids; {text!r} is a local path.")
        return open_checkpoint(Path(source))
    return _open_repo(text, revision)


def fetch(checkpoint: Checkpoint, files: set[str]) -> Checkpoint:
    """Download the companion files and the weight `files` of a Hub checkpoint not yet in the cache; the returned
    checkpoint reads them. A local checkpoint is returned as it is."""
    origin = checkpoint.hub
    if origin is None:
        return checkpoint
    wanted = sorted(files & origin.missing)
    with _hub_errors(origin.where):
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(origin.repo_id, revision=origin.commit,
                                        allow_patterns=[*wanted, *COMPANION_PATTERNS]))
    shards = []
    for shard in checkpoint.shards:
        name = Path(shard.file).name
        if name in wanted:
            local = _local_header(folder, name, origin.where)
            if local.tensors != shard.tensors:
                raise RunFailure(f"{name} of {origin.where} on disk does not match the header read from the Hub.")
            shard = local
        shards.append(shard)
    return replace(checkpoint, shards=tuple(shards), hub=replace(origin, missing=origin.missing - set(wanted)))


def fetch_all(checkpoint: Checkpoint) -> Checkpoint:
    """Every weight shard and companion file (loading the whole model with transformers needs them)."""
    return fetch(checkpoint, {Path(shard.file).name for shard in checkpoint.shards})


def push(folder: Path, repo_id: str, private: bool, commit_message: str) -> str:
    """Create `repo_id` if needed and upload the finished `folder` as one commit; returns the commit URL."""
    with _hub_errors(check_repo_id(repo_id)):
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message)
    return str(info.commit_url)


def _open_repo(repo_id: str, revision: str | None) -> Checkpoint:
    from huggingface_hub import constants

    check_repo_id(repo_id, "CKPT")
    where = repo_id + (f" at revision {revision}" if revision else "")
    with _hub_errors(where):
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=METADATA_FILES))
    config = read_config(folder)
    cached = {p.name for p in folder.glob("*.safetensors")}
    if constants.HF_HUB_OFFLINE:
        names = weight_map_files(folder) or sorted(cached)
        headers = [_local_header(folder, name, where) for name in names]
        sizes = {name: (folder / name).stat().st_size for name in names}
    else:
        names, headers, sizes = _remote_headers(repo_id, folder, where)
    origin = HubOrigin(repo_id=repo_id, commit=folder.name, where=where, file_sizes=sizes,
                       missing=frozenset(set(names) - cached))
    return assemble_checkpoint(folder, config, names, headers, origin)


def _remote_headers(repo_id: str, folder: Path, where: str) -> tuple[list[str], list[ShardHeader], dict[str, int]]:
    """Shard names, headers (from the cache where present, else over HTTP ranges) and sizes on the Hub."""
    with _hub_errors(where):
        from huggingface_hub import HfApi
        from huggingface_hub.errors import NotASafetensorsRepoError

        api = HfApi()
        try:
            metadata = api.get_safetensors_metadata(repo_id, revision=folder.name)
        except NotASafetensorsRepoError as exc:
            raise InputError(f"{where} holds no {SINGLE_WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE}; "
                             "elastic-slice reads safetensors checkpoints only.") from exc
        siblings = api.model_info(repo_id, revision=folder.name, files_metadata=True).siblings or []
    names = sorted(metadata.files_metadata)
    sizes = {s.rfilename: int(s.size or 0) for s in siblings if s.rfilename in metadata.files_metadata}
    headers = []
    for name in names:
        if (folder / name).is_file():
            headers.append(_local_header(folder, name, where))
            continue
        file_metadata = metadata.files_metadata[name]
        entries: dict[str, Any] = {
            tensor: {"dtype": info.dtype, "shape": list(info.shape), "data_offsets": list(info.data_offsets)}
            for tensor, info in file_metadata.tensors.items()
        }
        headers.append(header_from_entries(str(folder / name), entries, file_metadata.metadata or {},
                                           max(0, sizes.get(name, 0) - 8)))
    return names, headers, sizes


def _local_header(folder: Path, name: str, where: str) -> ShardHeader:
    path = folder / name
    if not path.is_file():
        raise InputError(
            f"file {name} of {where} is not in the Hugging Face cache ({folder}) and downloads are off "
            "(HF_HUB_OFFLINE); download it first, or unset HF_HUB_OFFLINE."
        )
    return read_shard_header(path, str(path))


@contextmanager
def _hub_errors(where: str) -> Iterator[None]:
    """huggingface_hub's exceptions as one sentence naming the repo and what to do."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except LocalEntryNotFoundError as exc:
        raise InputError(
            f"{where} is not in the Hugging Face cache and downloads are off (HF_HUB_OFFLINE) or the Hub cannot be "
            "reached; download it first, or unset HF_HUB_OFFLINE."
        ) from exc
    except RevisionNotFoundError as exc:
        raise InputError(f"{where}: the revision does not exist on the Hub.") from exc
    except GatedRepoError as exc:
        raise InputError(f"{where} is gated: accept its terms on the Hub and set HF_TOKEN.") from exc
    except RepositoryNotFoundError as exc:
        raise InputError(f"{where}: no such repository on the Hub (or it is private: set HF_TOKEN).") from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "no"
        detail = " ".join(str(exc).split()) or type(exc).__name__
        if status in (401, 403):
            raise InputError(f"{where}: the Hub refused access ({status}); set HF_TOKEN to a token that may do this.") from exc
        raise RunFailure(f"the Hub answered {status} for {where}: {detail}") from exc
    except OSError as exc:
        raise RunFailure(f"talking to the Hub about {where} failed: {exc}.") from exc
