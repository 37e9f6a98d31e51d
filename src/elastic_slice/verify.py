"""`verify`: re-read an output folder and check it against its manifest, its config and, optionally, its parent."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .arch import architecture_of, get_architecture
from .checkpoint import Checkpoint, ShardFiles, open_checkpoint
from .errors import ElasticSliceError, InputError
from .execute import Target, execute
from .manifest import MANIFEST_FILE, read_manifest, sha256_file
from .nesting import Budget
from .plan import Plan, TensorOp, build_plan


@dataclass
class VerifyReport:
    """What was checked and what was wrong; `ok` when nothing was."""

    folder: str
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

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
    for name, entry in sorted(files.items()):
        target = folder / name
        if target.is_symlink():
            report.problems.append(f"{name!r} is a link; an output folder holds regular files only.")
        elif not target.is_file():
            report.problems.append(f"{name!r} is listed in the manifest but missing.")
        elif target.stat().st_size != entry.get("size"):
            report.problems.append(f"{name!r} is {target.stat().st_size} bytes; the manifest says {entry.get('size')}.")
        elif sha256_file(target) != entry.get("sha256"):
            report.problems.append(f"{name!r} does not match its sha256 in the manifest (the file was changed).")
    for extra in sorted(p.name for p in folder.iterdir() if p.name not in files and p.name != MANIFEST_FILE):
        report.problems.append(f"{extra!r} is not listed in the manifest.")
    report.checks.append(f"{len(files)} files against the manifest's sizes and sha256")
    return manifest


def check_structure(child: Checkpoint, report: VerifyReport) -> None:
    """The config, weights index, shard headers, tensor names and shapes agree with each other."""
    try:
        arch = architecture_of(child)
        sizes = arch.parent_sizes(child.config)
        build_plan(child, arch, Budget(name="self", sizes=sizes, is_parent=True, norm_semantics="active"))
    except ElasticSliceError as exc:
        report.problems.append(str(exc))
        return
    report.checks.append(f"{len(child.tensors)} tensors: names, shapes and presence agree with config.json")


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


def check_against_parent(child: Checkpoint, plan: Plan, parent: Checkpoint, report: VerifyReport) -> None:
    """The child holds exactly the plan's tensors, with its dtypes, shapes and bytes."""
    planned = {op.out_name: op for op in plan.ops}
    for name in sorted(set(child.tensors) - set(planned)):
        report.problems.append(f"tensor {name!r} is in the output but not in budget {plan.budget.name!r}.")
    for name in sorted(set(planned) - set(child.tensors)):
        report.problems.append(f"tensor {name!r} of budget {plan.budget.name!r} is missing from the output.")
    for name, op in planned.items():
        info = child.tensors.get(name)
        if info is not None and (info.dtype != op.out_dtype or info.shape != op.out_shape):
            report.problems.append(
                f"tensor {name!r} is {info.dtype} {list(info.shape)}; the parent gives {op.out_dtype} {list(op.out_shape)}."
            )
    with ShardFiles(child) as files:
        writer = _ComparingWriter(child, files, report)
        execute(parent, [Target(plan, writer)])  # type: ignore[arg-type]
    for name in sorted(writer.mismatched):
        report.problems.append(f"tensor {name!r} differs from the parent's slice for budget {plan.budget.name!r}.")
    report.checks.append(f"{len(planned)} tensors byte for byte against {parent.root} budget {plan.budget.name}")


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


def check_numerics(
    child_folder: Path, parent: Checkpoint, plan: Plan, report: VerifyReport, device: str, tolerance: float
) -> None:
    """The child's logits against the parent's masked forward on a few fixed tokens (needs transformers)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as exc:
        raise InputError("verify --numerics needs transformers: pip install 'elastic-slice[test]'.") from exc
    arch = get_architecture(parent.model_type)
    vocab = int(plan.child_config.get("vocab_size", 2))
    tokens = torch.randint(0, vocab, (1, 24), generator=torch.Generator().manual_seed(0)).to(device)
    logits = []
    for folder, sizes in ((parent.root, plan.budget.sizes), (child_folder, None)):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
        if sizes is not None:
            arch.apply_masked_forward(model, sizes, plan.budget.norm_semantics)
        with torch.no_grad():
            logits.append(model(tokens, use_cache=False).logits.float().cpu())
        del model
    diff = (logits[0] - logits[1]).abs()
    summary = f"max abs diff {diff.max().item():.3g}, mean {diff.mean().item():.3g} over {tokens.shape[1]} tokens"
    if diff.max().item() > tolerance:
        report.problems.append(f"logits differ from the parent's masked forward: {summary} (tolerance {tolerance:g}).")
    report.checks.append(f"logits against the parent's masked forward on {device}: {summary}")
