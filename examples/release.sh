#!/usr/bin/env bash
# A release pipeline: from one elastic parent, every budget in bf16, FP8 and NVFP4, each verified against the
# parent, with a summary JSON. Usage: examples/release.sh PARENT OUT_DIR
# (defaults: the committed miniature, ./release). FP8 and NVFP4 use ModelOpt with the built-in calibration sample;
# pass QUANT_FORMAT=compressed-tensors to write that format instead (no calibration needed).
set -euo pipefail
parent="${1:-$(dirname "$0")/tiny-elastic}"
out="${2:-release}"
format="${QUANT_FORMAT:-modelopt}"
calibration=()
[ "$format" = modelopt ] && calibration=(--calibration default)
mkdir -p "$out"

elastic-slice inspect "$parent" --json > "$out/inspect.json"

# bf16: every budget in one pass over the parent
elastic-slice extract "$parent" --all --out "$out/bf16" --json > "$out/bf16.json"

# FP8 and NVFP4: one nested quantized parent each, then every budget sliced from it
for scheme in fp8 nvfp4; do
  elastic-slice quantize "$parent" --quantize "$scheme" --quant-format "$format" "${calibration[@]}" \
    --out "$out/$scheme-parent" --json > "$out/$scheme-parent.json"
  elastic-slice extract "$out/$scheme-parent" --all --out "$out/$scheme" --json > "$out/$scheme.json"
done

# every output re-read and checked against the parent it was cut from: manifest hashes, structure, every byte
for folder in "$out"/bf16/*; do
  elastic-slice verify "$folder" --parent "$parent" --json > /dev/null
done
for scheme in fp8 nvfp4; do
  for folder in "$out/$scheme"/*; do
    elastic-slice verify "$folder" --parent "$out/$scheme-parent" --json > /dev/null
  done
done
echo "release written to $out: $(ls "$out"/bf16 | wc -l) budgets x bf16, fp8, nvfp4 (format $format), all verified"
