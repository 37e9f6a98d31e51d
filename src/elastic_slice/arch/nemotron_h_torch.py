"""Nemotron-H on the transformers side: a budget's masked forward, and calibration hooks.

The masked forward is a reference for tests and `verify --numerics`, written independently of the slicing rules:
keep-masks come from the budget's sizes alone, and transformers' own modules are patched (dropped channels, heads
and experts zeroed or never routed to, dropped layers skipped, norms taken over the kept channels or, for "full",
the parent's width). Calibration hooks record each linear layer's input amax under its checkpoint (hub) name.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

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


def _masked_rmsnorm(module: nn.Module, mask: torch.Tensor, full_width: bool) -> None:
    weight = module.weight
    denominator = mask.numel() if full_width else int(mask.sum())

    def forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.to(torch.float32) * mask
        variance = x.pow(2).sum(-1, keepdim=True) / denominator
        return (weight * mask * x * torch.rsqrt(variance + self.variance_epsilon)).to(hidden_states.dtype)

    module.forward = types.MethodType(forward, module)


def _masked_gated_norm(module: nn.Module, mask: torch.Tensor, group: int, denominator: int) -> None:
    weight = module.weight

    def forward(self: nn.Module, hidden_states: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
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
def apply_masked_forward(model: nn.Module, sizes: dict[str, Any], norm_semantics: str) -> nn.Module:
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


def calibration_hooks(model: nn.Module, record: Callable[[str, torch.Tensor], None]) -> list[Any]:
    """Hooks that pass every linear layer's input (per routed expert for MoE layers) to `record`, and the key and
    value projections' outputs under their name plus OUTPUT."""
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            hub = _hub_name(name)
            handles.append(module.register_forward_pre_hook(lambda mod, args, hub=hub: record(hub, args[0])))
            if name.endswith((".k_proj", ".v_proj")):  # what the KV cache stores
                handles.append(module.register_forward_hook(
                    lambda mod, args, out, hub=hub: record(hub + OUTPUT, out)))
        elif type(module).__name__ == "NemotronHExperts":
            prefix = _hub_name(name)
            handles.append(module.register_forward_pre_hook(
                lambda mod, args, prefix=prefix: _record_experts(mod, args, prefix, record)))
    return handles


@torch.no_grad()
def _record_experts(experts: nn.Module, args: tuple[Any, ...], prefix: str,
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
