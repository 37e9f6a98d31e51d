"""Architecture registry: one module per model family, looked up by config.json's `model_type`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import InputError
from .base import Architecture, BoundArchitecture, ParamCounts, TensorCut
from .gemma3n import Gemma3n
from .nemotron_h import NemotronH

if TYPE_CHECKING:
    from ..checkpoint import Checkpoint

#: every family elastic-slice slices, by model_type (the conformance tests run against each)
REGISTRY: dict[str, Architecture] = {
    family.model_type: family for family in (NemotronH(), Gemma3n("gemma3n"), Gemma3n("gemma3n_text"))
}


def get_architecture(model_type: str) -> Architecture:
    """The family of a `model_type`, or a clear error listing the supported ones."""
    family = REGISTRY.get(model_type)
    if family is None:
        raise InputError(
            f"model_type {model_type!r} is not supported; elastic-slice knows: {', '.join(sorted(REGISTRY))}."
        )
    return family


def architecture_of(checkpoint: Checkpoint) -> BoundArchitecture:
    """The rules bound to a checkpoint's config, once its claimed counts are checked against its tensors."""
    bound = get_architecture(checkpoint.model_type).bind(checkpoint.config)
    bound.check_claims({name: info.shape for name, info in checkpoint.tensors.items()})
    return bound


__all__ = [
    "REGISTRY", "Architecture", "BoundArchitecture", "ParamCounts", "TensorCut", "architecture_of", "get_architecture",
]
