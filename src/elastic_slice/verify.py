"""`verify`: re-read an output folder and check it against its manifest, its config and, optionally, its parent."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .arch import architecture_of
from .checkpoint import HF_QUANT_CONFIG, Checkpoint, ShardFiles, open_checkpoint
from .dtypes import parse_user_dtype
from .errors import ElasticSliceError, InputError
from .execute import Target, execute
from .manifest import MANIFEST_FILE, read_manifest, sha256_file
from .nesting import Budget
from .plan import Plan, TensorOp, build_plan
from .quant.declared import declaration_mismatches
from .quant.formats import KV_SCALE
from .quant.planning import parent_quantization
from .quant.schemes import SCHEMES
from .quiet import quiet_transformers
from .writer import ShardWriter, WritePool, companion_files, write_json, write_weights_index


@dataclass
class VerifyReport:
    """What was checked and what was wrong; `ok` when nothing was."""

    folder: str
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def passed(self, check: str, problems_before: int) -> None:
        """Record `check` as passed only when it added no problem since `problems_before` (its problems say why)."""
        if len(self.problems) == problems_before:
            self.checks.append(check)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def check_files(folder: Path, report: VerifyReport) -> dict[str, Any] | None:
    """Every file listed in the manifest exists with its size and sha256; no file is unlisted."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        report.problems.append(f"{path} is missing; only folders written by `elastic-slice extract` can be verified.")
        return None
    try:
        manifest = read_manifest(path)
    except InputError as exc:
        report.problems.append(str(exc))
        return None
    files: dict[str, dict[str, Any]] = manifest["files"]
    before = len(report.problems)
    for name, entry in sorted(files.items()):
        target = folder / name
        if target.is_symlink():
            report.problems.append(f"{name!r} is a link; an output folder holds regular files only.")
        elif target.exists() and not target.is_file():
            report.problems.append(f"{name!r} is listed in the manifest as a file but is not a file.")
        elif not target.is_file():
            report.problems.append(f"{name!r} is listed in the manifest but missing.")
        elif target.stat().st_size != entry.get("size"):
            report.problems.append(f"{name!r} is {target.stat().st_size} bytes; the manifest says {entry.get('size')}.")
        elif sha256_file(target) != entry.get("sha256"):
            report.problems.append(f"{name!r} does not match its sha256 in the manifest (the file was changed).")
    for extra in sorted(p.name for p in folder.iterdir() if p.name not in files and p.name != MANIFEST_FILE):
        report.problems.append(f"{extra!r} is not listed in the manifest.")
    report.passed(f"{len(files)} files against the manifest's sizes and sha256", before)
    return manifest


def check_structure(child: Checkpoint, report: VerifyReport) -> None:
    """The config, weights index, shard headers, tensor names and shapes agree with each other."""
    before = len(report.problems)
    try:
        arch = architecture_of(child)
        sizes = arch.parent_sizes()
        build_plan(child, arch, Budget(name="self", sizes=sizes, is_parent=True, norm_semantics="active"))
    except ElasticSliceError as exc:
        report.problems.append(str(exc))
        return
    report.passed(f"{len(child.tensors)} tensors: names, shapes and presence agree with config.json", before)
    check_declaration(child, report)


def check_declaration(child: Checkpoint, report: VerifyReport) -> None:
    """A quantized output's config excludes exactly the linear modules it stores unquantized."""
    before = len(report.problems)
    try:
        quantization = parent_quantization(child.config, child.hf_quant_config(), child.tensors)
        arch = architecture_of(child)
    except ElasticSliceError as exc:
        report.problems.append(str(exc))
        return
    if quantization is None:
        return
    entries = quantization.fmt.declared_exclusions(child.config, child.hf_quant_config())
    report.problems += declaration_mismatches(arch, child.tensors, quantization, entries)
    declared_kv = _declares_kv_cache(child.config.get("quantization_config"), child.hf_quant_config())
    stored_kv = any(part.part == KV_SCALE for part in quantization.stored.values())
    if declared_kv != stored_kv:
        report.problems.append(
            "the quantization config declares an FP8 KV cache but no k_scale/v_scale tensor is stored." if declared_kv
            else "k_scale/v_scale tensors are stored but the quantization config declares no KV-cache quantization."
        )
    report.passed(f"the quantization config's {len(entries)} exclusions agree with the stored tensors", before)


