"""Gemma 3n (MatFormer): `model_type` "gemma3n" (text, vision and audio) and "gemma3n_text" (text only).

Two elastic axes, as Google's MatFormer slicing (the `google/gemma3n-slicing-configs` table) uses them:
`intermediate_size`, the first f feed-forward channels of each layer (one integer for every layer, or one entry per
parent layer), and `layers`, the parent layers kept. Everything sized by the layer list is cut and renumbered with
it: each kept layer's block of the per-layer embeddings (`embed_tokens_per_layer` columns and
`per_layer_model_projection` rows), `layer_types`, `activation_sparsity_pattern`, the per-layer `intermediate_size`
list and `num_kv_shared_layers`. Hidden size, heads, AltUp and LAuReL are not elastic and are copied; so are the
vision and audio towers of a multimodal checkpoint.

KV sharing: the last `num_kv_shared_layers` layers reuse the keys and values of the last earlier layer of the same
`layer_types` entry (its producer). A budget keeps that mapping exactly only when every producer of a kept sharing
layer is kept; any other skip is refused. Sharing layers hold no key/value weights transformers reads, so their
`k_proj`, `v_proj` and `k_norm` tensors (present in Google's checkpoints) are not written to the child.

Activation sparsity (`activation_sparsity_pattern` > 0): the gate's cutoff mean + std * Phi^-1(sparsity) is taken
over the channels a budget keeps, as the child computes it; the masked-forward reference does the same.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..nesting import BudgetError
from ..selection import Ranges, concat, full, prefix
from .base import LayerwiseCalibration, MaskedForward, ParamCounts, RoutedExpert, TensorCut
from .gemma3n_fixture import Gemma3nFixture
from .layers import check_layers, kept_layers

AXES = ("intermediate_size", "layers")
SLIDING, FULL = "sliding_attention", "full_attention"
#: the most decoder layers a config may claim (Gemma 3n E4B has 35); checked before anything is built per layer
MAX_LAYERS = 1024
#: prefixes of a multimodal checkpoint's non-text modules, copied unchanged into every child
TOWERS = ("model.vision_tower.", "model.audio_tower.", "model.embed_vision.", "model.embed_audio.")
#: key/value tensors of an attention block; a KV-sharing layer's are never read
_KV_LOCALS = ("self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.k_norm.weight")
_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_INDEXED = re.compile(r"^(altup_projections|altup_unembed_projections)\.(\d+)\.weight$")


@dataclass(frozen=True)
class TextShape:
    """The language model's dimensions, read once from the (text) config."""

    vocab: int
    vocab_per_layer: int
    hidden: int
    ffn: tuple[int, ...]
    q_heads: int
    kv_heads: int
    head_dim: int
    per_layer: int
    laurel_rank: int
    altup_inputs: int
    layer_types: tuple[str, ...]
    sparsity: tuple[float, ...]
    kv_shared: int
    tied: bool

    @property
    def layers(self) -> int:
        return len(self.ffn)

    @property
    def first_shared(self) -> int:
        """The first layer that reuses another layer's keys and values (== layers when none does)."""
        return self.layers - self.kv_shared

    def kv_producer(self, layer: int) -> int | None:
        """The layer whose keys and values a sharing `layer` reuses; None for a layer that computes its own."""
        if layer < self.first_shared:
            return None
        kind = self.layer_types[layer]
        earlier = [i for i in range(self.first_shared) if self.layer_types[i] == kind]
        return earlier[-1] if earlier else None


class _MaskedForward:
    def apply(self, model: Any, sizes: Mapping[str, Any], norm: str) -> Any:
        from .gemma3n_torch import apply_masked_forward

        return apply_masked_forward(model, sizes, norm)


class Gemma3n:
    """The Gemma 3n family under one `model_type`: multimodal ("gemma3n") or text-only ("gemma3n_text")."""

    fixture = Gemma3nFixture()

    def __init__(self, model_type: str = "gemma3n") -> None:
        if model_type not in ("gemma3n", "gemma3n_text"):
            raise ValueError(model_type)
        self.model_type = model_type

    def bind(self, config: Mapping[str, Any]) -> BoundGemma3n:
        return BoundGemma3n(self.model_type, config)


