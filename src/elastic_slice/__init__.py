"""elastic-slice: cut standalone models out of elastic (many-in-one) checkpoints."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("elastic-slice")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

from .api import (  # noqa: E402
    BudgetReport,
    ExtractResult,
    InspectReport,
    VerifyReport,
    extract,
    extract_many,
    inspect,
    plan_extract,
    plan_extract_many,
    verify,
)

__all__ = [
    "BudgetReport", "ExtractResult", "InspectReport", "VerifyReport", "extract", "extract_many", "inspect",
    "plan_extract", "plan_extract_many", "verify", "__version__",
]
