"""The model card (README.md) written with every child: where it came from, its sizes, parameter counts and, for a
quantized child, which engines load it and what is known not to work (with the versions that were checked).

The YAML front matter is written by a YAML serializer, so no name read from a file (a parent or budget name with a
newline or a colon) can add metadata, and `base_model` is written only for a parent read from the Hub (the Hub
reads it as a repo id); every other value read from a config is shown through `text.literal`. The "how it was made" command shows the checkpoint as the user named it and
reduces every path argument to its last component, so no local directory layout is published.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, overload

import yaml

from .nesting import axis_summary
from .plan import Plan
from .quant.calibrate import DEFAULT as DEFAULT_CALIBRATION
from .quant.formats import INPUT_SCALE, MODELOPT
from .quant.output import HF_QUANT_CONFIG, QuantSummary
from .quant.schemes import FP8, NVIDIA
from .text import literal
from .units import human_count

#: the library versions the transformers statements below were measured with (tests/test_quant_outputs.py pins them)
CHECKED_TRANSFORMERS = "transformers 5.24.0"
CHECKED_COMPRESSED_TENSORS = "compressed-tensors 0.20.1"
_NOT_CHECKED = "documented by the engine, not checked by elastic-slice"
#: command-line options whose value is a local path (shown by its last component only)
_PATH_OPTIONS = ("--out", "--index", "--calibration")
#: options that take no value
_FLAGS = ("--all", "--dry-run", "--overwrite", "--private", "--json")


def _size(axis: str, value: Any, padded: bool) -> str:
    """An axis size for the card's table; `padded` when the plan zero-pads per-layer sizes to a uniform config."""
    summary = axis_summary(axis, value)
    sizes = {size for size in value if size is not None} if isinstance(value, list) else set()
    if padded and axis != "layers" and len(sizes) > 1:
        return f"{summary} (zero-padded to {max(sizes)})"
    return summary


def _quantization(config: Mapping[str, Any]) -> str:
    """How the weights are stored, from the child's config: "none" or the method and its algorithm or format."""
    quant = config.get("quantization_config")
    if not isinstance(quant, dict):
        return "none"
    detail = quant.get("quant_algo") or quant.get("format") or ""
    return literal(f"{quant.get('quant_method', 'unknown')} {detail}".strip())


def public_command(command: str, checkpoint_name: str) -> str:
    """`command` with the checkpoint argument shown as `checkpoint_name` and path options reduced to names."""
    try:
        words = shlex.split(command)
    except ValueError:
        return "elastic-slice (command not shown: it could not be parsed)"
    shown, positional_seen, index = words[:2], False, 2
    while index < len(words):
        word = words[index]
        option, eq, value = word.partition("=")
        if word.startswith("--") and eq:
            shown.append(f"{option}={public_path_value(option, value)}")
        elif word.startswith("--") and word not in _FLAGS and index + 1 < len(words):
            shown += [word, public_path_value(word, words[index + 1])]
            index += 1
        elif not word.startswith("--") and not positional_seen:
            shown.append(checkpoint_name)
            positional_seen = True
        else:
            shown.append(word)
        index += 1
    return shlex.join(shown)


def public_name(name: str) -> str:
    """A parent's name fit to publish: a Hub repo id (`org/name`) as it is, a local path by its folder's name."""
    parts = name.replace("\\", "/").split("/")
    if len(parts) == 2 and all(parts) and not name.startswith((".", "~")):
        return name
    return next((part for part in reversed(parts) if part), name)


@overload
def public_path_value(option: str, value: str) -> str: ...
@overload
def public_path_value(option: str, value: None) -> None: ...
def public_path_value(option: str, value: str | None) -> str | None:
    """An option's value fit to publish: a local path (for options that take one) reduced to its last component."""
    if value is None or option not in _PATH_OPTIONS or value == DEFAULT_CALIBRATION:
        return value
    return PurePath(value).name or value


def library_name(quant: QuantSummary | None) -> str:
    """`transformers` where transformers loads the output correctly (checked: unquantized, compressed-tensors FP8);
    otherwise `vllm`, an engine whose documentation covers the format, so that the Hub does not offer a
    transformers snippet that fails or gives wrong output."""
    return "transformers" if quant is None or transformers_runs(quant) else "vllm"