class BoundGemma3n:
    """Axis rules and tensor cuts for one Gemma 3n parent, its config parsed once."""

    axes = AXES
    masked_forward: MaskedForward | None = _MaskedForward()
    #: not yet: calibration runs Nemotron-H's layer-wise hooks only; FP8/NVFP4 weights need no calibration
    calibration: LayerwiseCalibration | None = None

    def __init__(self, model_type: str, config: Mapping[str, Any]) -> None:
        self.model_type = model_type
        self.config = config
        self.multimodal = model_type == "gemma3n"
        self.field_prefix = "text_config." if self.multimodal else ""
        self.root = "model.language_model." if self.multimodal else "model."
        self.text = _text_section(config, self.multimodal)
        self.shape = _text_shape(self.text, self.field_prefix)

    # ----- config -----------------------------------------------------------------------------------------------
    def check_claims(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Every count config.json gives that sizes a loop or a tensor (layers, AltUp inputs, widths, heads, LAuReL
        rank, per-layer FFN widths) agrees with the tensors present, before anything is built from it."""
        top = -1
        altup_projections = 0
        for name in shapes:
            local = name[len(self.root):] if name.startswith(self.root) else ""
            match = _LAYER.match(local)
            if match is not None:
                top = max(top, int(match.group(1)))
            indexed = _INDEXED.match(local)
            if indexed is not None and indexed.group(1) == "altup_projections":
                altup_projections += 1
        s = self.shape
        if top + 1 != s.layers:
            raise InputError(
                f"config.json field '{self.field_prefix}num_hidden_layers' is {s.layers}, but the checkpoint's "
                f"tensors hold {top + 1} layers ({self.root}layers.N with N < {top + 1})."
            )
        if s.altup_inputs - 1 != altup_projections:
            raise InputError(
                f"config.json field '{self.field_prefix}altup_num_inputs' is {s.altup_inputs}, but the checkpoint "
                f"holds {altup_projections} {self.root}altup_projections.N tensors (altup_num_inputs - 1)."
            )
        for field, local, axis, wanted in _claims(s):
            found = shapes.get(self.root + local)
            if found is not None and (len(found) <= axis or found[axis] != wanted):
                raise InputError(
                    f"config.json field '{self.field_prefix}{field}' implies {wanted} along dimension {axis} of tensor "
                    f"{self.root + local!r}, whose shape is {list(found)}."
                )

    def parent_sizes(self) -> dict[str, Any]:
        """`intermediate_size` as config.json gives it: one integer when every layer has the same width."""
        ffn = list(self.shape.ffn)
        return {"intermediate_size": ffn[0] if len(set(ffn)) == 1 else ffn, "layers": list(range(len(ffn)))}

    def resolve(self, budget: str, requested: Mapping[str, Any]) -> dict[str, Any]:
        """Sizes with `intermediate_size` one integer when every kept layer has that width, else one entry per parent
        layer (None for skipped layers)."""
        for axis in requested:
            if axis not in AXES:
                raise BudgetError(budget, axis, f"unknown axis; {self.model_type} axes are {', '.join(AXES)}")
        s = self.shape
        kept = list(range(s.layers))
        if "layers" in requested:
            kept = check_layers(budget, requested["layers"], s.layers)
        self._check_kv_sharing(budget, kept)
        parent_widths = [s.ffn[i] if i in kept else None for i in range(s.layers)]
        widths = self._check_ffn(budget, requested.get("intermediate_size", parent_widths), kept)
        uniform = {w for w in widths if w is not None}
        return {"intermediate_size": uniform.pop() if len(uniform) == 1 else widths, "layers": kept}

    def _check_ffn(self, budget: str, value: Any, kept: list[int]) -> list[int | None]:
        s = self.shape
        if isinstance(value, list):
            if len(value) != s.layers:
                raise BudgetError(
                    budget, "intermediate_size", f"a per-layer list needs {s.layers} entries, one per parent layer "
                    "(null for a skipped layer)",
                )
            entries = value
        else:
            entries = [None if layer not in kept else value for layer in range(s.layers)]
        widths: list[int | None] = []
        for layer, width in enumerate(entries):
            if layer not in kept:
                if width is not None:
                    raise BudgetError(
                        budget, "intermediate_size", f"layer {layer} is skipped: its entry must be null, not {width!r}"
                    )
                widths.append(None)
                continue
            if not _is_int(width) or not 1 <= width <= s.ffn[layer]:
                raise BudgetError(
                    budget, "intermediate_size",
                    f"layer {layer} needs an integer from 1 to the parent's {s.ffn[layer]}, not {width!r}",
                )
            widths.append(width)
        return widths

    def _check_kv_sharing(self, budget: str, kept: list[int]) -> None:
        s = self.shape
        kept_set = set(kept)
        for layer in kept:
            producer = s.kv_producer(layer)
            if producer is not None and producer not in kept_set:
                raise BudgetError(
                    budget, "layers",
                    f"layer {layer} reuses the keys and values of layer {producer} (KV sharing), which the budget "
                    f"skips; keep layer {producer} or skip layer {layer} as well",
                )

    def child_config(self, sizes: Mapping[str, Any]) -> dict[str, Any]:
        child = copy.deepcopy(dict(self.config))
        child.pop("nesting_index", None)
        text = child["text_config"] if self.multimodal else child
        s = self.shape
        kept, widths = self._layers_and_widths(sizes)
        if kept == list(range(s.layers)) and widths == list(s.ffn):
            return child
        text["num_hidden_layers"] = len(kept)
        text["intermediate_size"] = widths
        text["layer_types"] = [s.layer_types[i] for i in kept]
        text["activation_sparsity_pattern"] = [s.sparsity[i] for i in kept]
        text["num_kv_shared_layers"] = sum(1 for i in kept if i >= s.first_shared)
        return child

    def sizes_from_child_config(self, child: Mapping[str, Any], budget: str) -> dict[str, Any]:
        """The kept layers are read off the child's layer kinds (type, KV sharing, sparsity) when they fit the
        parent's in exactly one way; the widths then follow layer by layer."""
        try:
            shape = _text_shape(_text_section(child, self.multimodal), self.field_prefix)
        except InputError as exc:
            raise BudgetError(budget, "layers", f"the child's config.json cannot be read ({exc})") from None
        s = self.shape
        parent_kinds = [_layer_kind(s, i) for i in range(s.layers)]
        child_kinds = [_layer_kind(shape, i) for i in range(shape.layers)]
        ways, kept = kept_layers(parent_kinds, child_kinds)
        if ways != 1:
            problem = "do not fit" if ways == 0 else "fit in several ways into"
            raise BudgetError(
                budget, "layers", f"the child's {shape.layers} layers {problem} the parent's {s.layers} (by type, KV "
                "sharing and sparsity); give `layers` by hand",
            )
        widths: list[int | None] = [None] * s.layers
        for child_layer, layer in enumerate(kept):
            widths[layer] = shape.ffn[child_layer]
        derived: dict[str, Any] = {}
        if kept != list(range(s.layers)):
            derived["layers"] = kept
        if widths != list(s.ffn):
            kept_widths = {w for w in widths if w is not None}
            derived["intermediate_size"] = kept_widths.pop() if len(kept_widths) == 1 else widths
        self.resolve(budget, derived)
        return derived

    def _layers_and_widths(self, sizes: Mapping[str, Any]) -> tuple[list[int], list[int]]:
        """The kept parent layers and each one's FFN width, from resolved sizes or `parent_sizes()`."""
        kept = list(sizes.get("layers", range(self.shape.layers)))
        ffn = sizes.get("intermediate_size", list(self.shape.ffn))
        return kept, [int(ffn[i] if isinstance(ffn, list) else ffn) for i in kept]

    # ----- tensors ----------------------------------------------------------------------------------------------
    def required_tensors(self) -> list[str]:
        s = self.shape
        names = [self.root + local for local in (
            "embed_tokens.weight", "norm.weight", "embed_tokens_per_layer.weight",
            "per_layer_model_projection.weight", "per_layer_projection_norm.weight",
        )]
        names += [f"{self.root}{group}.{i}.weight" for group in ("altup_projections", "altup_unembed_projections")
                  for i in range(s.altup_inputs - 1)]
        if not s.tied:
            names.append("lm_head.weight")
        for layer in range(s.layers):
            locals_ = _layer_shapes(s, layer)
            names += [f"{self.root}layers.{layer}.{local}" for local in locals_ if local not in _optional(s, layer)]
        return names

    def cut(self, name: str, shape: tuple[int, ...], sizes: Mapping[str, Any], norm: str) -> TensorCut | None:
        s = self.shape
        if name == "lm_head.weight":
            return _copy(name, shape, (s.vocab, s.hidden))
        if self.multimodal and name.startswith(TOWERS):
            return TensorCut(out_name=name, selection=tuple(full(n) for n in shape))
        if not name.startswith(self.root):
            raise InputError(f"tensor {name!r} is not a known Gemma 3n tensor; elastic-slice cannot place it.")
        local = name[len(self.root):]
        kept, widths = self._layers_and_widths(sizes)
        match = _LAYER.match(local)
        if match is None:
            return self._model_cut(name, local, shape, kept)
        layer, rest = int(match.group(1)), match.group(2)
        if layer >= s.layers:
            raise InputError(f"tensor {name!r} belongs to layer {layer}, but config.json has {s.layers} layers.")
        if layer not in kept:
            return None
        out_name = f"{self.root}layers.{kept.index(layer)}.{rest}"
        expected = _layer_shapes(s, layer).get(rest)
        if expected is None:
            raise InputError(f"tensor {name!r} is not a known Gemma 3n decoder-layer tensor.")
        _check_shape(name, shape, expected)
        if rest in _optional(s, layer):
            return None  # a KV-sharing layer's keys and values: transformers never reads them
        if norm == "full":
            _check_full_norm(s, kept, widths)
        width = widths[kept.index(layer)]
        if rest in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
            return TensorCut(out_name, (prefix(width), full(s.hidden)))
        if rest == "mlp.down_proj.weight":
            return TensorCut(out_name, (full(s.hidden), prefix(width)))
        return TensorCut(out_name, tuple(full(n) for n in expected))

    def _model_cut(self, name: str, local: str, shape: tuple[int, ...], kept: list[int]) -> TensorCut:
        s = self.shape
        blocks: Ranges = concat(*(((i * s.per_layer, (i + 1) * s.per_layer),) for i in kept))
        if local == "embed_tokens_per_layer.weight":
            _check_shape(name, shape, (s.vocab_per_layer, s.layers * s.per_layer))
            return TensorCut(name, (full(s.vocab_per_layer), blocks))
        if local == "per_layer_model_projection.weight":
            _check_shape(name, shape, (s.layers * s.per_layer, s.hidden))
            return TensorCut(name, (blocks, full(s.hidden)))
        fixed = {
            "embed_tokens.weight": (s.vocab, s.hidden),
            "norm.weight": (s.hidden,),
            "per_layer_projection_norm.weight": (s.per_layer,),
        }
        indexed = _INDEXED.match(local)
        if indexed is not None and int(indexed.group(2)) < s.altup_inputs - 1:
            fixed[local] = (s.hidden, s.hidden)
        if local not in fixed:
            raise InputError(f"tensor {name!r} is not a known Gemma 3n tensor; elastic-slice cannot place it.")
        return _copy(name, shape, fixed[local])

    def count_parameters(self, shapes: Mapping[str, tuple[int, ...]], child_config: Mapping[str, Any]) -> ParamCounts:
        """Total: every parameter. Active: the text decoder without the per-layer embedding table (one row looked up
        per token and layer, which Google keeps off the accelerator) and without the vision and audio towers; the
        token embedding, tied to the output projection, counts. docs/gemma3n.md compares it with Google's table."""
        total = sum(math.prod(s) for s in shapes.values())
        per_layer_table = self.root + "embed_tokens_per_layer.weight"
        inactive = sum(
            math.prod(s) for name, s in shapes.items() if name == per_layer_table or name.startswith(TOWERS)
        )
        return ParamCounts(total=total, active=total - inactive)

    def module_kind(self, name: str) -> str:
        for pattern, kind in _KIND_PATTERNS:
            if pattern.search(name):
                return kind
        return "other"

    def serving_name(self, module: str) -> str:
        """`model.language_model.layers.3.mlp.gate_proj` -> `language_model.layers.3.mlp.gate_proj`."""
        return module.split(".", 1)[1] if "." in module else module

    def routed_expert(self, module: str) -> RoutedExpert | None:
        return None

    def routed_expert_count(self) -> int:
        return 0

    def recipe_exclusions(self) -> list[str]:
        """Google publishes no FP8/NVFP4 release of Gemma 3n whose kept modules could be followed."""
        return []

    def loading_note(self) -> str:
        """The multimodal layout's towers need timm (vision) to build in transformers, which these machines cannot
        install beside torch; the tests load the text-only layout and check the towers byte for byte instead."""
        if not self.multimodal:
            return ""
        return ("Building this multimodal model in transformers needs timm (and Pillow) for its vision tower; "
                "elastic-slice's tests load the text-only layout and copy the towers byte for byte, so loading this "
                "layout in transformers was not checked.")

    def recipe_description(self) -> str:
        """No vendor recipe: `--recipe` defaults to broad for gemma3n."""
        return ""

    def interpolation_steps(self, low: Mapping[str, Any], high: Mapping[str, Any]) -> dict[str, int]:
        raise InputError(
            "any-size budgets (a parameter target, or a size between two budgets) are unsupported for the gemma3n "
            "family; pick a budget of the index or give the sizes with --set."
        )

    def grow(self, sizes: Mapping[str, Any], axis: str, step: int, high: Mapping[str, Any]) -> dict[str, Any]:
        raise InputError("any-size budgets are unsupported for the gemma3n family.")


#: module kinds: the attention and feed-forward projections are the linear layers FP8/NVFP4 may quantize; AltUp's
#: coefficient and router matrices, LAuReL's low-rank pair and the per-layer-input gate and projection stay in bf16
#: (small matrices in the residual path that engines run unquantized), like every embedding, norm and tower
_KIND_PATTERNS = [
    (re.compile(r"^model\.(vision_tower|audio_tower|embed_vision|embed_audio)\."), "tower"),
    (re.compile(r"embed_tokens(_per_layer)?\.weight$"), "embedding"),
    (re.compile(r"^lm_head\."), "lm_head"),
    (re.compile(r"norm\.weight$|\.altup\.correct_output_scale$"), "norm"),
    (re.compile(r"\.self_attn\.[qkvo]_proj\."), "attention_linear"),
    (re.compile(r"\.mlp\.(gate_proj|up_proj|down_proj)\."), "mlp_linear"),
    (re.compile(r"\.altup\.|altup_(unembed_)?projections\."), "altup"),
    (re.compile(r"\.laurel\."), "laurel"),
    (re.compile(r"per_layer_(input_gate|projection|model_projection)\."), "per_layer_input"),
]


# ----- config helpers ---------------------------------------------------------------------------------------------
def _text_section(config: Mapping[str, Any], multimodal: bool) -> Mapping[str, Any]:
    if not multimodal:
        return config
    text = config.get("text_config")
    if not isinstance(text, dict):
        raise InputError("config.json field 'text_config' must be an object (the language model's config).")
    return text


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _index_field(text: Mapping[str, Any], name: str, where: str, default: int, limit: int) -> int:
    """An integer config field that must lie in [0, limit)."""
    value = text.get(name, default)
    if not _is_int(value) or not 0 <= value < limit:
        raise InputError(f"config.json field '{where}{name}' must be an integer from 0 to {limit - 1}, not {value!r}.")
    return int(value)


def _positive(text: Mapping[str, Any], field: str, where: str, default: int | None = None) -> int:
    value = text.get(field, default)
    if not _is_int(value) or value <= 0:
        raise InputError(f"config.json field '{where}{field}' must be a positive integer, not {value!r}.")
    return int(value)


def _per_layer(text: Mapping[str, Any], field: str, where: str, layers: int, default: Any) -> list[Any]:
    """A field holding one value per layer (a single value for all, as transformers allows, where `default` says)."""
    value = text.get(field, default)
    if not isinstance(value, list):
        value = [value] * layers
    if len(value) != layers:
        raise InputError(
            f"config.json field '{where}{field}' has {len(value)} entries; num_hidden_layers is {layers}."
        )
    return value


def _text_shape(text: Mapping[str, Any], where: str) -> TextShape:
    """Parse and type-check the language model's config (every field untrusted)."""
    layers = _positive(text, "num_hidden_layers", where)
    if layers > MAX_LAYERS:
        raise InputError(f"config.json field '{where}num_hidden_layers' is {layers}; at most {MAX_LAYERS} are supported.")
    ffn = _per_layer(text, "intermediate_size", where, layers, None)
    if not all(_is_int(f) and f > 0 for f in ffn):
        raise InputError(f"config.json field '{where}intermediate_size' must hold positive integers.")
    types = _per_layer(text, "layer_types", where, layers, None)
    if text.get("layer_types") is None:
        types = [FULL if (i + 1) % 5 == 0 else SLIDING for i in range(layers)]
    if not all(t in (SLIDING, FULL) for t in types):
        raise InputError(f"config.json field '{where}layer_types' may hold only {SLIDING!r} and {FULL!r}.")
    default_sparsity = [0.95] * 10 + [0.0] * (layers - 10) if layers > 10 else [0.0] * layers
    sparsity = _per_layer(text, "activation_sparsity_pattern", where, layers, default_sparsity)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1 for v in sparsity):
        raise InputError(f"config.json field '{where}activation_sparsity_pattern' must hold numbers in [0, 1).")
    kv_shared = _index_field(text, "num_kv_shared_layers", where, 15, layers)
    altup_inputs = _positive(text, "altup_num_inputs", where)
    _index_field(text, "altup_active_idx", where, 0, altup_inputs)
    q_heads = _positive(text, "num_attention_heads", where)
    hidden = _positive(text, "hidden_size", where)
    shape = TextShape(
        vocab=_positive(text, "vocab_size", where),
        vocab_per_layer=_positive(text, "vocab_size_per_layer_input", where),
        hidden=hidden,
        ffn=tuple(ffn),
        q_heads=q_heads,
        kv_heads=_positive(text, "num_key_value_heads", where),
        head_dim=_positive(text, "head_dim", where, hidden // q_heads or None),
        per_layer=_positive(text, "hidden_size_per_layer_input", where),
        laurel_rank=_positive(text, "laurel_rank", where),
        altup_inputs=altup_inputs,
        layer_types=tuple(types),
        sparsity=tuple(sparsity),
        kv_shared=kv_shared,
        tied=text.get("tie_word_embeddings", True) is not False,
    )
    missing = [i for i in range(shape.first_shared, layers) if shape.kv_producer(i) is None]
    if missing:
        raise InputError(
            f"config.json: layer {missing[0]} shares keys and values (num_kv_shared_layers), but no earlier layer of "
            f"its type {shape.layer_types[missing[0]]!r} computes them."
        )
    return shape


def _claims(s: TextShape) -> list[tuple[str, str, int, int]]:
    """(config field, tensor below the root, dimension, the size the field implies), in the order the fields are
    checked: a field is named by the first tensor that contradicts it."""
    claims = [
        ("hidden_size", "norm.weight", 0, s.hidden),
        ("vocab_size", "embed_tokens.weight", 0, s.vocab),
        ("vocab_size_per_layer_input", "embed_tokens_per_layer.weight", 0, s.vocab_per_layer),
        ("hidden_size_per_layer_input", "per_layer_projection_norm.weight", 0, s.per_layer),
        ("hidden_size_per_layer_input", "per_layer_model_projection.weight", 0, s.layers * s.per_layer),
        ("hidden_size_per_layer_input", "embed_tokens_per_layer.weight", 1, s.layers * s.per_layer),
        ("altup_num_inputs", "layers.0.altup.correction_coefs.weight", 0, s.altup_inputs),
        ("laurel_rank", "layers.0.laurel.linear_left.weight", 0, s.laurel_rank),
        ("head_dim", "layers.0.self_attn.q_norm.weight", 0, s.head_dim),
        ("num_attention_heads", "layers.0.self_attn.q_proj.weight", 0, s.q_heads * s.head_dim),
        ("num_key_value_heads", "layers.0.self_attn.k_proj.weight", 0, s.kv_heads * s.head_dim),
    ]
    claims += [("intermediate_size", f"layers.{i}.mlp.gate_proj.weight", 0, f) for i, f in enumerate(s.ffn)]
    return claims


def _layer_shapes(s: TextShape, layer: int) -> dict[str, tuple[int, ...]]:
    """Every tensor of one decoder layer (name below `layers.{i}.`) and its shape."""
    h, q, kv, f = s.hidden, s.q_heads * s.head_dim, s.kv_heads * s.head_dim, s.ffn[layer]
    return {
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
        "pre_feedforward_layernorm.weight": (h,),
        "post_feedforward_layernorm.weight": (h,),
        "post_per_layer_input_norm.weight": (h,),
        "self_attn.q_proj.weight": (q, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, q),
        "self_attn.q_norm.weight": (s.head_dim,),
        "self_attn.k_norm.weight": (s.head_dim,),
        "mlp.gate_proj.weight": (f, h),
        "mlp.up_proj.weight": (f, h),
        "mlp.down_proj.weight": (h, f),
        "altup.correct_output_scale": (h,),
        "altup.correction_coefs.weight": (s.altup_inputs, s.altup_inputs),
        "altup.prediction_coefs.weight": (s.altup_inputs**2, s.altup_inputs),
        "altup.modality_router.weight": (s.altup_inputs, h),
        "altup.router_norm.weight": (h,),
        "laurel.linear_left.weight": (s.laurel_rank, h),
        "laurel.linear_right.weight": (h, s.laurel_rank),
        "laurel.post_laurel_norm.weight": (h,),
        "per_layer_input_gate.weight": (s.per_layer, h),
        "per_layer_projection.weight": (h, s.per_layer),
    }


def _optional(s: TextShape, layer: int) -> tuple[str, ...]:
    """Tensors a layer may hold but that transformers never reads: a KV-sharing layer's keys and values."""
    return _KV_LOCALS if layer >= s.first_shared else ()


def _layer_kind(s: TextShape, layer: int) -> tuple[str, bool, float]:
    return s.layer_types[layer], layer >= s.first_shared, float(s.sparsity[layer])


def _check_full_norm(s: TextShape, kept: list[int], widths: list[int]) -> None:
    """norm_semantics "full" is exact for gemma3n unless a budget narrows a sparse layer: no norm runs over the FFN
    channels (nothing to fold), but activation sparsity's cutoff takes statistics over them, which no weight folds."""
    sparse = [(layer, width) for layer, width in zip(kept, widths, strict=True)
              if width != s.ffn[layer] and s.sparsity[layer] > 0]
    if sparse:
        cuts = ", ".join(f"{layer} ({width} of {s.ffn[layer]})" for layer, width in sparse[:4])
        more = f" and {len(sparse) - 4} more" if len(sparse) > 4 else ""
        raise InputError(
            f"norm_semantics \"full\" cannot be sliced exactly for a budget that narrows the feed-forward channels of "
            f"sparse layers {cuts}{more}: gemma3n has no norm over those channels to fold, but each such layer's "
            "activation sparsity takes its gate cutoff (mean + std over all the parent's channels), which no weight "
            "can fold; use an index with norm_semantics \"active\"."
        )


def _check_shape(name: str, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if tuple(shape) != expected:
        raise InputError(f"tensor {name!r} has shape {list(shape)}, but config.json implies {list(expected)}.")


def _copy(name: str, shape: tuple[int, ...], expected: tuple[int, ...]) -> TensorCut:
    _check_shape(name, shape, expected)
    return TensorCut(out_name=name, selection=tuple(full(n) for n in expected))


__all__ = ["AXES", "BoundGemma3n", "Gemma3n", "TextShape"]
