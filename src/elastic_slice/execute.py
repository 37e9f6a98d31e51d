"""The executor: stream a plan from the parent's memory-mapped shards into the writer, one tensor at a time."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .checkpoint import Checkpoint, TensorReader
from .dtypes import torch_dtype
from .plan import Plan, TensorOp
from .writer import ShardWriter


def convert(tensor: torch.Tensor, op: TensorOp) -> torch.Tensor:
    """Apply an op's scale (in fp32) and output dtype to a freshly read slice."""
    if op.scale is not None:
        tensor = tensor.to(torch.float32) * op.scale
    return tensor.to(torch_dtype(op.out_dtype))


def execute(
    plan: Plan, checkpoint: Checkpoint, writer: ShardWriter, on_tensor: Callable[[TensorOp], None] | None = None
) -> None:
    """Read, cut, convert and write every tensor of the plan, in order."""
    with TensorReader(checkpoint) as reader:
        for op in plan.ops:
            tensor = reader.read(checkpoint.tensors[op.source], op.selection)
            writer.write(op, convert(tensor, op))
            if on_tensor is not None:
                on_tensor(op)
    writer.close()
