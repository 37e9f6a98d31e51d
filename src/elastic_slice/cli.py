"""The command line: thin typer commands over the Python API. Exit codes: 0 ok, 1 runtime failure, 2 bad input."""

from __future__ import annotations

import functools
import json
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from . import __version__, api, defaults
from .errors import ElasticSliceError, InputError
from .nesting import axis_summary, parse_set
from .plan import DEFAULT_MAX_SHARD_SIZE, Plan
from .quant.formats import FORMATS
from .quant.schemes import SCHEMES
from .text import literal, say, styled
from .units import human_bytes, human_count
from .verify import NUMERIC_TOLERANCE


class _FlagsShownAsFlags:
    """Help that shows a flag as a flag: typer 0.29's Rich help prints every option's value type, so a flag
    (`--json`, `--help`, which take no value) read `--json <bool>`; a flag's type is shown as nothing."""

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class _Command(_FlagsShownAsFlags, TyperCommand):
    """A command of this CLI."""


class _Group(_FlagsShownAsFlags, TyperGroup):
    """The `elastic-slice` command group."""


app = typer.Typer(
    cls=_Group,
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="""Start inside a checkpoint folder (one with a config.json):
elastic-slice inspect
elastic-slice extract --size 12B       # writes <folder>-12B beside it""",
)
#: every line printed to these goes through `text.say` / `text.styled`: untrusted names are shown literally
stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)

#: the help of a checkpoint argument that may be left out
HERE = "(default: the current folder, when it has a config.json)"
QuantizeOption = typer.Option(None, "--quantize", metavar="SCHEME", help="Quantize to fp8 or nvfp4.")
QuantFormatOption = typer.Option(
    "modelopt", "--quant-format", metavar="FORMAT", help="modelopt (hf_quant_config.json) or compressed-tensors."
)
ExcludeOption = typer.Option(
    None, "--exclude", metavar="GLOB", help="Module name glob to keep unquantized (repeatable)."
)
CalibrationOption = typer.Option(
    None, "--calibration", metavar="FILE",
    help="Text file for activation scales, or 'default' for the built-in sample (ModelOpt and --kv-cache use it "
    "when not given).",
)
DeviceOption = typer.Option("cpu", "--device", metavar="DEVICE", help="Device for calibration runs (cpu, cuda).")
RecipeOption = typer.Option(
    None, "--recipe", metavar="RECIPE",
    help="What stays unquantized: nvidia (NVIDIA's Nemotron NVFP4 release; the default for Nemotron-H) or broad "
    "(the default for families without a vendor recipe).",
)
KvCacheOption = typer.Option(
    None, "--kv-cache", metavar="fp8", help="Write calibrated FP8 KV-cache scales (default: none)."
)
RevisionOption = typer.Option(
    None, "--revision", metavar="REV", help="Hub revision (branch, tag or commit) of a repo id CKPT."
)
IndexOption = typer.Option(
    None, "--index", metavar="FILE", help="Nesting index JSON file (default: nesting_index.json, then config.json)."
)
MaxShardSizeOption = typer.Option(DEFAULT_MAX_SHARD_SIZE, "--max-shard-size", metavar="SIZE", help="Largest shard.")
OverwriteOption = typer.Option(
    False, "--overwrite", help="Replace an empty folder or an earlier elastic-slice output at --out when done."
)
JsonOption = typer.Option(False, "--json", help="Print one JSON document on stdout and nothing else there.")


