"""JSON Schemas of every `--json` output (draft 2020-12), documented in docs/json-output.md and tested."""

from __future__ import annotations

from typing import Any

from .quant.formats import FORMATS
from .quant.schemes import SCHEMES

_SIZES = {"type": "object", "additionalProperties": {"type": ["integer", "array"]}}
_COUNT = {"type": "integer", "minimum": 0}
_STRINGS = {"type": "array", "items": {"type": "string"}}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required or list(properties)}


BUDGET_REPORT = _object({
    "name": {"type": "string"}, "is_parent": {"type": "boolean"}, "sizes": _SIZES,
    "params_total": _COUNT, "params_active": _COUNT,
    "bytes": _object({k: _COUNT for k in ("stored", "bf16", *SCHEMES)}), "tensors": _COUNT,
    "download_bytes": _COUNT,
    "quantize_refused": {"type": "object", "propertyNames": {"enum": list(SCHEMES)}, "additionalProperties": {
        "type": "object", "propertyNames": {"enum": list(FORMATS)}, "additionalProperties": {"type": "string"}}},
})

HUB_REPORT = _object({
    "repo_id": {"type": "string"}, "commit": {"type": "string"}, "download_bytes": _COUNT, "cached_bytes": _COUNT,
})

INSPECT = _object({
    "checkpoint": {"type": "string"}, "model_type": {"type": "string"}, "architectures": _STRINGS,
    "dtype": {"type": "string"}, "dtype_bytes": {"type": "object", "additionalProperties": _COUNT},
    "quantization": {"type": "string"}, "shards": _COUNT, "tensors": _COUNT, "total_bytes": _COUNT,
    "index_source": {"type": ["string", "null"]}, "parent_budget": {"type": ["string", "null"]},
    "norm_semantics": {"enum": ["active", "full", None]},
    "budgets": {"type": "array", "items": BUDGET_REPORT},
    "module_quantization": {"type": "object", "additionalProperties": {"type": "string"}},
    "problems": _STRINGS, "hub": {"oneOf": [{"type": "null"}, HUB_REPORT]},
})

EXTRACT_RESULT = _object({
    "out": {"type": "string"}, "budget": {"type": "string"}, "sizes": _SIZES, "params_total": _COUNT,
    "params_active": _COUNT, "tensors": _COUNT, "bytes": _COUNT, "shards": _STRINGS,
    "seconds": {"type": "number", "minimum": 0}, "gb_per_s": {"type": "number", "minimum": 0},
    "copied_files": _STRINGS, "hub_url": {"type": ["string", "null"]},
})

#: `extract --json`: one result for one budget, a list for several
EXTRACT = {"oneOf": [EXTRACT_RESULT, {"type": "array", "items": EXTRACT_RESULT, "minItems": 2}]}

_RANGES = {"type": "array", "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}}
PLAN_ONE = _object({
    "parent": {"type": "string"}, "budget": {"type": "string"}, "sizes": _SIZES,
    "norm_semantics": {"enum": ["active", "full"]}, "warning": {"type": "string"},
    "params": _object({"total": _COUNT, "active": _COUNT}), "out_bytes": _COUNT, "shards": _STRINGS,
    "tensors": {"type": "array", "items": _object({
        "out_name": {"type": "string"}, "source": {"type": "string"},
        "selection": {"type": "array", "items": _RANGES}, "out_shape": {"type": "array", "items": _COUNT},
        "out_dtype": {"type": "string"}, "scale": {"type": ["number", "null"]},
        "quant": {"type": ["string", "null"]}, "shard": {"type": "string"},
    })},
})

#: `extract --dry-run --json`
PLAN = {"oneOf": [PLAN_ONE, {"type": "array", "items": PLAN_ONE, "minItems": 2}]}

VERIFY = _object({"folder": {"type": "string"}, "checks": _STRINGS, "problems": _STRINGS, "ok": {"type": "boolean"}})

#: `index` (printed without --out): a nesting index document
NESTING_INDEX = _object({
    "format": {"const": "elastic-nesting-index"}, "version": {"const": 1}, "architecture": {"type": "string"},
    "parent": {"type": "string"}, "norm_semantics": {"enum": ["active", "full"]},
    "budgets": {"type": "object", "additionalProperties": {"type": "object"}},
})

#: `index --json`: the nesting index and the files it was written to (none when only printed); with
#: --from-matformer-csv also each table row's name -> the budget name it became
INDEX = _object(
    {"index": NESTING_INDEX, "written": _STRINGS,
     "budget_names": {"type": "object", "additionalProperties": {"type": "string"}}},
    ["index", "written"],
)

SCHEMAS = {"inspect": INSPECT, "extract": EXTRACT, "quantize": EXTRACT_RESULT, "plan": PLAN, "verify": VERIFY,
           "index": NESTING_INDEX, "index_json": INDEX}
