"""The `moderation` command line: run the worker, migrate, check policies, show settings, demo."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from consumers.logs import configure_logging
from consumers.outcome_commands import register as register_outcome_commands
from consumers.policy_commands import register as register_policy_commands
from moderation import __version__
from moderation.exceptions import ModerationError
from moderation.settings import Settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(settings.masked(), indent=2))
    return EXIT_OK


def _cmd_embeddings_prune(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import timedelta

    from moderation.storage import EmbeddingStore, create_engine_for

    days = settings.embeddings.retention_days if args.older_than_days is None else args.older_than_days
    if days <= 0:
        print("retention is 0 (keep embeddings forever): nothing to prune")
        return EXIT_OK
    engine = create_engine_for(settings.database_url)
    try:
        deleted = EmbeddingStore(engine).prune(timedelta(days=days))
    finally:
        engine.dispose()
    print(f"deleted {deleted} embeddings stored more than {days:g} days ago")
    return EXIT_OK


def _cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from moderation.settings import mask_url
    from moderation.storage.migrate import current_revision, upgrade

    upgrade(settings.database_url, args.revision)
    print(f"{mask_url(settings.database_url)}: schema at revision {current_revision(settings.database_url)}")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.signals import install_stop_signals

    stop = threading.Event()
    install_stop_signals(stop)  # first: a SIGTERM while torch and the model load is a clean stop
    import structlog

    from consumers.service import run_worker

    structlog.get_logger("moderation").info("starting", version=__version__, settings=settings.masked())
    run_worker(settings, stop)
    return EXIT_OK


def _cmd_test_model(args: argparse.Namespace, settings: Settings) -> int:
    from moderation.testmodel import build_test_model

    path = build_test_model(args.out, force=args.force, progress=lambda line: print(line, file=sys.stderr))
    print(path)
    return EXIT_OK


def _cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.producer import produce_image_files

    count = produce_image_files(settings, args.images, source=args.source, inline=args.inline)
    print(f"produced {count} events to {settings.kafka.input_topic} at {settings.kafka.bootstrap_servers}")
    return EXIT_OK


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
    migrate.add_argument("--revision", default="head", help="target revision (default: head)")
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
    prune.add_argument("--older-than-days", type=float, default=None, help="override the retention setting")
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
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValueError as exc:  # pydantic's ValidationError names every bad variable
        print(f"invalid settings:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log.level, settings.log.format)
    try:
        return int(args.handler(args, settings))
    except ModerationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
