"""One exception tree for the whole library; the CLI maps it to exit codes.

    TracerError                      exit 3 unless noted
    ├── UsageError                   bad command line: options missing, conflicting or out of range (exit 2)
    ├── WorkspaceError               no workspace, or refusing to overwrite one
    ├── ConfigError                  tracer.toml is missing a field or has a bad value
    ├── KeyFileError                 key file unreadable, truncated or tampered
    │   ├── WrongPassphrase          the passphrase does not open the key file
    │   └── KeyMismatch              the keys are not the ones this workspace's ledger was made with
    ├── CustomerError                invalid customer id, unknown or already issued customer
    ├── LedgerError                  the ledger cannot be read or written
    │   └── LedgerTampered           verification found a bad entry (exit 1)
    ├── ModelError                   a model file is missing, corrupt or does not fit the task
    ├── VendorCodeError              the vendor's factory or loader module failed (raised, or exited)
    ├── GateError                    an issued copy failed an accuracy gate
    ├── WorkerError                  a batch's worker process (or Ray task) died or failed; nothing was recorded for it
    ├── EndpointError                a prediction API failed or answered nonsense
    │   ├── ResponseError            an answer that parsed but does not fit the task (not retried)
    │   └── MalformedResponse        an answer that cannot be decoded, or too large (retried)
    ├── BudgetExhausted              a probe ran out of its query budget (exit 3)
    │   └── BudgetSpent              internal: no request may be sent any more (never escapes the client)

Every error carries a one-line ``message`` meant for a human and an optional
``hint`` saying what to do next. Messages never contain secrets.
"""

from __future__ import annotations

__all__ = [
    "TracerError",
    "UsageError",
    "WorkspaceError",
    "ConfigError",
    "KeyFileError",
    "WrongPassphrase",
    "KeyMismatch",
    "CustomerError",
    "LedgerError",
    "LedgerTampered",
    "ModelError",
    "VendorCodeError",
    "GateError",
    "WorkerError",
    "EndpointError",
    "BudgetExhausted",
    "ResponseError",
    "MalformedResponse",
    "BudgetSpent",
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


class UsageError(TracerError):
    """The command line is wrong: a missing, conflicting or out-of-range option, or options that do not fit
    the session they continue. The one way to say so."""

    exit_code = EXIT_USAGE


class WorkspaceError(TracerError):
    """No workspace was found, or an operation would overwrite one."""


class ConfigError(TracerError):
    """The workspace configuration is invalid."""


class KeyFileError(TracerError):
    """A key file is missing, truncated, corrupt or has been tampered with."""


class WrongPassphrase(KeyFileError):
    """The passphrase does not open the key file."""


class KeyMismatch(KeyFileError):
    """The master secret or signing key does not belong to this ledger (copied in from another workspace?)."""


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


class VendorCodeError(TracerError):
    """The vendor's own code (model.factory, data.loader or their module) raised or exited while tracer ran it.

    ``module`` names the vendor module; the message carries the exception's first line, and
    ``--verbose`` shows the vendor's traceback (the exception is chained as ``__cause__``).
    """

    def __init__(self, message: str, *, module: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.module = module


class GateError(TracerError):
    """An issued copy failed a quality gate and was neither written nor recorded."""

    def __init__(self, message: str, *, gate: str, measured: float, required: float, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.gate = gate
        self.measured = measured
        self.required = required


class WorkerError(TracerError):
    """A worker of a parallel batch died or failed before returning its copy; nothing was recorded for that customer."""


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