class _ComparingWriter:
    """Stands in for a ShardWriter: compares the bytes a plan yields with the child's stored bytes."""

    def __init__(self, child: Checkpoint, files: ShardFiles, report: VerifyReport) -> None:
        self._child, self._files, self._report = child, files, report
        self._offsets: dict[str, int] = {}
        self.mismatched: set[str] = set()

    def write(self, op: TensorOp, data: Any) -> None:
        info = self._child.tensors.get(op.out_name)
        if info is None or op.out_name in self.mismatched:
            return
        size = memoryview(data).nbytes
        start = self._offsets.get(op.out_name, 0)
        self._offsets[op.out_name] = start + size
        if start + size > info.nbytes or self._files.read(info, start, start + size) != memoryview(data).cast("B"):
            self.mismatched.add(op.out_name)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def check_companions(child: Checkpoint, parent: Checkpoint, report: VerifyReport) -> None:
    """The files extract copies from the parent (tokenizer, chat template, generation config, custom code) are in the
    child byte for byte."""
    before = len(report.problems)
    copied = companion_files(parent)
    for name, source in copied:
        target = child.root / name
        if not target.is_file():
            report.problems.append(f"{name!r} of the parent is missing from the output.")
        elif sha256_file(target) != sha256_file(source):
            report.problems.append(f"{name!r} differs from the parent's {name!r}.")
    report.passed(f"{len(copied)} files copied from the parent (tokenizer, templates, configs) equal to its own", before)


def _declares_kv_cache(quantization_config: Any, hf_quant_config: dict[str, Any] | None) -> bool:
    """Whether config.json's quantization_config or hf_quant_config.json declares a quantized KV cache."""
    blocks = [quantization_config, (hf_quant_config or {}).get("quantization")]
    return any(isinstance(block, dict) and bool(block.get("kv_cache_scheme") or block.get("kv_cache_quant_algo"))
               for block in blocks)


def check_against_parent(
    child: Checkpoint, plan: Plan, parent: Checkpoint, report: VerifyReport, dense_plan: Plan | None = None
) -> None:
    """The child holds exactly the plan's tensors, with its dtypes, shapes and bytes.

    Calibrated scales the plan cannot re-derive (activation and KV-cache scales of an output quantized during
    extract) must each be one finite, positive number. With `dense_plan` (the parent's unquantized plan of the same
    budget), every weight the child stores quantized must also dequantize, by the project's own decoder, to within
    its format's rounding bound of the parent's slice."""
    from .quant.checks import BoundWriter, bad_calibrated_scales, calibrated_tensors  # torch: not for plain cuts

    try:
        quantization = parent_quantization(child.config, child.hf_quant_config(), child.tensors)
    except ElasticSliceError as exc:
        report.problems.append(str(exc))
        return
    before = len(report.problems)
    calibrated = calibrated_tensors(quantization)
    planned = {op.out_name: op for op in plan.ops}
    for name in sorted(set(child.tensors) - set(planned) - set(calibrated)):
        report.problems.append(f"tensor {name!r} is in the output but not in budget {plan.budget.name!r}.")
    for name in sorted(set(planned) - set(child.tensors)):
        report.problems.append(f"tensor {name!r} of budget {plan.budget.name!r} is missing from the output.")
    for name, op in planned.items():
        info = child.tensors.get(name)
        if info is not None and (info.dtype != op.out_dtype or info.shape != op.out_shape):
            report.problems.append(
                f"tensor {name!r} is {info.dtype} {list(info.shape)}; the parent gives {op.out_dtype} {list(op.out_shape)}."
            )
    unplanned = sorted(set(calibrated) - set(planned))
    with ShardFiles(child) as files:
        writer = _ComparingWriter(child, files, report)
        targets = [Target(plan, writer)]
        bounds = BoundWriter(child, files, quantization) if dense_plan is not None and quantization else None
        if bounds is not None and dense_plan is not None:
            targets.append(Target(dense_plan, bounds))
        execute(parent, targets)
        bad_scales = bad_calibrated_scales(unplanned, files)
    for name in sorted(writer.mismatched):
        report.problems.append(f"tensor {name!r} differs from the parent's slice for budget {plan.budget.name!r}.")
    report.passed(f"{len(planned)} tensors byte for byte against {parent.root} budget {plan.budget.name}", before)
    before = len(report.problems)
    for name in bad_scales:
        report.problems.append(f"calibrated scale {name!r} is not one finite, positive number.")
    if unplanned:
        report.passed(f"{len(unplanned)} calibrated scales (activations, KV cache) finite and positive", before)
    if bounds is not None and quantization is not None:
        before = len(report.problems)
        for name in bounds.outside:
            report.problems.append(
                f"weight {name!r} dequantizes to values outside the {quantization.scheme.name.upper()} rounding bound "
                "of the parent's slice."
            )
        report.passed(
            f"{bounds.checked} quantized weights dequantized within the {quantization.scheme.name.upper()} bound "
            "of the parent's slice", before
        )