def _print_version(value: bool) -> None:
    if value:
        from .quant import kernels

        say(stdout, f"elastic-slice {__version__}")
        say(stdout, f"quantization kernels: {kernels.describe()}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Cut standalone Hugging Face models out of elastic (many-in-one) checkpoints."""


def _here_if_none(checkpoint: str | None, argument: str = "CKPT") -> str:
    """`checkpoint`, or the current folder when it is left out (said on stderr)."""
    if checkpoint is not None:
        return checkpoint
    folder = defaults.current_folder(argument)
    say(stderr, f"{argument} not given: using the current folder {folder}")
    return str(folder)


def _announce_out(folder: Path) -> None:
    say(stderr, f"--out not given: the output goes to {folder}")


def _reports_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Turn this package's errors into one sentence on stderr and their exit code; Ctrl-C into exit code 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except ElasticSliceError as exc:
            say(stderr, ("error: ", "bold red"), str(exc))
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            say(stderr, ("interrupted: ", "bold red"), "stopped; no unfinished output was left behind.")
            raise typer.Exit(code=130) from None

    return wrapper


def _progress(as_json: bool) -> Progress:
    """A byte progress bar with throughput and ETA on stderr, silent with --json or when stderr is no terminal."""
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=stderr, disable=as_json or not stderr.is_terminal, transient=True,
    )


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@app.command(
    cls=_Command,
    epilog="""Examples:
elastic-slice inspect                  # inside a checkpoint folder
elastic-slice inspect ckpt/ --json
elastic-slice inspect org/name         # Hub repo: headers only, no weights""",
)
@_reports_errors
def inspect(
    checkpoint: str | None = typer.Argument(
        None, metavar="CKPT", show_default=False, help=f"Checkpoint folder, or a Hub repo id (org/name) {HERE}."
    ),
    index: Path | None = IndexOption,
    revision: str | None = RevisionOption,
    as_json: bool = JsonOption,
) -> None:
    """Show the checkpoint, its nesting index and every budget: sizes, parameters, bytes, problems."""
    checkpoint = _here_if_none(checkpoint)
    report = api.inspect(checkpoint, index, revision)
    if as_json:
        _print_json(report.to_json())
    else:
        _render_report(report)
    if report.problems:
        raise typer.Exit(code=2)


def _render_report(report: api.InspectReport) -> None:
    facts = Table(title=styled("checkpoint ", report.checkpoint), show_header=False)
    _row(facts, "architecture", f"{report.model_type} ({', '.join(report.architectures) or 'no architectures'})")
    _row(facts, "dtype", ", ".join(f"{k} {human_bytes(v)}" for k, v in report.dtype_bytes.items()))
    _row(facts, "quantization", report.quantization)
    _row(facts, "module kinds", ", ".join(f"{k} {v}" for k, v in report.module_quantization.items()))
    _row(facts, "shards / tensors", f"{report.shards} / {report.tensors}")
    _row(facts, "tensor bytes", human_bytes(report.total_bytes))
    _row(facts, "nesting index", report.index_source or "none")
    if report.hub is not None:
        _row(facts, "hub", f"{report.hub.repo_id} @ {report.hub.commit[:12]} (metadata and headers only)")
        _row(facts, "download", f"{human_bytes(report.hub.download_bytes)} of weights "
             f"({human_bytes(report.hub.cached_bytes)} already cached)")
    if report.norm_semantics:
        _row(facts, "norm semantics", report.norm_semantics)
    stdout.print(facts)
    if report.budgets:
        table = Table(title=styled("budgets"))
        table.add_column(styled(""))
        for budget in report.budgets:
            table.add_column(styled(budget.name + (" (parent)" if budget.is_parent else "")), justify="right")
        for axis in report.budgets[0].sizes:
            _row(table, axis, *(axis_summary(axis, b.sizes[axis]) for b in report.budgets))
        _row(table, "total params", *(human_count(b.params_total) for b in report.budgets))
        _row(table, "active params", *(human_count(b.params_active) for b in report.budgets))
        for fmt in ("stored", "bf16", *SCHEMES):
            _row(table, f"size {fmt}", *("refused" if len(b.quantize_refused.get(fmt, ())) == len(FORMATS)
                                         else human_bytes(b.bytes[fmt]) for b in report.budgets))
        _row(table, "tensors", *(str(b.tensors) for b in report.budgets))
        if report.hub is not None:
            _row(table, "download", *(human_bytes(b.download_bytes) for b in report.budgets))
        stdout.print(table)
    # reason -> (schemes, formats, budgets), each in order of first appearance
    refusals: dict[str, tuple[dict[str, None], dict[str, None], dict[str, None]]] = {}
    for budget in report.budgets:
        for scheme, by_format in budget.quantize_refused.items():
            for fmt, reason in by_format.items():
                schemes, formats, budgets = refusals.setdefault(reason, ({}, {}, {}))
                schemes[scheme] = formats[fmt] = budgets[budget.name] = None
    for reason, (schemes, formats, budgets) in refusals.items():
        fmt_flag = "" if len(formats) == len(FORMATS) else f" --quant-format {'/'.join(formats)}"
        say(stdout, (f"--quantize {'/'.join(schemes)}{fmt_flag} refused", "bold"),
            f" for {', '.join(map(repr, budgets))}: {reason}")
    for problem in report.problems:
        say(stdout, ("problem: ", "bold red"), problem)


