"""Quantization speed: the FP8 and NVFP4 kernels alone, and extract / quantize on a real-width synthetic parent.

Run from the repository root:  python benchmarks/bench_quant.py [--kernels-only]   (writes benchmarks/quant_results.json)
Kernels: GB of bf16 input per second on the release's expert shape (1856 x 2688) and its Mamba in_proj shape
(10304 x 2688): torch's on one thread (as the executor's readers run them, two side by side) and on its default
threads, and the compiled kernels (quant/_kernels.c, one thread), each with the weight's amax. Pipeline: the 4.2 GB
parent of bench_extract.py (written, then deleted), warm page cache; each round runs plain extract of 12B, then
`--quantize fp8` and `--quantize nvfp4` of the same budget, then `quantize` of the whole parent to FP8 and NVFP4,
each quantizing run once with the compiled kernels and once with torch's (ELASTIC_SLICE_KERNELS=torch), so every
ratio pairs runs of the same round. compressed-tensors format, so no calibration runs (bench_calibration.py measures
it). Medians of ROUNDS with min and max; every run records its CPU seconds and the 1-minute load average at its start
(other jobs share the cores), and ratios are given for CPU seconds too.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_extract import WORK, folder_bytes, prepare, timed  # noqa: E402
from synthetic import write_parent  # noqa: E402

from elastic_slice.quant import fp8, kernels, nvfp4  # noqa: E402

SHAPES = {"expert_up_proj": (1856, 2688), "mamba_in_proj": (10304, 2688)}
ROUNDS = 5
PATTERN = "M*ME"
SCHEMES = ("fp8", "nvfp4")
#: every quantizing run twice in a round: with the compiled kernels, and with torch's (suffix TORCH)
TORCH = "_torch"
QUANTIZING = tuple(f"{run}_{scheme}" for run in ("extract_12B", "quantize") for scheme in SCHEMES)
RUNS = ("extract_12B", *(name + suffix for name in QUANTIZING for suffix in ("", TORCH)))


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def nvfp4_full(weight: torch.Tensor) -> torch.Tensor:
    g = nvfp4.global_scale(weight)
    return nvfp4.quantize(weight, nvfp4.block_scales(weight, g), g)


def fp8_full(weight: torch.Tensor) -> torch.Tensor:
    return fp8.quantize(weight, fp8.tensor_scale(weight))


def compiled_nvfp4(bits: np.ndarray) -> object:
    return kernels.nvfp4_codes(bits, kernels.nvfp4_global_scale(kernels.abs_max(bits)))


def compiled_fp8(bits: np.ndarray) -> object:
    return kernels.fp8_codes(bits, kernels.fp8_scale(kernels.abs_max(bits)))


def kernel_speeds() -> dict[str, object]:
    """GB/s of bf16 input of torch's kernels (one thread, default threads) and the compiled ones, alternating in
    each round."""
    default_threads = torch.get_num_threads()
    results: dict[str, object] = {"load": round(os.getloadavg()[0], 2), "compiled": kernels.compiled() is not None}
    for name, shape in SHAPES.items():
        weight = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
        bits = weight.view(torch.int16).numpy().view(np.uint16)
        variants: dict[str, tuple[Callable[[Any], object], Any, int]] = {
            f"{scheme}, {threads} torch thread(s)": (function, weight, threads)
            for threads in (1, default_threads) for scheme, function in (("fp8", fp8_full), ("nvfp4", nvfp4_full))
        }
        if kernels.compiled() is not None:
            variants["fp8, compiled"] = (compiled_fp8, bits, 1)
            variants["nvfp4, compiled"] = (compiled_nvfp4, bits, 1)
        runs: dict[str, list[float]] = {variant: [] for variant in variants}
        for _ in range(ROUNDS + 1):  # the first round warms up
            for variant, (function, argument, threads) in variants.items():
                torch.set_num_threads(threads)
                started = time.perf_counter()
                function(argument)
                runs[variant].append(weight.numel() * 2 / (time.perf_counter() - started) / 1e9)
        results[name] = {variant: spread(values[1:]) for variant, values in runs.items()}
    torch.set_num_threads(default_threads)
    return results


def pipeline() -> dict[str, object]:
    parent = WORK / "quant-parent"
    out = WORK / "quant-out"
    shutil.rmtree(parent, ignore_errors=True)
    WORK.mkdir(exist_ok=True)
    ct = ("--quant-format", "compressed-tensors")
    commands = {
        "extract_12B": ("extract", str(parent), "--size", "12B"),
        **{f"extract_12B_{scheme}": ("extract", str(parent), "--size", "12B", "--quantize", scheme, *ct)
           for scheme in SCHEMES},
        **{f"quantize_{scheme}": ("quantize", str(parent), "--to", scheme, *ct) for scheme in SCHEMES},
    }
    python = [sys.executable, "-m", "elastic_slice"]
    with_torch = ["env", f"{kernels.KERNELS_ENV}=torch", *python]
    try:
        write_parent(parent, PATTERN)
        parent_bytes = folder_bytes(parent)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in RUNS}
        for _ in range(ROUNDS):
            for name in RUNS:
                shutil.rmtree(out, ignore_errors=True)
                prepare([parent])
                command = with_torch if name.endswith(TORCH) else python
                runs[name].append(timed([*command, *commands[name.removesuffix(TORCH)], "--out", str(out)]))
        seconds = {name: [run["seconds"] for run in values] for name, values in runs.items()}
        cpu = {name: [run["cpu_seconds"] for run in values] for name, values in runs.items()}

        to_plain = {name: "extract_12B" for name in RUNS if name.startswith("extract_12B_")}
        to_torch = {name: name + TORCH for name in QUANTIZING}

        def ratios(measure: dict[str, list[float]], pairs: dict[str, str]) -> dict[str, dict[str, float]]:
            """Each run over its paired run (`pairs`: run -> base) of the same round."""
            return {
                name: spread([q / p for q, p in zip(measure[name], measure[base], strict=True)])
                for name, base in pairs.items()
            }

        return {
            "pattern": PATTERN, "parent_bytes": parent_bytes, "rounds": ROUNDS, "cache": "warm",
            "compiled_kernels": kernels.compiled() is not None,
            "load_average_at_start": spread([run["load"] for values in runs.values() for run in values]),
            "seconds": {name: spread(values) for name, values in seconds.items()},
            "cpu_seconds": {name: spread(values) for name, values in cpu.items()},
            "ratio_to_plain_extract": ratios(seconds, to_plain),
            "cpu_ratio_to_plain_extract": ratios(cpu, to_plain),
            "ratio_compiled_to_torch": ratios(seconds, to_torch),
            "cpu_ratio_compiled_to_torch": ratios(cpu, to_torch),
            "quantize_gb_per_s_of_bf16": {
                name: spread([parent_bytes / s / 1e9 for s in seconds[name]])
                for name in RUNS if name.startswith("quantize")
            },
            "runs": runs,
        }
    finally:
        shutil.rmtree(parent, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)


def main(kernels_only: bool) -> None:
    results: dict[str, object] = {"threads": torch.get_num_threads(), "gb_per_s_of_bf16_input": kernel_speeds()}
    if not kernels_only:
        results["pipeline"] = pipeline()
    print(json.dumps(results, indent=2))
    (HERE / "quant_results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main("--kernels-only" in sys.argv[1:])
