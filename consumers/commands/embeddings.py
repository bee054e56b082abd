"""`moderation embeddings prune`: stored image embeddings past their retention are deleted; verdicts stay."""

from __future__ import annotations

import argparse
import math
from typing import Any

from consumers.errors import ExitCode
from consumers.settings import Settings


def positive_days(text: str) -> float:
    """`--older-than-days`: a finite number above 0 (the setting's 0, keep for ever, is no override)."""
    try:
        days = float(text)
    except ValueError:
        days = math.nan
    if not (math.isfinite(days) and days > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of days, not {text!r}")
    return days


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import timedelta

    from moderation.storage import EmbeddingStore, open_engine

    days = settings.embeddings.retention_days if args.older_than_days is None else args.older_than_days
    if days == 0:  # only the setting can say 0; the option refuses it
        print("MODERATION_EMBEDDINGS__RETENTION_DAYS is 0 (keep embeddings forever): nothing to prune")
        return ExitCode.OK
    with open_engine(settings.database_url) as engine:
        deleted = EmbeddingStore(engine).prune(timedelta(days=days))
    print(f"deleted {deleted} embeddings stored more than {days:g} days ago")
    return ExitCode.OK


def register(commands: Any) -> None:
    embeddings = commands.add_parser("embeddings", help="stored image embeddings")
    embeddings_commands = embeddings.add_subparsers(dest="embeddings_command", required=True, metavar="SUBCOMMAND")
    prune = embeddings_commands.add_parser(
        "prune", help="delete embeddings older than the retention (MODERATION_EMBEDDINGS__RETENTION_DAYS)"
    )
    prune.add_argument(
        "--older-than-days", type=positive_days, default=None, metavar="DAYS",
        help="override the retention setting (a positive number of days)",
    )
    prune.set_defaults(handler=cmd_prune)
