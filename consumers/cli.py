"""The `moderation` command line: run the worker, migrate, check policies, show settings, demo."""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path

from consumers.errors import CommandError, ExitCode
from consumers.logs import configure_logging
from consumers.outcome_commands import register as register_outcome_commands
from consumers.policy_commands import register as register_policy_commands
from moderation import __version__
from moderation.exceptions import ModerationError
from moderation.settings import InvalidSettingsError, Settings, load_settings, mask_url

INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def _cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(settings.masked(), indent=2))
    return ExitCode.OK


def positive_days(text: str) -> float:
    """`--older-than-days`: a finite number above 0 (the setting's 0, keep for ever, is no override)."""
    try:
        days = float(text)
    except ValueError:
        days = math.nan
    if not (math.isfinite(days) and days > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of days, not {text!r}")
    return days


def _cmd_embeddings_prune(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import timedelta

    from moderation.storage import EmbeddingStore, create_engine_for

    days = settings.embeddings.retention_days if args.older_than_days is None else args.older_than_days
    if days == 0:  # only the setting can say 0; the option refuses it
        print("MODERATION_EMBEDDINGS__RETENTION_DAYS is 0 (keep embeddings forever): nothing to prune")
        return ExitCode.OK
    engine = create_engine_for(settings.database_url)
    try:
        deleted = EmbeddingStore(engine).prune(timedelta(days=days))
    finally:
        engine.dispose()
    print(f"deleted {deleted} embeddings stored more than {days:g} days ago")
    return ExitCode.OK


def _cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from moderation.storage.migrate import SchemaNewerThanCode, current_revision, upgrade

    try:
        upgrade(settings.database_url, args.revision)
    except SchemaNewerThanCode as newer:
        if not newer.compatible:
            raise
        print(f"{mask_url(settings.database_url)}: {newer}")  # a rollback of the code: the schema stays
        return ExitCode.OK
    print(f"{mask_url(settings.database_url)}: schema at revision {current_revision(settings.database_url)}")
    return ExitCode.OK


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.signals import install_stop_signals

    stop = threading.Event()
    install_stop_signals(stop)  # first: a SIGTERM while torch and the model load is a clean stop
    import structlog

    from consumers.service import run_worker

    structlog.get_logger("moderation").info("starting", version=__version__, settings=settings.masked())
    run_worker(settings, stop)
    return ExitCode.OK


def _cmd_test_model(args: argparse.Namespace, settings: Settings) -> int:
    from moderation.testmodel import build_test_model

    path = build_test_model(args.out, force=args.force, progress=lambda line: print(line, file=sys.stderr))
    print(path)
    return ExitCode.OK


def _cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.producer import produce_image_files

    count = produce_image_files(settings, args.images, source=args.source, inline=args.inline)
    print(f"produced {count} events to {settings.kafka.input_topic} at {settings.kafka.bootstrap_servers}")
    return ExitCode.OK


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.demo import run_demo

    return run_demo(settings, model=args.model, policy=args.policy)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moderation",
        description="Image content moderation: Kafka image events scored with CLIP against YAML policies.",
        epilog="Settings come from MODERATION_* environment variables and .env; see `moderation settings`.",
    )
    parser.add_argument("--version", action="version", version=f"moderation {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a worker: consume events, write verdicts, publish flagged items")
    run.set_defaults(handler=_cmd_run)

    migrate = commands.add_parser("migrate", help="create or upgrade the database schema (Alembic)")
    migrate.add_argument(
        "--revision", default="head", help="target revision (default: head); an older one downgrades the schema"
    )
    migrate.set_defaults(handler=_cmd_migrate)

    policy = commands.add_parser("policy", help="policy files")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True, metavar="SUBCOMMAND")
    register_policy_commands(policy_commands)
    register_outcome_commands(commands, policy_commands)  # outcomes run, policy precision

    embeddings = commands.add_parser("embeddings", help="stored image embeddings")
    embeddings_commands = embeddings.add_subparsers(dest="embeddings_command", required=True, metavar="SUBCOMMAND")
    prune = embeddings_commands.add_parser(
        "prune", help="delete embeddings older than the retention (MODERATION_EMBEDDINGS__RETENTION_DAYS)"
    )
    prune.add_argument(
        "--older-than-days", type=positive_days, default=None, metavar="DAYS",
        help="override the retention setting (a positive number of days)",
    )
    prune.set_defaults(handler=_cmd_embeddings_prune)

    show = commands.add_parser("settings", help="print the effective settings, secrets masked")
    show.set_defaults(handler=_cmd_settings)

    test_model = commands.add_parser("test-model", help="the small offline test CLIP model")
    test_model_commands = test_model.add_subparsers(dest="test_model_command", required=True, metavar="SUBCOMMAND")
    build = test_model_commands.add_parser("build", help="build it (or find the cached build) and print its path")
    build.add_argument("--out", type=Path, default=None, help="directory (default: the user cache)")
    build.add_argument("--force", action="store_true", help="rebuild even if a cached build exists")
    build.set_defaults(handler=_cmd_test_model)

    produce = commands.add_parser("produce", help="produce one image event per local image file")
    produce.add_argument("images", nargs="+", type=Path, help="image files")
    produce.add_argument("--source", default="cli", help="the event's source / tenant (default: cli)")
    produce.add_argument("--inline", action="store_true", help="embed the bytes as base64 instead of a file:// URL")
    produce.set_defaults(handler=_cmd_produce)

    demo = commands.add_parser(
        "demo", help="start an embedded broker, moderate sample images end to end, print the verdicts"
    )
    demo.add_argument("--model", default=None, help="a real CLIP checkpoint (directory or cached hub id)")
    demo.add_argument("--policy", type=Path, default=None, help="policy file (default: depends on the model)")
    demo.set_defaults(handler=_cmd_demo)
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
        return INTERRUPTED
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
