"""A tiny Gemma 3n text parent in the real format, built with transformers' own Gemma3n classes.

The family's FixtureBuilder for the conformance tests. Ten layers in Gemma 3n's pattern (four sliding-window layers,
then one global), the last four sharing keys and values, the first three with activation sparsity 0.95, every FFN
128 wide: a miniature E4B. The budgets are invented for this miniature.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

LAYER_TYPES = (["sliding_attention"] * 4 + ["full_attention"]) * 2
SPARSITY = [0.95] * 3 + [0.0] * 7
TINY_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 320,
    "vocab_size_per_layer_input": 288,
    "hidden_size": 64,
    "intermediate_size": [128] * 10,
    "num_hidden_layers": 10,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "hidden_size_per_layer_input": 8,
    "num_kv_shared_layers": 4,
    "laurel_rank": 4,
    "altup_num_inputs": 4,
    "sliding_window": 8,
    "max_position_embeddings": 256,
    "layer_types": LAYER_TYPES,
    "activation_sparsity_pattern": SPARSITY,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
#: the parent, FFN widths cut per layer (sparse layers included), and an E2B-like budget that also skips layers
#: (layer 2, and the KV-sharing layers 6 and 7, as Google's E2B skips 20-24 of E4B's sharing layers)
TINY_BUDGETS: dict[str, dict[str, Any]] = {
    "E4": {},
    "E3-ffn": {"intermediate_size": [64, 96, 128, 32, 64, 96, 128, 64, 32, 96]},
    "E2-skip": {"layers": [0, 1, 3, 4, 5, 8, 9], "intermediate_size": 64},
}


class Gemma3nFixture:
    """The family's FixtureBuilder: the tiny text-only parent with its three budgets."""

    def build(self, out: Path, seed: int = 0) -> dict[str, dict[str, Any]]:
        build_tiny_gemma3n(out, seed=seed)
        return TINY_BUDGETS


def tiny_model(seed: int = 0, **overrides: Any) -> Any:
    """A Gemma3nForCausalLM with every parameter random (norms near 1), so that any wrong index shows."""
    import torch
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

    torch.manual_seed(seed)
    model: Any = Gemma3nForCausalLM(Gemma3nTextConfig(**{**TINY_TEXT_CONFIG, **overrides}))
    model = model.to(torch.float32).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.named_parameters():  # buffers hold constants (scales, rotary): left as built
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
            if name.endswith("norm.weight"):
                tensor.copy_(1 + 0.1 * noise)
            elif "embed_tokens" in name or tensor.dim() < 2:
                tensor.copy_(0.5 * noise)
            else:
                tensor.copy_(noise / math.sqrt(tensor.shape[-1]))
    return model


def build_tiny_gemma3n(
    out_dir: str | Path,
    budgets: dict[str, dict[str, Any]] | None = None,
    dtype: str = "bfloat16",
    seed: int = 0,
    with_tokenizer: bool = True,
) -> Path:
    """Write the tiny parent folder: weights, config, nesting index (parent budget "E4"), tokenizer."""
    import torch

    from .nemotron_h_fixture import write_tokenizer

    out = Path(out_dir)
    model = tiny_model(seed).to(getattr(torch, dtype))
    model.save_pretrained(out)
    index = {
        "format": "elastic-nesting-index", "version": 1, "architecture": "gemma3n_text", "parent": "E4",
        "norm_semantics": "active", "budgets": budgets if budgets is not None else TINY_BUDGETS,
    }
    (out / "nesting_index.json").write_text(json.dumps(index, indent=2) + "\n")
    if with_tokenizer:
        write_tokenizer(out, TINY_TEXT_CONFIG["vocab_size"])
    return out
