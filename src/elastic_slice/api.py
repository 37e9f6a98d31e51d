"""The Python API: `inspect`, `plan_extract` and `extract`, returning dataclasses. The CLI is a thin layer on top."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import hub
from .arch import Architecture, get_architecture
from .budgets import ALL_BUDGETS, ParamTarget, select_budgets
from .card import model_card
from .checkpoint import Checkpoint, read_json_object
from .dtypes import parse_user_dtype
from .errors import ElasticSliceError, InputError, RunFailure
from .execute import Target, execute
from .manifest import describe_parent_files, write_manifest
from .nesting import INDEX_FILE, NestingIndex, find_index, parse_index, resolve_budget
from .plan import DEFAULT_MAX_SHARD_SIZE, Plan, build_plan, parse_size
from .quant.calibrate import calibrate, calibration_texts
from .quant.formats import COMPRESSED_TENSORS, FORMATS, MODELOPT
from .quant.planning import QuantRequest, module_quantization
from .quant.schemes import SCHEMES, footprint
from .verify import (
    VerifyReport,
    check_against_parent,
    check_files,
    check_numerics,
    check_structure,
    open_child,
    open_output,
)
from .writer import (
    CARD_FILE,
    ShardWriter,
    WritePool,
    check_free_space,
    copy_companion_files,
    staged_folder,
    write_json,
    write_weights_index,
)


@dataclass
class BudgetReport:
    """One budget as `inspect` shows it."""

    name: str
    is_parent: bool
    sizes: dict[str, Any]
    params_total: int
    params_active: int
    bytes: dict[str, int]
    tensors: int
    #: bytes of weight shards this budget reads that are not downloaded yet (Hub repo ids; 0 for a local folder)
    download_bytes: int = 0


@dataclass
class HubReport:
    """Where a checkpoint named by repo id is on the Hub, and what downloading it would cost."""

    repo_id: str
    commit: str
    #: weight shard bytes not in the local cache, for every shard
    download_bytes: int
    #: weight shard bytes already in the local cache
    cached_bytes: int


@dataclass
class InspectReport:
    """A checkpoint, its nesting index and every budget, with any problems found."""

    checkpoint: str
    model_type: str
    architectures: list[str]
    dtype: str
    dtype_bytes: dict[str, int]
    quantization: str
    shards: int
    tensors: int
    total_bytes: int
    index_source: str | None
    parent_budget: str | None
    norm_semantics: str | None
    budgets: list[BudgetReport] = field(default_factory=list)
    #: module kind -> how the checkpoint stores its weights (bf16, fp8, nvfp4, ...)
    module_quantization: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: set when the checkpoint was named by Hub repo id (read from metadata and headers only, no weights)
    hub: HubReport | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExtractResult:
    """What `extract` wrote."""

    out: str
    budget: str
    sizes: dict[str, Any]
    params_total: int
    params_active: int
    tensors: int
    bytes: int
    shards: list[str]
    seconds: float
    gb_per_s: float
    copied_files: list[str]
    #: the Hub commit the folder was uploaded as, with --push-to-hub
    hub_url: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QuantOptions:
    """Quantize the output: `scheme` fp8 or nvfp4, `fmt` modelopt or compressed-tensors."""

    scheme: str
    fmt: str = MODELOPT
    exclude: tuple[str, ...] = ()
    calibration: str | None = None
    device: str = "cpu"

    def request(self, checkpoint: Checkpoint, arch: Architecture) -> QuantRequest:
        scheme = SCHEMES.get(self.scheme.lower())
        if scheme is None:
            raise InputError(f"--quantize {self.scheme!r} is not supported; use fp8 or nvfp4.")
        if self.fmt not in FORMATS:
            raise InputError(f"--quant-format {self.fmt!r} is not supported; use {' or '.join(FORMATS)}.")
        if self.fmt == MODELOPT and self.calibration is None:
            raise InputError(
                "--quant-format modelopt stores static activation scales, which need --calibration FILE "
                "(or --calibration default for the built-in sample); --quant-format compressed-tensors also "
                "works without: FP8 with dynamic activations, NVFP4 weight-only."
            )
        amax = None
        if self.calibration is not None:
            amax = calibrate(checkpoint.root, arch, calibration_texts(self.calibration), self.device)
        return QuantRequest(scheme=scheme, fmt=self.fmt, exclude=tuple(self.exclude), input_amax=amax)


def _version() -> str:
    from . import __version__

    return __version__


def inspect(checkpoint: str | Path, index: str | Path | None = None, revision: str | None = None) -> InspectReport:
    """Read a checkpoint (a folder or a Hub repo id) and its nesting index and describe every budget; problems are
    listed, not raised."""
    ckpt = hub.open_source(checkpoint, revision)
    dtype_bytes = ckpt.dtype_bytes()
    report = InspectReport(
        checkpoint=str(ckpt.root),
        model_type=ckpt.model_type,
        architectures=list(ckpt.config.get("architectures") or []),
        dtype=next(iter(dtype_bytes), "none"),
        dtype_bytes=dtype_bytes,
        quantization=ckpt.quantization(),
        shards=len(ckpt.shards),
        tensors=len(ckpt.tensors),
        total_bytes=ckpt.total_bytes,
        index_source=None,
        parent_budget=None,
        norm_semantics=None,
        hub=_hub_report(ckpt),
    )
    try:
        arch = get_architecture(ckpt.model_type)
        nesting = find_index(ckpt, Path(index) if index is not None else None)
    except ElasticSliceError as exc:
        report.problems.append(str(exc))
        return report
    report.index_source, report.parent_budget, report.norm_semantics = (
        nesting.source, nesting.parent, nesting.norm_semantics,
    )
    report.module_quantization = module_quantization(ckpt, arch)
    for name in nesting.budgets:
        try:
            plan = build_plan(ckpt, arch, resolve_budget(nesting, name, ckpt.config, arch))
        except ElasticSliceError as exc:
            report.problems.append(str(exc))
            continue
        report.budgets.append(
            BudgetReport(
                name=name,
                is_parent=plan.budget.is_parent,
                sizes=plan.budget.sizes,
                params_total=plan.params.total,
                params_active=plan.params.active,
                bytes={
                    **footprint((name, arch.module_kind(name), shape) for name, shape in plan.dense_shapes.items()),
                    "stored": plan.out_bytes,
                },
                tensors=len(plan.ops),
                download_bytes=_download_bytes(ckpt, [plan]),
            )
        )
    return report


def _hub_report(ckpt: Checkpoint) -> HubReport | None:
    if ckpt.hub is None:
        return None
    sizes = ckpt.hub.file_sizes
    missing = sum(size for name, size in sizes.items() if name in ckpt.hub.missing)
    return HubReport(ckpt.hub.repo_id, ckpt.hub.commit, missing, sum(sizes.values()) - missing)


def _needed_files(plans: list[Plan], ckpt: Checkpoint) -> set[str]:
    """The parent's weight files that executing `plans` reads (sources and dequantization scales)."""
    names = {op.source for plan in plans for op in plan.ops}
    names |= {name for plan in plans for op in plan.ops if op.dequant for name in op.dequant.scales.values()}
    return {ckpt.tensors[name].file for name in names}


