"""Activation calibration: run the parent in transformers on sample text and record each linear input's amax.

Input scales come from the parent (every budget copies them), so calibration runs once, on the parent. Routed
experts that no calibration token reached take the largest amax of their layer's other experts (what a serving
engine would otherwise see as their range), so every quantized module gets a scale.
"""

from __future__ import annotations

import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..quiet import quiet_transformers

DEFAULT = "default"
MAX_TOKENS = 512
_EXPERT = re.compile(r"^(.*\.experts)\.(\d+)\.(up_proj|down_proj)$")


#: a paragraph is cut to this many characters before tokenizing (enough for MAX_TOKENS tokens unless they average
#: over 16 characters), and at most MAX_PARAGRAPHS paragraphs from the file's first MAX_READ_BYTES bytes are used
MAX_PARAGRAPH_CHARS = MAX_TOKENS * 16
MAX_PARAGRAPHS = 256
MAX_READ_BYTES = MAX_PARAGRAPHS * MAX_PARAGRAPH_CHARS * 4


def describe(source: str) -> str:
    """How a calibration source is named in model cards: the built-in sample, or the text file's name."""
    return "the built-in sample text" if source == DEFAULT else f"the text file {Path(source).name}"


def calibration_texts(source: str) -> list[str]:
    """Paragraphs of the built-in sample (`default`) or of a text file, bounded by what calibration tokenizes."""
    if source == DEFAULT:
        text = resources.files("elastic_slice.quant").joinpath("calibration_sample.txt").read_text(encoding="utf-8")
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"--calibration {source} is not a file; give a text file or 'default'.")
        with path.open("rb") as handle:
            text = handle.read(MAX_READ_BYTES).decode("utf-8", errors="replace")
    paragraphs = []
    for paragraph in text.split("\n\n"):
        if paragraph.strip():
            paragraphs.append(paragraph.strip()[:MAX_PARAGRAPH_CHARS])
        if len(paragraphs) == MAX_PARAGRAPHS:
            break
    if not paragraphs:
        raise InputError(f"--calibration {source} holds no text.")
    return paragraphs


def calibrate(checkpoint_root: Path, arch: Any, texts: list[str], device: str = "cpu") -> dict[str, float]:
    """Input amax of every linear layer of the model at `checkpoint_root`, keyed by checkpoint module name."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise InputError(
            "calibration needs transformers, a dependency of elastic-slice: reinstall it with "
            "pip install elastic-slice (or pip install 'transformers>=5')."
        ) from exc
    with quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(checkpoint_root)
        except (OSError, ValueError) as exc:
            raise InputError(f"calibration needs the parent's tokenizer files in {checkpoint_root} ({exc}).") from exc
        model = AutoModelForCausalLM.from_pretrained(checkpoint_root, dtype=torch.float32).to(device).eval()
        return _run(model, tokenizer, arch, texts, device)


def announce(source: str, paragraphs: int, chosen_by_default: bool) -> None:
    """One line on stderr (never stdout, which --json keeps for its document) saying what calibration runs on."""
    hint = "; give --calibration FILE to use your own text" if chosen_by_default else ""
    print(f"calibrating activation scales on {describe(source)} ({paragraphs} paragraphs){hint}", file=sys.stderr)


def _run(model: Any, tokenizer: Any, arch: Any, texts: list[str], device: str) -> dict[str, float]:
    import torch

    amax: dict[str, float] = {}

    def record(name: str, tensor: Any) -> None:
        if tensor.numel():
            amax[name] = max(amax.get(name, 0.0), float(tensor.detach().abs().amax()))

    handles = arch.calibration_hooks(model, record)
    try:
        with torch.no_grad():
            for text in texts:
                ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=MAX_TOKENS)["input_ids"]
                model(ids.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return _fill_unrouted_experts(amax, model)


def _fill_unrouted_experts(amax: dict[str, float], model: Any) -> dict[str, float]:
    layers: dict[tuple[str, str], float] = {}
    for name, value in amax.items():
        match = _EXPERT.match(name)
        if match:
            key = (match.group(1), match.group(3))
            layers[key] = max(layers.get(key, 0.0), value)
    experts = int(getattr(model.config, "n_routed_experts", 0) or 0)
    for (prefix, proj), value in layers.items():
        for expert in range(experts):
            amax.setdefault(f"{prefix}.{expert}.{proj}", value)
    return amax
