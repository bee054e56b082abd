"""Schema migrations as an explicit step (`moderation migrate`), run before consumers start.

The store never creates tables: running several consumer replicas that each "create if missing"
races, and silently creates a schema that drifts from the migrations. Alembic owns the schema.

The Alembic scripts live in the repository's top-level `migrations/` folder and ship inside the
wheel as the package `moderation.migrations` (see pyproject.toml), so the script location is found
from that package wherever it is installed. The database URL is always passed in by the caller;
alembic.ini, which is only for developers using the alembic CLI, is never read here.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.exc import SQLAlchemyError

import moderation
from moderation.exceptions import ConfigurationError
from moderation.storage.engine import create_engine_for, normalise_url
from moderation.storage.errors import storage_errors

log = logging.getLogger(__name__)

# Alembic's own failures are errors of the schema step too; they are reported whole, as Alembic words them.
_MIGRATION_ERRORS = (SQLAlchemyError, CommandError)


def script_location() -> Path:
    """The directory holding env.py and versions/: the `moderation.migrations` package.

    In a source checkout that is not installed, `moderation.migrations` does not exist as a module
    (setuptools maps it at build time), so fall back to `migrations/` beside the `moderation` package.
    """
    spec = importlib.util.find_spec("moderation.migrations")
    if spec is not None and spec.origin is not None:
        location = Path(spec.origin).parent
    else:
        location = Path(moderation.__file__).resolve().parent.parent / "migrations"
    if not (location / "env.py").is_file():
        raise ConfigurationError(f"Alembic scripts not found: {location / 'env.py'} does not exist")
    return location


def _scripts_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    return config


def alembic_config(url: str) -> Config:
    """An Alembic Config for `url`, built in code: no alembic.ini, no environment variables."""
    config = _scripts_config()
    # Config values go through ConfigParser interpolation: a URL-encoded password's '%' must be doubled.
    rendered = normalise_url(url).render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision` (up, or down to an older one); one already there is left
    untouched.

    A database a newer release migrated (a revision these scripts do not know) raises
    `SchemaNewerThanCode`, saying whether this release may run on it, instead of Alembic's
    "Can't locate revision".
    """
    current, known = current_revision(url), known_revisions()
    if current is not None and current not in known:
        raise newer_schema(url, current)
    with storage_errors(f"migration to {revision!r} failed", catch=_MIGRATION_ERRORS, detail=str):
        if current is not None and revision in known and known.index(revision) < known.index(current):
            # An older target is a downgrade: how the schema goes back before a rollback of the code.
            command.downgrade(alembic_config(url), revision)
            return
        command.upgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    """The revision the database at `url` is at, or None if it has never been migrated."""
    engine = create_engine_for(url)
    reading = storage_errors("could not read the schema revision", catch=_MIGRATION_ERRORS, detail=str)
    try:
        with reading, engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    """The newest revision the shipped scripts know, to compare with `current_revision`."""
    return ScriptDirectory.from_config(_scripts_config()).get_current_head()


class SchemaNewerThanCode(ConfigurationError):
    """The database was migrated by a newer release: its revision is unknown to these scripts."""

    def __init__(self, message: str, *, revision: str, compatible: bool) -> None:
        super().__init__(message)
        self.revision = revision
        self.compatible = compatible


def known_revisions() -> list[str]:
    """The revisions these scripts know, oldest first."""
    scripts = ScriptDirectory.from_config(_scripts_config())
    return [script.revision for script in reversed(list(scripts.walk_revisions()))]


def declare_compatibility(revision: str, compatible_with: str) -> None:
    """Called from a migration's upgrade(): code at `compatible_with` or later runs on this schema.

    The record lives in the database (table `schema_compatibility`), because the code that must read it
    is the OLDER release, which does not have the newer migration file: a rollback of the workers to it
    then starts when the newer schema says it may (an additive change: a new table, a nullable column),
    and refuses with one clear line otherwise. `compatible_with` is cumulative: the oldest code revision
    that can run on the schema at `revision`, never older than the previous migration's.
    """
    from alembic import op

    table = sa.table("schema_compatibility", sa.column("revision", sa.String), sa.column("compatible_with", sa.String))
    op.execute(table.delete().where(table.c.revision == revision))
    op.bulk_insert(table, [{"revision": revision, "compatible_with": compatible_with}])


def recorded_compatibility(url: str, revision: str) -> str | None:
    """The oldest code revision the database says can run on its schema at `revision`, if it says."""
    engine = create_engine_for(url)
    try:
        with storage_errors("could not read the schema compatibility", detail=str), engine.connect() as conn:
            if "schema_compatibility" not in sa.inspect(conn).get_table_names():
                return None
            table = sa.table("schema_compatibility", sa.column("revision"), sa.column("compatible_with"))
            row = conn.execute(sa.select(table.c.compatible_with).where(table.c.revision == revision)).first()
            return str(row[0]) if row is not None else None
    finally:
        engine.dispose()


def newer_schema(url: str, current: str) -> SchemaNewerThanCode:
    """Why this release can or cannot run on a schema a newer release migrated to `current`."""
    known, head = known_revisions(), head_revision()
    oldest = recorded_compatibility(url, current)
    compatible = (
        oldest is not None and oldest in known and head is not None and known.index(oldest) <= known.index(head)
    )
    if compatible:
        message = (
            f"database schema is at revision {current}, from a newer release; it is marked compatible with "
            f"revision {oldest} and later, and this release is at {head}: nothing to do"
        )
    else:
        why = f"it needs code at revision {oldest} or later" if oldest else "it records no compatibility"
        message = (
            f"database schema is at revision {current}, from a newer release, and this release (at {head}) cannot "
            f"run on it: {why}. Roll the workers forward, or first downgrade the schema with the newer "
            f"release: `moderation migrate --revision {head}`"
        )
    return SchemaNewerThanCode(message, revision=current, compatible=compatible)


def require_compatible(url: str) -> None:
    """Raise ConfigurationError unless this release can run on the schema: services never create tables.

    It can on its own head, and on a newer schema whose migration marked it compatible (see
    `declare_compatibility`); an older schema needs `moderation migrate` first.
    """
    current, head = current_revision(url), head_revision()
    if current == head:
        return
    if current is not None and current not in known_revisions():
        problem = newer_schema(url, current)
        if not problem.compatible:
            raise problem
        log.warning("running on schema revision %s, newer than this release's %s and marked compatible", current, head)
        return
    raise ConfigurationError(
        f"database schema is at revision {current or 'none'}, expected {head}: run `moderation migrate` first"
    )