def _download_bytes(ckpt: Checkpoint, plans: list[Plan]) -> int:
    if ckpt.hub is None:
        return 0
    return sum(ckpt.hub.file_sizes.get(name, 0) for name in _needed_files(plans, ckpt) & ckpt.hub.missing)


@dataclass(frozen=True)
class _Prepared:
    checkpoint: Checkpoint
    nesting: NestingIndex | None
    plans: list[Plan]


def _prepare(
    checkpoint: str | Path | Checkpoint,
    sizes: list[str],
    index: str | Path | None,
    dtype: str | None,
    max_shard_size: str | int,
    quantize: QuantOptions | None = None,
    overrides: dict[str, Any] | None = None,
    target: ParamTarget | None = None,
    revision: str | None = None,
) -> _Prepared:
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else hub.open_source(checkpoint, revision)
    arch = get_architecture(ckpt.model_type)
    if quantize is not None and quantize.calibration is not None:
        ckpt = hub.fetch_all(ckpt)  # calibration runs the whole parent in transformers
    out_dtype = parse_user_dtype(dtype) if dtype is not None else None
    shard_limit = parse_size(str(max_shard_size))
    nesting, budgets = select_budgets(ckpt, arch, sizes, Path(index) if index is not None else None, overrides, target)
    request = quantize.request(ckpt, arch) if quantize is not None else None
    plans = [build_plan(ckpt, arch, budget, out_dtype, shard_limit, request, _version()) for budget in budgets]
    return _Prepared(ckpt, nesting, plans)


