"""One error hierarchy. Each subclass says whose fault it is; only the CLI turns them into
messages and exit codes (``exit_code``)."""

from __future__ import annotations


class ShadowtapError(Exception):
    """Base of every error shadowtap raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint  # what the user can do about it, e.g. a command that fixes it

    def __str__(self) -> str:
        return self.message


class InputError(ShadowtapError):
    """The user's input is bad: a corrupt capture, a malformed line, a bad setting.

    ``where`` names the place (``file.pcap at byte 1234``, ``results.jsonl line 7``); ``field``
    names the setting whose value is bad, as the code that raised it knows it (``target``,
    ``sample_percent``), never as a command-line flag: only the CLI knows flags, and it turns the
    field into its flag at one boundary (:meth:`at`), so a stage used as a library, by the mirror
    or by a test says ``target: ...`` where ``shadowtap mirror`` says ``--shadow: ...``."""

    exit_code = 3

    def __init__(
        self,
        message: str,
        *,
        where: str | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        place = where if where is not None else field
        super().__init__(f"{place}: {message}" if place else message, hint=hint)
        self.reason = message  # the message without its place
        self.where = where
        self.field = field

    def at(self, where: str) -> InputError:
        """The same error (same class, hint and cause) placed at ``where`` (a flag, say)."""
        err = type(self).__new__(type(self))
        InputError.__init__(err, self.reason, where=where, hint=self.hint)
        err.field = self.field
        err.__cause__ = self.__cause__
        return err


class PrerequisiteError(ShadowtapError):
    """Something the machine lacks: privileges, bcc, kernel headers, a tool. ``hint`` carries the
    command that fixes it."""

    exit_code = 4


class TargetError(ShadowtapError):
    """The target (shadow or primary) failed in a way that stops the whole run."""

    exit_code = 5


# Exit codes in one place (docs/cli.md lists them):
EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2  # typer/click's own code for bad options
EXIT_INPUT = InputError.exit_code
EXIT_PREREQUISITE = PrerequisiteError.exit_code
EXIT_TARGET = TargetError.exit_code
EXIT_INTERRUPTED = 130
# The compare verdict codes (compare owns their meaning): pass is EXIT_OK.
EXIT_VERDICT_MARGINAL = 10
EXIT_VERDICT_FAIL = 11
EXIT_VERDICT_ERROR = 12
