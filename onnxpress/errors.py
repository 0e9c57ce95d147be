"""Exceptions that carry a user-facing message and an exit code.

Every failure a user can cause (a bad file, an unknown pass name, a wrong input shape) raises an
`OnnxpressError` subclass whose message is one clear line; the CLI prints it and exits with
`exit_code`, never a traceback. Anything else that escapes is a bug in onnxpress.
"""

from __future__ import annotations

__all__ = [
    "OnnxpressError",
    "InputError",
    "PipelineError",
    "PassFailure",
    "VerificationError",
]


class OnnxpressError(Exception):
    """Base class of expected failures; `str(error)` is the one line shown to the user."""

    exit_code = 1


class InputError(OnnxpressError, ValueError):
    """The model, data or a command-line argument is unusable (exit code 2)."""

    exit_code = 2


class PipelineError(InputError):
    """A pipeline text could not be parsed, or names an unknown pass or option (exit code 2)."""


class PassFailure(OnnxpressError):
    """A pass raised; names the pass and those that ran before it (exit code 1)."""

    def __init__(self, message: str, *, pass_name: str | None = None, previous: list[str] | None = None):
        super().__init__(message)
        self.pass_name = pass_name
        self.previous = list(previous or [])


class VerificationError(OnnxpressError):
    """A structural or numeric check after a pass failed (exit code 1)."""

    def __init__(self, message: str, *, pass_name: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.pass_name = pass_name
        self.details = dict(details or {})
