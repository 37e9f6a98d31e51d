"""Synthetic elastic parents with the real release's tensor shapes, written straight to safetensors (any size).

Shapes per block follow the Nemotron Labs 3 Elastic 30B-A3B parent (hidden 2688; Mamba 64 heads x 64 in 8 groups,
state 128; attention 32/2 heads of 128; 128 routed experts of FFN 1856 plus a shared expert of 3712; vocab 131072),
with fewer layers. Values are random bytes (speed does not depend on them). The budgets are invented for the
benchmark and are not NVIDIA's sizes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

CONFIG = {
    "architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h", "dtype": "bfloat16",
    "vocab_size": 131072, "hidden_size": 2688, "tie_word_embeddings": False,
    "mamba_num_heads": 64, "mamba_head_dim": 64, "n_groups": 8, "ssm_state_size": 128, "conv_kernel": 4,
    "use_conv_bias": True, "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128,
    "n_routed_experts": 128, "num_experts_per_tok": 6, "moe_intermediate_size": 1856,
    "moe_shared_expert_intermediate_size": 3712, "intermediate_size": 1856, "n_group": 1, "topk_group": 1,
    "layer_norm_epsilon": 1e-5, "mamba_hidden_act": "silu", "mlp_hidden_act": "relu2",
}
BUDGETS = {
    "30B": {"hidden_size": 2688},
    "23B": {"hidden_size": 2304, "mamba_num_heads": 56, "moe_intermediate_size": 1472,
            "moe_shared_expert_intermediate_size": 3072},
    "12B": {"hidden_size": 2048, "mamba_num_heads": 48, "num_attention_heads": 24, "n_routed_experts": 96,
            "moe_intermediate_size": 1024, "moe_shared_expert_intermediate_size": 2560},
}
_BLOCKS = {"M": "mamba", "E": "moe", "*": "attention"}


def tensor_shapes(pattern: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, dtype, shape) of every tensor of a parent with this layer pattern, in hub order."""
    c = CONFIG
    h, inner = c["hidden_size"], c["mamba_num_heads"] * c["mamba_head_dim"]
    bc = 2 * c["n_groups"] * c["ssm_state_size"]
    heads, q, kv = c["mamba_num_heads"], c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    f, fs, experts = c["moe_intermediate_size"], c["moe_shared_expert_intermediate_size"], c["n_routed_experts"]
    out = [("backbone.embeddings.weight", "BF16", (c["vocab_size"], h))]
    for i, letter in enumerate(pattern):
        p = f"backbone.layers.{i}."
        out.append((p + "norm.weight", "BF16", (h,)))
        if letter == "M":
            out += [(p + "mixer.in_proj.weight", "BF16", (2 * inner + bc + heads, h)),
                    (p + "mixer.conv1d.weight", "BF16", (inner + bc, 1, 4)), (p + "mixer.conv1d.bias", "BF16", (inner + bc,)),
                    (p + "mixer.A_log", "F32", (heads,)), (p + "mixer.D", "F32", (heads,)),
                    (p + "mixer.dt_bias", "F32", (heads,)), (p + "mixer.norm.weight", "BF16", (inner,)),
                    (p + "mixer.out_proj.weight", "BF16", (h, inner))]
        elif letter == "*":
            out += [(p + "mixer.q_proj.weight", "BF16", (q, h)), (p + "mixer.k_proj.weight", "BF16", (kv, h)),
                    (p + "mixer.v_proj.weight", "BF16", (kv, h)), (p + "mixer.o_proj.weight", "BF16", (h, q))]
        else:
            out += [(p + "mixer.gate.weight", "F32", (experts, h)),
                    (p + "mixer.gate.e_score_correction_bias", "F32", (experts,))]
            for e in range(experts):
                out += [(p + f"mixer.experts.{e}.up_proj.weight", "BF16", (f, h)),
                        (p + f"mixer.experts.{e}.down_proj.weight", "BF16", (h, f))]
            out += [(p + "mixer.shared_experts.up_proj.weight", "BF16", (fs, h)),
                    (p + "mixer.shared_experts.down_proj.weight", "BF16", (h, fs))]
    out += [("backbone.norm_f.weight", "BF16", (h,)), ("lm_head.weight", "BF16", (c["vocab_size"], h))]
    return out


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) * (4 if dtype == "F32" else 2)


def write_parent(folder: Path, pattern: str, shard_bytes: int = 2 * 10**9) -> int:
    """Write config, nesting index and shards; returns the tensor bytes written."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {**CONFIG, "layers_block_type": [
        {"M": "mamba", "E": "moe", "*": "attention"}[x] for x in pattern]}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    index = {"format": "elastic-nesting-index", "version": 1, "architecture": "nemotron_h", "parent": "30B",
             "norm_semantics": "active", "budgets": BUDGETS}
    (folder / "nesting_index.json").write_text(json.dumps(index, indent=2))
    groups: list[list[tuple[str, str, tuple[int, ...]]]] = [[]]
    size = 0
    for entry in tensor_shapes(pattern):
        if groups[-1] and size + _nbytes(entry[1], entry[2]) > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(entry)
        size += _nbytes(entry[1], entry[2])
    block = np.random.default_rng(0).integers(0, 2**16, 32 * 2**20, dtype=np.uint16).view(np.uint8)
    block = block.reshape(-1, 2)
    block[:, 1] &= 0x3F  # bf16 values of modest magnitude (no inf/nan), whatever they are read as
    block = block.reshape(-1)
    weight_map, total = {}, 0
    for number, group in enumerate(groups, 1):
        name = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for tensor, dtype, shape in group:
            header[tensor] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + _nbytes(dtype, shape)]}
            offset += _nbytes(dtype, shape)
            weight_map[tensor] = name
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with (folder / name).open("wb") as handle:
            handle.write(struct.pack("<Q", len(raw)) + raw)
            left = offset
            while left:
                piece = block[: min(left, block.size)]
                handle.write(piece.data)
                left -= piece.size
        total += offset
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return total