#: fields naming the writing tool's version, not the model (by path: a version anywhere else is compared)
_TOOL_VERSIONS = frozenset({"written_by.version", "quantization_config.producer.version"})


def check_config(child: Checkpoint, plan: Plan, report: VerifyReport) -> None:
    """The child's config.json (and hf_quant_config.json) equal the budget's planned ones, key for key, both ways:
    fields no tensor shows (layer kinds, activation sparsity, KV sharing, legacy aliases such as `mamba_dt_min`) and
    the quantization declaration (for a calibrated output, `plan` is planned with placeholder scales, so it carries
    the static declaration calibration implies)."""
    before = len(report.problems)
    documents = [("config.json", child.config, plan.child_config)]
    planned_hf = plan.extra_files.get(HF_QUANT_CONFIG)
    if planned_hf is not None or (child.root / HF_QUANT_CONFIG).is_file():
        documents.append((HF_QUANT_CONFIG, child.hf_quant_config() or {}, planned_hf or {}))
    for file, found, expected in documents:
        for path, got, wanted in _config_differences(found, expected, ""):
            report.problems.append(
                f"{file} field {path!r} is {_short(got)}; budget {plan.budget.name!r} of the parent gives "
                f"{_short(wanted)}."
            )
    report.passed(f"config.json against budget {plan.budget.name}'s config", before)


def _config_differences(found: Any, expected: Any, path: str) -> list[tuple[str, Any, Any]]:
    if isinstance(expected, dict) and isinstance(found, dict):
        differences = []
        for key in [*expected, *(key for key in found if key not in expected)]:
            here = f"{path}.{key}" if path else key
            if here not in _TOOL_VERSIONS:
                differences += _config_differences(found.get(key, _MISSING), expected.get(key, _MISSING), here)
        return differences
    return [] if found == expected and type(found) is type(expected) else [(path, found, expected)]


class _Missing:
    def __repr__(self) -> str:
        return "missing"


_MISSING = _Missing()


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _vocab_size(config: dict[str, Any]) -> int:
    """The token range of the text model: top-level, or in `text_config` as transformers' multimodal configs keep it
    (`PretrainedConfig.get_text_config`)."""
    text = config.get("text_config")
    value = config.get("vocab_size") or (text.get("vocab_size") if isinstance(text, dict) else None)
    if not isinstance(value, int) or value < 2:
        raise InputError("verify --numerics needs the output's config.json to give a vocab_size of at least 2.")
    return value


def require_quantized_parent(child: Checkpoint, parent: Checkpoint) -> None:
    """A child that stores quantized weights without having been quantized by extract (its manifest records no
    quantize option) was cut from a quantized parent: comparing it with an unquantized parent is an input error."""
    try:
        stored = parent_quantization(child.config, child.hf_quant_config(), child.tensors)
        source = parent_quantization(parent.config, parent.hf_quant_config(), parent.tensors)
    except ElasticSliceError:
        return  # check_against_parent reports it
    if stored is not None and source is None:
        raise InputError(
            f"this output was cut from a quantized parent (it stores {stored.scheme.name.upper()} weights and was not "
            f"quantized by extract); verify it against that parent (--parent QUANTIZED_PARENT), not {parent.root}."
        )


def open_output(folder: str | Path) -> Path:
    path = Path(folder)
    if not path.is_dir():
        raise InputError(f"{path} is not a folder; give an output folder written by `elastic-slice extract`.")
    return path


def open_child(folder: Path, report: VerifyReport) -> Checkpoint | None:
    try:
        return open_checkpoint(folder)
    except ElasticSliceError as exc:
        report.problems.append(str(exc))
        return None


