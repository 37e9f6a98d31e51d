"""The naive peer: load the whole parent with transformers, cut every module tensor in torch, save_pretrained.

What a user without elastic-slice would write. Usage: python naive_peer.py PARENT BUDGET OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, NemotronHConfig, NemotronHForCausalLM

from elastic_slice.arch.nemotron_h_torch import Masks


def main(parent: str, budget: str, out: str) -> None:
    sizes = json.loads((Path(parent) / "nesting_index.json").read_text())["budgets"][budget]
    model = AutoModelForCausalLM.from_pretrained(parent, dtype=torch.bfloat16)
    cfg = model.config
    m = Masks(cfg, sizes)
    bc = torch.ones(2 * cfg.n_groups * cfg.ssm_state_size, dtype=torch.bool)
    rows = {
        "in_proj": torch.cat([m.mamba_channels, m.mamba_channels, bc, m.mamba_heads]),
        "conv1d": torch.cat([m.mamba_channels, bc]),
    }
    state = {}
    for name, tensor in model.state_dict().items():
        t = tensor
        if name.endswith(("embeddings.weight", "lm_head.weight")):
            t = t[:, m.hidden]
        elif name.endswith(("norm.weight", "norm_f.weight")) and ".mixer." not in name:
            t = t[m.hidden]
        elif ".mixer.in_proj." in name:
            t = t[rows["in_proj"]][:, m.hidden]
        elif ".mixer.conv1d." in name:
            t = t[rows["conv1d"]]
        elif name.endswith(("A_log", ".D", "dt_bias")):
            t = t[m.mamba_heads]
        elif ".mixer.norm." in name:
            t = t[m.mamba_channels]
        elif ".out_proj." in name:
            t = t[m.hidden][:, m.mamba_channels]
        elif ".q_proj." in name:
            t = t[m.q_channels][:, m.hidden]
        elif ".k_proj." in name or ".v_proj." in name:
            t = t[m.kv_channels][:, m.hidden]
        elif ".o_proj." in name:
            t = t[m.hidden][:, m.q_channels]
        elif ".gate.weight" in name:
            t = t[m.experts][:, m.hidden]
        elif "e_score_correction_bias" in name:
            t = t[m.experts]
        elif ".experts.up_proj" in name:
            t = t[m.experts][:, m.moe_ffn][:, :, m.hidden]
        elif ".experts.down_proj" in name:
            t = t[m.experts][:, m.hidden][:, :, m.moe_ffn]
        elif ".shared_experts.up_proj." in name:
            t = t[m.shared_ffn][:, m.hidden]
        elif ".shared_experts.down_proj." in name:
            t = t[m.hidden][:, m.shared_ffn]
        state[name] = t.contiguous()
    child_cfg = NemotronHConfig(**{**cfg.to_dict(), **sizes})
    with torch.device("meta"):
        child = NemotronHForCausalLM(child_cfg)
    child.load_state_dict(state, assign=True, strict=True)
    child.save_pretrained(out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
