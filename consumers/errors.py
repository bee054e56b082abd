"""The command line's one error contract: every command ends with an `ExitCode`.

A handler that cannot go on raises `CommandError` (a usage problem or a failure, with one line that
says what to do); the library raises `ModerationError` subclasses. `consumers.cli.main` is the only
place that turns either into a line on stderr and an exit status, so no command prints a traceback.
"""

from __future__ import annotations

import enum

from moderation.exceptions import ModerationError


class ExitCode(enum.IntEnum):
    """Exit statuses shared by every `moderation` command."""

    OK = 0
    FAILED = 1  # the command ran and something failed (a check, a broker, a database)
    USAGE = 2  # the command line or the settings are wrong; nothing was done


class CommandError(ModerationError):
    """A command stops with one clear line; `exit_code` says whether it was misuse or a failure."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.FAILED) -> None:
        self.exit_code = exit_code
        super().__init__(message)


class UsageError(CommandError):
    """The arguments or settings given cannot work; exit 2, like argparse's own errors."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.USAGE)
