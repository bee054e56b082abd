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
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.exc import SQLAlchemyError

import moderation
from moderation.exceptions import ConfigurationError
from moderation.storage.store import StorageError, create_engine_for, normalise_url


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
    """Bring the database at `url` up to `revision`; a database already there is left untouched."""
    try:
        command.upgrade(alembic_config(url), revision)
    except (SQLAlchemyError, CommandError) as exc:
        raise StorageError(f"migration to {revision!r} failed: {exc}") from exc


def current_revision(url: str) -> str | None:
    """The revision the database at `url` is at, or None if it has never been migrated."""
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except (SQLAlchemyError, CommandError) as exc:
        raise StorageError(f"could not read the schema revision: {exc}") from exc
    finally:
        engine.dispose()


def head_revision() -> str | None:
    """The newest revision the shipped scripts know, to compare with `current_revision`."""
    return ScriptDirectory.from_config(_scripts_config()).get_current_head()


def require_head(url: str) -> None:
    """Raise ConfigurationError unless the schema is at the head revision: services never create tables."""
    current, head = current_revision(url), head_revision()
    if current != head:
        raise ConfigurationError(
            f"database schema is at revision {current or 'none'}, expected {head}: run `moderation migrate` first"
        )
