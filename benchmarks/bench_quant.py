"""Quantization speed: the FP8 and NVFP4 kernels alone, and extract / quantize on a real-width synthetic parent.

Run from the repository root:  python benchmarks/bench_quant.py [--kernels-only]   (writes benchmarks/quant_results.json)
Kernels: GB of bf16 input per second on the release's expert shape (1856 x 2688) and its Mamba in_proj shape
(10304 x 2688), on one torch thread (as the executor's readers run them, two side by side) and on torch's default
threads. Pipeline: the 4.2 GB parent of bench_extract.py (written, then deleted), warm page cache; each round runs
plain extract of 12B, then `--quantize fp8` and `--quantize nvfp4` of the same budget, then `quantize` of the whole
parent to FP8 and NVFP4, so every ratio pairs runs of the same round. compressed-tensors format, so no calibration
runs (bench_calibration.py measures it). Medians of ROUNDS with min and max; every run records its CPU seconds and
the 1-minute load average at its start (other jobs share the cores), and ratios are given for CPU seconds too.
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

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_extract import WORK, folder_bytes, prepare, timed  # noqa: E402
from synthetic import write_parent  # noqa: E402

from elastic_slice.quant import fp8, nvfp4  # noqa: E402

SHAPES = {"expert_up_proj": (1856, 2688), "mamba_in_proj": (10304, 2688)}
ROUNDS = 5
PATTERN = "M*ME"
RUNS = ("extract_12B", "extract_12B_fp8", "extract_12B_nvfp4", "quantize_fp8", "quantize_nvfp4")


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def nvfp4_full(weight: torch.Tensor) -> torch.Tensor:
    g = nvfp4.global_scale(weight)
    return nvfp4.quantize(weight, nvfp4.block_scales(weight, g), g)


def fp8_full(weight: torch.Tensor) -> torch.Tensor:
    return fp8.quantize(weight, fp8.tensor_scale(weight))


def kernels() -> dict[str, object]:
    default_threads = torch.get_num_threads()
    results: dict[str, object] = {"load": round(os.getloadavg()[0], 2)}
    for threads in (1, default_threads):
        torch.set_num_threads(threads)
        for name, shape in SHAPES.items():
            weight = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
            runs: dict[str, list[float]] = {"fp8": [], "nvfp4": []}
            functions: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"fp8": fp8_full, "nvfp4": nvfp4_full}
            for function in functions.values():
                function(weight)  # warm-up
            for _ in range(ROUNDS):
                for scheme, function in functions.items():
                    started = time.perf_counter()
                    function(weight)
                    runs[scheme].append(weight.numel() * 2 / (time.perf_counter() - started) / 1e9)
            results[f"{name}, {threads} torch thread(s)"] = {scheme: spread(values) for scheme, values in runs.items()}
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
        "extract_12B_fp8": ("extract", str(parent), "--size", "12B", "--quantize", "fp8", *ct),
        "extract_12B_nvfp4": ("extract", str(parent), "--size", "12B", "--quantize", "nvfp4", *ct),
        "quantize_fp8": ("quantize", str(parent), "--to", "fp8", *ct),
        "quantize_nvfp4": ("quantize", str(parent), "--to", "nvfp4", *ct),
    }
    try:
        write_parent(parent, PATTERN)
        parent_bytes = folder_bytes(parent)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in RUNS}
        for _ in range(ROUNDS):
            for name in RUNS:
                shutil.rmtree(out, ignore_errors=True)
                prepare([parent])
                runs[name].append(timed([sys.executable, "-m", "elastic_slice", *commands[name], "--out", str(out)]))
        seconds = {name: [run["seconds"] for run in values] for name, values in runs.items()}
        cpu = {name: [run["cpu_seconds"] for run in values] for name, values in runs.items()}

        def ratios(measure: dict[str, list[float]]) -> dict[str, dict[str, float]]:
            plain = measure["extract_12B"]
            return {
                scheme: spread([q / p for q, p in zip(measure[f"extract_12B_{scheme}"], plain, strict=True)])
                for scheme in ("fp8", "nvfp4")
            }

        return {
            "pattern": PATTERN, "parent_bytes": parent_bytes, "rounds": ROUNDS, "cache": "warm",
            "load_average_at_start": spread([run["load"] for values in runs.values() for run in values]),
            "seconds": {name: spread(values) for name, values in seconds.items()},
            "cpu_seconds": {name: spread(values) for name, values in cpu.items()},
            "ratio_to_plain_extract": ratios(seconds),
            "cpu_ratio_to_plain_extract": ratios(cpu),
            "quantize_gb_per_s_of_bf16": {
                scheme: spread([parent_bytes / s / 1e9 for s in seconds[f"quantize_{scheme}"]])
                for scheme in ("fp8", "nvfp4")
            },
            "runs": runs,
        }
    finally:
        shutil.rmtree(parent, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)


def main(kernels_only: bool) -> None:
    results: dict[str, object] = {"threads": torch.get_num_threads(), "gb_per_s_of_bf16_input": kernels()}
    if not kernels_only:
        results["pipeline"] = pipeline()
    print(json.dumps(results, indent=2))
    (HERE / "quant_results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main("--kernels-only" in sys.argv[1:])
