"""Expected child tensors by boolean indexing, independent of elastic-slice's slicing code.

Masks come from the budget's sizes alone (elastic_slice.arch.nemotron_h_torch.Masks, which the masked forward
also uses); nothing here reads a plan or a selection.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from elastic_slice.arch.nemotron_h_torch import Masks


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
