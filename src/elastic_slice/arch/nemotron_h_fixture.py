"""Tiny elastic Nemotron-H parents in the real format, built with transformers' own NemotronH classes.

Used by the tests (`NemotronHFixture` is the family's FixtureBuilder for the conformance suite) and by
`examples/make_tiny_elastic.py`. Needs `transformers` (the `test` extra). The budget sizes below are invented for
this miniature: they mirror the release's 30B/23B/12B parameter ratios (about 1 : 0.77 : 0.4) and are not NVIDIA's
sizes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: one letter per layer: M = Mamba-2, E = MoE, * = attention, - = dense MLP
TINY_PATTERN = "ME*-ME*M"
_BLOCK_NAMES = {"M": "linear_attention", "E": "moe", "*": "full_attention", "-": "mlp"}

TINY_BUDGETS: dict[str, dict[str, Any]] = {
    "30B": {
        "hidden_size": 128, "mamba_num_heads": 16, "num_attention_heads": 8, "num_key_value_heads": 2,
        "n_routed_experts": 16, "moe_intermediate_size": 64, "moe_shared_expert_intermediate_size": 128,
        "intermediate_size": 192,
    },
    "23B": {
        "hidden_size": 112, "mamba_num_heads": 12, "num_attention_heads": 6, "moe_intermediate_size": 64,
        "moe_shared_expert_intermediate_size": 80, "intermediate_size": 128,
    },
    "12B": {
        "hidden_size": 96, "mamba_num_heads": 8, "num_attention_heads": 4, "n_routed_experts": 12,
        "moe_intermediate_size": 32, "moe_shared_expert_intermediate_size": 80, "intermediate_size": 128,
    },
}

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_TOKENIZER_TEXT = (
    "Elastic models hold many budgets in one checkpoint. Each smaller model is a prefix slice of the parent: "
    "embedding channels, attention heads, Mamba heads, experts and feed-forward channels are sorted by importance. "
    "The quick brown fox jumps over the lazy dog. 0123456789 <|user|> <|assistant|>"
)


@dataclass
class TinySpec:
    """Dimensions of a miniature Nemotron-H parent (defaults: the example checkpoint)."""

    pattern: str = TINY_PATTERN
    vocab_size: int = 320
    hidden_size: int = 128
    mamba_num_heads: int = 16
    mamba_head_dim: int = 16
    n_groups: int = 4
    ssm_state_size: int = 16
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    head_dim: int = 16
    n_routed_experts: int = 16
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 64
    moe_shared_expert_intermediate_size: int = 128
    intermediate_size: int = 192
    layer_norm_epsilon: float = 1e-5
    extra: dict[str, Any] = field(default_factory=dict)


class NemotronHFixture:
    """The family's FixtureBuilder: the default tiny parent with its three budgets."""

    def build(self, out: Path, seed: int = 0) -> dict[str, dict[str, Any]]:
        build_tiny_elastic(out, seed=seed)
        return TINY_BUDGETS


def tiny_config(spec: TinySpec) -> Any:
    """A transformers `NemotronHConfig` for the spec."""
    from transformers import NemotronHConfig

    fields = {k: v for k, v in asdict(spec).items() if k not in ("pattern", "extra")}
    return NemotronHConfig(
        layers_block_type=[_BLOCK_NAMES[c] for c in spec.pattern],
        chunk_size=16,
        conv_kernel=4,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **fields,
        **spec.extra,
    )


def tiny_model(spec: TinySpec, seed: int = 0) -> Any:
    """A NemotronHForCausalLM with every tensor random (no constant norms), so that any wrong index shows."""
    import torch
    from transformers import NemotronHForCausalLM

    torch.manual_seed(seed)
    model: Any = NemotronHForCausalLM(tiny_config(spec))
    model = model.to(torch.float32).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            tensor.copy_(_random_like(name, tensor, generator))
    return model


def _random_like(name: str, tensor: Any, generator: Any) -> Any:
    import torch

    noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
    if name.endswith("A_log"):
        return torch.log(torch.rand(tensor.shape, generator=generator) * 15 + 1)
    if name.endswith(("norm.weight", "norm_f.weight", ".D")):
        return 1 + 0.1 * noise
    if name.endswith(("dt_bias", "bias")):
        return 0.3 * noise
    if "embeddings" in name:
        return noise
    fan_in = tensor.shape[-1] if tensor.dim() >= 2 else 1
    return noise / math.sqrt(fan_in)


def build_tiny_elastic(
    out_dir: str | Path,
    spec: TinySpec | None = None,
    budgets: dict[str, dict[str, Any]] | None = None,
    norm_semantics: str = "active",
    dtype: str = "bfloat16",
    seed: int = 0,
    index_in_config: bool = False,
    max_shard_size: str = "5GB",
    with_tokenizer: bool = True,
) -> Path:
    """Write a miniature elastic parent folder: weights (hub names), config, nesting index, tokenizer."""
    import torch

    spec = spec or TinySpec()
    out = Path(out_dir)
    model = tiny_model(spec, seed)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(out, max_shard_size=max_shard_size)
    index = {
        "format": "elastic-nesting-index",
        "version": 1,
        "architecture": "nemotron_h",
        "parent": "30B",
        "norm_semantics": norm_semantics,
        "budgets": budgets if budgets is not None else TINY_BUDGETS,
    }
    if index_in_config:
        config = json.loads((out / "config.json").read_text())
        config["nesting_index"] = index
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    else:
        (out / "nesting_index.json").write_text(json.dumps(index, indent=2) + "\n")
    if with_tokenizer:
        write_tokenizer(out, spec.vocab_size)
    return out


def write_tokenizer(out: Path, vocab_size: int) -> None:
    """A small byte-level BPE tokenizer trained on a fixed text, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_TOKENIZER_TEXT] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", chat_template=CHAT_TEMPLATE
    )
    fast.save_pretrained(out)
