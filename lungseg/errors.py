"""Errors that the CLI reports as a one-line message and a non-zero exit (no traceback).

Raise a subclass of :class:`LungsegError` for every problem caused by the user's input
(a bad file, a bad parameter, a missing split); let programming errors propagate.
Messages name the file and the problem, e.g. ``"tr_mask_0003.png: mask has label 7 (allowed: 0, 1)"``.
"""

from __future__ import annotations

from pathlib import Path


class LungsegError(Exception):
    """Base class of user-facing errors; ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class ConfigError(LungsegError):
    """``params.yaml`` (or a CLI argument) is invalid."""


class DataError(LungsegError):
    """An input file or folder is missing, unreadable or inconsistent."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


class ValidationFailed(LungsegError):
    """Great Expectations checks failed; ``report`` is the path of the written report."""

    def __init__(self, message: str, report: str | Path | None = None):
        self.report = report
        super().__init__(message if report is None else f"{message} (report: {report})")


class CheckpointError(LungsegError):
    """A checkpoint is missing, corrupt, or belongs to another architecture."""


class TrainingError(LungsegError):
    """Training cannot go on (e.g. the loss became NaN)."""
