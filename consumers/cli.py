"""The `moderation` command line's entry point: the parser built from the command groups in
`consumers.commands`, and the one error boundary that turns every failure into a line and an `ExitCode`."""

from __future__ import annotations

import argparse
import os
import select
import sys
import traceback
from collections.abc import Sequence

from consumers.commands import bank as bank_command
from consumers.commands import console, demo, embeddings, media, migrate, outcomes, policy, produce, run, testmodel
from consumers.commands import model as model_command
from consumers.commands import search as search_command
from consumers.commands import settings as settings_command
from consumers.errors import CommandError, ExitCode
from consumers.logs import configure_logging
from consumers.settings import InvalidSettingsError, Settings, load_settings
from moderation import __version__
from moderation.exceptions import ModerationError
from moderation.settings import mask_url


def build_parser() -> argparse.ArgumentParser:
    """Every command, in the order `moderation --help` lists them; each group adds its own parsers."""
    parser = argparse.ArgumentParser(
        prog="moderation",
        description="Image content moderation: Kafka image events scored with CLIP against YAML policies.",
        epilog="Settings come from MODERATION_* environment variables and .env; see `moderation settings`.",
    )
    parser.add_argument("--version", action="version", version=f"moderation {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.register(commands)
    migrate.register(commands)
    policy_commands = policy.register(commands)  # check, backtest, shadow-report, tune
    outcomes.register(commands, policy_commands)  # outcomes run, policy precision
    embeddings.register(commands)
    search_command.register(commands)
    media.register(commands)
    bank_command.register(commands)
    console.register(commands)
    settings_command.register(commands)
    testmodel.register(commands)
    model_command.register(commands)
    produce.register(commands)
    demo.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. The error boundary: every failure ends here as `error: ...` and an `ExitCode`."""
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # a reader that went away shows here, not as a traceback at interpreter exit
    except BrokenPipeError:  # `moderation settings | head -1`: the reader has what it wanted
        _discard_stdout()
        return ExitCode.FAILED


def _run(argv: Sequence[str] | None) -> int:
    settings: Settings | None = None
    try:
        args = build_parser().parse_args(argv)
        settings = load_settings()
        configure_logging(settings.log.level, settings.log.format)
        return int(args.handler(args, settings))
    except InvalidSettingsError as exc:
        for problem in exc.problems:
            _say(problem)
        return ExitCode.USAGE
    except CommandError as exc:
        _say(str(exc), None if exc.exit_code == ExitCode.USAGE else exc, settings)
        return exc.exit_code
    except KeyboardInterrupt:
        _say("interrupted")
        return ExitCode.INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the boundary: whatever it is, one line and a status
        if isinstance(exc, BrokenPipeError) and _stdout_closed():
            raise  # main's quiet exit
        failure = _as_command_error(exc, settings)
        if failure is not None:
            _say(str(failure), exc, settings)
            return failure.exit_code
        known = _describe(exc, settings)
        _say(known or f"unexpected {type(exc).__name__}: {exc}", exc, settings, hint=known is None)
        return ExitCode.FAILED


def _as_command_error(exc: Exception, settings: Settings | None) -> CommandError | None:
    """Kafka's errors as the line `consumers.clients` words for them (kafka is loaded only if it raised)."""
    kafka_errors = sys.modules.get("kafka.errors")
    if settings is not None and kafka_errors is not None and isinstance(exc, kafka_errors.KafkaError):
        from consumers.clients import kafka_failure

        return kafka_failure(settings.kafka, exc)
    return None


def _describe(exc: Exception, settings: Settings | None) -> str | None:
    """One line for a failure of a known kind; None for a surprise."""
    if isinstance(exc, ModerationError):
        return str(exc)
    sqlalchemy_errors = sys.modules.get("sqlalchemy.exc")  # loaded only by commands that use a database
    if sqlalchemy_errors is not None and isinstance(exc, sqlalchemy_errors.SQLAlchemyError):
        original = getattr(exc, "orig", None) or exc  # the driver's message, without SQL and parameters
        first = (str(original).strip().splitlines() or [type(original).__name__])[0]
        where = f"database {mask_url(settings.database_url)}" if settings is not None else "database"
        return f"{where}: {first}"
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        if exc.filename is not None and exc.filename2 is not None:
            return f"{exc.filename} -> {exc.filename2}: {reason}"
        if exc.filename is not None:
            return f"{exc.filename}: {reason}"
        return reason
    return None


def _say(
    message: str, exc: BaseException | None = None, settings: Settings | None = None, *, hint: bool = False
) -> None:
    """The failure's line on stderr; at DEBUG level the traceback before it."""
    if exc is not None and settings is not None and settings.log.level == "DEBUG":
        traceback.print_exception(exc, file=sys.stderr)
    elif hint:
        message += " (set MODERATION_LOG__LEVEL=DEBUG for the traceback)"
    print(f"error: {message}", file=sys.stderr)


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (rather than a socket that broke inside a command)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _fd, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll() here, or stdout is no file: assume it is
        return True


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush at exit has nowhere to fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
