"""The contract every model family implements; nothing outside `arch/` names a model's tensors or config fields.

A family (`Architecture`) is registered by config.json's `model_type`; `bind(config)` parses one parent's config
once and returns a `BoundArchitecture`, whose per-tensor calls never re-read the config. Optional capabilities
(`masked_forward`, `calibration`) are None until a family has them, so a family can slice before it can calibrate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..selection import Selection

#: module kinds whose weight matrices are linear layers that FP8/NVFP4 may quantize
LINEAR_KINDS = frozenset({"mamba_linear", "attention_linear", "expert_linear", "shared_expert_linear", "mlp_linear"})
#: calibration records a key or value projection's output amax under its module name plus this suffix
OUTPUT = ":output"

#: `record(module name, tensor)`: what calibration hooks call with a linear layer's input (or OUTPUT-suffixed output)
Record = Callable[[str, Any], None]


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


@dataclass(frozen=True)
class RoutedExpert:
    """A routed expert's linear module, named `prefix + str(index) + suffix` (`backbone.layers.3.mixer.experts.` +
    `5` + `.up_proj`): the same projection of every expert of one MoE layer shares `prefix` and `suffix`."""

    prefix: str
    index: int
    suffix: str

    @property
    def projection(self) -> tuple[str, str]:
        """What this module shares with the same projection of its layer's other experts."""
        return self.prefix, self.suffix

    def sibling(self, index: int) -> str:
        """The module name of the same projection of expert `index` of this layer."""
        return f"{self.prefix}{index}{self.suffix}"


class MaskedForward(Protocol):
    """A budget's masked forward on a transformers model of the parent (the exactness reference)."""

    def apply(self, model: Any, sizes: Mapping[str, Any], norm: str) -> Any:
        """Patch `model` (fp32, the parent's transformers class) in place so that it computes the budget."""
        ...


class LayerwiseCalibration(Protocol):
    """Activation calibration run one decoder layer at a time."""

    def run(self, checkpoint: Any, sequences: list[Any], record: Record, device: str,
            on_layer: Callable[[int, int], None] | None = None) -> None:
        """Run token-id sequences through the parent one decoder layer at a time (only that layer's weights
        resident), passing each linear layer's input to `record(name, input)` keyed by the layer's checkpoint module
        name, and the key and value projections' outputs to `record(name + OUTPUT, output)` (for KV-cache scales);
        `on_layer(done, total)` after each layer."""
        ...


class FixtureBuilder(Protocol):
    """A tiny parent of the family, built with transformers' own classes, for the conformance tests."""

    def build(self, out: Path, seed: int = 0) -> dict[str, dict[str, Any]]:
        """Write a tiny parent checkpoint (config, safetensors, tokenizer, nesting index) into `out`; return the
        index's budgets (name -> sizes) it wrote."""
        ...


class BoundArchitecture(Protocol):
    """One family's rules bound to one parent's config; per-tensor calls never re-parse the config."""

    @property
    def model_type(self) -> str: ...

    @property
    def axes(self) -> tuple[str, ...]: ...

    @property
    def config(self) -> Mapping[str, Any]:
        """The parent's config.json, as read."""
        ...

    @property
    def masked_forward(self) -> MaskedForward | None:
        """Optional: None when the family has no masked-forward reference (yet)."""
        ...

    @property
    def calibration(self) -> LayerwiseCalibration | None:
        """Optional: None when the family cannot calibrate (yet); it can still quantize uncalibrated."""
        ...

    def check_claims(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Raise InputError when config.json's counts (layers, experts, heads) disagree with the tensors present
        (`shapes`: tensor name -> shape); callers run it before anything is built per layer or per expert."""
        ...

    def parent_sizes(self) -> dict[str, Any]:
        """Every axis at the parent's size."""
        ...

    def resolve(self, budget: str, requested: Mapping[str, Any]) -> dict[str, Any]:
        """Every axis size of a budget; raises BudgetError naming the budget, axis and rule."""
        ...

    def cut(self, name: str, shape: tuple[int, ...], sizes: Mapping[str, Any], norm: str) -> TensorCut | None:
        """The cut of parent tensor `name` for a budget, or None when the budget drops it."""
        ...

    def required_tensors(self) -> list[str]:
        """Tensor names the parent must hold for its config to be complete."""
        ...

    def child_config(self, sizes: Mapping[str, Any]) -> dict[str, Any]:
        """The child's config.json content."""
        ...

    def sizes_from_child_config(self, child: Mapping[str, Any], budget: str) -> dict[str, Any]:
        """The axis sizes (only those that differ from the parent) of a child whose config.json is `child`."""
        ...

    def count_parameters(self, shapes: Mapping[str, tuple[int, ...]], child_config: Mapping[str, Any]) -> ParamCounts:
        """Total and active (per-token) parameters of a model with these tensor shapes."""
        ...

    def module_kind(self, name: str) -> str:
        """The kind of module a tensor belongs to (embedding, norm, router, expert_linear, mlp_linear, ...)."""
        ...

    def serving_name(self, module: str) -> str:
        """A module's name as serving engines see it in quantization configs (the checkpoint's root dropped)."""
        ...

    def routed_expert(self, module: str) -> RoutedExpert | None:
        """Where a routed expert's linear module sits, or None for any other module."""
        ...

    def routed_expert_count(self) -> int:
        """Routed experts per MoE layer of the parent; 0 for a family without routed experts."""
        ...

    def recipe_exclusions(self) -> list[str]:
        """Module names the vendor's quantized release keeps unquantized (its recipe); [] when there is none."""
        ...

    def recipe_description(self) -> str:
        """How model cards name that recipe and what it keeps ("" when there is none)."""
        ...

    def loading_note(self) -> str:
        """"" when the project's tests load this layout in transformers (the card may say so), else one sentence for
        the card saying what loading it needs and that it was not checked."""
        ...

    def interpolation_steps(self, low: Mapping[str, Any], high: Mapping[str, Any]) -> dict[str, int]:
        """For any-size budgets: the step of every axis that differs between two resolved budgets (the sizes in
        between keep the structural rules); raises InputError when the family cannot interpolate."""
        ...

    def grow(self, sizes: Mapping[str, Any], axis: str, step: int, high: Mapping[str, Any]) -> dict[str, Any]:
        """`sizes` with `axis` one `step` larger, and any coupled axis moved with it (never past `high`)."""
        ...


class Architecture(Protocol):
    """A model family, registered by config.json's `model_type`."""

    @property
    def model_type(self) -> str: ...

    @property
    def fixture(self) -> FixtureBuilder:
        """The family's tiny parent for the conformance tests (needs transformers when built)."""
        ...

    def bind(self, config: Mapping[str, Any]) -> BoundArchitecture:
        """Parse and type-check a parent's config once (raise InputError naming the field)."""
        ...
