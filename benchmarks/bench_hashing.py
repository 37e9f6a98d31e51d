"""What the manifest's sha256 costs plain extract: 12B, and 30B + 23B + 12B in one pass, on the 4.2 GB parent, with
hashing and with it replaced by nothing (the same direct writes, no hash), alternated, warm page cache, 5 rounds.

Run from the repository root:  python benchmarks/bench_hashing.py   (writes benchmarks/hashing_results.json)
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_extract import WORK, prepare  # noqa: E402
from synthetic import write_parent  # noqa: E402

ROUNDS = 5
#: seconds of api.extract_many in a fresh process; "nohash" replaces the writer's hashing step by nothing
EXTRACT = """
import sys, time
from elastic_slice import api, writer
if sys.argv[2] == "nohash":
    writer._hash_after = lambda previous, digest, data: None
started = time.perf_counter()
api.extract_many(sys.argv[1], sys.argv[4:], sys.argv[3])
print(time.perf_counter() - started)
"""


def run(parent: Path, mode: str, budgets: list[str]) -> float:
    out = WORK / "hash-out"
    shutil.rmtree(out, ignore_errors=True)
    prepare([parent])
    result = subprocess.run([sys.executable, "-c", EXTRACT, str(parent), mode, str(out), *budgets],
                            capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parent = WORK / "hash-parent"
    seconds: dict[str, list[float]] = {}
    try:
        write_parent(parent, "M*ME")
        for budgets in (["12B"], ["30B", "23B", "12B"]):
            for _ in range(ROUNDS):
                for mode in ("hash", "nohash"):
                    seconds.setdefault(f"{'+'.join(budgets)} {mode}", []).append(run(parent, mode, budgets))
    finally:
        shutil.rmtree(parent, ignore_errors=True)
        shutil.rmtree(WORK / "hash-out", ignore_errors=True)
    summary = {name: {"median": round(statistics.median(v), 3), "min": round(min(v), 3), "max": round(max(v), 3),
                      "all": [round(x, 3) for x in v]} for name, v in seconds.items()}
    print(json.dumps(summary, indent=2))
    (HERE / "hashing_results.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