def plan_extract(
    checkpoint: str | Path,
    size: str,
    index: str | Path | None = None,
    dtype: str | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    quantize: QuantOptions | None = None,
) -> Plan:
    """The plan `extract` would run, without writing anything (what --dry-run prints)."""
    return _prepare(checkpoint, [size], index, dtype, max_shard_size, quantize).plans[0]


def plan_extract_many(
    checkpoint: str | Path,
    sizes: list[str],
    index: str | Path | None = None,
    dtype: str | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    quantize: QuantOptions | None = None,
    overrides: dict[str, Any] | None = None,
    target: ParamTarget | None = None,
    revision: str | None = None,
) -> list[Plan]:
    """The plans of several budgets (`[ALL_BUDGETS]` for every budget of the index)."""
    return _prepare(checkpoint, sizes, index, dtype, max_shard_size, quantize, overrides, target, revision).plans


def extract(
    checkpoint: str | Path,
    size: str | None,
    out: str | Path,
    index: str | Path | None = None,
    dtype: str | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    command: str | None = None,
    workers: int = 2,
    on_bytes: Callable[[int], None] | None = None,
    quantize: QuantOptions | None = None,
    overrides: dict[str, Any] | None = None,
    revision: str | None = None,
    push_to_hub: str | None = None,
    private: bool = False,
) -> ExtractResult:
    """Cut budget `size` (None with `overrides` alone) out of `checkpoint` (a folder or a Hub repo id at
    `revision`) into a Hugging Face folder at `out`, then upload it to repo `push_to_hub` if given.

    `overrides` ({"hidden_size": 2048, ...}) sets axes on top of that budget, or of the parent."""
    return extract_many(
        checkpoint, [size] if size is not None else [], out, index, dtype, max_shard_size, overwrite, command,
        workers, on_bytes, nest=False, quantize=quantize, overrides=overrides, revision=revision,
        push_to_hub=push_to_hub, private=private,
    )[0]


