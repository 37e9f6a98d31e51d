"""The Python API: `inspect`, `plan_extract` and `extract`, returning dataclasses. The CLI is a thin layer on top."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePath
from typing import Any

from . import defaults, destination, hub
from .arch import BoundArchitecture, architecture_of, matformer
from .arch.base import OUTPUT
from .budgets import ALL_BUDGETS, ParamTarget, select_budgets
from .card import model_card, public_command, public_path_value
from .checkpoint import Checkpoint
from .dtypes import parse_user_dtype
from .errors import ElasticSliceError, InputError, RunFailure
from .execute import Target, execute
from .manifest import describe_parent_files, write_manifest
from .nesting import (
    INDEX_FILE,
    INDEX_FORMAT,
    Budget,
    BudgetError,
    NestingIndex,
    check_budget_name,
    find_index,
    parse_index,
    parse_set,
    resolve_budget,
)
from .plan import DEFAULT_MAX_SHARD_SIZE, PaddedQuantizeError, Plan, build_plan, parse_size
from .quant.calibrate import DEFAULT as DEFAULT_CALIBRATION
from .quant.calibrate import announce, calibrate, calibration_texts, describe, require_calibration
from .quant.formats import COMPRESSED_TENSORS, FORMATS, MODELOPT
from .quant.planning import QuantRequest, module_quantization, rename_modules
from .quant.schemes import BROAD, NVIDIA, RECIPES, SCHEMES, footprint
from .untrusted_json import load_json_object
from .verify import (
    VerifyReport,
    check_against_parent,
    check_companions,
    check_config,
    check_files,
    check_numerics,
    check_structure,
    open_child,
    open_output,
    require_quantized_parent,
)
from .writer import (
    CARD_FILE,
    ShardWriter,
    WritePool,
    companion_files,
    copy_companion_files,
    output_bytes,
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
    #: scheme -> format -> the sentence `extract --quantize SCHEME --quant-format FORMAT` refuses this budget with
    #: (refused in every format, the scheme's size in `bytes` is an estimate of nothing extract writes); empty when
    #: every scheme and format can be extracted
    quantize_refused: dict[str, dict[str, str]] = field(default_factory=dict)


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
    """Quantize the output: `scheme` fp8 or nvfp4, `fmt` modelopt or compressed-tensors, `recipe` nvidia (NVIDIA's
    release exclusions) or broad (None: the family's vendor recipe where it has one, else broad), `exclude` globs
    added to it, `kv_cache` "fp8" for calibrated KV-cache scales;
    `on_layer(done, total)` reports calibration's progress after each decoder layer."""

    scheme: str
    fmt: str = MODELOPT.name
    exclude: tuple[str, ...] = ()
    calibration: str | None = None
    device: str = "cpu"
    recipe: str | None = None
    kv_cache: str | None = None
    on_layer: Callable[[int, int], None] | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The options as a manifest records them (without the progress callback)."""
        return {key: value for key, value in asdict(self).items() if key != "on_layer"}

    def request(self, checkpoint: Checkpoint, arch: BoundArchitecture, calibrated: bool = True,
                placeholder_scales: bool = False) -> QuantRequest:
        """The plan's quantization request; with `calibrated` False no calibration runs (no static scales), unless
        `placeholder_scales` stands in for what calibration would record (verify: the declaration it implies)."""
        scheme = SCHEMES.get(self.scheme.lower())
        if scheme is None:
            raise InputError(f"--quantize {self.scheme!r} is not supported; use {' or '.join(SCHEMES)}.")
        fmt = FORMATS.get(self.fmt)
        if fmt is None:
            raise InputError(f"--quant-format {self.fmt!r} is not supported; use {' or '.join(FORMATS)}.")
        recipe = self._recipe(arch)
        if self.kv_cache not in (None, "fp8"):
            raise InputError(f"--kv-cache {self.kv_cache!r} is not supported; use fp8 (or leave it out).")
        for glob in self.exclude:
            if not glob.strip() or not glob.isprintable() or glob != glob.strip():
                raise InputError(
                    f"--exclude {glob!r} is not a module-name glob (empty, spaces at its ends or control "
                    "characters); write one like '*.experts*' or '*.layers.3.*'."
                )
        source = self.calibration_source() if calibrated else None
        amax = None
        if source is not None:
            require_calibration(arch)
            texts = calibration_texts(source)
            announce(source, len(texts), chosen_by_default=self.calibration is None)
            amax = calibrate(checkpoint, arch, texts, self.device, self.on_layer)
        kv_amax = _outputs(amax) if self.kv_cache and amax is not None else None
        if placeholder_scales and self.calibration_source() is not None:
            amax = _PlaceholderAmax()
            kv_amax = _PlaceholderAmax() if self.kv_cache else None
        return QuantRequest(
            scheme=scheme, fmt=fmt, exclude=tuple(self.exclude), input_amax=amax, recipe=recipe,
            recipe_modules=tuple(arch.recipe_exclusions()) if recipe == NVIDIA else (),
            kv_amax=kv_amax,
            calibration=describe(source) if source is not None else None,
        )

    def _recipe(self, arch: BoundArchitecture) -> str:
        """The recipe asked for, or the default: the vendor's where the family has one (NVIDIA's for Nemotron-H),
        else broad; asking for a vendor recipe the family does not have is an input error."""
        has_vendor_recipe = bool(arch.recipe_exclusions())
        if self.recipe is None:
            return NVIDIA if has_vendor_recipe else BROAD
        if self.recipe not in RECIPES:
            raise InputError(f"--recipe {self.recipe!r} is not supported; use {' or '.join(RECIPES)}.")
        if self.recipe == NVIDIA and not has_vendor_recipe:
            raise InputError(
                f"--recipe nvidia: model_type {arch.model_type!r} has no vendor quantization recipe; use --recipe "
                "broad or leave --recipe out."
            )
        return self.recipe

    def calibration_source(self) -> str | None:
        """What calibration runs on: the given text, else the built-in sample where the format or --kv-cache needs
        static scales (ModelOpt stores them); None for compressed-tensors without it (dynamic / weight-only)."""
        if self.calibration is not None:
            return self.calibration
        fmt = FORMATS.get(self.fmt)
        return DEFAULT_CALIBRATION if (fmt is not None and fmt.needs_input_scales) or self.kv_cache else None


class _PlaceholderAmax(dict[str, float]):
    """Stands in for calibration's record of every module (1.0 each): plans the declaration a calibrated output
    carries, never its scale values."""

    def get(self, key: str, default: Any = None) -> float:
        return 1.0


def _outputs(amax: dict[str, float]) -> dict[str, float]:
    """The recorded output amax of key and value projections, by module name."""
    return {name.removesuffix(OUTPUT): value for name, value in amax.items() if name.endswith(OUTPUT)}


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
        arch = architecture_of(ckpt)
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
            plan = build_plan(ckpt, arch, resolve_budget(nesting, name, arch))
        except ElasticSliceError as exc:
            report.problems.append(_naming_budget(exc, name))
            continue
        report.budgets.append(
            BudgetReport(
                name=name,
                is_parent=plan.budget.is_parent,
                sizes=plan.budget.sizes,
                params_total=plan.params.total,
                params_active=plan.params.active,
                bytes={
                    **footprint(
                        ((name, arch.module_kind(name), shape) for name, shape in plan.dense_shapes.items()),
                        _vendor_kept(arch, plan),
                    ),
                    "stored": plan.out_bytes,
                },
                tensors=len(plan.ops),
                download_bytes=_download_bytes(ckpt, [plan]),
                quantize_refused=_quantize_refusals(ckpt, arch, plan),
            )
        )
    return report


def _quantize_refusals(ckpt: Checkpoint, arch: BoundArchitecture, plan: Plan) -> dict[str, dict[str, str]]:
    """Scheme -> format -> why `extract --quantize SCHEME --quant-format FORMAT` refuses the budget of `plan` (a
    quantized parent, a per-layer budget, a cut off NVFP4's blocks, a family that cannot calibrate for ModelOpt).

    Formats differ at planning only in the parts they store and in whether they need calibration, which extract
    checks before it plans: so one plan per scheme (uncalibrated, as extract plans it) and each format's calibration
    check give every format's answer (a plan of the real parent takes a few tenths of a second)."""
    uncalibrated: dict[str, str | None] = {}
    for scheme in SCHEMES:
        try:
            request = QuantOptions(scheme, fmt=COMPRESSED_TENSORS.name).request(ckpt, arch, calibrated=False)
            build_plan(ckpt, arch, plan.budget, quantize=request)
            uncalibrated[scheme] = None
        except InputError as exc:
            uncalibrated[scheme] = str(exc)
    refused: dict[str, dict[str, str]] = {}
    for scheme, planned in uncalibrated.items():
        for fmt in FORMATS:
            try:
                if QuantOptions(scheme, fmt=fmt).calibration_source() is not None:
                    require_calibration(arch)
                reason = planned
            except InputError as exc:
                reason = str(exc)
            if reason is not None:
                refused.setdefault(scheme, {})[fmt] = reason
    return refused


def _naming_budget(exc: ElasticSliceError, budget: str) -> str:
    """The error's sentence, prefixed with the budget's name where it does not name it already."""
    text = str(exc)
    return text if isinstance(exc, BudgetError) or f"budget {budget!r}" in text else f"budget {budget!r}: {text}"


def _vendor_kept(arch: BoundArchitecture, plan: Plan) -> set[str] | None:
    """The child's modules the family's vendor recipe keeps unquantized (the recipe a plain --quantize uses), or
    None where the family has no vendor recipe and the broad one applies."""
    recipe = arch.recipe_exclusions()
    return set(rename_modules(recipe, list(plan.budget.sizes["layers"]))) if recipe else None


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
class _Selected:
    checkpoint: Checkpoint
    arch: BoundArchitecture
    nesting: NestingIndex | None
    budgets: list[Budget]


@dataclass(frozen=True)
class _Prepared:
    checkpoint: Checkpoint
    nesting: NestingIndex | None
    plans: list[Plan]


def _select(
    checkpoint: str | Path | Checkpoint,
    sizes: list[str],
    index: str | Path | None,
    overrides: dict[str, Any] | None = None,
    target: ParamTarget | None = None,
    revision: str | None = None,
) -> _Selected:
    """The checkpoint opened and the budgets a command means, resolved and checked (nothing planned yet)."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else hub.open_source(checkpoint, revision)
    arch = architecture_of(ckpt)
    nesting, budgets = select_budgets(ckpt, arch, sizes, Path(index) if index is not None else None, overrides, target)
    return _Selected(ckpt, arch, nesting, budgets)


def _plan(
    selected: _Selected,
    dtype: str | None,
    max_shard_size: str | int,
    quantize: QuantOptions | None = None,
    calibrated: bool = True,
    placeholder_scales: bool = False,
) -> _Prepared:
    """The plans of the selected budgets; calibration runs here when `quantize` needs it and `calibrated`."""
    ckpt, arch = selected.checkpoint, selected.arch
    out_dtype = parse_user_dtype(dtype) if dtype is not None else None
    shard_limit = parse_size(str(max_shard_size))
    if quantize is not None and calibrated and quantize.calibration_source() is not None:
        ckpt = hub.fetch_all(ckpt)  # calibration reads every layer of the parent
    request = quantize.request(ckpt, arch, calibrated, placeholder_scales) if quantize is not None else None
    plans = []
    for budget in selected.budgets:
        try:
            plans.append(build_plan(ckpt, arch, budget, out_dtype, shard_limit, request, _version()))
        except InputError as exc:
            named = _naming_budget(exc, budget.name)
            if named == str(exc):
                raise
            raise InputError(named) from exc
    return _Prepared(ckpt, selected.nesting, plans)


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
    calibrated: bool = True,
) -> _Prepared:
    selected = _select(checkpoint, sizes, index, overrides, target, revision)
    return _plan(selected, dtype, max_shard_size, quantize, calibrated)


def plan_extract(
    checkpoint: str | Path,
    size: str,
    index: str | Path | None = None,
    dtype: str | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    quantize: QuantOptions | None = None,
) -> Plan:
    """The plan `extract` would run, without writing anything (what --dry-run prints). Calibration does not run
    (nor download a Hub parent's weights for it), so calibrated scales (4 bytes each) are not listed."""
    return _prepare(checkpoint, [size], index, dtype, max_shard_size, quantize, calibrated=False).plans[0]


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
    """The plans of several budgets (`[ALL_BUDGETS]` for every budget of the index), as `plan_extract`."""
    return _prepare(
        checkpoint, sizes, index, dtype, max_shard_size, quantize, overrides, target, revision, calibrated=False
    ).plans


def extract(
    checkpoint: str | Path,
    size: str | None,
    out: str | Path | None,
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
    `revision`) into a Hugging Face folder at `out` (None: `<parent>-<budget>` beside the parent, see
    `defaults.output_folder`), then upload it to repo `push_to_hub` if given.

    `overrides` ({"hidden_size": 2048, ...}) sets axes on top of that budget, or of the parent."""
    return extract_many(
        checkpoint, [size] if size is not None else [], out, index, dtype, max_shard_size, overwrite, command,
        workers, on_bytes, nest=False, quantize=quantize, overrides=overrides, revision=revision,
        push_to_hub=push_to_hub, private=private,
    )[0]


def extract_many(
    checkpoint: str | Path | Checkpoint,
    sizes: list[str],
    out: str | Path | None,
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
    on_out: Callable[[Path], None] | None = None,
) -> list[ExtractResult]:
    """Cut several budgets in one pass over the parent: each source tensor is read once and cut for every budget.

    With `nest` (the default), each budget goes to `out/<budget name>`; otherwise `out` is the one budget's folder;
    None nests only when there are several budgets. `out` None means `<parent>-<budget>` beside the parent, or
    `<parent>-budgets` when nesting (see `defaults.output_folder`); `on_out` is told that folder. Each folder is
    checked before any work (calibration included), locked while written and moved into place only when complete;
    `overwrite` replaces only an empty folder or an earlier elastic-slice output (see `destination`). `on_plans`
    sees the plans before anything is written.
    `checkpoint` may be a Checkpoint already opened (its headers are then not read again).
    `push_to_hub` ("org/name", with "{budget}" in it for several budgets) uploads each finished folder.
    """
    if out is not None:  # checked before the checkpoint is opened (a Hub repo id: before any request)
        single = nest is False or (nest is None and len(sizes) <= 1 and ALL_BUDGETS not in sizes)
        destination.check_folder(Path(out), overwrite, destination.parent_folders(checkpoint), existing=single)
    if push_to_hub is not None:
        hub.check_can_push(push_to_hub)
    selected = _select(checkpoint, sizes, index, overrides, target, revision)
    if nest is None:
        nest = len(selected.budgets) > 1
    if out is None:
        suffix = defaults.SEVERAL_BUDGETS if nest else selected.budgets[0].name
        out = defaults.output_folder(selected.checkpoint, suffix)
        if on_out is not None:
            on_out(out)
    outs = _destinations(Path(out), overwrite, nest, selected.checkpoint, [b.name for b in selected.budgets])
    if quantize is not None and quantize.calibration_source() is not None:
        _plan(selected, dtype, max_shard_size, quantize, calibrated=False)  # every plan-time refusal before calibrating
    prepared = _plan(selected, dtype, max_shard_size, quantize)
    ckpt, plans = prepared.checkpoint, prepared.plans
    repos = _push_targets(push_to_hub, plans)
    if on_plans is not None:
        on_plans(plans)
    arch = selected.arch
    index_json = [prepared.nesting.to_json()] if keep_index and prepared.nesting is not None else []
    _check_space(ckpt, plans, Path(out), index_json)
    # the manifest is published with the folder (--push-to-hub): paths in it are reduced to names, like the card's
    options = {
        "dtype": dtype, "max_shard_size": str(max_shard_size),
        "index": _public_source(prepared.nesting.source) if prepared.nesting is not None else None, "set": overrides,
        "quantize": None if quantize is None else {
            **quantize.to_json(), "calibration": public_path_value("--calibration", quantize.calibration)},
    }
    # one set of write blocks and threads for every budget; it stops before the staging folders are removed
    with destination.staged_folders(outs, overwrite) as stagings, WritePool(len(plans)) as pool:
        ckpt = hub.fetch(ckpt, _needed_files(plans, ckpt))
        if ckpt.hub is not None:  # the companion files are there now
            _check_space(ckpt, plans, Path(out), index_json)
        parent_files = describe_parent_files(ckpt)
        started = time.perf_counter()
        writers = [ShardWriter(staging, plan, pool) for plan, staging in zip(plans, stagings, strict=True)]
        try:
            execute(ckpt, [Target(plan, writer) for plan, writer in zip(plans, writers, strict=True)],
                    workers=workers, on_bytes=on_bytes)
            if keep_index and prepared.nesting is not None:
                for staging in stagings:
                    write_json(staging / INDEX_FILE, prepared.nesting.to_json(), sort_keys=False)
            copied = [
                _finish_folder(ckpt, arch, plan, writer, staging, command, parent_files, options)
                for plan, writer, staging in zip(plans, writers, stagings, strict=True)
            ]
        except OSError as exc:
            raise RunFailure(f"writing the output failed: {exc.strerror or exc} ({exc.filename or 'output'}).") from exc
        finally:
            for writer in writers:
                writer.abort()
    seconds = time.perf_counter() - started
    total = sum(plan.out_bytes for plan in plans)
    urls = [
        hub.push(path, repo, private, f"elastic-slice: budget {plan.budget.name} of {ckpt.hub.repo_id if ckpt.hub else ckpt.root.name}")
        if repo else None
        for path, plan, repo in zip(outs, plans, repos, strict=True)
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
        for path, plan, files, url in zip(outs, plans, copied, urls, strict=True)
    ]


def _destinations(out: Path, overwrite: bool, nest: bool, ckpt: Checkpoint, budgets: list[str]) -> list[Path]:
    """The folders the budgets go to (`out`, or `out/<budget>` for each), checked: none may overlap the parent."""
    parents = destination.parent_folders(ckpt)
    folder = destination.check_folder(out, overwrite, parents, existing=not nest)
    if not nest:
        return [folder]
    return [
        destination.check_folder(destination.budget_folder(folder, budget), overwrite, parents)
        for budget in budgets
    ]


def _check_space(ckpt: Checkpoint, plans: list[Plan], out: Path, extra_json: list[Any]) -> None:
    """Fail before writing when the outputs of `plans`, companion files and all, do not fit under `out`."""
    copied = [path for _, path in companion_files(ckpt)]
    destination.check_free_space(out, sum(output_bytes(plan, copied, extra_json) for plan in plans))


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
    arch: BoundArchitecture,
    plan: Plan,
    writer: ShardWriter,
    staging: Path,
    command: str | None,
    parent_files: dict[str, Any],
    options: dict[str, Any],
) -> list[str]:
    """Everything but the shards: weights index, config, companion files, model card, manifest (last)."""
    write_weights_index(staging, plan)
    write_json(staging / "config.json", plan.child_config)
    for name, content in plan.extra_files.items():
        write_json(staging / name, content)
    copied = copy_companion_files(ckpt, staging)
    parent_name = ckpt.hub.repo_id if ckpt.hub else ckpt.config.get("_name_or_path") or ckpt.root.name
    card = model_card(plan, str(parent_name), arch.parent_sizes(), command, _version(),
                      ckpt.hub.repo_id if ckpt.hub else None, arch.loading_note())
    (staging / CARD_FILE).write_text(card, encoding="utf-8")
    shown = public_command(command, _public_parent(ckpt)) if command else None
    write_manifest(staging, plan, writer.sha256, parent_files, options, shown, _version())
    return copied


def _public_parent(ckpt: Checkpoint) -> str:
    """The parent as it may be published: its Hub repo id, or its folder's name (never a local path)."""
    return ckpt.hub.repo_id if ckpt.hub else ckpt.root.resolve().name


def _public_source(source: str) -> str:
    """Where the nesting index came from, without the local folders above it (a preset's description as it is)."""
    return source if source.startswith("preset ") else PurePath(source).name


def verify(
    out: str | Path,
    parent: str | Path | None = None,
    size: str | None = None,
    index: str | Path | None = None,
    numerics: bool = False,
    device: str = "cpu",
    tolerance: float | None = None,
) -> VerifyReport:
    """Check an output folder: manifest hashes, config/shard agreement and, with `parent`, every byte and logit.

    An output quantized during extract is re-planned with the manifest's quantization (without calibration): its
    weights and weight scales must equal the parent's bytes quantized again, and dequantize within the format's
    bound of the parent's slice. `tolerance` defaults to the output format's (`verify.NUMERIC_TOLERANCE`)."""
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
    if budget is None and not report.ok:  # the manifest's problem is reported; no budget to compare against
        report.problems.append("not compared with --parent: the manifest names no budget; give --size NAME.")
        return report
    if budget is None:
        raise InputError("verify --parent needs --size NAME: the output has no manifest naming its budget.")
    options = (manifest or {}).get("options", {})
    quant = _manifest_quantization(options.get("quantize"))
    shard_size = options.get("max_shard_size", "5GB")
    selected = _select_recorded(parent, budget, index, options.get("set") if size is None else None)
    mismatch = _sizes_mismatch(manifest, selected, index)
    if mismatch is not None:
        report.problems.append(mismatch)
        return report
    if child is not None and quant is None:
        require_quantized_parent(child, selected.checkpoint)
    prepared = _plan(selected, options.get("dtype"), shard_size, quant, calibrated=False)
    plan = prepared.plans[0]
    dense = _plan(selected, options.get("dtype"), shard_size).plans[0] if quant else None
    ckpt = hub.fetch_all(prepared.checkpoint) if numerics else hub.fetch(
        prepared.checkpoint, _needed_files([plan], prepared.checkpoint))
    if child is not None:
        declared = plan
        if quant is not None and quant.calibration_source() is not None:  # the declaration calibration implies
            declared = _plan(selected, options.get("dtype"), shard_size, quant, calibrated=False,
                             placeholder_scales=True).plans[0]
        check_config(child, declared, report)
        check_companions(child, ckpt, report)
        check_against_parent(child, plan, ckpt, report, dense)
        if numerics:
            check_numerics(child, ckpt, plan, report, device, tolerance)
    return report


def _sizes_mismatch(manifest: dict[str, Any] | None, selected: _Selected, index: str | Path | None) -> str | None:
    """Why the budget re-derived from the parent is not the one the manifest records the output was cut as (another
    --index file, or an edited index or manifest), naming the axes that differ; None when they agree. Comparing
    bytes then would only list every tensor as different."""
    recorded = (manifest or {}).get("budget", {})
    budget = selected.budgets[0]
    if not isinstance(recorded, dict) or recorded.get("name") != budget.name:
        return None
    sizes = recorded.get("sizes")
    derived = json.loads(json.dumps(budget.sizes))
    if sizes == derived:
        return None
    axes = sorted(set(derived) | set(sizes)) if isinstance(sizes, dict) else ["sizes"]
    differing = [axis for axis in axes if not isinstance(sizes, dict) or sizes.get(axis) != derived.get(axis)]
    used = (manifest or {}).get("options", {}).get("index")
    source = selected.nesting.source if selected.nesting is not None else "the command line"
    hint = (f"the manifest says it was cut with index {used!r}: give --index with that file"
            if isinstance(used, str) and index is None else "give --index with the file it was cut with")
    return (
        f"budget {budget.name!r} from {source} differs from the one the output's manifest records "
        f"({', '.join(map(repr, differing))}); {hint}, or the index or manifest was changed since."
    )


_BAD_SET = "it must map axis names to integers or lists of integers and nulls"


def _select_recorded(parent: str | Path, budget: str, index: str | Path | None, recorded_set: Any) -> _Selected:
    """The parent opened and the budget an output was cut as: an index budget, or (when its manifest records --set
    sizes) the base budget with those sizes, whose refusals say that they come from the manifest."""
    if recorded_set is None or recorded_set == {}:
        return _select(parent, [budget], index)
    checkpoint = hub.open_source(parent)  # the parent's own errors, in their own words
    try:
        overrides = _manifest_overrides(recorded_set)
        base = _custom_base(budget)
        return _select(checkpoint, [base] if base is not None else [], index, overrides)
    except InputError as exc:
        raise InputError(
            f"verify cannot rebuild budget {budget!r} from the --set sizes the output's manifest records "
            f"(options.set): {str(exc).rstrip('.')}; verify without --parent, or give --size NAME."
        ) from None


def _manifest_overrides(recorded: Any) -> dict[str, Any]:
    """The --set sizes a manifest records (untrusted: checked, then parsed as the command line's --set is)."""
    if not isinstance(recorded, dict) or not all(isinstance(axis, str) and axis.strip() for axis in recorded):
        raise InputError(_BAD_SET)
    return parse_set([f"{axis}={_set_value(value)}" for axis, value in recorded.items()])


def _set_value(value: Any) -> str:
    """A recorded --set value written as the command line takes it."""
    def is_int(item: Any) -> bool:
        return isinstance(item, int) and not isinstance(item, bool)

    if is_int(value):
        return str(value)
    if isinstance(value, list) and all(item is None or is_int(item) for item in value):
        return "[" + ",".join("null" if item is None else str(item) for item in value) + "]"
    raise InputError(_BAD_SET)


def _custom_base(budget: str) -> str | None:
    """The index budget a `--set` output's budget (`NAME-custom`, or `custom` on top of the parent) started from."""
    if budget == "custom":
        return None
    if budget.endswith("-custom") and len(budget) > len("-custom"):
        return budget.removesuffix("-custom")
    raise InputError(
        "a budget made with --set is named NAME-custom or custom"
    )


def _manifest_quantization(recorded: Any) -> QuantOptions | None:
    """The QuantOptions a manifest records (untrusted: a malformed entry is an input error naming the field)."""
    if recorded is None:
        return None
    try:
        if "on_layer" in recorded:
            raise TypeError("unexpected field 'on_layer'")
        options = QuantOptions(**recorded)
        return replace(options, exclude=tuple(options.exclude))
    except TypeError as exc:
        raise InputError(f"the manifest's options.quantize is not understood ({exc}); verify without --parent.") from exc


def quantize(
    checkpoint: str | Path,
    out: str | Path | None,
    options: QuantOptions,
    index: str | Path | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    command: str | None = None,
    workers: int = 2,
    on_bytes: Callable[[int], None] | None = None,
    on_out: Callable[[Path], None] | None = None,
) -> ExtractResult:
    """A nested quantized parent: the parent budget quantized once, keeping its nesting index, so that every
    budget sliced from it is a valid quantized model equal to quantizing that budget with the parent's scales.
    `out` None means `<parent>-<scheme>` beside the parent (see `defaults.output_folder`); `on_out` is told it."""
    if out is not None:
        destination.check_folder(Path(out), overwrite, destination.parent_folders(checkpoint))
    # every budget must slice the quantized parent into whole NVFP4 blocks: plan them all before writing
    try:
        checked = _prepare(checkpoint, [ALL_BUDGETS], index, None, max_shard_size, _without_calibration(options))
    except PaddedQuantizeError as exc:
        raise InputError(
            f"budget {exc.budget!r} of the nesting index has per-layer sizes, which a quantized parent cannot be "
            "sliced into in this version; give --index a nesting index without it to quantize the parent."
        ) from exc
    assert checked.nesting is not None  # every budget of an index was asked for
    if out is None:
        out = defaults.output_folder(checked.checkpoint, options.scheme.lower())
        if on_out is not None:
            on_out(out)
    return extract_many(
        checked.checkpoint, [checked.nesting.parent], out, index, None, max_shard_size, overwrite, command, workers, on_bytes,
        nest=False, quantize=options, keep_index=True,
    )[0]


def _without_calibration(options: QuantOptions) -> QuantOptions:
    """The same quantization planned without running calibration (for checks that need no scales)."""
    return replace(options, fmt=COMPRESSED_TENSORS.name, calibration=None, kv_cache=None)


def derive_index(
    parent: str | Path,
    from_configs: Mapping[str, str | Path],
    parent_name: str = "parent",
    norm_semantics: str = "active",
) -> dict[str, Any]:
    """A nesting index whose budgets are read off children's config.json files (local paths or Hub repo ids)."""
    check_budget_name(parent_name, "--parent-name")
    for name in from_configs:
        check_budget_name(name, "--from-config")
    ckpt = hub.open_source(parent)
    arch = architecture_of(ckpt)
    parent_sizes = {axis: value for axis, value in arch.parent_sizes().items() if axis != "layers"}
    budgets: dict[str, Any] = {parent_name: parent_sizes}
    for name, source in from_configs.items():
        if name in budgets:
            raise InputError(f"budget {name!r} is given twice.")
        budgets[name] = arch.sizes_from_child_config(_child_config(source), name)
    return _checked_index(arch, parent_name, norm_semantics, budgets)


def derive_matformer_index(
    parent: str | Path,
    table: str | Path,
    parent_name: str = "parent",
    norm_semantics: str = "active",
) -> tuple[dict[str, Any], dict[str, str]]:
    """A nesting index whose budgets are the rows of a MatFormer slicing table (the google/gemma3n-slicing-configs
    CSV format), and the mapping row name -> budget name."""
    rows = matformer.read_table(Path(table))
    ckpt = hub.open_source(parent)
    arch = architecture_of(ckpt)
    budgets, names = matformer.table_budgets(rows, parent_name, matformer.parent_widths(arch))
    row_of = {budget: row for row, budget in names.items()}
    try:
        return _checked_index(arch, parent_name, norm_semantics, budgets), names
    except BudgetError as exc:
        raise InputError(f"--from-matformer-csv {table}, row {row_of.get(exc.budget, exc.budget)!r}: {exc}") from None


def _checked_index(
    arch: BoundArchitecture, parent_name: str, norm_semantics: str, budgets: dict[str, Any]
) -> dict[str, Any]:
    """An index document of these budgets, each resolved against the parent before it is returned."""
    document = {
        "format": "elastic-nesting-index", "version": 1, "architecture": arch.model_type,
        "parent": parent_name, "norm_semantics": norm_semantics, "budgets": budgets,
    }
    nesting = parse_index(document, "the derived index")
    for name in budgets:
        resolve_budget(nesting, name, arch)
    return document


@dataclass
class IndexResult:
    """A nesting index authored by `author_index`: the document, its JSON text, and the files it was written to."""

    document: dict[str, Any]
    text: str
    written: list[str]
    #: a MatFormer table's row names -> the budget names they became (empty for --from-config)
    budget_names: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"index": self.document, "written": self.written}
        if self.budget_names:
            shown["budget_names"] = self.budget_names
        return shown


def author_index(
    parent: str | Path,
    from_configs: Mapping[str, str | Path],
    parent_name: str = "parent",
    norm_semantics: str = "active",
    out: str | Path | None = None,
    write_into: bool = False,
    overwrite: bool = False,
    matformer_table: str | Path | None = None,
) -> IndexResult:
    """`derive_index` (or `derive_matformer_index` when `matformer_table` is given), written to the file `out` and/or
    into the local `parent` folder as nesting_index.json.

    Both destinations are checked before anything is read: `out` may not lie inside the parent and its folder must
    exist; either is written through a temporary file renamed into place, and `overwrite` replaces only a file
    that is a nesting index already."""
    targets = []
    if out is not None:
        targets.append((destination.check_file(Path(out), overwrite, destination.parent_folders(parent),
                                               "index --out", _index_refusal), "index --out"))
    if write_into:
        if hub.is_repo_id(str(parent)):
            raise InputError(f"--write-into needs a local parent folder; {str(parent)!r} is a Hub repo id: "
                             "write the index with --out FILE instead.")
        targets.append((destination.check_file(Path(parent) / INDEX_FILE, overwrite, [], "--write-into",
                                               _index_refusal), "--write-into"))
    names: dict[str, str] = {}
    if matformer_table is not None:
        document, names = derive_matformer_index(parent, matformer_table, parent_name, norm_semantics)
    else:
        document = derive_index(parent, from_configs, parent_name, norm_semantics)
    text = json.dumps(document, indent=2) + "\n"
    for path, option in targets:
        with destination.staged_file(path, overwrite, option, _index_refusal) as staging:
            staging.write_text(text, encoding="utf-8")
    return IndexResult(document, text, [str(path) for path, _ in targets], names)


def _index_refusal(path: Path) -> str | None:
    """None when `path` is a nesting index file that --overwrite may replace; else what it is."""
    if not path.is_file() or path.is_symlink():
        return "it is not a plain file"
    try:
        document = load_json_object(path, str(path))
    except InputError:
        return "it is not a JSON nesting index"
    if document.get("format") != INDEX_FORMAT:
        return f"it is not a nesting index (no \"format\": \"{INDEX_FORMAT}\")"
    return None


def _child_config(source: str | Path) -> dict[str, Any]:
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        return load_json_object(path, str(path))
    if path.exists() or str(source).count("/") != 1:
        raise InputError(f"--from-config {source}: no config.json there; give a file, a folder or a Hub repo id.")
    hub.check_repo_id(str(source), "--from-config")
    try:
        from huggingface_hub import hf_hub_download

        downloaded = hf_hub_download(str(source), "config.json")
    except Exception as exc:  # the hub client raises many kinds: offline, missing repo, auth
        raise InputError(f"--from-config {source}: cannot fetch config.json from the Hub ({exc}).") from exc
    return load_json_object(Path(downloaded), f"{source}/config.json")
