"""elastic-slice: cut standalone models out of elastic (many-in-one) checkpoints."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("elastic-slice")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

from .api import BudgetReport, ExtractResult, InspectReport, extract, inspect, plan_extract  # noqa: E402

__all__ = ["BudgetReport", "ExtractResult", "InspectReport", "extract", "inspect", "plan_extract", "__version__"]
