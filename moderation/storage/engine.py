"""Database URLs and engines: one configuration for every process that talks to the database.

SQLite (tests, single-host runs) and PostgreSQL (production) only. Long-running consumers and one-shot
commands get the same engine: pre-pinged pooled connections, WAL and a busy timeout on SQLite, a
connect timeout on PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from moderation.exceptions import ConfigurationError
from moderation.storage.errors import StorageError
from moderation.storage.statements import INSERTS

SQLITE_BUSY_TIMEOUT_MS = 5_000  # wait this long for another writer instead of failing at once
POSTGRES_CONNECT_TIMEOUT_S = 10  # libpq waits forever by default; a dead host should fail a health check


def normalise_url(url: str) -> URL:
    """Parse `url`, pointing plain PostgreSQL URLs at psycopg 3 (SQLAlchemy would pick psycopg2)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(f"invalid database URL: {exc}") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def create_engine_for(url: str) -> Engine:
    """An engine configured for a long-running consumer on SQLite or PostgreSQL.

    SQLite: the database file's directory is created if missing, and every connection uses WAL (readers
    do not block the writer) with a busy timeout. PostgreSQL: psycopg 3 and a connect timeout. Both
    pre-ping pooled connections, so a database restart costs one reconnect, not a failed batch.
    """
    parsed = normalise_url(url)
    backend = parsed.get_backend_name()
    if backend not in INSERTS:
        raise ConfigurationError(f"unsupported database {backend!r}: use sqlite or postgresql")
    connect_args: dict[str, Any] = {}
    if backend == "sqlite":
        _create_sqlite_directory(parsed)
    elif "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
    try:
        engine = create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ConfigurationError(f"cannot use database URL {parsed!r}: {exc}") from exc
    if backend == "sqlite":
        event.listen(engine, "connect", _configure_sqlite_connection)
    return engine


def _create_sqlite_directory(url: URL) -> None:
    database = url.database or ""
    # In-memory databases and `file:` URIs have no directory we could sensibly create.
    if database in ("", ":memory:") or database.startswith("file:") or url.query.get("uri"):
        return
    directory = Path(database).parent
    # One level only, like the default `data/`: a missing tree above it is more likely a mistyped URL
    # than a wish, and creating it would scatter directories wherever the typo points.
    if not directory.parent.is_dir():
        raise StorageError(
            f"the SQLite directory {str(directory)!r} does not exist, nor does {str(directory.parent)!r}: "
            "create it first or correct the database URL"
        )
    try:
        directory.mkdir(exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create the SQLite directory {str(directory)!r}: {exc}") from exc


def _configure_sqlite_connection(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")  # persistent in the file; cheap to repeat
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS:d}")  # per connection
    finally:
        cursor.close()
