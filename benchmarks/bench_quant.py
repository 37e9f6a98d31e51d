"""Quantization throughput on the CPU: GB of bf16 input per second for the FP8 and NVFP4 kernels.

Run from the repository root:  python benchmarks/bench_quant.py   (writes benchmarks/quant_results.json)
Uses the release's expert shape (1856 x 2688, bf16) and its Mamba in_proj shape (10304 x 2688).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from elastic_slice.quant import fp8, nvfp4

SHAPES = {"expert_up_proj": (1856, 2688), "mamba_in_proj": (10304, 2688)}


def throughput(function, weight: torch.Tensor, repeats: int = 5) -> float:
    function(weight)  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        function(weight)
    seconds = (time.perf_counter() - started) / repeats
    return weight.numel() * 2 / seconds / 1e9


def nvfp4_full(weight: torch.Tensor) -> torch.Tensor:
    g = nvfp4.global_scale(weight)
    return nvfp4.quantize(weight, nvfp4.block_scales(weight, g), g)


def fp8_full(weight: torch.Tensor) -> torch.Tensor:
    return fp8.quantize(weight, fp8.tensor_scale(weight))


def main() -> None:
    results = {"threads": torch.get_num_threads(), "gb_per_s_of_bf16_input": {}}
    for name, shape in SHAPES.items():
        weight = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
        results["gb_per_s_of_bf16_input"][name] = {
            "fp8": round(throughput(fp8_full, weight), 3),
            "nvfp4": round(throughput(nvfp4_full, weight), 3),
        }
    print(json.dumps(results, indent=2))
    (Path(__file__).resolve().parent / "quant_results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
