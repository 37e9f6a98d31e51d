"""The presets registry: nesting indexes of known releases, matched by architecture and config fingerprint."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import InputError
from .untrusted_json import parse_json

PRESETS_ENV = "ELASTIC_SLICE_PRESETS"


@dataclass(frozen=True)
class Preset:
    release: str
    source: str
    file: str
    index: dict[str, Any]


def _preset_files() -> list[tuple[str, bytes]]:
    """(label, content) of every preset: the package's own, then those in $ELASTIC_SLICE_PRESETS."""
    found = []
    for entry in sorted(resources.files("elastic_slice.presets").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            found.append((f"elastic_slice/presets/{entry.name}", entry.read_bytes()))
    extra = os.environ.get(PRESETS_ENV)
    if extra:
        for path in sorted(Path(extra).glob("*.json")):
            found.append((str(path), path.read_bytes()))
    return found


def _field(config: dict[str, Any], key: str) -> Any:
    """A config field; a dotted key (`text_config.hidden_size`) reads inside a nested config."""
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def match_preset(config: dict[str, Any]) -> Preset | None:
    """The preset whose architecture and fingerprint match this config, if exactly one does."""
    matches = []
    for label, content in _preset_files():
        data = parse_json(content, f"preset {label}", unique_keys=True)
        try:
            fingerprint, index = data["fingerprint"], data["index"]
            if data["architecture"] != config.get("model_type") or not isinstance(fingerprint, dict) or not fingerprint:
                continue
            if not data.get("source"):
                raise InputError(f"preset {label} names no published source for its sizes; it is not used.")
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"preset {label} is not a valid preset ({exc}).") from exc
        if all(_field(config, key) == value for key, value in fingerprint.items()):
            matches.append(Preset(data.get("release", label), data["source"], label, index))
    if len(matches) > 1:
        raise InputError(f"presets {', '.join(m.file for m in matches)} all match this checkpoint; pass --index.")
    return matches[0] if matches else None