def _row(table: Table, *cells: str) -> None:
    """A table row of literal text (Rich would parse plain strings as markup)."""
    table.add_row(*(styled(cell) for cell in cells))


@app.command(
    cls=_Command,
    epilog="""Examples (P is a parent checkpoint folder):
elastic-slice extract --size 12B       # inside P: writes P-12B beside P
elastic-slice extract P --size 18B --quantize nvfp4 --out P-18B-nvfp4
elastic-slice extract P --set layers=0-3,5 --dry-run""",
)
@_reports_errors
def extract(
    checkpoint: str | None = typer.Argument(
        None, metavar="CKPT", show_default=False,
        help=f"Parent checkpoint folder, or a Hub repo id (org/name) {HERE}.",
    ),
    revision: str | None = RevisionOption,
    size: list[str] | None = typer.Option(
        None, "--size", metavar="NAME",
        help="Budget from the nesting index, e.g. 12B (case-insensitive); a size between two budgets, e.g. 18B, or "
        "a parameter count, e.g. 18e9; repeat for several.",
    ),
    all_budgets: bool = typer.Option(False, "--all", help="Every budget of the nesting index, in one pass."),
    target_params: float | None = typer.Option(
        None, "--target-params", metavar="N",
        help="Any-size budget: this many total parameters, between two trained budgets.",
    ),
    active_params: float | None = typer.Option(
        None, "--active-params", metavar="N", help="Any-size budget: this many active (per-token) parameters."
    ),
    set_axes: list[str] | None = typer.Option(
        None, "--set", metavar="AXIS=VALUE",
        help="Set an axis for an ad-hoc budget, e.g. hidden_size=2048 or layers=0,1,2 (also [0,1,2] or 0-2); "
        "repeatable.",
    ),
    out: Path | None = typer.Option(
        None, "--out", metavar="DIR",
        help="Output folder (default: <parent>-<budget> beside the parent; in the current folder for a Hub repo "
        "id). With several budgets, the folder that gets one subfolder per budget (default: <parent>-budgets).",
    ),
    index: Path | None = IndexOption,
    dtype: str | None = typer.Option(
        None, "--dtype", metavar="DTYPE", help="Output dtype: bf16, fp16 or fp32 (default: the parent's)."
    ),
    max_shard_size: str = MaxShardSizeOption,
    workers: int = typer.Option(
        2, "--workers", min=1, max=64, metavar="N", help="Reader threads (reads overlap writes)."
    ),
    quantize: str | None = QuantizeOption,
    quant_format: str = QuantFormatOption,
    exclude: list[str] | None = ExcludeOption,
    calibration: str | None = CalibrationOption,
    device: str = DeviceOption,
    recipe: str | None = RecipeOption,
    kv_cache: str | None = KvCacheOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and output size; write nothing."),
    overwrite: bool = OverwriteOption,
    push_to_hub: str | None = typer.Option(
        None, "--push-to-hub", metavar="ORG/NAME",
        help="Upload each finished folder to this Hub repo ({budget} in the name for several).",
    ),
    private: bool = typer.Option(False, "--private", help="With --push-to-hub: create the repo private."),
    as_json: bool = JsonOption,
) -> None:
    """Cut budgets out of an elastic checkpoint into standalone Hugging Face folders."""
    checkpoint = _here_if_none(checkpoint)
    if all_budgets and size:
        raise InputError("give either --size or --all, not both.")
    target = (
        api.ParamTarget(target_params, active_params)
        if target_params is not None or active_params is not None else None
    )
    if not all_budgets and not size and not set_axes and target is None:
        raise InputError("give the budget to extract with --size NAME (or --all, or --set); `inspect` lists them.")
    sizes = [api.ALL_BUDGETS] if all_budgets else list(size or [])
    overrides = parse_set(set_axes) if set_axes else None
    quant = _quant_options(quantize, quant_format, exclude, calibration, device, recipe, kv_cache)
    if dry_run:
        plans = api.plan_extract_many(
            checkpoint, sizes, index, dtype, max_shard_size, quant, overrides, target, revision
        )
        _warn(plans)
        if as_json:
            _print_json(plans[0].to_json() if len(plans) == 1 else [plan.to_json() for plan in plans])
        else:
            for plan in plans:
                _render_plan(plan)
        return
    command = "elastic-slice " + shlex.join(sys.argv[1:])
    with _progress(as_json) as progress:
        task = progress.add_task("extract", total=None)
        if quant is not None:
            quant = _calibration_progress(quant, progress, task, "extract")

        def started(plans: list[Plan]) -> None:
            _warn(plans)
            progress.update(task, description=literal(f"extract {', '.join(p.budget.name for p in plans)}"),
                            total=sum(p.out_bytes for p in plans))

        results = api.extract_many(
            checkpoint, sizes, out, index, dtype, max_shard_size, overwrite, command, workers,
            on_bytes=lambda count: progress.advance(task, count), nest=None, quantize=quant,
            overrides=overrides, target=target, revision=revision, on_plans=started,
            push_to_hub=push_to_hub, private=private, on_out=_announce_out,
        )
    if as_json:
        _print_json(results[0].to_json() if len(results) == 1 else [r.to_json() for r in results])
        return
    _print_results(results)


