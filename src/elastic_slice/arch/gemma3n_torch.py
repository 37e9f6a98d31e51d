"""Gemma 3n on the transformers side: a budget's masked forward (the exactness reference).

Written from the budget's sizes alone, independently of the slicing rules: each kept layer's feed-forward block
runs at the parent's width with the channels past the budget's width zeroed, and a skipped layer passes its (AltUp-
stacked) hidden states through unchanged. Activation sparsity's cutoff, mean + std * Phi^-1(sparsity) of the gate
projection, takes its mean and (population) standard deviation over the kept channels only: that is what the child,
whose gate projection holds only those channels, computes, and what Google's sliced E2B computes inside E4B.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import InputError


def text_model(model: Any) -> Any:
    """The Gemma3nTextModel inside a Gemma3nForCausalLM or Gemma3nForConditionalGeneration."""
    inner = model.model
    return inner.language_model if hasattr(inner, "language_model") else inner


def apply_masked_forward(model: Any, sizes: Mapping[str, Any], norm: str) -> Any:
    """Patch a transformers Gemma 3n parent in place so that it computes the budget `sizes`."""
    text = text_model(model)
    layers = list(text.layers)
    kept = set(sizes.get("layers", range(len(layers))))
    widths = sizes.get("intermediate_size")
    for index, layer in enumerate(layers):
        if index not in kept:
            layer.forward = types.MethodType(_pass_through, layer)
            continue
        mlp = layer.mlp
        width = mlp.intermediate_size if widths is None else widths[index] if isinstance(widths, list) else widths
        if width == mlp.intermediate_size:
            continue
        if norm == "full" and mlp.activation_sparsity > 0.0:
            raise InputError(
                f"layer {index}: norm_semantics \"full\" has no exact child when activation sparsity is cut."
            )
        mask = torch.arange(mlp.intermediate_size, device=mlp.gate_proj.weight.device) < width
        mlp.forward = types.MethodType(_masked_mlp(mask, int(width)), mlp)
    return model


def _pass_through(self: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return hidden_states


def _masked_mlp(mask: torch.Tensor, width: int) -> Any:
    def forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
        gate = self.gate_proj(hidden_states)
        if self.activation_sparsity > 0.0:
            keep = mask.to(gate.dtype)
            mean = (gate * keep).sum(-1, keepdim=True) / width
            std = (((gate - mean) * keep) ** 2).sum(-1, keepdim=True).div(width).sqrt()
            normal = torch.distributions.normal.Normal(0, 1)
            multiplier = normal.icdf(torch.tensor(self.activation_sparsity, dtype=torch.float32)).to(gate.dtype)
            gate = nn.functional.relu(gate - (mean + std * multiplier))
        activations = self.act_fn(gate) * self.up_proj(hidden_states) * mask.to(gate.dtype)
        return self.down_proj(activations)

    return forward
