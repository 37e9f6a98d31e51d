"""Nemotron-H (`model_type` "nemotron_h"): hybrid Mamba-2 / attention / MoE / MLP layers, Hugging Face hub layout.

Tensor names follow the hub checkpoints (`backbone.layers.{i}.mixer...`, one tensor per routed expert). Layer kinds
come from `layers_block_type` (new or legacy spellings) or `hybrid_override_pattern` (M = Mamba, E = MoE,
* = attention, - = dense MLP).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ..errors import InputError
from ..nesting import BudgetError
from ..selection import Selection, concat, full, grouped_prefix, prefix, shift
from .base import LayerwiseCalibration, MaskedForward, ParamCounts, Record, RoutedExpert, TensorCut
from .layers import check_layers, kept_layers
from .nemotron_h_fixture import NemotronHFixture

MAMBA, MOE, ATTENTION, MLP = "M", "E", "*", "-"
_LETTER_OF_BLOCK = {
    "linear_attention": MAMBA, "mamba": MAMBA,
    "moe": MOE,
    "full_attention": ATTENTION, "attention": ATTENTION,
    "mlp": MLP,
}
_KIND_NAMES = {MAMBA: "Mamba", MOE: "MoE", ATTENTION: "attention", MLP: "MLP"}

AXES = (
    "hidden_size",
    "mamba_num_heads",
    "num_attention_heads",
    "num_key_value_heads",
    "n_routed_experts",
    "moe_intermediate_size",
    "moe_shared_expert_intermediate_size",
    "intermediate_size",
    "layers",
)
_INT_FIELDS = (
    "vocab_size", "hidden_size", "mamba_num_heads", "mamba_head_dim", "n_groups", "ssm_state_size",
    "num_attention_heads", "num_key_value_heads", "n_routed_experts", "num_experts_per_tok",
    "moe_intermediate_size", "moe_shared_expert_intermediate_size", "intermediate_size",
)

_LAYER_NAME = re.compile(r"^backbone\.layers\.(\d+)\.(.+)$")
_EXPERT_NAME = re.compile(r"^mixer\.experts\.(\d+)\.(up_proj|down_proj)\.weight$")
_EXPERT_INDEX = re.compile(r"^mixer\.experts\.(\d+)\.")
_EXPERT_MODULE = re.compile(r"^(backbone\.layers\.\d+\.mixer\.experts\.)(\d+)(\.(?:up_proj|down_proj))$")


@dataclass(frozen=True)
class _Shape:
    """The model's dimensions, for the parent (from config.json) or a child (from a budget)."""

    vocab: int
    hidden: int
    mamba_heads: int
    mamba_head_dim: int
    groups: int
    state: int
    conv_kernel: int
    q_heads: int
    kv_heads: int
    head_dim: int
    experts: int
    moe_ffn: int
    shared_ffn: int
    dense_ffn: int
    latent: int | None

    def with_sizes(self, sizes: Mapping[str, Any]) -> _Shape:
        return _Shape(
            vocab=self.vocab,
            hidden=sizes["hidden_size"],
            mamba_heads=sizes["mamba_num_heads"],
            mamba_head_dim=self.mamba_head_dim,
            groups=self.groups,
            state=self.state,
            conv_kernel=self.conv_kernel,
            q_heads=sizes["num_attention_heads"],
            kv_heads=sizes["num_key_value_heads"],
            head_dim=self.head_dim,
            experts=sizes["n_routed_experts"],
            moe_ffn=sizes["moe_intermediate_size"],
            shared_ffn=sizes["moe_shared_expert_intermediate_size"],
            dense_ffn=sizes["intermediate_size"],
            latent=self.latent,
        )


@dataclass(frozen=True)
class _Rule:
    """A tensor's expected parent shape and the selection that cuts it."""

    expected: tuple[int, ...]
    selection: Selection
    scale: float | None = None
    keep_dtype: bool = False
    pad_to: tuple[int, ...] | None = None
    pad_value: float = 0.0


class _MaskedForward:
    def apply(self, model: Any, sizes: Mapping[str, Any], norm: str) -> Any:
        from .nemotron_h_torch import apply_masked_forward

        return apply_masked_forward(model, dict(sizes), norm)


class _Calibration:
    def run(self, checkpoint: Any, sequences: list[Any], record: Record, device: str,
            on_layer: Callable[[int, int], None] | None = None) -> None:
        from .nemotron_h_torch import calibrate_layerwise

        calibrate_layerwise(checkpoint, sequences, record, device, on_layer)


