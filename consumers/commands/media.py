"""`moderation media prune`: reviewer copies past their retention are deleted; the items keep their verdicts."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from consumers.commands.embeddings import positive_days
from consumers.errors import CommandError, ExitCode
from consumers.settings import Settings


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    from moderation.media import DirectoryMediaStore, MediaError, age_cutoff
    from moderation.media_retention import prune_media
    from moderation.storage import open_engine
    from moderation.storage.review_media import ReviewMediaStore

    days = settings.media.retention_days if args.older_than_days is None else args.older_than_days
    if days == 0:  # only the setting can say 0; the option refuses it
        print("MODERATION_MEDIA__RETENTION_DAYS is 0 (keep reviewer copies forever): nothing to prune")
        return ExitCode.OK
    directory = settings.media_directory

    def progress(swept: int) -> None:
        print(f"swept {swept} copies older than {days:g} days", file=sys.stderr, flush=True)

    with open_engine(settings.database_url) as engine:
        try:
            report = prune_media(
                ReviewMediaStore(engine), DirectoryMediaStore(directory), age_cutoff(days),
                include_pending=args.include_pending, progress=progress,
            )
        except MediaError as exc:
            raise CommandError.external_dependency(f"{exc} (MODERATION_MEDIA__DIRECTORY)") from exc
    pending = "" if args.include_pending else "decided "
    print(
        f"pruned the reviewer copies of {report.items} {pending}review items older than {days:g} days: "
        f"{report.deleted} files deleted, {report.kept_shared} kept (another item holds them), "
        f"{report.orphans} orphan files removed, in {directory}"
    )
    return ExitCode.OK


def register(commands: Any) -> None:
    media = commands.add_parser("media", help="reviewer copies of the images sent to review")
    media_commands = media.add_subparsers(dest="media_command", required=True, metavar="SUBCOMMAND")
    prune = media_commands.add_parser(
        "prune", help="delete reviewer copies older than the retention (MODERATION_MEDIA__RETENTION_DAYS)"
    )
    prune.add_argument(
        "--older-than-days", type=positive_days, default=None, metavar="DAYS",
        help="override the retention setting (a positive number of days)",
    )
    prune.add_argument(
        "--include-pending", action="store_true",
        help="prune the copies of items still waiting for a decision too (by default they keep them)",
    )
    prune.set_defaults(handler=cmd_prune)
