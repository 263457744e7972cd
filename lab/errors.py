"""Errors that mean the lab itself could not do its job. TCP oddities are findings, not errors."""

from __future__ import annotations


class LabError(Exception):
    """Base: a one-line message plus a hint that tells the user what to do."""

    exit_code = 3

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        return f"{self.message}: {self.hint}" if self.hint else self.message


class UsageError(LabError):
    """Bad arguments: unknown experiment, bad option value."""

    exit_code = 2


class EnvironmentProblem(LabError):
    """Missing privileges or tools; the experiment cannot run here."""

    exit_code = 3


class BadCapture(LabError):
    """A capture file that cannot be read: truncated, malformed, unknown link type."""

    exit_code = 2


class UnsafeTarget(LabError):
    """An injection or traffic target outside loopback and the lab's own namespaces."""

    exit_code = 2


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: unwind (teardown runs), then exit 128 + the signal's number (130, 143)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class OutputError(EnvironmentProblem):
    """An output that cannot be written: no permission, a read-only or full filesystem. Exit code 3."""
