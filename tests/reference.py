"""Independent references for the tests: a budget's masked forward in the parent, and its expected tensors.

Nothing here uses elastic-slice's slicing code: masks are built from the budget's sizes with plain torch, the
masked forward patches transformers' own NemotronH modules, and expected tensors come from boolean indexing.
"""

from __future__ import annotations

import math
import re
import types
from typing import Any

import torch
from torch import nn


class Masks:
    """Boolean keep-masks of every elastic component of a budget, from sizes alone."""

    def __init__(self, cfg: Any, sizes: dict[str, Any]) -> None:
        full = lambda axis: getattr(cfg, axis)  # noqa: E731
        size = lambda axis: sizes.get(axis, full(axis))  # noqa: E731
        self.hidden = torch.arange(cfg.hidden_size) < size("hidden_size")
        heads, groups, hd = cfg.mamba_num_heads, cfg.n_groups, cfg.mamba_head_dim
        per_group, keep = heads // groups, size("mamba_num_heads") // groups
        self.mamba_heads = (torch.arange(heads) % per_group) < keep
        self.mamba_channels = self.mamba_heads.repeat_interleave(hd)
        self.mamba_group_width = (per_group * hd, keep * hd)
        kv = size("num_key_value_heads")
        rep = cfg.num_attention_heads // cfg.num_key_value_heads
        q = sizes.get("num_attention_heads", kv * rep)
        head = torch.arange(cfg.num_attention_heads)
        self.q_heads = (head // rep < kv) & (head % rep < q // kv)
        self.q_channels = self.q_heads.repeat_interleave(cfg.head_dim)
        self.kv_channels = (torch.arange(cfg.num_key_value_heads) < kv).repeat_interleave(cfg.head_dim)
        self.experts = torch.arange(cfg.n_routed_experts) < size("n_routed_experts")
        self.moe_ffn = torch.arange(cfg.moe_intermediate_size) < size("moe_intermediate_size")
        self.shared_ffn = torch.arange(cfg.moe_shared_expert_intermediate_size) < size("moe_shared_expert_intermediate_size")
        self.dense_ffn = torch.arange(cfg.intermediate_size) < size("intermediate_size")
        self.layers = list(sizes.get("layers", range(len(cfg.layers_block_type))))


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
    masks = Masks(cfg, sizes)
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


# ----- expected child tensors by boolean indexing ------------------------------------------------------------------
def _index(tensor: torch.Tensor, *dims: torch.Tensor | None) -> torch.Tensor:
    for axis, mask in enumerate(dims):
        if mask is not None:
            tensor = tensor[(slice(None),) * axis + (mask,)]
    return tensor


def expected_child_tensors(
    parent: dict[str, torch.Tensor], cfg: Any, sizes: dict[str, Any], norm_semantics: str
) -> dict[str, torch.Tensor]:
    """Every child tensor computed from the parent's by the spec's rules, with names renumbered."""
    m = Masks(cfg, sizes)
    h = m.hidden
    bc = torch.ones(2 * cfg.n_groups * cfg.ssm_state_size, dtype=torch.bool)
    in_rows = torch.cat([m.mamba_channels, m.mamba_channels, bc, m.mamba_heads])
    conv_rows = torch.cat([m.mamba_channels, bc])
    full = norm_semantics == "full"
    hidden_scale = math.sqrt(h.numel() / int(h.sum())) if full else 1.0
    group_parent, group_child = m.mamba_group_width
    gated_scale = math.sqrt(group_parent / group_child) if full else 1.0
    local_rules: dict[str, tuple[Any, ...]] = {
        "norm.weight": (h,),
        "mixer.in_proj.weight": (in_rows, h),
        "mixer.conv1d.weight": (conv_rows, None, None),
        "mixer.conv1d.bias": (conv_rows,),
        "mixer.A_log": (m.mamba_heads,),
        "mixer.D": (m.mamba_heads,),
        "mixer.dt_bias": (m.mamba_heads,),
        "mixer.norm.weight": (m.mamba_channels,),
        "mixer.out_proj.weight": (h, m.mamba_channels),
        "mixer.q_proj.weight": (m.q_channels, h),
        "mixer.k_proj.weight": (m.kv_channels, h),
        "mixer.v_proj.weight": (m.kv_channels, h),
        "mixer.o_proj.weight": (h, m.q_channels),
        "mixer.gate.weight": (m.experts, h),
        "mixer.gate.e_score_correction_bias": (m.experts,),
        "mixer.shared_experts.up_proj.weight": (m.shared_ffn, h),
        "mixer.shared_experts.down_proj.weight": (h, m.shared_ffn),
        "mixer.up_proj.weight": (m.dense_ffn, h),
        "mixer.down_proj.weight": (h, m.dense_ffn),
    }
    out: dict[str, torch.Tensor] = {}
    for name, tensor in parent.items():
        if name in ("backbone.embeddings.weight", "lm_head.weight"):
            out[name] = tensor[:, h]
            continue
        if name == "backbone.norm_f.weight":
            out[name] = (tensor[h].float() * hidden_scale).to(tensor.dtype) if full else tensor[h]
            continue
        layer, local = re.match(r"backbone\.layers\.(\d+)\.(.+)", name).groups()
        if int(layer) not in m.layers:
            continue
        new_name = f"backbone.layers.{m.layers.index(int(layer))}.{local}"
        expert = re.match(r"mixer\.experts\.(\d+)\.(up|down)_proj\.weight", local)
        if expert:
            if not m.experts[int(expert.group(1))]:
                continue
            dims = (m.moe_ffn, h) if expert.group(2) == "up" else (h, m.moe_ffn)
        else:
            dims = local_rules[local]
        value = _index(tensor, *dims)
        scale = {"norm.weight": hidden_scale, "mixer.norm.weight": gated_scale}.get(local, 1.0)
        if scale != 1.0:
            value = (value.float() * scale).to(tensor.dtype)
        out[new_name] = value
    return out