def transformers_runs(quant: QuantSummary) -> bool:
    """Whether transformers loads and runs this quantized output correctly (checked per format and scheme; NVFP4
    compressed-tensors only without routed experts, whose fused dequantization transformers gets wrong)."""
    runs = quant.fmt.transformers_runs_without_experts if not quant.has_routed_experts else quant.fmt.transformers_runs
    return quant.scheme.name in runs


def _front_matter(hub_repo: str | None, config: Mapping[str, Any], budget: str, quant: QuantSummary | None) -> str:
    """`base_model` only for a parent read from the Hub: the Hub reads it as a repo id, never a local folder's name."""
    tags = ["elastic-slice", str(config.get("model_type", "")), f"elastic-budget-{budget}"]
    if quant is not None:
        tags += [quant.scheme.name, quant.fmt.name]
    meta: dict[str, Any] = {"base_model": hub_repo} if hub_repo else {}
    meta |= {"library_name": library_name(quant), "tags": tags}
    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False)


def engine_rows(quant: QuantSummary) -> list[tuple[str, str]]:
    """(engine, what is known) for a quantized output, per format and scheme."""
    scheme = quant.scheme.name.upper()
    if quant.fmt is MODELOPT:
        rows = [(engine, f"reads ModelOpt {scheme} checkpoints (`hf_quant_config.json`): {_NOT_CHECKED}")
                for engine in ("vLLM", "SGLang", "TensorRT-LLM")]
        failure = (
            "loads the raw FP8 codes without their scales (the scale tensors are reported as unexpected keys): "
            "**wrong outputs**" if quant.scheme is FP8 else
            "**fails to load**: the packed NVFP4 weights do not match the model's shapes"
        )
        return rows + [(CHECKED_TRANSFORMERS, f"does not know the ModelOpt format; it {failure} (checked)")]
    rows = [("vLLM", f"reads compressed-tensors {scheme} checkpoints: {_NOT_CHECKED}")]
    library = f"{CHECKED_TRANSFORMERS} + {CHECKED_COMPRESSED_TENSORS}"
    loads = _transformers_loading(quant)
    if transformers_runs(quant) and quant.scheme is FP8:
        return rows + [(library, f"{loads} and runs (checked)")]
    if transformers_runs(quant):
        return rows + [(library, f"{loads} and runs in bf16, computing what the dequantized weights compute "
                                 "(checked); loaded with `dtype=torch.float32` it fails on a dtype mismatch (checked)")]
    if quant.experts_quantized:
        return rows + [(library, f"{loads}, but its fused routed-expert NVFP4 dequantization ignores "
                                 "`weight_global_scale`: routed experts come out multiplied by it and the logits are "
                                 "**wrong** (checked); use vLLM")]
    return rows + [(library, "reports the unquantized routed-expert weights as missing (it does not merge them into "
                             "its fused expert parameters) and runs with them uninitialized: **wrong outputs** "
                             "(checked); use vLLM")]


def _transformers_loading(quant: QuantSummary) -> str:
    """What transformers reports when it loads a compressed-tensors output (checked): the routed experts' activation
    scales and the KV-cache scales have no place in its model, so it reports them as unexpected and drops them."""
    dropped = []
    if quant.experts_input_scales:
        name = quant.fmt.suffix(quant.scheme, INPUT_SCALE)
        dropped.append(f"the routed experts' activation scales (`{name}`)")
    if quant.kv_cache:
        dropped.append("the KV-cache scales (`k_scale`, `v_scale`)")
    if not dropped:
        return "loads with no missing or unexpected weights"
    return f"reports {' and '.join(dropped)} as unexpected keys and does not load them; it loads every other weight"


