"""Nemotron-H on the transformers side: a budget's masked forward, and calibration one layer at a time.

The masked forward is a reference for tests and `verify --numerics`, written independently of the slicing rules:
keep-masks come from the budget's sizes alone, and transformers' own modules are patched (dropped channels, heads
and experts zeroed or never routed to, dropped layers skipped, norms taken over the kept channels or, for "full",
the parent's width). Calibration hooks record each linear layer's input amax under its checkpoint (hub) name;
`calibrate_layerwise` runs them on transformers' decoder blocks built one at a time from the parent's shards.
"""

from __future__ import annotations

import math
import re
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from .base import OUTPUT


class Masks:
    """Boolean keep-masks of every elastic component of a budget, from sizes alone."""

    def __init__(self, cfg: Any, sizes: dict[str, Any]) -> None:
        full = lambda axis: getattr(cfg, axis)  # noqa: E731
        size = lambda axis: full(axis) if sizes.get(axis) is None else sizes[axis]  # noqa: E731
        self.hidden = torch.arange(cfg.hidden_size) < size("hidden_size")
        heads, groups, hd = cfg.mamba_num_heads, cfg.n_groups, cfg.mamba_head_dim
        per_group, keep = heads // groups, size("mamba_num_heads") // groups
        self.mamba_heads = (torch.arange(heads) % per_group) < keep
        self.mamba_channels = self.mamba_heads.repeat_interleave(hd)
        self.mamba_group_width = (per_group * hd, keep * hd)
        kv = size("num_key_value_heads")
        rep = cfg.num_attention_heads // cfg.num_key_value_heads
        q = sizes.get("num_attention_heads") or kv * rep
        head = torch.arange(cfg.num_attention_heads)
        self.q_heads = (head // rep < kv) & (head % rep < q // kv)
        self.q_channels = self.q_heads.repeat_interleave(cfg.head_dim)
        self.kv_channels = (torch.arange(cfg.num_key_value_heads) < kv).repeat_interleave(cfg.head_dim)
        self.experts = torch.arange(cfg.n_routed_experts) < size("n_routed_experts")
        self.moe_ffn = torch.arange(cfg.moe_intermediate_size) < size("moe_intermediate_size")
        self.shared_ffn = torch.arange(cfg.moe_shared_expert_intermediate_size) < size("moe_shared_expert_intermediate_size")
        self.dense_ffn = torch.arange(cfg.intermediate_size) < size("intermediate_size")
        self.layers = list(sizes.get("layers", range(len(cfg.layers_block_type))))


def _at_layer(sizes: dict[str, Any], layer: int) -> dict[str, Any]:
    """A budget's sizes at one layer: per-layer lists (with null for other layer kinds) give their entry."""
    return {
        axis: value[layer] if isinstance(value, list) and axis != "layers" else value for axis, value in sizes.items()
    }


def _masked_rmsnorm(module: Any, mask: torch.Tensor, full_width: bool) -> None:
    weight = module.weight
    denominator = mask.numel() if full_width else int(mask.sum())

    def forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.to(torch.float32) * mask
        variance = x.pow(2).sum(-1, keepdim=True) / denominator
        return (weight * mask * x * torch.rsqrt(variance + self.variance_epsilon)).to(hidden_states.dtype)

    module.forward = types.MethodType(forward, module)


def _masked_gated_norm(module: Any, mask: torch.Tensor, group: int, denominator: int) -> None:
    weight = module.weight

    def forward(self: Any, hidden_states: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        x = hidden_states.to(torch.float32)
        if gate is not None:
            x = x * nn.functional.silu(gate.to(torch.float32))
        x = x * mask
        grouped = x.view(*x.shape[:-1], -1, group)
        variance = grouped.pow(2).sum(-1, keepdim=True) / denominator
        x = (grouped * torch.rsqrt(variance + self.variance_epsilon)).view(x.shape)
        return weight * mask * x.to(hidden_states.dtype)

    module.forward = types.MethodType(forward, module)


def _skip_block(module: nn.Module) -> None:
    def forward(self: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states

    module.forward = types.MethodType(forward, module)


@torch.no_grad()
def apply_masked_forward(model: Any, sizes: dict[str, Any], norm_semantics: str) -> Any:
    """Patch an fp32 NemotronHForCausalLM in place so that it computes the budget's masked forward."""
    cfg = model.config
    masks = Masks(cfg, _at_layer(sizes, 0))
    full_width = norm_semantics == "full"
    keep_h = masks.hidden
    backbone = model.model
    backbone.embeddings.weight[:, ~keep_h] = 0
    _masked_rmsnorm(backbone.norm_f, keep_h, full_width)
    for index, block in enumerate(backbone.layers):
        if index not in masks.layers:
            _skip_block(block)
            continue
        _masked_rmsnorm(block.norm, keep_h, full_width)
        masks = Masks(cfg, _at_layer(sizes, index))  # per-layer budgets vary experts and FFN widths by layer
        mixer = block.mixer
        kind = cfg.layers_block_type[index]
        if kind == "linear_attention":
            parent_group, child_group = masks.mamba_group_width
            _masked_gated_norm(mixer.norm, masks.mamba_channels, parent_group, parent_group if full_width else child_group)
            mixer.out_proj.weight[:, ~masks.mamba_channels] = 0
            mixer.out_proj.weight[~keep_h, :] = 0
        elif kind == "full_attention":
            mixer.o_proj.weight[:, ~masks.q_channels] = 0
            mixer.o_proj.weight[~keep_h, :] = 0
        elif kind == "moe":
            mixer.gate.e_score_correction_bias[~masks.experts] = -math.inf
            mixer.experts.down_proj[:, :, ~masks.moe_ffn] = 0
            mixer.experts.down_proj[:, ~keep_h, :] = 0
            mixer.shared_experts.down_proj.weight[:, ~masks.shared_ffn] = 0
            mixer.shared_experts.down_proj.weight[~keep_h, :] = 0
        elif kind == "mlp":
            mixer.down_proj.weight[:, ~masks.dense_ffn] = 0
            mixer.down_proj.weight[~keep_h, :] = 0
    return model


def _hub_name(module_name: str) -> str:
    """transformers' `model.layers.3.mixer.in_proj` is `backbone.layers.3.mixer.in_proj` in the checkpoint."""
    return "backbone." + module_name[len("model."):] if module_name.startswith("model.") else module_name


def calibration_hooks(model: nn.Module, record: Callable[[str, torch.Tensor], None], prefix: str = "") -> list[Any]:
    """Hooks that pass every linear layer's input (per routed expert for MoE layers) to `record`, and the key and
    value projections' outputs under their name plus OUTPUT; `prefix` is the module's own name in the model (a
    decoder block run alone: `model.layers.3.`)."""
    handles = []
    for local_name, module in model.named_modules():
        name = prefix + local_name
        if isinstance(module, nn.Linear):
            hub = _hub_name(name)
            handles.append(module.register_forward_pre_hook(lambda mod, args, hub=hub: record(hub, args[0])))
            if name.endswith((".k_proj", ".v_proj")):  # what the KV cache stores
                handles.append(module.register_forward_hook(
                    lambda mod, args, out, hub=hub: record(hub + OUTPUT, out)))
        elif type(module).__name__ == "NemotronHExperts":
            experts = _hub_name(name)
            handles.append(module.register_forward_pre_hook(
                lambda mod, args, experts=experts: _record_experts(mod, args, experts, record)))
    return handles


@torch.no_grad()
def _record_experts(experts: Any, args: tuple[Any, ...], prefix: str,
                    record: Callable[[str, torch.Tensor], None]) -> None:
    hidden_states, top_k_index = args[0], args[1]
    for expert in torch.unique(top_k_index).tolist():
        if expert >= experts.num_experts:
            continue
        tokens = (top_k_index == expert).any(dim=-1)
        inputs = hidden_states[tokens]
        record(f"{prefix}.{expert}.up_proj", inputs)
        inner = experts.act_fn(nn.functional.linear(inputs, experts.up_proj[expert]))
        record(f"{prefix}.{expert}.down_proj", inner)


# ----- calibration one decoder layer at a time ---------------------------------------------------------------------
Record = Callable[[str, torch.Tensor], None]


class _StreamedExperts(nn.Module):
    """A MoE layer's routed experts read from the shards one at a time (never all resident), computed as
    transformers' NemotronHExperts does, recording each expert's up_proj and down_proj input."""

    def __init__(self, load: Callable[[str], torch.Tensor], prefix: str, num_experts: int, act_fn: Any,
                 record: Record) -> None:
        super().__init__()
        self.load, self.prefix, self.num_experts, self.act_fn, self.record = load, prefix, num_experts, act_fn, record

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden_states, dtype=top_k_weights.dtype)
        for expert in torch.unique(top_k_index).tolist():
            if expert >= self.num_experts:
                continue
            top_k_pos, token_idx = torch.where((top_k_index == expert).T)
            name = f"{self.prefix}.{expert}"
            inputs = hidden_states[token_idx]
            self.record(f"{name}.up_proj", inputs)
            inner = self.act_fn(nn.functional.linear(inputs, self.load(f"{name}.up_proj.weight")))
            self.record(f"{name}.down_proj", inner)
            result = nn.functional.linear(inner, self.load(f"{name}.down_proj.weight"))
            out.index_add_(0, token_idx, (result * top_k_weights[token_idx, top_k_pos, None]).to(out.dtype))
        return out.to(hidden_states.dtype)


_ROUTED_EXPERT = re.compile(r"mixer\.experts\.\d+\.")


def _block(config: Any, index: int, names: list[str], load: Callable[[str], torch.Tensor], record: Record) -> Any:
    """Decoder block `index` built on the meta device and given its weights from the shards (routed experts
    streamed), with calibration hooks."""
    from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHBlock

    prefix = f"backbone.layers.{index}."
    with torch.device("meta"):
        block = NemotronHBlock(config, layer_idx=index)
    if block.block_type == "moe":
        block.mixer.experts = _StreamedExperts(
            load, prefix + "mixer.experts", config.n_routed_experts, block.mixer.experts.act_fn, record)
    state = {name[len(prefix):]: load(name) for name in names if not _ROUTED_EXPERT.match(name[len(prefix):])}
    try:
        block.load_state_dict(state, assign=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise InputError(f"layer {index} of the parent does not match its config.json for calibration ({first}).") from exc
    block.eval()
    calibration_hooks(block, record, prefix=f"model.layers.{index}.")
    return block


def _embed(shards: Any, info: Any, ids: torch.Tensor) -> torch.Tensor:
    """The embedding rows of `ids` in fp32, read row by row (the table itself is never loaded)."""
    from ..dtypes import torch_dtype

    rows, width = info.shape[0], info.shape[1]
    unique, inverse = torch.unique(ids, return_inverse=True)
    if int(unique[-1]) >= rows:
        raise InputError(f"the tokenizer gives token id {int(unique[-1])}, past the {rows} rows of {info.name}.")
    row_bytes = info.nbytes // rows
    raw = bytearray(row_bytes * len(unique))
    view = memoryview(raw)
    for position, row in enumerate(unique.tolist()):
        shards.read_into(info, row * row_bytes, view[position * row_bytes:(position + 1) * row_bytes])
    table = torch.frombuffer(raw, dtype=torch_dtype(info.dtype)).reshape(len(unique), width)
    return table.to(torch.float32)[inverse][None]


@torch.no_grad()
def calibrate_layerwise(checkpoint: Any, sequences: list[torch.Tensor], record: Record, device: str,
                        on_layer: Callable[[int, int], None] | None = None) -> None:
    """Run token-id sequences through the parent one decoder layer at a time, in fp32 on `device`, passing
    activations to `record` as the calibration hooks do. Only one layer's weights (without its routed experts,
    read one at a time) and the sequences' hidden states are resident; token-mixing layers (Mamba, attention)
    run each sequence alone, per-token layers (MoE, MLP) all tokens together."""
    from transformers import AutoConfig
    from transformers.masking_utils import create_causal_mask, create_recurrent_attention_mask
    from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHRMSNorm

    from ..checkpoint import ShardFiles

    config = AutoConfig.from_pretrained(checkpoint.root)
    config._attn_implementation = "sdpa"
    layer_names: dict[int, list[str]] = {}
    for name in checkpoint.tensors:
        match = re.match(r"backbone\.layers\.(\d+)\.", name)
        if match:
            layer_names.setdefault(int(match.group(1)), []).append(name)
    for needed in ("backbone.embeddings.weight", "backbone.norm_f.weight"):
        if needed not in checkpoint.tensors:
            raise InputError(f"calibration needs tensor {needed!r}, which no shard of {checkpoint.root} holds.")
    with ShardFiles(checkpoint) as shards:
        def load(name: str) -> torch.Tensor:
            return shards.read_tensor(name).to(device=device, dtype=torch.float32)

        embeddings = checkpoint.tensors["backbone.embeddings.weight"]
        hidden = [_embed(shards, embeddings, ids).to(device) for ids in sequences]
        positions = [torch.arange(h.shape[1], device=device)[None] for h in hidden]
        masks = [
            {"full_attention": create_causal_mask(config=config, inputs_embeds=h, attention_mask=None, cache=None,
                                                  position_ids=p),
             "linear_attention": create_recurrent_attention_mask(config=config, inputs_embeds=h, attention_mask=None,
                                                                 cache=None, position_ids=p)}
            for h, p in zip(hidden, positions, strict=True)
        ]
        total = config.num_hidden_layers
        for index in range(total):
            block = _block(config, index, layer_names.get(index, []), load, record)
            if block.block_type in ("moe", "mlp"):
                lengths = [h.shape[1] for h in hidden]
                hidden = list(block(torch.cat(hidden, dim=1)).split(lengths, dim=1))
            else:
                hidden = [block(h, attention_mask=m.get(block.block_type), position_ids=p, cache=None, use_cache=False)
                          for h, m, p in zip(hidden, masks, positions, strict=True)]
            del block
            if on_layer is not None:
                on_layer(index + 1, total)
        with torch.device("meta"):
            norm = NemotronHRMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        norm.load_state_dict({"weight": load("backbone.norm_f.weight")}, assign=True)
        for h in hidden:
            record("lm_head", norm(h))  # the input of lm_head (whose own weights are not needed)
