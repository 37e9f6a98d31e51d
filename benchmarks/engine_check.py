"""Real-engine check: load every kind of output in vLLM and in transformers, decode greedily, compare with bf16.

Run from the repository root (benchmarks/engine_check.sh installs vLLM first, on a machine with a GPU):

    python benchmarks/engine_check.py --out engine-check             # engines: vllm and transformers
    python benchmarks/engine_check.py --dry-run --out engine-check   # transformers on the CPU only

It writes the outputs of PARENT's budget (bf16; FP8 and NVFP4 in the ModelOpt and compressed-tensors formats,
quantized on extract; and the budget sliced from a nested NVFP4 ModelOpt parent), then for each engine and output
loads it, greedy-decodes fixed prompts and records the tokens, or the error if it does not load or run; a third
"engine" decodes each output's weights dequantized by elastic-slice itself in transformers (the effect of the
quantization alone). The table
(`engine_check.json` in --out) gives, per engine and output, whether it loaded and the share of decoded tokens equal
to the same engine's bf16 output. Every vLLM load runs in its own process (with a time limit), so a crash or a hang
in one output does not stop the others and GPU memory is freed between loads.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROMPTS = [
    "Elastic models hold many budgets in one checkpoint.",
    "The quick brown fox jumps over the lazy dog.",
    "0123456789",
]
NEW_TOKENS = 16
VLLM_SECONDS = 150
KINDS = {
    "bf16": None,
    "fp8-modelopt": ("fp8", "modelopt"),
    "nvfp4-modelopt": ("nvfp4", "modelopt"),
    "fp8-compressed-tensors": ("fp8", "compressed-tensors"),
    "nvfp4-compressed-tensors": ("nvfp4", "compressed-tensors"),
}
NESTED = "nvfp4-modelopt-sliced-from-nested-parent"


def make_outputs(parent: Path, size: str, out: Path, kinds: list[str]) -> dict[str, Path]:
    """The output kinds asked for of budget `size`, written with elastic-slice's Python API."""
    from elastic_slice import api
    from elastic_slice.api import QuantOptions

    folders = {}
    for kind, quant in KINDS.items():
        if kind not in kinds:
            continue
        folders[kind] = out / kind
        if not folders[kind].exists():
            options = QuantOptions(*quant) if quant else None
            api.extract(parent, size, folders[kind], quantize=options)
    if NESTED not in kinds:
        return folders
    nested_parent, folders[NESTED] = out / "nvfp4-modelopt-nested-parent", out / NESTED
    if not folders[NESTED].exists():
        api.quantize(parent, nested_parent, QuantOptions("nvfp4", "modelopt"), overwrite=True)
        api.extract(nested_parent, size, folders[NESTED])
    return folders


def transformers_decode(folder: Path, device: str) -> list[list[int]]:
    """Greedy continuations of PROMPTS by transformers, as token ids."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(device).eval()
    results = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
        with torch.no_grad():
            generated = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS)
        results.append(generated[0, ids.shape[1]:].tolist())
    return results


def vllm_decode(folder: Path) -> list[list[int]]:
    """Greedy continuations of PROMPTS by vLLM (runs in the worker process)."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(folder), dtype="bfloat16", max_model_len=256, gpu_memory_utilization=0.3,
              enforce_eager=True, trust_remote_code=False)
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS, ignore_eos=True)
    return [list(output.outputs[0].token_ids) for output in llm.generate(PROMPTS, params)]


def run_vllm(folder: Path) -> dict[str, Any]:
    """One vLLM load in a child process: its tokens, or why it failed."""
    try:
        done = subprocess.run([sys.executable, __file__, "--worker", str(folder)], capture_output=True, text=True,
                              timeout=VLLM_SECONDS)
    except subprocess.TimeoutExpired:
        return {"loaded": False, "error": f"no answer within {VLLM_SECONDS} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
        return {"loaded": False, "error": tail[0][:400]}
    return json.loads(lines[-1])


def run_transformers(folder: Path, device: str) -> dict[str, Any]:
    from elastic_slice.quiet import quiet_transformers

    try:
        with quiet_transformers():
            return {"loaded": True, "tokens": transformers_decode(folder, device)}
    except Exception as exc:  # any failure of a third-party loader is a result to record, not a crash
        return {"loaded": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:400]}"}


