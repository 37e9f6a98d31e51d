"""Architecture registry: one module per model family, looked up by config.json's `model_type`."""

from __future__ import annotations

from ..errors import InputError
from .base import Architecture, ParamCounts, TensorCut
from .nemotron_h import NemotronH

_REGISTRY: dict[str, Architecture] = {arch.model_type: arch for arch in (NemotronH(),)}


def get_architecture(model_type: str) -> Architecture:
    """The rules for a `model_type`, or a clear error listing the supported ones."""
    arch = _REGISTRY.get(model_type)
    if arch is None:
        raise InputError(
            f"model_type {model_type!r} is not supported; elastic-slice knows: {', '.join(sorted(_REGISTRY))}."
        )
    return arch


__all__ = ["Architecture", "ParamCounts", "TensorCut", "get_architecture"]