def _warn(plans: list[Plan]) -> None:
    for plan in plans:
        if plan.budget.warning:
            say(stderr, ("warning: ", "bold yellow"), plan.budget.warning)


def _print_results(results: list[api.ExtractResult]) -> None:
    for result in results:
        say(
            stdout,
            f"wrote {result.out}: budget {result.budget}, {result.tensors} tensors, {human_bytes(result.bytes)} "
            f"in {len(result.shards)} shard(s), {human_count(result.params_total)} params "
            f"({human_count(result.params_active)} active)",
        )
        if result.hub_url:
            say(stdout, f"pushed {result.out} to {result.hub_url}")
    total = sum(r.bytes for r in results)
    say(
        stdout,
        f"{sum(r.tensors for r in results)} tensors, {human_bytes(total)} in {results[0].seconds:.2f} s "
        f"({results[0].gb_per_s:.2f} GB/s)",
    )


@app.command(
    cls=_Command,
    epilog="""Examples:
elastic-slice verify P-12B                         # files, hashes, structure
elastic-slice verify P-12B --parent P --numerics   # every byte, the logits""",
)
@_reports_errors
def verify(
    out: str | None = typer.Argument(
        None, metavar="OUT", show_default=False,
        help=f"Output folder written by `elastic-slice extract` {HERE}.",
    ),
    parent: str | None = typer.Option(
        None, "--parent", metavar="CKPT", help="Parent checkpoint: re-derive and compare every byte."
    ),
    size: str | None = typer.Option(
        None, "--size", metavar="NAME", help="Budget of the output (default: the manifest's)."
    ),
    index: Path | None = IndexOption,
    numerics: bool = typer.Option(False, "--numerics", help="Also compare logits with the parent's masked forward."),
    device: str = typer.Option("cpu", "--device", metavar="DEVICE", help="Device for --numerics (cpu, cuda)."),
    tolerance: float | None = typer.Option(
        None, "--tolerance", metavar="RATIO",
        help="--numerics: largest max logit difference over the largest parent logit (default by the output's "
        f"format: unquantized {NUMERIC_TOLERANCE['none']:g}, FP8 {NUMERIC_TOLERANCE['fp8']:g}, NVFP4 "
        f"{NUMERIC_TOLERANCE['nvfp4']:g}).",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Re-read an output folder and check its files, structure and (with --parent) its bytes and logits."""
    report = api.verify(_here_if_none(out, "OUT"), parent, size, index, numerics, device, tolerance)
    if as_json:
        _print_json(report.to_json())
    else:
        for check in report.checks:
            say(stdout, ("ok  ", "green"), check)
        for problem in report.problems:
            say(stdout, ("problem: ", "bold red"), problem)
        say(stdout, "verified" if report.ok else f"{len(report.problems)} problem(s) found")
    if not report.ok:
        raise typer.Exit(code=1)


def _quant_options(
    scheme: str | None, fmt: str, exclude: list[str] | None, calibration: str | None, device: str,
    recipe: str | None, kv_cache: str | None,
) -> api.QuantOptions | None:
    if scheme is None:
        if calibration is not None or exclude or kv_cache is not None or recipe is not None:
            raise InputError(
                "--calibration, --exclude, --recipe and --kv-cache apply only with --quantize fp8|nvfp4."
            )
        return None
    return api.QuantOptions(scheme, fmt, tuple(exclude or ()), calibration, device, recipe, kv_cache)


def _calibration_progress(
    quant: api.QuantOptions, progress: Progress, task: TaskID, description: str
) -> api.QuantOptions:
    """`quant` showing calibration's decoder layers done on the progress line, which then reads `description`."""

    def on_layer(done: int, total: int) -> None:
        text = description if done == total else f"calibrating: {done} of {total} layers"
        progress.update(task, description=literal(text))

    return replace(quant, on_layer=on_layer)


@app.command(
    cls=_Command,
    epilog="""Examples (P is a parent checkpoint folder):
elastic-slice quantize --quantize nvfp4   # inside P: writes P-nvfp4 beside P
elastic-slice quantize P --quantize fp8 --quant-format compressed-tensors""",
)
@_reports_errors
def quantize(
    checkpoint: str | None = typer.Argument(
        None, metavar="CKPT", show_default=False, help=f"Unquantized elastic parent checkpoint folder {HERE}."
    ),
    scheme: str | None = QuantizeOption,
    scheme_as_to: str | None = typer.Option(None, "--to", hidden=True, help="The former name of --quantize."),
    out: Path | None = typer.Option(
        None, "--out", metavar="DIR",
        help="Output folder for the nested quantized parent (default: <parent>-<scheme> beside the parent).",
    ),
    quant_format: str = QuantFormatOption,
    exclude: list[str] | None = ExcludeOption,
    calibration: str | None = CalibrationOption,
    device: str = DeviceOption,
    recipe: str | None = RecipeOption,
    kv_cache: str | None = KvCacheOption,
    index: Path | None = IndexOption,
    max_shard_size: str = MaxShardSizeOption,
    workers: int = typer.Option(2, "--workers", min=1, max=64, metavar="N", help="Reader threads."),
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
) -> None:
    """Quantize a parent once into a nested FP8/NVFP4 parent that keeps its nesting index.

    Every budget sliced from it is a valid quantized model."""
    checkpoint = _here_if_none(checkpoint)
    if scheme is not None and scheme_as_to is not None and scheme != scheme_as_to:
        raise InputError(f"--quantize {scheme!r} and --to {scheme_as_to!r} disagree; give --quantize alone.")
    scheme = scheme or scheme_as_to
    if scheme is None:
        raise InputError("give the scheme to quantize to with --quantize fp8 or --quantize nvfp4.")
    options = api.QuantOptions(scheme, quant_format, tuple(exclude or ()), calibration, device, recipe, kv_cache)
    command = "elastic-slice " + shlex.join(sys.argv[1:])
    with _progress(as_json) as progress:
        task = progress.add_task(literal(f"quantize {scheme}"), total=None)
        result = api.quantize(
            checkpoint, out, _calibration_progress(options, progress, task, f"quantize {scheme}"), index,
            max_shard_size, overwrite, command, workers, on_bytes=lambda count: progress.advance(task, count),
            on_out=_announce_out,
        )
    if as_json:
        _print_json(result.to_json())
    else:
        _print_results([result])


@app.command(
    "index",
    cls=_Command,
    epilog="""Examples (P is a parent checkpoint folder):
elastic-slice index P --from-config 12B=P-12B --parent-name 30B
elastic-slice index --from-config 12B=../P-12B --write-into   # inside P
elastic-slice index P --from-matformer-csv slicing-configs.csv --parent-name E4B --out P/nesting_index.json""",
)
@_reports_errors
def index_command(
    parent: str | None = typer.Argument(
        None, metavar="PARENT", show_default=False, help=f"Parent checkpoint folder {HERE}."
    ),
    from_config: list[str] = typer.Option(
        [], "--from-config", metavar="NAME=PATH",
        help="A budget from a child's config.json (file, folder or Hub repo id); repeatable.",
    ),
    from_matformer_csv: Path | None = typer.Option(
        None, "--from-matformer-csv", metavar="FILE",
        help="Budgets from a MatFormer slicing table (Gemma 3n; the google/gemma3n-slicing-configs CSV format).",
    ),
    parent_name: str = typer.Option(
        "parent", "--parent-name", metavar="NAME", help="Name of the parent's own budget in the index, e.g. 30B."
    ),
    norm_semantics: str = typer.Option(
        "active", "--norm-semantics", metavar="active|full", help="How norms of cut widths are computed (see the spec)."
    ),
    out: Path | None = typer.Option(None, "--out", metavar="FILE", help="Write the index to this file."),
    write_into: bool = typer.Option(False, "--write-into", help="Write nesting_index.json into the parent folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index file."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the index and the files written as one JSON document on stdout, nothing else."
    ),
) -> None:
    """Author a nesting index from the config.json of already-extracted children, or from a MatFormer slicing table.

    Without --out or --write-into, the index is printed."""
    parent = _here_if_none(parent, "PARENT")
    if bool(from_config) == (from_matformer_csv is not None):
        raise InputError("index needs either --from-config NAME=PATH (repeatable) or --from-matformer-csv FILE.")
    sources: dict[str, str] = {}
    for item in from_config:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise InputError(f"--from-config {item!r} must look like NAME=PATH, for example 12B=child/config.json.")
        if name in sources:
            raise InputError(f"--from-config names budget {name!r} twice.")
        sources[name] = source
    result = api.author_index(
        parent, sources, parent_name, norm_semantics, out, write_into, overwrite, from_matformer_csv
    )
    for row, budget in result.budget_names.items():
        say(stderr, f"row {row!r} -> budget {budget}")
    if result.written:
        say(stderr, f"wrote {', '.join(result.written)}")
    if as_json:
        _print_json(result.to_json())
    elif not result.written:
        sys.stdout.write(result.text)


def _render_plan(plan: Plan) -> None:
    """One line per output tensor: name, source when renamed, shape change, kept ranges of cut dims, dtype, shard."""
    lines = [f"plan: budget {plan.budget.name} of {plan.parent}"]
    for op in plan.ops:
        source = "" if op.source == op.out_name else f" <- {op.source}"
        cuts = [
            f"dim{dim}[{','.join(f'{a}:{b}' for a, b in ranges)}]"
            for dim, (ranges, size) in enumerate(zip(op.selection, op.source_shape, strict=False))
            if ranges != ((0, size),)
        ]
        shape = f"{list(op.source_shape)} -> {list(op.out_shape)}" if cuts else str(list(op.out_shape))
        scale = f" x{op.scale:.6g}" if op.scale is not None else ""
        lines.append(f"{op.out_name}{source}  {shape} {' '.join(cuts)}{scale}  {op.out_dtype}  {op.shard}")
    lines.append(
        f"{len(plan.ops)} tensors, {human_bytes(plan.out_bytes)} in {len(plan.shards)} shard(s), "
        f"{human_count(plan.params.total)} params ({human_count(plan.params.active)} active); nothing written."
    )
    sys.stdout.write("\n".join(map(literal, lines)) + "\n")


#: set once the command has returned, its outputs complete or cleaned up: a SIGTERM then (while the interpreter shuts
#: down its threads) is ignored instead of printing a KeyboardInterrupt from the shutdown
_command_ended = threading.Event()


def _raise_interrupt(signum: int, frame: object) -> None:
    if not _command_ended.is_set():
        raise KeyboardInterrupt


def main() -> None:
    """Console entry point: SIGTERM is handled like Ctrl-C, so staged output is always cleaned up."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    if hasattr(signal, "SIGXFSZ"):  # a file-size limit then fails the write with EFBIG instead of killing us
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _command_ended.clear()
    try:
        # also under `python -m elastic_slice`: usage lines and completion name the command
        app(prog_name="elastic-slice")
    finally:
        _command_ended.set()
