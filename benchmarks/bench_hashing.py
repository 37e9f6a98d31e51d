"""What the manifest's sha256 costs plain extract, and what one pass over several budgets saves, on the 4.2 GB parent.

Run from the repository root:  python benchmarks/bench_hashing.py   (writes benchmarks/hashing_results.json)
Each round, in a fresh process each (api.extract_many's seconds, so Python start-up is left out, which favours
separate runs):
- 12B with hashing and with the hashing step replaced by nothing (the same direct writes, no hash), warm cache
  (the parent read once, and its pages held mapped by a helper process for the run: see `held_in_cache`);
- 30B + 23B + 12B in one pass, and the three budgets in three runs (their sum), warm and cold. Cold: the page cache
  is dropped (`/proc/sys/vm/drop_caches`, as root) before the one pass and before each of the three runs, as when the
  parent does not fit in memory; without root the parent's pages are evicted with posix_fadvise instead (recorded).
Medians of ROUNDS with min and max, the pairs' ratios, the 1-minute load average at each run's start, and each
run's CPU seconds (user + system, in the process) and bytes read from and written to disk (/proc/diskstats, all
disks), which say whether a run was paced by the cores or by the disk.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_extract import WORK, drop_caches, prepare  # noqa: E402
from synthetic import write_parent  # noqa: E402

ROUNDS = 5
THREE = ["30B", "23B", "12B"]
#: seconds, CPU seconds and disk GB of api.extract_many in a fresh process; "nohash" replaces the writer's hashing
#: step by nothing
EXTRACT = """
import json, os, sys, time
from elastic_slice import api, writer
if sys.argv[2] == "nohash":
    writer._hash_after = lambda previous, digest, data: None
def disk():
    fields = [line.split() for line in open("/proc/diskstats")]
    whole = [f for f in fields if not f[2][-1].isdigit() and not f[2].startswith(("loop", "ram", "dm-"))]
    return [sum(int(f[k]) * 512 for f in whole) / 1e9 for k in (5, 9)]
disk_before, cpu_before, started = disk(), os.times(), time.perf_counter()
api.extract_many(sys.argv[1], sys.argv[4:], sys.argv[3])
seconds, cpu, disk_after = time.perf_counter() - started, os.times(), disk()
print(json.dumps({"seconds": seconds, "cpu": cpu.user + cpu.system - cpu_before.user - cpu_before.system,
                  "read_gb": disk_after[0] - disk_before[0], "written_gb": disk_after[1] - disk_before[1]}))
"""


#: maps every page of the parent's shards, then waits: mapped pages are never dropped by drop_caches
HOLD = """
import mmap, pathlib, sys
maps = []
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.safetensors")):
    with open(path, "rb") as file:
        maps.append(mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ))
    sum(maps[-1][i] for i in range(0, len(maps[-1]), 4096))
print("held", flush=True)
sys.stdin.read()
"""


@contextmanager
def held_in_cache(parent: Path) -> Iterator[None]:
    """The parent's pages kept in the page cache by a helper process mapping them: other benchmarks on a shared
    machine drop the whole page cache before their runs, which made "warm" runs read 3-4 GB from disk."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(parent)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


def run(parent: Path, mode: str, budgets: list[str], cache: str, loads: list[float]) -> dict[str, float]:
    out = WORK / "hash-out"
    shutil.rmtree(out, ignore_errors=True)
    with held_in_cache(parent) if cache == "warm" else nullcontext():
        if cache == "warm":
            prepare([parent])
        else:
            drop_caches(parent)
        loads.append(os.getloadavg()[0])
        result = subprocess.run([sys.executable, "-c", EXTRACT, str(parent), mode, str(out), *budgets],
                                capture_output=True, text=True, check=True)
    measured: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return measured


def spread(values: list[float]) -> dict[str, object]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3),
            "all": [round(x, 3) for x in values]}


def main() -> None:
    parent = WORK / "hash-parent"
    seconds: dict[str, list[float]] = {}
    others: dict[str, dict[str, list[float]]] = {}
    loads: list[float] = []

    def record(name: str, runs: list[dict[str, float]]) -> None:
        seconds.setdefault(name, []).append(sum(run["seconds"] for run in runs))
        for key in ("cpu", "read_gb", "written_gb"):
            others.setdefault(key, {}).setdefault(name, []).append(sum(run[key] for run in runs))

    try:
        write_parent(parent, "M*ME")
        cache_method = drop_caches(parent)
        for _ in range(ROUNDS):
            for mode in ("hash", "nohash"):
                record(f"12B {mode}", [run(parent, mode, ["12B"], "warm", loads)])
            for cache in ("warm", "cold"):
                record(f"30B+23B+12B one pass {cache}", [run(parent, "hash", THREE, cache, loads)])
                record(f"30B+23B+12B three runs {cache}", [run(parent, "hash", [b], cache, loads) for b in THREE])
    finally:
        shutil.rmtree(parent, ignore_errors=True)
        shutil.rmtree(WORK / "hash-out", ignore_errors=True)

    def ratio(numerator: str, denominator: str) -> dict[str, object]:
        return spread([a / b for a, b in zip(seconds[numerator], seconds[denominator], strict=True)])

    summary: dict[str, object] = {name: spread(values) for name, values in seconds.items()}
    summary["ratios"] = {
        "12B hash / nohash (target 1.2x)": ratio("12B hash", "12B nohash"),
        "one pass / three runs, warm": ratio("30B+23B+12B one pass warm", "30B+23B+12B three runs warm"),
        "one pass / three runs, cold (target 0.6x)": ratio("30B+23B+12B one pass cold", "30B+23B+12B three runs cold"),
    }
    for key, label in (("cpu", "cpu_seconds"), ("read_gb", "disk_read_gb"), ("written_gb", "disk_written_gb")):
        summary[label] = {name: spread(values) for name, values in others[key].items()}
    summary["cold_cache_method"] = cache_method
    summary["load_average_at_start"] = spread(loads)
    summary["note"] = "seconds in process (api.extract_many); warm: the parent read once before each run"
    print(json.dumps(summary, indent=2))
    (HERE / "hashing_results.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
