"""Architecture registry: one module per model family, looked up by config.json's `model_type`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import InputError
from .base import Architecture, ParamCounts, TensorCut
from .nemotron_h import NemotronH

if TYPE_CHECKING:
    from ..checkpoint import Checkpoint

_REGISTRY: dict[str, Architecture] = {arch.model_type: arch for arch in (NemotronH(),)}


def get_architecture(model_type: str) -> Architecture:
    """The rules for a `model_type`, or a clear error listing the supported ones."""
    arch = _REGISTRY.get(model_type)
    if arch is None:
        raise InputError(
            f"model_type {model_type!r} is not supported; elastic-slice knows: {', '.join(sorted(_REGISTRY))}."
        )
    return arch


def architecture_of(checkpoint: Checkpoint) -> Architecture:
    """The rules for a checkpoint, once its config's claimed counts are checked against its tensors."""
    arch = get_architecture(checkpoint.model_type)
    arch.check_claims(checkpoint.config, {name: info.shape for name, info in checkpoint.tensors.items()})
    return arch


__all__ = ["Architecture", "ParamCounts", "TensorCut", "architecture_of", "get_architecture"]
