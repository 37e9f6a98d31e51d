"""Checkpoints named by Hugging Face Hub repo id: files come through huggingface_hub's standard cache.

`HF_TOKEN`, `HF_HOME` / `HF_HUB_CACHE` and `HF_HUB_OFFLINE` work as they do for every Hub client. Only weights
(`*.safetensors`), configs, tokenizer files, chat templates and custom-code files are fetched; pickled weights never.
"""

from __future__ import annotations

import re
from pathlib import Path

from .checkpoint import WEIGHTS_INDEX_FILE, read_json_object
from .errors import InputError, RunFailure

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
ALLOW_PATTERNS = [
    "*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "*.py", "tokenizer*", "*.md",
]


def is_repo_id(source: str) -> bool:
    return bool(_REPO_ID.match(source)) and not Path(source).exists()


def resolve(source: str | Path, revision: str | None = None) -> Path:
    """A local folder for `source`: the folder itself, or the Hub repo's snapshot in the local cache."""
    text = str(source)
    if not is_repo_id(text):
        if revision is not None:
            raise InputError(f"--revision applies to Hub repo ids; {text!r} is a local path.")
        return Path(source)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a dependency
        raise RunFailure("huggingface_hub is not installed.") from exc
    where = f"{text}" + (f" at revision {revision}" if revision else "")
    try:
        folder = Path(snapshot_download(text, revision=revision, allow_patterns=ALLOW_PATTERNS))
    except LocalEntryNotFoundError as exc:
        raise InputError(
            f"{where} is not in the Hugging Face cache and downloads are off (HF_HUB_OFFLINE) or the Hub cannot be "
            "reached; download it first, or unset HF_HUB_OFFLINE."
        ) from exc
    except RevisionNotFoundError as exc:
        raise InputError(f"{where}: the revision does not exist on the Hub.") from exc
    except RepositoryNotFoundError as exc:
        raise InputError(f"{where}: no such repository on the Hub (or it is private: set HF_TOKEN).") from exc
    except OSError as exc:
        raise RunFailure(f"downloading {where} failed: {exc}.") from exc
    _check_complete(folder, where)
    return folder


def _check_complete(folder: Path, where: str) -> None:
    """Every shard the weights index lists must be there: a partial cache is named as such, not as a broken repo."""
    index = folder / WEIGHTS_INDEX_FILE
    if not index.is_file():
        return
    weight_map = read_json_object(index, str(index)).get("weight_map") or {}
    for shard in sorted(set(weight_map.values()) if isinstance(weight_map, dict) else ()):
        if not (folder / str(shard)).exists():
            raise InputError(
                f"file {shard} of {where} is not in the Hugging Face cache ({folder}); download it first, "
                "or unset HF_HUB_OFFLINE."
            )
