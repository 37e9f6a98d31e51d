"""Errors a user can act on, each carrying the process exit code the CLI uses."""

from __future__ import annotations


class ElasticSliceError(Exception):
    """A failure explained in one sentence; never shown with a traceback."""

    exit_code = 1


class InputError(ElasticSliceError):
    """Bad input or usage: a checkpoint, index, option or path the user can fix (exit code 2)."""

    exit_code = 2


class RunFailure(ElasticSliceError):
    """The input was fine but the run failed (disk full, interrupted, I/O error): exit code 1."""

    exit_code = 1
