"""The command line's one error contract: every command ends with an `ExitCode`.

A handler that cannot go on raises `CommandError` (`CommandError.user(...)` for a usage problem,
`CommandError.external_dependency(...)` or plain `CommandError(...)` for a failure, with one line that
says what to do); the library raises `ModerationError` subclasses. `consumers.cli.main` is the only
place that turns either into a line on stderr and an exit status, so no command prints a traceback.
This module stays alone and imports nothing of the commands, so any module can raise from it.
"""

from __future__ import annotations

import enum

from moderation.exceptions import ModerationError


class ExitCode(enum.IntEnum):
    """Exit statuses shared by every `moderation` command (the README's command-line section lists them)."""

    OK = 0
    FAILED = 1  # the command ran and something failed (a check, a broker, a database)
    USAGE = 2  # the command line or the settings are wrong; nothing was done
    INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


class CommandError(ModerationError):
    """A command stops with one clear line; `exit_code` says whether it was misuse or a failure."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.FAILED) -> None:
        self.exit_code = exit_code
        super().__init__(message)

    @classmethod
    def user(cls, message: str) -> UsageError:
        """The arguments or settings given cannot work: exit 2."""
        return UsageError(message)

    @classmethod
    def external_dependency(cls, message: str) -> CommandError:
        """Something the command needs (a broker, a database) failed: exit 1, like every failure here."""
        return CommandError(message, ExitCode.FAILED)


class UsageError(CommandError):
    """The arguments or settings given cannot work; exit 2, like argparse's own errors."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.USAGE)
