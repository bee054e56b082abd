"""Opening the database for a command or a service: check the schema when asked, open, always dispose.

Every command that reads or writes the database goes through `open_engine`, so the order (the schema
check before any connection, the pool disposed however the block ends) is the same everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine

from moderation.storage.engine import create_engine_for
from moderation.storage.migrate import require_compatible


@contextmanager
def open_engine(url: str, *, require_schema: bool = False) -> Iterator[Engine]:
    """An engine for `url` for the length of the block, disposed at its end.

    `require_schema`: first refuse (ConfigurationError) a database this release cannot run on, as the
    services do (`moderation.storage.migrate.require_compatible`); commands that only read what is there
    leave it off and report the database's own error instead.
    """
    if require_schema:
        require_compatible(url)
    engine = create_engine_for(url)
    try:
        yield engine
    finally:
        engine.dispose()
