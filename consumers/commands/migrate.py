"""`moderation migrate`: the schema step, run before the workers (and, with an older revision, before a
rollback of the code)."""

from __future__ import annotations

import argparse
from typing import Any

from consumers.errors import ExitCode
from consumers.settings import Settings
from moderation.settings import mask_url


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
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


def register(commands: Any) -> None:
    migrate = commands.add_parser("migrate", help="create or upgrade the database schema (Alembic)")
    migrate.add_argument(
        "--revision", default="head", help="target revision (default: head); an older one downgrades the schema"
    )
    migrate.set_defaults(handler=cmd_migrate)
