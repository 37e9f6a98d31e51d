"""The small interface every architecture module implements; nothing outside `arch/` names a model's tensors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..selection import Selection

#: module kinds whose weight matrices are linear layers that FP8/NVFP4 may quantize
LINEAR_KINDS = frozenset({"mamba_linear", "attention_linear", "expert_linear", "shared_expert_linear", "mlp_linear"})
#: calibration records a key or value projection's output amax under its module name plus this suffix
OUTPUT = ":output"


@dataclass(frozen=True)
class TensorCut:
    """How one parent tensor becomes one child tensor."""

    out_name: str
    selection: Selection
    #: multiply by this factor (folded RMSNorm weights under norm_semantics "full"); None leaves values as stored
    scale: float | None = None
    #: keep the parent's dtype even when --dtype asks for another (router tensors run in fp32)
    keep_dtype: bool = False
    #: zero-pad the cut to this shape (per-layer budgets stored in a uniform config); the padding holds pad_value
    pad_to: tuple[int, ...] | None = None
    pad_value: float = 0.0


@dataclass(frozen=True)
class ParamCounts:
    total: int
    active: int


class Architecture(Protocol):
    """Per-architecture knowledge: axes, rules, tensor cuts, child config and parameter counting."""

    model_type: str
    axes: tuple[str, ...]

    def check_claims(self, config: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Raise InputError when config.json's counts (layers, experts, heads) disagree with the tensors present
        (`shapes`: tensor name -> shape); callers run it before anything is built per layer or per expert."""
        ...

    def parent_sizes(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Every axis at the parent's size, read from config.json."""
        ...

    def resolve(self, config: Mapping[str, Any], budget: str, requested: Mapping[str, Any]) -> dict[str, Any]:
        """Every axis size of a budget; raises BudgetError naming the budget, axis and rule."""
        ...

    def cut(
        self, name: str, shape: tuple[int, ...], config: Mapping[str, Any], sizes: Mapping[str, Any], norm: str
    ) -> TensorCut | None:
        """The cut of parent tensor `name` for a budget, or None when the budget drops it."""
        ...

    def required_tensors(self, config: Mapping[str, Any]) -> list[str]:
        """Tensor names the parent must hold for its config to be complete."""
        ...

    def child_config(self, config: Mapping[str, Any], sizes: Mapping[str, Any]) -> dict[str, Any]:
        """The child's config.json content."""
        ...

    def sizes_from_child_config(self, config: Mapping[str, Any], child: Mapping[str, Any], budget: str) -> dict[str, Any]:
        """The axis sizes (only those that differ from the parent) of a child whose config.json is `child`."""
        ...

    def count_parameters(self, shapes: Mapping[str, tuple[int, ...]], child_config: Mapping[str, Any]) -> ParamCounts:
        """Total and active (per-token) parameters of a model with these tensor shapes."""
        ...

    def module_kind(self, name: str) -> str:
        """The kind of module a tensor belongs to (embedding, norm, router, expert_linear, ...)."""
        ...

    def recipe_exclusions(self, config: Mapping[str, Any]) -> list[str]:
        """Module names the vendor's quantized release of this architecture keeps unquantized (its recipe)."""
        ...

    def apply_masked_forward(self, model: Any, sizes: Mapping[str, Any], norm: str) -> Any:
        """Patch a transformers model of the parent in place so that it computes a budget's masked forward."""
        ...

    def calibrate_layerwise(self, checkpoint: Any, sequences: list[Any], record: Callable[[str, Any], None],
                            device: str, on_layer: Callable[[int, int], None] | None = None) -> None:
        """Run token-id sequences through the parent one decoder layer at a time (only that layer's weights
        resident), passing each linear layer's input to `record(name, input)` keyed by the layer's checkpoint module
        name, and the key and value projections' outputs to `record(name + OUTPUT, output)` (for KV-cache scales);
        `on_layer(done, total)` after each layer."""
        ...
