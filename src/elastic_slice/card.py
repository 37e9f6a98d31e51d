"""The model card (README.md) written with every child: where it came from, its sizes and parameter counts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .plan import Plan
from .units import human_count


def _size(value: Any) -> str:
    if isinstance(value, list) and any(v is None for v in value):
        sizes = [v for v in value if v is not None]
        return f"per layer {min(sizes)}-{max(sizes)} (zero-padded to {max(sizes)})"
    if isinstance(value, list):
        return f"{len(value)} layers"
    return str(value)


def _quantization(config: Mapping[str, Any]) -> str:
    """How the weights are stored, from the child's config: "none" or the method and its algorithm or format."""
    quant = config.get("quantization_config")
    if not isinstance(quant, dict):
        return "none"
    detail = quant.get("quant_algo") or quant.get("format") or ""
    return f"{quant.get('quant_method', 'unknown')} {detail}".strip()


def model_card(plan: Plan, parent_name: str, parent_sizes: Mapping[str, Any], command: str | None, version: str) -> str:
    """Markdown with YAML front matter, deterministic for the same inputs."""
    budget = plan.budget
    config = plan.child_config
    rows = "\n".join(
        f"| `{axis}` | {_size(parent_sizes[axis])} | {_size(budget.sizes[axis])} |" for axis in budget.sizes
    )
    how = f"\n```bash\n{command}\n```\n" if command else ""
    quantization = _quantization(config)
    scheme = "nvfp4" if "nvfp4" in quantization.lower() else "fp8" if quantization != "none" else ""
    quant_tag = f"\n- {scheme}" if scheme else ""
    if budget.warning:
        how += f"\nNote: {budget.warning}\n"
    return f"""---
base_model: {parent_name}
library_name: transformers
tags:
- elastic-slice
- {config.get('model_type', '')}
- elastic-budget-{budget.name}{quant_tag}
---

# {parent_name} — budget `{budget.name}`

This model is the `{budget.name}` budget of the elastic checkpoint `{parent_name}`, cut out by prefix slicing along
the checkpoint's nesting index with elastic-slice {version}. No weights were retrained or changed except for
dtype conversion{f' and {scheme.upper()} quantization' if scheme else ''}{' and norm-weight folding (norm_semantics "full")' if budget.norm_semantics == 'full' else ''}.
It is a standard `{config.get('model_type', '')}` model: it loads with plain `transformers`, without custom code.

- Parameters: {plan.params.total:,} total ({human_count(plan.params.total)}), {plan.params.active:,} active per token ({human_count(plan.params.active)})
- Tensor bytes: {plan.out_bytes:,}
- Quantization: {quantization} (dtype {config.get('torch_dtype') or config.get('dtype', 'as the parent')})
- Layers: {len(budget.sizes.get('layers', []))}

| axis | parent | this model |
| --- | --- | --- |
{rows}

## How it was made
{how}
""".rstrip() + "\n"
