"""Activation calibration: run the parent in transformers on sample text and record each linear input's amax.

Input scales come from the parent (every budget copies them), so calibration runs once, on the parent, one decoder
layer at a time (memory bounded by one layer, whatever the parent's depth). Routed
experts that no calibration token reached take the largest amax of their layer's other experts (what a serving
engine would otherwise see as their range), so every quantized module gets a scale.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checkpoint import Checkpoint
from ..errors import InputError
from ..quiet import quiet_transformers

if TYPE_CHECKING:
    from ..arch import BoundArchitecture
    from ..arch.base import LayerwiseCalibration, RoutedExpert

DEFAULT = "default"
MAX_TOKENS = 512


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


def calibrate(checkpoint: Checkpoint, arch: BoundArchitecture, texts: list[str], device: str = "cpu",
              on_layer: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Input amax of every linear layer of the parent, keyed by checkpoint module name, from a run of `texts`
    through it one decoder layer at a time (`on_layer(done, total)` after each layer)."""
    calibration = require_calibration(arch)
    try:
        import torch  # noqa: F401
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise InputError(
            "calibration needs transformers, a dependency of elastic-slice: reinstall it with "
            "pip install elastic-slice (or pip install 'transformers>=5')."
        ) from exc
    amax: dict[str, float] = {}

    def record(name: str, tensor: Any) -> None:
        if tensor.numel():
            amax[name] = max(amax.get(name, 0.0), float(tensor.detach().abs().amax()))

    with quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(checkpoint.root)
        except (OSError, ValueError) as exc:
            raise InputError(f"calibration needs the parent's tokenizer files in {checkpoint.root} ({exc}).") from exc
        sequences = [tokenizer(text, return_tensors="pt", truncation=True, max_length=MAX_TOKENS)["input_ids"][0]
                     for text in texts]
        sequences = [ids for ids in sequences if ids.numel()]
        if not sequences:
            raise InputError("the calibration text gives no tokens; give a text file with words in it.")
        calibration.run(checkpoint, sequences, record, device, on_layer)
    return fill_unrouted_experts(amax, arch)


def require_calibration(arch: BoundArchitecture) -> LayerwiseCalibration:
    """The family's calibration; refused, before anything is read or announced, for a family without one yet."""
    if arch.calibration is None:
        raise InputError(
            f"elastic-slice cannot calibrate model_type {arch.model_type!r} yet; quantize it uncalibrated "
            "(--quant-format compressed-tensors without --calibration or --kv-cache) or slice it unquantized."
        )
    return arch.calibration


def announce(source: str, paragraphs: int, chosen_by_default: bool) -> None:
    """One line on stderr (never stdout, which --json keeps for its document) saying what calibration runs on."""
    hint = "; give --calibration FILE to use your own text" if chosen_by_default else ""
    print(f"calibrating activation scales on {describe(source)} ({paragraphs} paragraphs){hint}", file=sys.stderr)


def fill_unrouted_experts(amax: dict[str, float], arch: BoundArchitecture) -> dict[str, float]:
    """Give each routed expert that no token reached the largest amax of its layer's experts."""
    largest: dict[tuple[str, str], tuple[float, RoutedExpert]] = {}
    for name, value in amax.items():
        expert = arch.routed_expert(name)
        if expert is not None:
            seen = largest.get(expert.projection)
            largest[expert.projection] = (max(seen[0], value) if seen else value, expert)
    for value, expert in largest.values():
        for index in range(arch.routed_expert_count()):
            amax.setdefault(expert.sibling(index), value)
    return amax
