"""Quantization speed: the FP8 and NVFP4 kernels alone, and extract / quantize on a real-width synthetic parent.

Run from the repository root:  python benchmarks/bench_quant.py [--kernels-only]   (writes benchmarks/quant_results.json)
Kernels: GB of bf16 input per second on the release's expert shape (1856 x 2688) and its Mamba in_proj shape
(10304 x 2688). Pipeline: the 4.2 GB parent of bench_extract.py (written, then deleted), warm page cache; each round
runs plain extract of 12B, then `--quantize fp8` and `--quantize nvfp4` of the same budget, then `quantize` of the
whole parent to FP8 and NVFP4, so every ratio pairs runs of the same round. compressed-tensors format, so no
calibration runs (bench_calibration.py measures it). Medians of ROUNDS with min and max.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
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


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def nvfp4_full(weight: torch.Tensor) -> torch.Tensor:
    g = nvfp4.global_scale(weight)
    return nvfp4.quantize(weight, nvfp4.block_scales(weight, g), g)


def fp8_full(weight: torch.Tensor) -> torch.Tensor:
    return fp8.quantize(weight, fp8.tensor_scale(weight))


def kernels() -> dict[str, object]:
    results: dict[str, object] = {}
    for name, shape in SHAPES.items():
        weight = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
        runs: dict[str, list[float]] = {"fp8": [], "nvfp4": []}
        for function in (fp8_full, nvfp4_full):
            function(weight)  # warm-up
        for _ in range(ROUNDS):
            for scheme, function in (("fp8", fp8_full), ("nvfp4", nvfp4_full)):
                started = time.perf_counter()
                function(weight)
                runs[scheme].append(weight.numel() * 2 / (time.perf_counter() - started) / 1e9)
        results[name] = {scheme: spread(values) for scheme, values in runs.items()}
    return results


def cli(*args: str) -> float:
    return timed([sys.executable, "-m", "elastic_slice", *args])["seconds"]


def pipeline() -> dict[str, object]:
    parent = WORK / "quant-parent"
    shutil.rmtree(parent, ignore_errors=True)
    WORK.mkdir(exist_ok=True)
    try:
        write_parent(parent, PATTERN)
        parent_bytes = folder_bytes(parent)
        seconds: dict[str, list[float]] = {name: [] for name in (
            "extract_12B", "extract_12B_fp8", "extract_12B_nvfp4", "quantize_fp8", "quantize_nvfp4")}
        ct = ("--quant-format", "compressed-tensors")
        for _ in range(ROUNDS):
            for name, args in (
                ("extract_12B", ()), ("extract_12B_fp8", ("--quantize", "fp8", *ct)),
                ("extract_12B_nvfp4", ("--quantize", "nvfp4", *ct)),
            ):
                out = WORK / "quant-out"
                shutil.rmtree(out, ignore_errors=True)
                prepare([parent])
                seconds[name].append(cli("extract", str(parent), "--size", "12B", *args, "--out", str(out)))
            for scheme in ("fp8", "nvfp4"):
                out = WORK / "quant-out"
                shutil.rmtree(out, ignore_errors=True)
                prepare([parent])
                seconds[f"quantize_{scheme}"].append(cli("quantize", str(parent), "--to", scheme, *ct, "--out", str(out)))
        shutil.rmtree(WORK / "quant-out", ignore_errors=True)
        plain = seconds["extract_12B"]
        return {
            "pattern": PATTERN, "parent_bytes": parent_bytes, "rounds": ROUNDS, "cache": "warm",
            "seconds": {name: spread(values) for name, values in seconds.items()},
            "ratio_to_plain_extract": {
                scheme: spread([q / p for q, p in zip(seconds[f"extract_12B_{scheme}"], plain)])
                for scheme in ("fp8", "nvfp4")
            },
            "quantize_gb_per_s_of_bf16": {
                scheme: spread([parent_bytes / s / 1e9 for s in seconds[f"quantize_{scheme}"]])
                for scheme in ("fp8", "nvfp4")
            },
        }
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def main(kernels_only: bool) -> None:
    results: dict[str, object] = {"threads": torch.get_num_threads(), "gb_per_s_of_bf16_input": kernels()}
    if not kernels_only:
        results["pipeline"] = pipeline()
    print(json.dumps(results, indent=2))
    (HERE / "quant_results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main("--kernels-only" in sys.argv[1:])
