"""The command line: thin typer commands over the Python API. Exit codes: 0 ok, 1 runtime failure, 2 bad input."""

from __future__ import annotations

import json
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, Optional

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from . import api
from .errors import ElasticSliceError, InputError
from .plan import DEFAULT_MAX_SHARD_SIZE, Plan

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Cut standalone Hugging Face models out of elastic (many-in-one) checkpoints.",
)
stdout = Console(soft_wrap=True)
stderr = Console(stderr=True)

IndexOption = typer.Option(None, "--index", help="Nesting index JSON file (default: nesting_index.json, then config.json).")
JsonOption = typer.Option(False, "--json", help="Print one JSON document on stdout and nothing else there.")


def _human_count(count: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(count)


def _human_bytes(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count} B"


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@app.command()
def inspect(
    checkpoint: str = typer.Argument(..., help="Checkpoint folder (config.json + *.safetensors)."),
    index: Optional[Path] = IndexOption,
    as_json: bool = JsonOption,
) -> None:
    """Show the checkpoint, its nesting index and every budget: sizes, parameters, bytes, problems."""
    report = api.inspect(checkpoint, index)
    if as_json:
        _print_json(report.to_json())
    else:
        _render_report(report)
    if report.problems:
        raise typer.Exit(code=2)


def _render_report(report: api.InspectReport) -> None:
    facts = Table(title=f"checkpoint {report.checkpoint}", show_header=False)
    facts.add_row("architecture", f"{report.model_type} ({', '.join(report.architectures) or 'no architectures'})")
    facts.add_row("dtype", ", ".join(f"{k} {_human_bytes(v)}" for k, v in report.dtype_bytes.items()))
    facts.add_row("quantization", report.quantization)
    facts.add_row("shards / tensors", f"{report.shards} / {report.tensors}")
    facts.add_row("tensor bytes", _human_bytes(report.total_bytes))
    facts.add_row("nesting index", report.index_source or "none")
    if report.norm_semantics:
        facts.add_row("norm semantics", report.norm_semantics)
    stdout.print(facts)
    if report.budgets:
        table = Table(title="budgets")
        table.add_column("")
        for budget in report.budgets:
            table.add_column(budget.name + (" (parent)" if budget.is_parent else ""), justify="right")
        for axis in report.budgets[0].sizes:
            table.add_row(axis, *(_axis_value(b.sizes[axis]) for b in report.budgets))
        table.add_row("total params", *(_human_count(b.params_total) for b in report.budgets))
        table.add_row("active params", *(_human_count(b.params_active) for b in report.budgets))
        for fmt in ("bf16", "fp8", "nvfp4"):
            table.add_row(f"size {fmt}", *(_human_bytes(b.bytes[fmt]) for b in report.budgets))
        table.add_row("tensors", *(str(b.tensors) for b in report.budgets))
        stdout.print(table)
    for problem in report.problems:
        stdout.print(f"[bold red]problem:[/] {problem}", highlight=False)


def _axis_value(value: Any) -> str:
    return f"{len(value)} layers" if isinstance(value, list) else str(value)


@app.command()
def extract(
    checkpoint: str = typer.Argument(..., help="Parent checkpoint folder."),
    size: str = typer.Option(..., "--size", help="Budget name from the nesting index, e.g. 12B (case-insensitive)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (must not exist unless --overwrite)."),
    index: Optional[Path] = IndexOption,
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Output dtype: bf16, fp16 or fp32 (default: parent's)."),
    max_shard_size: str = typer.Option(DEFAULT_MAX_SHARD_SIZE, "--max-shard-size", help="Largest shard, e.g. 5GB."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and output size; write nothing."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder when done."),
    as_json: bool = JsonOption,
) -> None:
    """Cut one budget out of an elastic checkpoint into a standalone Hugging Face folder."""
    if dry_run:
        plan = api.plan_extract(checkpoint, size, index, dtype, max_shard_size)
        if as_json:
            _print_json(plan.to_json())
        else:
            _render_plan(plan)
        return
    if out is None:
        raise InputError("--out DIR is required unless --dry-run is given.")
    command = "elastic-slice " + shlex.join(sys.argv[1:])
    show_progress = not as_json and stderr.is_terminal
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=stderr, disable=not show_progress, transient=True,
    ) as progress:
        plan = api.plan_extract(checkpoint, size, index, dtype, max_shard_size)
        task = progress.add_task(f"extract {plan.budget.name}", total=plan.out_bytes)
        result = api.extract(
            checkpoint, size, out, index, dtype, max_shard_size, overwrite, command,
            on_tensor=lambda op: progress.advance(task, op.nbytes),
        )
    if as_json:
        _print_json(result.to_json())
        return
    stdout.print(
        f"wrote {result.out}: budget {result.budget}, {result.tensors} tensors, {_human_bytes(result.bytes)} "
        f"in {len(result.shards)} shard(s), {_human_count(result.params_total)} params "
        f"({_human_count(result.params_active)} active), {result.seconds:.2f} s, {result.gb_per_s:.2f} GB/s",
        highlight=False,
    )


def _render_plan(plan: Plan) -> None:
    table = Table(title=f"plan: budget {plan.budget.name} of {plan.parent}")
    for column in ("output tensor", "source", "shape", "dtype", "shard"):
        table.add_column(column)
    for op in plan.ops:
        source = op.source if op.source == op.out_name else f"{op.source}"
        cut = "" if op.out_shape == op.source_shape else f" {list(op.source_shape)}→"
        table.add_row(op.out_name, source, f"{cut}{list(op.out_shape)}", op.out_dtype, op.shard)
    stdout.print(table)
    stdout.print(
        f"{len(plan.ops)} tensors, {_human_bytes(plan.out_bytes)} in {len(plan.shards)} shard(s), "
        f"{_human_count(plan.params.total)} params ({_human_count(plan.params.active)} active); nothing written.",
        highlight=False,
    )


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Console entry point: user mistakes end in one sentence and exit code 2, never a traceback."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        code = app(standalone_mode=False)
    except ElasticSliceError as exc:
        stderr.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        stderr.print("[bold red]interrupted:[/] stopped; no partial output was left behind.", highlight=False)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
