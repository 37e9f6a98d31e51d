"""Rebuild examples/tiny-elastic: a miniature elastic Nemotron-H parent (about 2.3 MB, bf16, three shards).

Run from the repository root:  python examples/make_tiny_elastic.py
Needs the `test` extra (transformers). Weights are random (seed 0); the 30B/23B/12B budget sizes are invented for
this miniature to mirror the release's parameter ratios, and are not NVIDIA's.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from elastic_slice.arch.nemotron_h_fixture import build_tiny_elastic

EXAMPLE = Path(__file__).resolve().parent / "tiny-elastic"


def main(out: Path = EXAMPLE) -> None:
    if out.exists():
        shutil.rmtree(out)
    build_tiny_elastic(out, max_shard_size="1MB")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else EXAMPLE)