#: default largest logit difference of `verify --numerics`, relative: max |child - parent| / max |parent logit|,
#: by how the output stores its weights: unquantized (measured below 1e-6 on the random miniature parent), or each
#: scheme's own (`Scheme.numeric_tolerance`)
UNQUANTIZED = "none"
NUMERIC_TOLERANCE = {UNQUANTIZED: 1e-3, **{name: scheme.numeric_tolerance for name, scheme in SCHEMES.items()}}


def check_numerics(
    child: Checkpoint, parent: Checkpoint, plan: Plan, report: VerifyReport, device: str, tolerance: float | None
) -> None:
    """The child's logits against the parent's masked forward on a few fixed tokens, in fp32.

    A quantized child (or parent) is first dequantized by the project's own decoder into a temporary fp32 folder
    (weights only: activations and the KV cache run unquantized), so no third-party quantized loader is involved."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as exc:
        raise InputError(
            "verify --numerics needs transformers, a dependency of elastic-slice: reinstall it with "
            "pip install elastic-slice."
        ) from exc
    try:
        quantizations = [parent_quantization(c.config, c.hf_quant_config(), c.tensors) for c in (parent, child)]
    except ElasticSliceError as exc:
        report.problems.append(str(exc))
        return
    quantization = quantizations[1]
    scheme = quantization.scheme.name if quantization is not None else UNQUANTIZED
    # a slice of a quantized parent holds the parent's quantized values: it must match as closely as a bf16 slice
    rounding = UNQUANTIZED if quantizations[0] is not None else scheme
    limit = NUMERIC_TOLERANCE[rounding] if tolerance is None else tolerance
    masked_forward = architecture_of(parent).masked_forward
    if masked_forward is None:
        report.problems.append(
            f"verify --numerics needs a masked forward of model_type {parent.model_type!r}, which elastic-slice does "
            "not have yet; leave out --numerics."
        )
        return
    vocab = _vocab_size(plan.child_config)
    tokens = torch.randint(0, vocab, (1, 24), generator=torch.Generator().manual_seed(0)).to(device)
    logits = []
    with quiet_transformers(), tempfile.TemporaryDirectory(prefix="elastic-slice-verify-") as scratch:
        folders = [
            checkpoint.root if quant is None else dequantized_copy(checkpoint, Path(scratch) / role)
            for checkpoint, quant, role in zip((parent, child), quantizations, ("parent", "child"), strict=True)
        ]
        for folder, sizes in zip(folders, (plan.budget.sizes, None), strict=True):
            try:
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
                model = torch.nn.Module.to(model, torch.device(device)).eval()
            except (OSError, ValueError, RuntimeError, ImportError) as exc:  # ImportError: a tower needs timm, ...
                report.problems.append(f"transformers could not load {folder} for --numerics ({exc}).")
                return
            if sizes is not None:
                masked_forward.apply(model, sizes, plan.budget.norm_semantics)
            with torch.no_grad():
                logits.append(model(tokens, use_cache=False).logits.float().cpu())
            del model
    diff = (logits[0] - logits[1]).abs()
    relative = diff.max().item() / max(logits[0].abs().max().item(), torch.finfo(torch.float32).tiny)
    how = "" if quantization is None else f", {scheme.upper()} weights dequantized by elastic-slice"
    summary = (
        f"max abs diff {diff.max().item():.3g} ({relative:.3g} of the largest logit), mean {diff.mean().item():.3g}, "
        f"over {tokens.shape[1]} tokens{how}"
    )
    if relative > limit:
        report.problems.append(f"logits differ from the parent's masked forward: {summary} (tolerance {limit:g}).")
    else:
        report.checks.append(f"logits against the parent's masked forward on {device}: {summary}; tolerance {limit:g}")


def dequantized_copy(child: Checkpoint, folder: Path) -> Path:
    """The quantized `child` written to `folder` as an fp32 model (weights dequantized by the project's kernels)."""
    arch = architecture_of(child)
    budget = Budget(name="self", sizes=arch.parent_sizes(), is_parent=True, norm_semantics="active")
    plan = build_plan(child, arch, budget, dtype=parse_user_dtype("fp32"))
    folder.mkdir(parents=True)
    with WritePool(1) as pool:
        execute(child, [Target(plan, ShardWriter(folder, plan, pool))])
    write_weights_index(folder, plan)
    write_json(folder / "config.json", plan.child_config)
    return folder