def run_dequantized(folder: Path, scratch: Path, device: str) -> dict[str, Any]:
    """transformers on the output's weights dequantized by elastic-slice itself: the quantization's own effect on
    greedy decoding, apart from any engine's handling of the format."""
    from elastic_slice.checkpoint import open_checkpoint
    from elastic_slice.verify import dequantized_copy

    checkpoint = open_checkpoint(folder)
    if "quantization_config" not in checkpoint.config:
        return run_transformers(folder, device)
    copy = dequantized_copy(checkpoint, scratch)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (folder / name).exists():
            (copy / name).write_bytes((folder / name).read_bytes())
    return run_transformers(copy, device)


def agreement(tokens: list[list[int]], reference: list[list[int]]) -> float:
    """The share of decoded positions where `tokens` equal the reference's."""
    pairs = [(a, b) for mine, ref in zip(tokens, reference, strict=False) for a, b in zip(mine, ref, strict=False)]
    return round(sum(a == b for a, b in pairs) / len(pairs), 4) if pairs else 0.0


def table(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per engine and output kind: loaded, error, agreement with that engine's bf16 tokens."""
    rows: dict[str, dict[str, Any]] = {}
    for engine, kinds in results.items():
        reference = kinds.get("bf16", {}).get("tokens")
        rows[engine] = {}
        for kind, result in kinds.items():
            row = {"loaded": result["loaded"], "error": result.get("error"), "seconds": result.get("seconds")}
            if result.get("tokens") is not None and reference is not None:
                row["agreement_with_bf16"] = agreement(result["tokens"], reference)
                row["first_token_agreement"] = agreement([t[:1] for t in result["tokens"]], [t[:1] for t in reference])
            rows[engine][kind] = row
    return rows


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for package in ("elastic-slice", "torch", "transformers", "compressed-tensors", "vllm"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parent", type=Path, default=Path("examples/tiny-elastic"))
    parser.add_argument("--size", default="12B")
    parser.add_argument("--out", type=Path, default=Path("engine-check"))
    parser.add_argument("--dry-run", action="store_true", help="transformers on the CPU only (no vLLM, no GPU)")
    parser.add_argument("--kinds", default=",".join([*KINDS, NESTED]), help="comma-separated output kinds")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:  # the child process of run_vllm
        started = time.perf_counter()
        tokens = vllm_decode(args.worker)
        print(json.dumps({"loaded": True, "tokens": tokens, "seconds": round(time.perf_counter() - started, 1)}))
        return
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    folders = make_outputs(args.parent, args.size, args.out / "outputs", args.kinds.split(","))
    device = "cpu" if args.dry_run else "cuda"
    results: dict[str, dict[str, Any]] = {"transformers": {}, "elastic-slice dequantized, in transformers": {}}
    if not args.dry_run:
        results["vllm"] = {}
    for kind, folder in folders.items():
        results["transformers"][kind] = run_transformers(folder, device)
        scratch = args.out / "dequantized" / kind
        if scratch.exists():
            shutil.rmtree(scratch)
        results["elastic-slice dequantized, in transformers"][kind] = run_dequantized(folder, scratch, device)
        if not args.dry_run:
            results["vllm"][kind] = run_vllm(folder)
        print(f"{kind}: " + ", ".join(f"{engine} {'ok' if r[kind]['loaded'] else 'failed'}"
                                      for engine, r in results.items()), file=sys.stderr)
    report = {
        "parent": str(args.parent), "size": args.size, "dry_run": args.dry_run, "prompts": PROMPTS,
        "new_tokens": NEW_TOKENS, "versions": versions(), "table": table(results), "tokens": results,
        "seconds": round(time.perf_counter() - started, 1),
    }
    path = args.out / "engine_check.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path} in {report['seconds']} s", file=sys.stderr)


if __name__ == "__main__":
    main()
