"""One exception tree for the whole library; the CLI maps it to exit codes.

    TracerError                      exit 3 unless noted
    ├── WorkspaceError               no workspace, or refusing to overwrite one
    ├── ConfigError                  tracer.toml is missing a field or has a bad value
    ├── KeyFileError                 key file unreadable, truncated or tampered
    │   └── WrongPassphrase          the passphrase does not open the key file
    ├── CustomerError                invalid customer id, unknown or already issued customer
    ├── LedgerError                  the ledger cannot be read or written
    │   └── LedgerTampered           verification found a bad entry (exit 1)
    ├── ModelError                   a model file is missing, corrupt or does not fit the task
    ├── GateError                    an issued copy failed an accuracy gate
    ├── EndpointError                a prediction API failed or answered nonsense
    │   ├── ResponseError            an answer that parsed but does not fit the task (not retried)
    │   └── MalformedResponse        an answer that cannot be decoded, or too large (retried)
    ├── BudgetExhausted              a probe ran out of its query budget (exit 3)
    │   └── BudgetSpent              internal: no request may be sent any more (never escapes the client)
    └── UsageError                   options that do not fit together (exit 2)

Every error carries a one-line ``message`` meant for a human and an optional
``hint`` saying what to do next. Messages never contain secrets.
"""

from __future__ import annotations

__all__ = [
    "TracerError",
    "WorkspaceError",
    "ConfigError",
    "KeyFileError",
    "WrongPassphrase",
    "CustomerError",
    "LedgerError",
    "LedgerTampered",
    "ModelError",
    "GateError",
    "EndpointError",
    "BudgetExhausted",
    "ResponseError",
    "MalformedResponse",
    "BudgetSpent",
    "UsageError",
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "EXIT_ERROR",
]

EXIT_OK = 0  # success, or a customer was identified
EXIT_FAILED = 1  # a check failed, or no customer was identified
EXIT_USAGE = 2  # bad command line
EXIT_ERROR = 3  # runtime error: unreadable file, bad passphrase, network failure, failed gate


class TracerError(Exception):
    """Base of every error tracer raises on purpose."""

    exit_code: int = EXIT_ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class WorkspaceError(TracerError):
    """No workspace was found, or an operation would overwrite one."""


class ConfigError(TracerError):
    """The workspace configuration is invalid."""


class KeyFileError(TracerError):
    """A key file is missing, truncated, corrupt or has been tampered with."""


class WrongPassphrase(KeyFileError):
    """The passphrase does not open the key file."""


class CustomerError(TracerError):
    """A customer id is invalid, unknown, or already issued."""


class LedgerError(TracerError):
    """The ledger cannot be read or written."""


class LedgerTampered(LedgerError):
    """Verification found an entry that was modified, removed, reordered, inserted or forged."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, entry: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.entry = entry


class ModelError(TracerError):
    """A model file is missing, corrupt, or does not fit the workspace's task."""


class GateError(TracerError):
    """An issued copy failed a quality gate and was neither written nor recorded."""

    def __init__(self, message: str, *, gate: str, measured: float, required: float, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.gate = gate
        self.measured = measured
        self.required = required


class EndpointError(TracerError):
    """A prediction endpoint failed, timed out or answered something unusable."""


class BudgetExhausted(TracerError):
    """A probe used up its query budget before reaching a verdict."""


class ResponseError(EndpointError):
    """An answer that parsed but does not fit the task (wrong shape, unknown label, out-of-range class).

    Systematic: retrying does not help, so the probe stops with exit 3.
    """


class MalformedResponse(EndpointError):
    """An answer that is not decodable at all (truncated, invalid JSON, over the size cap): transient, retried."""


class BudgetSpent(BudgetExhausted):
    """No request may be sent any more: the budget is used up (the probe client's internal signal)."""

    def __init__(self, message: str = "query budget spent", *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)


class UsageError(TracerError):
    """Command-line options that do not fit together, or do not fit the session they continue."""

    exit_code = EXIT_USAGE