def extract_many(
    checkpoint: str | Path | Checkpoint,
    sizes: list[str],
    out: str | Path,
    index: str | Path | None = None,
    dtype: str | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    command: str | None = None,
    workers: int = 2,
    on_bytes: Callable[[int], None] | None = None,
    nest: bool | None = True,
    quantize: QuantOptions | None = None,
    keep_index: bool = False,
    overrides: dict[str, Any] | None = None,
    target: ParamTarget | None = None,
    revision: str | None = None,
    on_plans: Callable[[list[Plan]], None] | None = None,
    push_to_hub: str | None = None,
    private: bool = False,
) -> list[ExtractResult]:
    """Cut several budgets in one pass over the parent: each source tensor is read once and cut for every budget.

    With `nest` (the default), each budget goes to `out/<budget name>`; otherwise `out` is the one budget's folder;
    None nests only when there are several budgets. `on_plans` sees the plans before anything is written.
    `checkpoint` may be a Checkpoint already opened (its headers are then not read again).
    `push_to_hub` ("org/name", with "{budget}" in it for several budgets) uploads each finished folder.
    """
    prepared = _prepare(checkpoint, sizes, index, dtype, max_shard_size, quantize, overrides, target, revision)
    ckpt, plans = prepared.checkpoint, prepared.plans
    if nest is None:
        nest = len(plans) > 1
    repos = _push_targets(push_to_hub, plans)
    if on_plans is not None:
        on_plans(plans)
    arch = get_architecture(ckpt.model_type)
    outs = [Path(out) / plan.budget.name if nest else Path(out) for plan in plans]
    check_free_space(Path(out).absolute(), sum(plan.out_bytes for plan in plans))
    ckpt = hub.fetch(ckpt, _needed_files(plans, ckpt))
    parent_files = describe_parent_files(ckpt)
    options = {
        "dtype": dtype, "max_shard_size": str(max_shard_size),
        "index": prepared.nesting.source if prepared.nesting is not None else None, "set": overrides,
        "quantize": None if quantize is None else asdict(quantize),
    }
    started = time.perf_counter()
    with ExitStack() as stack:
        stagings = [stack.enter_context(staged_folder(path, overwrite)) for path in outs]
        pool = stack.enter_context(WritePool(len(plans)))  # one set of blocks and threads for every budget
        targets = [Target(plan, ShardWriter(staging, plan, pool)) for plan, staging in zip(plans, stagings)]
        try:
            execute(ckpt, targets, workers=workers, on_bytes=on_bytes)
            if keep_index and prepared.nesting is not None:
                for staging in stagings:
                    write_json(staging / INDEX_FILE, prepared.nesting.to_json(), sort_keys=False)
            copied = [
                _finish_folder(ckpt, arch, target, staging, command, parent_files, options)
                for target, staging in zip(targets, stagings)
            ]
        except OSError as exc:
            raise RunFailure(f"writing the output failed: {exc.strerror or exc} ({exc.filename or 'output'}).") from exc
        finally:
            for target in targets:
                target.writer.abort()
    seconds = time.perf_counter() - started
    total = sum(plan.out_bytes for plan in plans)
    urls = [
        hub.push(path, repo, private, f"elastic-slice: budget {plan.budget.name} of {ckpt.hub.repo_id if ckpt.hub else ckpt.root.name}")
        if repo else None
        for path, plan, repo in zip(outs, plans, repos)
    ]
    return [
        ExtractResult(
            out=str(path),
            budget=plan.budget.name,
            sizes=plan.budget.sizes,
            params_total=plan.params.total,
            params_active=plan.params.active,
            tensors=len(plan.ops),
            bytes=plan.out_bytes,
            shards=list(plan.shards),
            seconds=round(seconds, 4),
            gb_per_s=round(total / seconds / 1e9, 4) if seconds > 0 else 0.0,
            copied_files=files,
            hub_url=url,
        )
        for path, plan, files, url in zip(outs, plans, copied, urls)
    ]


def _push_targets(push_to_hub: str | None, plans: list[Plan]) -> list[str | None]:
    """The repo id each budget is pushed to; several budgets need "{budget}" in the name."""
    if push_to_hub is None:
        return [None] * len(plans)
    if len(plans) > 1 and "{budget}" not in push_to_hub:
        raise InputError(
            f"--push-to-hub {push_to_hub!r} names one repo for {len(plans)} budgets; put {{budget}} in the name "
            "(for example org/model-{budget})."
        )
    return [hub.check_repo_id(push_to_hub.replace("{budget}", plan.budget.name)) for plan in plans]


def _finish_folder(
    ckpt: Checkpoint,
    arch: Architecture,
    target: Target,
    staging: Path,
    command: str | None,
    parent_files: dict[str, Any],
    options: dict[str, Any],
) -> list[str]:
    """Everything but the shards: weights index, config, companion files, model card, manifest (last)."""
    plan = target.plan
    write_weights_index(staging, plan)
    write_json(staging / "config.json", plan.child_config)
    for name, content in plan.extra_files.items():
        write_json(staging / name, content)
    copied = copy_companion_files(ckpt, staging)
    parent_name = ckpt.hub.repo_id if ckpt.hub else ckpt.config.get("_name_or_path") or ckpt.root.name
    card = model_card(plan, str(parent_name), arch.parent_sizes(ckpt.config), command, _version())
    (staging / CARD_FILE).write_text(card, encoding="utf-8")
    write_manifest(staging, plan, target.writer.sha256, parent_files, options, command, _version())
    return copied


