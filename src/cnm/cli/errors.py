"""The CLI's errors: each carries the text to print and the exit code Docker's CLI uses."""

from __future__ import annotations

from cnm.errors import CnmError


class CliError(CnmError):
    """A failure to report on stderr; ``exit_code`` is what the process exits with.

    ``message`` is printed verbatim (an empty message prints nothing, for commands that
    already printed their per-object errors and only need the exit status).
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(CliError):
    """Bad flags or arguments, reported like pflag/cobra: exit 125 for flag errors."""

    def __init__(self, message: str, exit_code: int = 125) -> None:
        super().__init__(message, exit_code)


class DaemonError(CliError):
    """The daemon answered with an error status; printed as ``Error response from daemon: …``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Error response from daemon: {message}", 1)
        self.status = status
        self.daemon_message = message


class ConnectError(CliError):
    """Nothing usable answers on the daemon's socket."""
