"""Benchmark: layer-by-layer calibration's peak RSS and time on real-width synthetic parents of two depths.

Run from the repository root:  python benchmarks/bench_calibration.py [PATTERN ...]
Writes benchmarks/calibration_results.json. Each parent (benchmarks/synthetic.py shapes, with a small BPE
tokenizer) is written, calibrated REPEATS times on the built-in sample text in a fresh process (warm page cache,
as after the extract that would follow), and deleted. Peak RSS should stay flat as the parent gets deeper: one
layer (without its routed experts, read one at a time) plus the sample's hidden states are resident.
The synthetic weights are random bytes, half of them tiny: the benchmark flushes denormals to zero, which real
weights do not need (with them, the CPU's slow path for denormals made the same run 5-7x slower).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_extract import WORK, folder_bytes, timed  # noqa: E402
from synthetic import CONFIG, write_parent  # noqa: E402

#: 1.6 GB (no MoE layer) and 9.5 GB (three MoE layers of 128 experts)
PATTERNS = ("M*M", "MEM*EME")
REPEATS = 5
CALIBRATE = (
    "import sys, torch; torch.set_flush_denormal(True); from elastic_slice.arch import architecture_of; from elastic_slice.checkpoint import "
    "open_checkpoint; from elastic_slice.quant.calibrate import calibrate, calibration_texts; "
    "parent = open_checkpoint(sys.argv[1]); "
    "amax = calibrate(parent, architecture_of(parent), calibration_texts('default')); "
    "print(len(amax))"
)


def measure(pattern: str) -> dict[str, object]:
    from elastic_slice.arch.nemotron_h_fixture import write_tokenizer

    parent = WORK / f"calib-{pattern.replace('*', 'A')}"
    shutil.rmtree(parent, ignore_errors=True)
    try:
        write_parent(parent, pattern)
        write_tokenizer(parent, CONFIG["vocab_size"])
        runs = [timed([sys.executable, "-c", CALIBRATE, str(parent)]) for _ in range(REPEATS)]
        seconds = [run["seconds"] for run in runs]
        rss = [run["peak_rss_gb"] for run in runs]
        return {
            "pattern": pattern, "parent_bytes": folder_bytes(parent), "runs": REPEATS,
            "seconds": {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds)},
            "peak_rss_gb": {"median": statistics.median(rss), "min": min(rss), "max": max(rss)},
        }
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def main(patterns: list[str]) -> None:
    results = {"text": "built-in sample (8 paragraphs)", "device": "cpu", "parents": [measure(p) for p in patterns]}
    print(json.dumps(results, indent=2))
    (HERE / "calibration_results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:] or list(PATTERNS))