class NemotronH:
    """The Nemotron-H family and its elastic releases."""

    model_type = "nemotron_h"
    fixture = NemotronHFixture()

    def bind(self, config: Mapping[str, Any]) -> BoundNemotronH:
        return BoundNemotronH(config)


class BoundNemotronH:
    """Axis rules and tensor cuts for one Nemotron-H parent, its config parsed once."""

    model_type = "nemotron_h"
    axes = AXES
    masked_forward: MaskedForward | None = _MaskedForward()
    calibration: LayerwiseCalibration | None = _Calibration()

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config

    # parsed on first use, once: `check_claims` compares the layer counts before the layer kinds are read
    @cached_property
    def pattern(self) -> str:
        return layer_pattern(self.config)

    @cached_property
    def shape(self) -> _Shape:
        return _parent_shape(self.config)

    @cached_property
    def top_k(self) -> int:
        return _config_int(self.config, "num_experts_per_tok")

    @cached_property
    def routing_groups(self) -> int:
        return _optional_int(self.config, "n_group", 1)

    # ----- config -----------------------------------------------------------------------------------------------
    def check_claims(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """config.json's layer, expert and head counts agree with the tensors present; runs before anything is built
        per layer or per expert, so a config claiming millions of them fails at once instead of allocating."""
        config = self.config
        layers, top_expert = _present_layers_and_experts(shapes)
        field_name, claimed = _pattern_field(config)
        if claimed is None:
            layer_pattern(config)  # raises: the field is missing or of the wrong type
        counts = {field_name: claimed}
        if config.get("num_hidden_layers") is not None:
            counts["num_hidden_layers"] = _config_int(config, "num_hidden_layers")
        for name, count in counts.items():
            if count != layers:
                raise InputError(
                    f"config.json field {name!r} describes {count} layers, but the checkpoint's tensors hold "
                    f"{layers} (backbone.layers.N with N < {layers})."
                )
        pattern, shape = self.pattern, self.shape
        if MOE in pattern and shape.experts != top_expert + 1:
            raise InputError(
                f"config.json field 'n_routed_experts' is {shape.experts}, but the checkpoint's MoE layers hold "
                f"{top_expert + 1} experts."
            )
        first = {letter: pattern.index(letter) for letter in (MAMBA, ATTENTION) if letter in pattern}
        expected_rows = [("backbone.embeddings.weight", "vocab_size", shape.vocab)]
        if MAMBA in first:
            expected_rows.append((f"backbone.layers.{first[MAMBA]}.mixer.A_log", "mamba_num_heads", shape.mamba_heads))
        if ATTENTION in first:
            layer = f"backbone.layers.{first[ATTENTION]}.mixer"
            expected_rows += [
                (f"{layer}.q_proj.weight", "num_attention_heads x head_dim", shape.q_heads * shape.head_dim),
                (f"{layer}.k_proj.weight", "num_key_value_heads x head_dim", shape.kv_heads * shape.head_dim),
            ]
        for name, claim, rows in expected_rows:
            found = shapes.get(name)
            if found is not None and (not found or found[0] != rows):
                raise InputError(f"config.json gives {claim} = {rows}, but tensor {name!r} has shape {list(found)}.")

    def parent_sizes(self) -> dict[str, Any]:
        shape = self.shape
        return {
            "hidden_size": shape.hidden,
            "mamba_num_heads": shape.mamba_heads,
            "num_attention_heads": shape.q_heads,
            "num_key_value_heads": shape.kv_heads,
            "n_routed_experts": shape.experts,
            "moe_intermediate_size": shape.moe_ffn,
            "moe_shared_expert_intermediate_size": shape.shared_ffn,
            "intermediate_size": shape.dense_ffn,
            "layers": list(range(len(self.pattern))),
        }

    def resolve(self, budget: str, requested: Mapping[str, Any]) -> dict[str, Any]:
        parent = self.parent_sizes()
        for axis in requested:
            if axis not in AXES:
                raise BudgetError(budget, axis, f"unknown axis; nemotron_h axes are {', '.join(AXES)}")
        sizes = dict(parent)
        for axis, value in requested.items():
            if axis == "layers":
                sizes["layers"] = check_layers(budget, value, len(parent["layers"]))
                continue
            if isinstance(value, list):
                sizes[axis] = _check_per_layer(budget, axis, value, self.pattern, parent[axis], self.top_k)
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise BudgetError(budget, axis, f"the size must be a positive integer, not {value!r}")
            if value > parent[axis]:
                raise BudgetError(budget, axis, f"{value} is larger than the parent's {parent[axis]}")
            sizes[axis] = value
        if "num_key_value_heads" in requested and "num_attention_heads" not in requested:
            # dropping KV groups drops their query heads too
            sizes["num_attention_heads"] = sizes["num_key_value_heads"] * (
                parent["num_attention_heads"] // parent["num_key_value_heads"]
            )
        self._check_structure(budget, parent, uniform_sizes(sizes))
        return sizes

    def child_config(self, sizes: Mapping[str, Any]) -> dict[str, Any]:
        child = copy.deepcopy(dict(self.config))
        child.pop("nesting_index", None)
        uniform = uniform_sizes(sizes)
        for axis in AXES:
            if axis != "layers":
                child[axis] = uniform[axis]
        kept = list(sizes["layers"])
        if kept != list(range(len(self.pattern))):
            if isinstance(child.get("layers_block_type"), list):
                child["layers_block_type"] = [child["layers_block_type"][i] for i in kept]
            if isinstance(child.get("hybrid_override_pattern"), str):
                child["hybrid_override_pattern"] = "".join(child["hybrid_override_pattern"][i] for i in kept)
            if "num_hidden_layers" in child:
                child["num_hidden_layers"] = len(kept)
        return child

    def sizes_from_child_config(self, child: Mapping[str, Any], budget: str) -> dict[str, Any]:
        parent = self.parent_sizes()
        derived: dict[str, Any] = {}
        for axis in AXES:
            if axis == "layers":
                continue
            value = child.get(axis)
            if value is None:
                raise BudgetError(budget, axis, "the child's config.json does not give this field")
            if value != parent[axis]:
                derived[axis] = value
        parent_pattern = self.pattern
        claimed = _pattern_field(child)[1]
        if claimed is not None and claimed > len(parent_pattern):
            raise BudgetError(
                budget, "layers", f"the child's config.json has {claimed} layers, more than the parent's "
                f"{len(parent_pattern)}",
            )
        child_pattern = layer_pattern(child)
        if child_pattern != parent_pattern:
            derived["layers"] = _kept_layers(parent_pattern, child_pattern, budget)
        return derived

    # ----- tensors ----------------------------------------------------------------------------------------------
    def required_tensors(self) -> list[str]:
        shape = self.shape
        names = ["backbone.embeddings.weight", "backbone.norm_f.weight"]
        if not self.config.get("tie_word_embeddings", False):
            names.append("lm_head.weight")
        per_kind = {
            MAMBA: ["in_proj.weight", "conv1d.weight", "A_log", "D", "dt_bias", "norm.weight", "out_proj.weight"],
            ATTENTION: ["q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"],
            MOE: ["gate.weight", "gate.e_score_correction_bias", "shared_experts.up_proj.weight",
                  "shared_experts.down_proj.weight"]
            + [f"experts.{e}.{p}.weight" for e in range(shape.experts) for p in ("up_proj", "down_proj")],
            MLP: ["up_proj.weight", "down_proj.weight"],
        }
        for i, letter in enumerate(self.pattern):
            names.append(f"backbone.layers.{i}.norm.weight")
            names.extend(f"backbone.layers.{i}.mixer.{local}" for local in per_kind[letter])
        return names

    def cut(self, name: str, shape: tuple[int, ...], sizes: Mapping[str, Any], norm: str) -> TensorCut | None:
        parent = self.shape
        child = parent.with_sizes(uniform_sizes(sizes))
        out_name = name
        if name in ("backbone.embeddings.weight", "lm_head.weight"):
            rule = _Rule((parent.vocab, parent.hidden), (full(parent.vocab), prefix(child.hidden)))
        elif name == "backbone.norm_f.weight":
            rule = _norm_rule(parent.hidden, child.hidden, norm)
        else:
            match = _LAYER_NAME.match(name)
            if match is None:
                raise InputError(f"tensor {name!r} is not a known Nemotron-H tensor; elastic-slice cannot place it.")
            layer, local = int(match.group(1)), match.group(2)
            pattern = self.pattern
            if layer >= len(pattern):
                raise InputError(f"tensor {name!r} belongs to layer {layer}, but config.json has {len(pattern)} layers.")
            kept: list[int] = list(sizes["layers"])
            if layer not in kept:
                return None
            out_name = f"backbone.layers.{kept.index(layer)}.{local}"
            found: _Rule | None = None
            if local == "norm.weight":
                found = _norm_rule(parent.hidden, child.hidden, norm)
            elif local.startswith("mixer."):
                kept_here = parent.with_sizes(uniform_sizes(layer_sizes(sizes, layer)))
                found = _MIXER_RULES[pattern[layer]](local, parent, child, norm, name, kept_here)
            if found is _DROPPED:
                return None
            if found is None:
                kind = _KIND_NAMES[pattern[layer]]
                raise InputError(f"tensor {name!r} is not a known Nemotron-H tensor of a {kind} layer.")
            rule = found
        if tuple(shape) != rule.expected:
            raise InputError(
                f"tensor {name!r} has shape {list(shape)}, but config.json implies {list(rule.expected)}."
            )
        return TensorCut(
            out_name=out_name, selection=rule.selection, scale=rule.scale, keep_dtype=rule.keep_dtype,
            pad_to=rule.pad_to, pad_value=rule.pad_value,
        )

    def count_parameters(self, shapes: Mapping[str, tuple[int, ...]], child_config: Mapping[str, Any]) -> ParamCounts:
        total = sum(math.prod(s) for s in shapes.values())
        routed = sum(math.prod(s) for name, s in shapes.items() if ".mixer.experts." in name)
        experts = int(child_config["n_routed_experts"])
        inactive = routed * (experts - int(child_config["num_experts_per_tok"])) // experts
        return ParamCounts(total=total, active=total - inactive)

    def module_kind(self, name: str) -> str:
        for pattern, kind in _KIND_PATTERNS:
            if pattern.search(name):
                return kind
        return "other"

    def recipe_exclusions(self) -> list[str]:
        """Modules NVIDIA's Nemotron 3 Nano NVFP4 release keeps unquantized, in its hf_quant_config.json order:
        lm_head; for each attention layer, the in_proj/out_proj of a Mamba layer right before it and the
        attention's q/k/v/o projections; then every Mamba layer's conv1d."""
        pattern = self.pattern
        names = ["lm_head"]
        for layer, kind in enumerate(pattern):
            if kind != ATTENTION:
                continue
            if layer > 0 and pattern[layer - 1] == MAMBA:
                names += [f"backbone.layers.{layer - 1}.mixer.{proj}" for proj in ("in_proj", "out_proj")]
            names += [f"backbone.layers.{layer}.mixer.{proj}_proj" for proj in "qkvo"]
        names += [f"backbone.layers.{layer}.mixer.conv1d" for layer, kind in enumerate(pattern) if kind == MAMBA]
        return names

    def loading_note(self) -> str:
        return ""

    def recipe_description(self) -> str:
        return ("NVIDIA's Nemotron 3 Nano NVFP4 recipe: lm_head, every attention q/k/v/o projection, the Mamba "
                "in/out projections right before an attention layer, and conv1d")

    def serving_name(self, module: str) -> str:
        """`backbone.layers.3.mixer.q_proj` -> `layers.3.mixer.q_proj`: engines rename the root module."""
        return module.split(".", 1)[1] if "." in module else module

    def routed_expert(self, module: str) -> RoutedExpert | None:
        match = _EXPERT_MODULE.match(module)
        if match is None:
            return None
        return RoutedExpert(prefix=match.group(1), index=int(match.group(2)), suffix=match.group(3))

    def routed_expert_count(self) -> int:
        return self.shape.experts if MOE in self.pattern else 0

    # ----- any-size budgets -------------------------------------------------------------------------------------
    def interpolation_steps(self, low: Mapping[str, Any], high: Mapping[str, Any]) -> dict[str, int]:
        """Whole Mamba head groups, query heads by the KV groups, one KV group or expert at a time, and matrix
        dimensions aligned to the largest power of two (up to 64) dividing both neighbours' sizes."""
        steps: dict[str, int] = {}
        for axis, small in low.items():
            large = high[axis]
            if axis == "layers" or small == large:
                continue
            if isinstance(small, list) or isinstance(large, list):
                raise InputError(
                    f"axis {axis!r} has per-layer sizes in a budget; sizes between budgets need one size per axis."
                )
            if axis == "mamba_num_heads":
                steps[axis] = self.shape.groups
            elif axis == "num_attention_heads":
                steps[axis] = int(high["num_key_value_heads"])
            elif axis in ("num_key_value_heads", "n_routed_experts"):
                steps[axis] = 1
            else:
                steps[axis] = _alignment(small, large)
        return steps

    def grow(self, sizes: Mapping[str, Any], axis: str, step: int, high: Mapping[str, Any]) -> dict[str, Any]:
        grown = {**sizes, axis: sizes[axis] + step}
        if axis == "num_key_value_heads":  # keep the heads per group: grow the query heads with it
            grown["num_attention_heads"] = min(
                high["num_attention_heads"], grown[axis] * (sizes["num_attention_heads"] // sizes[axis])
            )
        return grown

    def _check_structure(self, budget: str, parent: Mapping[str, Any], sizes: Mapping[str, Any]) -> None:
        groups = self.shape.groups
        if sizes["mamba_num_heads"] % groups:
            raise BudgetError(
                budget, "mamba_num_heads",
                f"{sizes['mamba_num_heads']} is not a multiple of n_groups ({groups}): heads are kept group by group",
            )
        q, kv = sizes["num_attention_heads"], sizes["num_key_value_heads"]
        if q % kv:
            raise BudgetError(budget, "num_attention_heads", f"{q} is not a multiple of num_key_value_heads ({kv})")
        parent_rep = parent["num_attention_heads"] // parent["num_key_value_heads"]
        if q // kv > parent_rep:
            raise BudgetError(
                budget, "num_attention_heads",
                f"{q} heads over {kv} KV groups is {q // kv} per group, more than the parent's {parent_rep}",
            )
        experts = sizes["n_routed_experts"]
        if experts < self.top_k:
            raise BudgetError(budget, "n_routed_experts", f"{experts} is fewer than num_experts_per_tok ({self.top_k})")
        if self.routing_groups > 1 and experts != parent["n_routed_experts"]:
            raise BudgetError(
                budget, "n_routed_experts",
                f"experts cannot be cut when routing uses n_group={self.routing_groups} expert groups",
            )


def _alignment(low: int, high: int) -> int:
    for step in (64, 32, 16, 8, 4, 2):
        if low % step == 0 and high % step == 0:
            return step
    return 1


_KIND_PATTERNS = [
    (re.compile(r"embeddings\."), "embedding"),
    (re.compile(r"^lm_head\."), "lm_head"),
    (re.compile(r"(norm_f|\.norm)\.weight$"), "norm"),
    (re.compile(r"\.gate\."), "router"),
    (re.compile(r"\.conv1d\."), "conv"),
    (re.compile(r"\.(A_log|D|dt_bias)$"), "ssm_param"),
    (re.compile(r"\.mixer\.(in_proj|out_proj)\."), "mamba_linear"),
    (re.compile(r"\.mixer\.[qkvo]_proj\."), "attention_linear"),
    (re.compile(r"\.mixer\.experts\.\d+\."), "expert_linear"),
    (re.compile(r"\.mixer\.shared_experts\."), "shared_expert_linear"),
    (re.compile(r"\.mixer\.fc[12]_latent_proj\."), "latent_linear"),
    (re.compile(r"\.mixer\.(up_proj|down_proj)\."), "mlp_linear"),
]


# ----- config helpers -------------------------------------------------------------------------------------------
def _pattern_field(config: Mapping[str, Any]) -> tuple[str, int | None]:
    """The config field that gives the layer kinds, and how many layers it lists (None when it is of the wrong
    type: `layer_pattern` then says so), counted without reading its entries."""
    if config.get("layers_block_type") is not None:
        blocks = config["layers_block_type"]
        return "layers_block_type", len(blocks) if isinstance(blocks, list) else None
    pattern = config.get("hybrid_override_pattern")
    return "hybrid_override_pattern", len(pattern) if isinstance(pattern, str) else None


def _present_layers_and_experts(shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, int]:
    """How many layers the tensor names hold (highest index + 1) and the highest routed expert index (-1: none)."""
    top_layer = top_expert = -1
    for name in shapes:
        match = _LAYER_NAME.match(name)
        if match is None:
            continue
        top_layer = max(top_layer, int(match.group(1)))
        expert = _EXPERT_INDEX.match(match.group(2))
        if expert is not None:
            top_expert = max(top_expert, int(expert.group(1)))
    return top_layer + 1, top_expert


def layer_pattern(config: Mapping[str, Any]) -> str:
    """The layer kinds as a pattern string, one letter per layer (M, E, *, -)."""
    blocks = config.get("layers_block_type")
    if blocks is not None:
        if not isinstance(blocks, list) or not all(isinstance(b, str) for b in blocks):
            raise InputError("config.json field 'layers_block_type' must be a list of strings.")
        unknown = [b for b in blocks if b not in _LETTER_OF_BLOCK]
        if unknown:
            raise InputError(f"config.json field 'layers_block_type' has unknown layer type {unknown[0]!r}.")
        return "".join(_LETTER_OF_BLOCK[b] for b in blocks)
    pattern = config.get("hybrid_override_pattern")
    if isinstance(pattern, str) and pattern and set(pattern) <= {MAMBA, MOE, ATTENTION, MLP}:
        return pattern
    raise InputError(
        "config.json needs 'layers_block_type' (a list) or 'hybrid_override_pattern' (letters M, E, *, -)."
    )


def _config_int(config: Mapping[str, Any], name: str) -> int:
    value = config.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InputError(f"config.json field {name!r} must be a positive integer, not {value!r}.")
    return value


def _optional_int(config: Mapping[str, Any], name: str, default: int) -> int:
    """A positive integer field that may be absent or null (then `default`)."""
    return default if config.get(name) is None else _config_int(config, name)


def _parent_shape(config: Mapping[str, Any]) -> _Shape:
    values = {name: _config_int(config, name) for name in _INT_FIELDS}
    head_dim = _optional_int(config, "head_dim", values["hidden_size"] // values["num_attention_heads"])
    shape = _Shape(
        vocab=values["vocab_size"],
        hidden=values["hidden_size"],
        mamba_heads=values["mamba_num_heads"],
        mamba_head_dim=values["mamba_head_dim"],
        groups=values["n_groups"],
        state=values["ssm_state_size"],
        conv_kernel=_optional_int(config, "conv_kernel", 4),
        q_heads=values["num_attention_heads"],
        kv_heads=values["num_key_value_heads"],
        head_dim=head_dim,
        experts=values["n_routed_experts"],
        moe_ffn=values["moe_intermediate_size"],
        shared_ffn=values["moe_shared_expert_intermediate_size"],
        dense_ffn=values["intermediate_size"],
        latent=None if config.get("moe_latent_size") is None else _config_int(config, "moe_latent_size"),
    )
    if shape.mamba_heads % shape.groups:
        raise InputError(
            f"config.json: mamba_num_heads ({shape.mamba_heads}) is not a multiple of n_groups ({shape.groups})."
        )
    if shape.q_heads % shape.kv_heads:
        raise InputError(
            f"config.json: num_attention_heads ({shape.q_heads}) is not a multiple of "
            f"num_key_value_heads ({shape.kv_heads})."
        )
    return shape


#: axes a per-layer budget may vary, and the layer kind each applies to: these can be zero-padded exactly
PER_LAYER_AXES = {
    "n_routed_experts": MOE,
    "moe_intermediate_size": MOE,
    "moe_shared_expert_intermediate_size": MOE,
    "intermediate_size": MLP,
}


def uniform_sizes(sizes: Mapping[str, Any]) -> dict[str, Any]:
    """The child config's sizes: a per-layer axis takes its largest entry (smaller layers are zero-padded to it)."""
    return {
        axis: max(v for v in value if v is not None) if axis in PER_LAYER_AXES and isinstance(value, list) else value
        for axis, value in sizes.items()
    }


def layer_sizes(sizes: Mapping[str, Any], layer: int) -> dict[str, Any]:
    """The sizes that hold at one parent layer."""
    return {
        axis: value[layer] if axis in PER_LAYER_AXES and isinstance(value, list) else value
        for axis, value in sizes.items()
    }


def _check_per_layer(budget: str, axis: str, value: list[Any], pattern: str, parent_size: int, top_k: int) -> list[Any]:
    kind = PER_LAYER_AXES.get(axis)
    if kind is None:
        raise BudgetError(
            budget, axis,
            "per-layer sizes cannot be represented exactly in a standard nemotron_h config for this axis (only "
            f"{', '.join(PER_LAYER_AXES)} can be zero-padded); give one integer",
        )
    if len(value) != len(pattern):
        raise BudgetError(budget, axis, f"a per-layer list needs {len(pattern)} entries, one per parent layer")
    if kind not in pattern:
        raise BudgetError(budget, axis, f"the parent has no {_KIND_NAMES[kind]} layers, so a per-layer list is all null; give one integer")
    floor = top_k if axis == "n_routed_experts" else 1
    for layer, (letter, size) in enumerate(zip(pattern, value, strict=True)):
        if letter != kind:
            if size is not None:
                raise BudgetError(budget, axis, f"layer {layer} is a {_KIND_NAMES[letter]} layer: its entry must be null")
            continue
        if not isinstance(size, int) or isinstance(size, bool) or not floor <= size <= parent_size:
            raise BudgetError(
                budget, axis, f"layer {layer} needs an integer from {floor} to {parent_size}, not {size!r}"
            )
    return [v if letter == kind else None for letter, v in zip(pattern, value, strict=True)]


def _kept_layers(parent: str, child: str, budget: str) -> list[int]:
    """The parent layers a child kept, when its layer kinds fit the parent's in exactly one way."""
    ways, kept = kept_layers(parent, child)
    if ways == 0:
        raise BudgetError(budget, "layers", f"the child's layers {child!r} are not a subsequence of the parent's {parent!r}")
    if ways > 1:
        raise BudgetError(
            budget, "layers",
            f"the child's layers {child!r} fit the parent's {parent!r} in several ways; write `layers` by hand",
        )
    return kept


# ----- per-tensor rules -----------------------------------------------------------------------------------------
def _norm_scale(parent_width: int, child_width: int, norm: str) -> float | None:
    if norm == "full" and child_width != parent_width:
        return math.sqrt(parent_width / child_width)
    return None


def _norm_rule(parent_hidden: int, child_hidden: int, norm: str) -> _Rule:
    return _Rule((parent_hidden,), (prefix(child_hidden),), _norm_scale(parent_hidden, child_hidden, norm))


def _mamba_rule(local: str, p: _Shape, c: _Shape, norm: str, name: str, kept: _Shape) -> _Rule | None:
    inner = p.mamba_heads * p.mamba_head_dim
    bc = 2 * p.groups * p.state
    per_group, keep = p.mamba_heads // p.groups, c.mamba_heads // p.groups
    channels = grouped_prefix(p.groups, per_group, keep, unit=p.mamba_head_dim)
    heads = grouped_prefix(p.groups, per_group, keep)
    in_rows = concat(channels, shift(channels, inner), ((2 * inner, 2 * inner + bc),), shift(heads, 2 * inner + bc))
    conv_rows = concat(channels, ((inner, inner + bc),))
    in_size = 2 * inner + bc + p.mamba_heads
    rules = {
        "mixer.in_proj.weight": _Rule((in_size, p.hidden), (in_rows, prefix(c.hidden))),
        "mixer.in_proj.bias": _Rule((in_size,), (in_rows,)),
        "mixer.conv1d.weight": _Rule((inner + bc, 1, p.conv_kernel), (conv_rows, full(1), full(p.conv_kernel))),
        "mixer.conv1d.bias": _Rule((inner + bc,), (conv_rows,)),
        "mixer.A_log": _Rule((p.mamba_heads,), (heads,)),
        "mixer.D": _Rule((p.mamba_heads,), (heads,)),
        "mixer.dt_bias": _Rule((p.mamba_heads,), (heads,)),
        "mixer.norm.weight": _Rule((inner,), (channels,), _norm_scale(per_group, keep, norm)),
        "mixer.out_proj.weight": _Rule((p.hidden, inner), (prefix(c.hidden), channels)),
        "mixer.out_proj.bias": _Rule((p.hidden,), (prefix(c.hidden),)),
    }
    return rules.get(local)


def _attention_rule(local: str, p: _Shape, c: _Shape, norm: str, name: str, kept: _Shape) -> _Rule | None:
    q_rows = grouped_prefix(c.kv_heads, p.q_heads // p.kv_heads, c.q_heads // c.kv_heads, unit=p.head_dim)
    kv_rows = prefix(c.kv_heads * p.head_dim)
    q_size, kv_size = p.q_heads * p.head_dim, p.kv_heads * p.head_dim
    rules = {
        "mixer.q_proj.weight": _Rule((q_size, p.hidden), (q_rows, prefix(c.hidden))),
        "mixer.k_proj.weight": _Rule((kv_size, p.hidden), (kv_rows, prefix(c.hidden))),
        "mixer.v_proj.weight": _Rule((kv_size, p.hidden), (kv_rows, prefix(c.hidden))),
        "mixer.o_proj.weight": _Rule((p.hidden, q_size), (prefix(c.hidden), q_rows)),
        "mixer.q_proj.bias": _Rule((q_size,), (q_rows,)),
        "mixer.k_proj.bias": _Rule((kv_size,), (kv_rows,)),
        "mixer.v_proj.bias": _Rule((kv_size,), (kv_rows,)),
        "mixer.o_proj.bias": _Rule((p.hidden,), (prefix(c.hidden),)),
    }
    return rules.get(local)


def _ffn_rules(module: str, hidden: int, child_hidden: int, ffn: int, kept_ffn: int, padded_ffn: int) -> dict[str, _Rule]:
    """up_proj/down_proj of a non-gated MLP whose input and output are `hidden` wide; channels past `kept_ffn` are
    zero up to `padded_ffn` (exact: relu2(0) = 0 and zero columns add nothing)."""
    pad = kept_ffn != padded_ffn
    return {
        f"{module}.up_proj.weight": _Rule((ffn, hidden), (prefix(kept_ffn), prefix(child_hidden)),
                                          pad_to=(padded_ffn, child_hidden) if pad else None),
        f"{module}.up_proj.bias": _Rule((ffn,), (prefix(kept_ffn),), pad_to=(padded_ffn,) if pad else None),
        f"{module}.down_proj.weight": _Rule((hidden, ffn), (prefix(child_hidden), prefix(kept_ffn)),
                                            pad_to=(child_hidden, padded_ffn) if pad else None),
        f"{module}.down_proj.bias": _Rule((hidden,), (prefix(child_hidden),)),
    }


#: router bias of padded experts: never among the top-k (finite, so that no inf - inf arises)
_NEVER_ROUTED = -1.0e30


def _moe_rule(local: str, p: _Shape, c: _Shape, norm: str, name: str, kept: _Shape) -> _Rule | None:
    expert = _EXPERT_NAME.match(local)
    if expert is not None:
        index = int(expert.group(1))
        if index >= p.experts:
            raise InputError(f"tensor {name!r} is expert {index}, but config.json has {p.experts} routed experts.")
        if index >= c.experts:
            return _DROPPED
        width, child_width = (p.latent, p.latent) if p.latent else (p.hidden, c.hidden)
        kept_ffn = kept.moe_ffn if index < kept.experts else 0  # an all-zero expert pads this layer to c.experts
        rules = _ffn_rules(f"mixer.experts.{index}", width, child_width, p.moe_ffn, kept_ffn, c.moe_ffn)
        return rules[local]
    pad = kept.experts != c.experts
    rules = {
        "mixer.gate.weight": _Rule((p.experts, p.hidden), (prefix(kept.experts), prefix(c.hidden)), keep_dtype=True,
                                   pad_to=(c.experts, c.hidden) if pad else None),
        "mixer.gate.e_score_correction_bias": _Rule((p.experts,), (prefix(kept.experts),), keep_dtype=True,
                                                    pad_to=(c.experts,) if pad else None, pad_value=_NEVER_ROUTED),
        **_ffn_rules("mixer.shared_experts", p.hidden, c.hidden, p.shared_ffn, kept.shared_ffn, c.shared_ffn),
    }
    if p.latent:
        rules["mixer.fc1_latent_proj.weight"] = _Rule((p.latent, p.hidden), (full(p.latent), prefix(c.hidden)))
        rules["mixer.fc2_latent_proj.weight"] = _Rule((p.hidden, p.latent), (prefix(c.hidden), full(p.latent)))
    return rules.get(local)


def _mlp_rule(local: str, p: _Shape, c: _Shape, norm: str, name: str, kept: _Shape) -> _Rule | None:
    return _ffn_rules("mixer", p.hidden, c.hidden, p.dense_ffn, kept.dense_ffn, c.dense_ffn).get(local)


#: marks a tensor the budget drops (an expert beyond the kept ones)
_DROPPED = _Rule((), ())

_MIXER_RULES: dict[str, Callable[[str, _Shape, _Shape, str, str, _Shape], _Rule | None]] = {
    MAMBA: _mamba_rule,
    ATTENTION: _attention_rule,
    MOE: _moe_rule,
    MLP: _mlp_rule,
}

__all__ = ["BoundNemotronH", "NemotronH", "layer_pattern"]