def _quantization_section(quant: QuantSummary, exclusions: list[str], loading_note: str) -> str:
    scheme, fmt = quant.scheme.name.upper(), quant.fmt.title
    lines = [f"- Weights: {scheme}, {fmt} format"]
    if quant.recipe is None:
        lines.append(f"- Sliced from a quantized parent ({scheme}, {fmt} format; {len(exclusions)} exclusion entries "
                     "in its quantization config, renumbered for this budget): packed weights, block scales and "
                     "scalars are the parent's, cut along the budget's axes, never quantized again")
    else:
        kept = (quant.recipe_description if quant.recipe == NVIDIA else
                "the broad recipe: lm_head"
                + (" and the attention projections" if "attention_linear" in quant.scheme.excluded_kinds else ""))
        extra = f"; also `--exclude` {', '.join(f'`{g}`' for g in quant.exclude)}" if quant.exclude else ""
        never = ", ".join(kind.replace("_", " ") for kind in quant.never_quantized if kind != "lm_head")
        lines.append(f"- Not quantized: {kept}{extra}" + (f"; and the module kinds elastic-slice never quantizes: {never}"
                                                           if never else ""))
        lines.append(f"- Activation scales: calibrated on {quant.calibration}" if quant.calibration else
                     "- Activation scales: none (FP8 dynamic activations / NVFP4 weight-only)")
    lines.append(f"- KV cache: {'FP8, calibrated scales' if quant.kv_cache else 'not quantized'}")
    rows = engine_rows(quant)
    if loading_note:  # what transformers does was checked on another layout only
        rows = [(engine, status.replace("(checked)", "(checked on the text-only layout, not this one)"))
                for engine, status in rows]
    table = "\n".join(f"| {engine} | {status} |" for engine, status in rows)
    return "\n## Quantization\n\n" + "\n".join(lines) + f"\n\n| engine | status |\n| --- | --- |\n{table}\n"


def _changes(plan: Plan) -> str:
    """The sentence saying what, if anything, was done to the parent's values (only what this plan does)."""
    quant = plan.quantization
    changes = []
    if any(op.dequant is not None for op in plan.ops):
        changes.append("dequantization of the parent's quantized weights")
    if any(op.quant is None and op.dequant is None and op.source_dtype != op.out_dtype for op in plan.ops):
        changes.append("dtype conversion")
    if quant is not None and quant.recipe is not None:
        changes.append(f"{quant.scheme.name.upper()} quantization")
    if plan.budget.norm_semantics == "full":
        changes.append('norm-weight folding (norm_semantics "full")')
    said = (f"No weights were retrained or changed except for {' and '.join(changes)}." if changes else
            "No weights were retrained or changed: every value kept is the parent's, as it stored it.")
    if quant is not None and quant.recipe is None:
        said += " The quantized weights and scales are the parent's as it stored them: nothing was quantized again."
    return said


def model_card(
    plan: Plan, parent_name: str, parent_sizes: Mapping[str, Any], command: str | None, version: str,
    hub_repo: str | None = None, loading_note: str = "",
) -> str:
    """Markdown with YAML front matter, deterministic for the same inputs; `hub_repo` is the parent's Hub repo id
    when it was read from the Hub (the only case that writes `base_model`)."""
    budget = plan.budget
    config = plan.child_config
    quant = plan.quantization
    parent_name = literal(public_name(parent_name))
    padded = any(op.pad_value is not None for op in plan.ops)
    rows = "\n".join(
        f"| `{axis}` | {_size(axis, parent_sizes[axis], False)} | {_size(axis, budget.sizes[axis], padded)} |"
        for axis in budget.sizes
    )
    how = f"\n```bash\n{public_command(command, parent_name)}\n```\n" if command else ""
    quantization = _quantization(config)
    if budget.warning:
        how += f"\nNote: {budget.warning}\n"
    model_type = literal(config.get("model_type", ""))
    if quant is not None:
        loads = "Which engines load it is in the Quantization section below."
    elif loading_note:
        loads = f"It is a standard `{model_type}` model, with no custom code."
    else:
        loads = f"It is a standard `{model_type}` model: it loads with plain `transformers`, without custom code."
    loads += f" {loading_note}" if loading_note else ""
    dtype = literal(config.get("torch_dtype") or config.get("dtype") or "as the parent")
    exclusions = quant.fmt.declared_exclusions(config, plan.extra_files.get(HF_QUANT_CONFIG)) if quant else []
    return f"""---
{_front_matter(hub_repo, config, budget.name, quant)}---

# {parent_name} — budget `{budget.name}`

This model is the `{budget.name}` budget of the elastic checkpoint `{parent_name}`, cut out by prefix slicing
{"with sizes set on the command line" if budget.warning else "along the checkpoint's nesting index"}, by elastic-slice {version}. {_changes(plan)}
{loads}

- Parameters: {plan.params.total:,} total ({human_count(plan.params.total)}), {plan.params.active:,} active per token ({human_count(plan.params.active)})
- Tensor bytes: {plan.out_bytes:,}
- Quantization: {quantization} (dtype {dtype})
- Layers: {len(budget.sizes.get('layers', []))}

| axis | parent | this model |
| --- | --- | --- |
{rows}
{_quantization_section(quant, exclusions, loading_note) if quant is not None else ''}
## How it was made
{how}
""".rstrip() + "\n"