def verify(
    out: str | Path,
    parent: str | Path | None = None,
    size: str | None = None,
    index: str | Path | None = None,
    numerics: bool = False,
    device: str = "cpu",
    tolerance: float = 1e-3,
) -> VerifyReport:
    """Check an output folder: manifest hashes, config/shard agreement and, with `parent`, every byte and logit."""
    folder = open_output(out)
    report = VerifyReport(folder=str(folder))
    manifest = check_files(folder, report)
    child = open_child(folder, report)
    if child is not None:
        check_structure(child, report)
    if parent is None:
        if numerics:
            raise InputError("verify --numerics needs --parent CKPT to compare against.")
        return report
    budget = size or (manifest or {}).get("budget", {}).get("name")
    if budget is None:
        raise InputError("verify --parent needs --size NAME: the output has no manifest naming its budget.")
    options = (manifest or {}).get("options", {})
    prepared = _prepare(parent, [budget], index, options.get("dtype"), options.get("max_shard_size", "5GB"))
    plan = prepared.plans[0]
    ckpt = hub.fetch_all(prepared.checkpoint) if numerics else hub.fetch(
        prepared.checkpoint, _needed_files([plan], prepared.checkpoint))
    if child is not None:
        check_against_parent(child, plan, ckpt, report)
    if numerics:
        check_numerics(folder, ckpt, plan, report, device, tolerance)
    return report


def quantize(
    checkpoint: str | Path,
    out: str | Path,
    options: QuantOptions,
    index: str | Path | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    command: str | None = None,
    workers: int = 2,
    on_bytes: Callable[[int], None] | None = None,
) -> ExtractResult:
    """A nested quantized parent: the parent budget quantized once, keeping its nesting index, so that every
    budget sliced from it is a valid quantized model equal to quantizing that budget with the parent's scales."""
    # every budget must slice the quantized parent into whole NVFP4 blocks: plan them all before writing
    checked = _prepare(checkpoint, [ALL_BUDGETS], index, None, max_shard_size, _without_calibration(options))
    return extract_many(
        checked.checkpoint, [checked.nesting.parent], out, index, None, max_shard_size, overwrite, command, workers, on_bytes,
        nest=False, quantize=options, keep_index=True,
    )[0]


def _without_calibration(options: QuantOptions) -> QuantOptions:
    """The same quantization planned without running calibration (for checks that need no scales)."""
    return QuantOptions(options.scheme, COMPRESSED_TENSORS, options.exclude, None, options.device)


def derive_index(
    parent: str | Path,
    from_configs: dict[str, str | Path],
    parent_name: str = "parent",
    norm_semantics: str = "active",
) -> dict[str, Any]:
    """A nesting index whose budgets are read off children's config.json files (local paths or Hub repo ids)."""
    ckpt = hub.open_source(parent)
    arch = get_architecture(ckpt.model_type)
    parent_sizes = {axis: value for axis, value in arch.parent_sizes(ckpt.config).items() if axis != "layers"}
    budgets: dict[str, Any] = {parent_name: parent_sizes}
    for name, source in from_configs.items():
        if name in budgets:
            raise InputError(f"budget {name!r} is given twice.")
        budgets[name] = arch.sizes_from_child_config(ckpt.config, _child_config(source), name)
    document = {
        "format": "elastic-nesting-index", "version": 1, "architecture": arch.model_type,
        "parent": parent_name, "norm_semantics": norm_semantics, "budgets": budgets,
    }
    nesting = parse_index(document, "the derived index")
    for name in budgets:
        resolve_budget(nesting, name, ckpt.config, arch)
    return document


def _child_config(source: str | Path) -> dict[str, Any]:
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        return read_json_object(path, str(path))
    if path.exists() or str(source).count("/") != 1:
        raise InputError(f"--from-config {source}: no config.json there; give a file, a folder or a Hub repo id.")
    try:
        from huggingface_hub import hf_hub_download

        downloaded = hf_hub_download(str(source), "config.json")
    except Exception as exc:  # the hub client raises many kinds: offline, missing repo, auth
        raise InputError(f"--from-config {source}: cannot fetch config.json from the Hub ({exc}).") from exc
    return read_json_object(Path(downloaded), f"{source}/config.json")
